"""ONNX export of a descriptor network (normalised RGB in, unit-norm descriptors out)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from ..utils.io import atomic_path
from .net import DescriptorNet


def export_onnx(net: DescriptorNet, path: str | Path, *, height: int = 384, width: int = 384, opset: int = 17,
                check: bool = True, atol: float = 1e-4) -> float:
    """Write ``net`` as ONNX with dynamic batch, height and width; returns the max abs difference
    between ONNX Runtime and torch on a random batch (checked against ``atol`` when ``check``)."""
    net = net.eval().to("cpu", memory_format=torch.contiguous_format)
    x = torch.randn(2, 3, height, width)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x,), str(tmp), input_names=["images"], output_names=["descriptors"],
                          dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "descriptors": {0: "batch"}},
                          opset_version=opset, dynamo=False)
    if not check:
        return float("nan")
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for h, w in ((height, width), (max(32, height // 2), width)):   # a second shape: the axes really are dynamic
        probe = torch.randn(2, 3, h, w)
        with torch.no_grad():
            ref = net(probe).numpy()
        got = session.run(None, {"images": probe.numpy()})[0]
        worst = max(worst, float(np.abs(got - ref).max()))
    if worst > atol:
        raise RuntimeError(f"ONNX export of {path} differs from torch by {worst:.2e} (> {atol:.0e})")
    return worst
