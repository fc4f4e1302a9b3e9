"""Shared by the detector tests: a tiny ONNX "detector" that returns the same boxes for any photo."""

from __future__ import annotations

import numpy as np


def constant_detector(path, boxes, scores, labels, input_hw=(64, 32)):
    """Write an ONNX model with one ``1 x 3 x H x W`` input (``input_hw``) and constant boxes
    (x0 y0 x1 y1 in input pixels), scores and integer labels outputs."""
    import onnx
    from onnx import TensorProto, helper

    def const(name, arr, dtype):
        return helper.make_node(
            "Constant", [], [name], value=helper.make_tensor(name + "_v", dtype, arr.shape, arr.flatten().tolist())
        )

    boxes, scores, labels = np.asarray(boxes, np.float32), np.asarray(scores, np.float32), np.asarray(labels, np.int64)
    nodes = [
        helper.make_node("Shape", ["image"], ["shape"]),  # uses the input so it is not pruned
        const("boxes", boxes, TensorProto.FLOAT),
        const("scores", scores, TensorProto.FLOAT),
        const("labels", labels, TensorProto.INT64),
    ]
    graph = helper.make_graph(
        nodes,
        "det",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, *input_hw])],
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, list(boxes.shape)),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, list(scores.shape)),
            helper.make_tensor_value_info("labels", TensorProto.INT64, list(labels.shape)),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [4]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
