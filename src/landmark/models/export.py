"""ONNX export of a descriptor network (normalised RGB in, unit-norm descriptors out), and of a
backbone alone (the inference engines' graph: normalised RGB in, feature maps out)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..utils.io import atomic_path
from .backbones import Backbone
from .net import DescriptorNet


def export_onnx(
    net: DescriptorNet,
    path: str | Path,
    *,
    height: int = 384,
    width: int = 384,
    opset: int = 17,
    check: bool = True,
    atol: float = 1e-4,
) -> float:
    """Write ``net`` as ONNX with dynamic batch, height and width (a vision transformer's graph: dynamic
    batch, at ``height`` x ``width`` only); returns the max abs difference between ONNX Runtime and
    torch on a random batch (checked against ``atol`` when ``check``)."""
    # torch's overloads of Module.to omit (device, memory_format=...), which it accepts
    net = net.eval().to("cpu", memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    any_size = net.backbone.any_size_graph
    x = torch.randn(2, 3, height, width)
    axes = {"images": {0: "batch", 2: "height", 3: "width"} if any_size else {0: "batch"}, "descriptors": {0: "batch"}}
    with atomic_path(path) as tmp, warnings.catch_warnings(), _exportable_interpolation():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (x,),
            str(tmp),
            input_names=["images"],
            output_names=["descriptors"],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    if not check:
        return float("nan")
    shapes = ((height, width), (max(32, height // 2), width)) if any_size else ((height, width),)
    return _check(net, Path(path), shapes, atol)


@contextmanager
def _exportable_interpolation():
    """ONNX has no antialiased bicubic resize (timm resizes a vision transformer's position embeddings
    with one): exported without the antialias, which changes nothing when enlarging; the export's
    check against torch catches a shrinking one."""
    real = F.interpolate

    def interpolate(*args, antialias: bool = False, **kwargs):
        return real(*args, **kwargs)

    F.interpolate = interpolate
    try:
        yield
    finally:
        F.interpolate = real


class _Trunk(torch.nn.Module):
    """A backbone returning the inputs of the stages ``taps`` and its final feature map."""

    def __init__(self, backbone: Backbone, taps: Sequence[int] = ()):
        super().__init__()
        self.backbone, self.taps = backbone, tuple(taps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.backbone.forward_taps(x, self.taps)


def export_trunk(
    backbone: Backbone,
    path: str | Path,
    *,
    taps: Sequence[int] = (),
    height: int = 384,
    width: int = 288,
    opset: int = 17,
    atol: float = 1e-4,
) -> float:
    """Write ``backbone`` as ONNX (input ``images``: B x 3 x H x W, all dynamic) with outputs the
    inputs of the stages ``taps`` (``tap0``, ...) and the final feature map (``fmap``). Checked
    against torch with ONNX Runtime on two shapes; returns the max abs difference."""
    trunk = _Trunk(backbone, taps).eval()
    names = [f"tap{i}" for i in range(len(taps))] + ["fmap"]
    axes = {"images": {0: "batch", 2: "height", 3: "width"}} | {
        n: {0: "batch", 2: f"{n}_h", 3: f"{n}_w"} for n in names
    }
    x = torch.randn(2, 3, height, width)
    with atomic_path(path) as tmp:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                trunk,
                (x,),
                str(tmp),
                input_names=["images"],
                output_names=names,
                dynamic_axes=axes,
                opset_version=opset,
                dynamo=False,
            )
        worst = _check(trunk, tmp, ((height, width), (max(32, height // 2 + 5), max(32, width - 7))), atol)
    return worst


def _check(module: torch.nn.Module, path: Path, shapes, atol: float) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for h, w in shapes:  # a second, odd shape: the axes really are dynamic
        probe = torch.randn(1, 3, h, w)
        with torch.no_grad():
            ref = module(probe)
        ref = ref if isinstance(ref, tuple) else (ref,)
        got = session.run(None, {"images": probe.numpy()})
        for r, g in zip(ref, got):
            if tuple(r.shape) != g.shape:
                raise RuntimeError(f"ONNX export of {path} gives shape {g.shape} where torch gives {tuple(r.shape)}")
            worst = max(worst, float(np.abs(g - r.numpy()).max()))
    if worst > atol:
        raise RuntimeError(f"ONNX export of {path} differs from torch by {worst:.2e} (> {atol:.0e})")
    return worst
