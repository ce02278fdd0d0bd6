"""The ONNX graph: checker, opset and IR version, the CUDA-provider op allow-list, and the
softplus translation equal to torch's softplus."""

from __future__ import annotations

import numpy as np
import pytest

from deepergat.errors import DeepergatError

onnx = pytest.importorskip("onnx")


def test_checker_full_check(exported_tiny):
    model = onnx.load(exported_tiny["onnx"])
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 18
    assert [i.name for i in model.graph.input] == [
        "atomic_numbers", "neighbors", "distances", "neighbor_mask", "crystal_atoms",
        "crystal_mask", "batch"]
    assert [o.name for o in model.graph.output] == ["prediction", "embedding"]


def test_every_size_is_symbolic(exported_tiny):
    model = onnx.load(exported_tiny["onnx"])
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in [*model.graph.input, *model.graph.output]}
    assert dims["neighbors"] == ["N", "K"]
    assert dims["crystal_atoms"] == ["C", "A"]
    assert dims["batch"] == ["N"]
    assert dims["prediction"] == ["C", 1]
    assert dims["embedding"] == ["C", 16]


def test_op_types_within_cuda_allow_list(exported_tiny):
    from deepergat.export.onnx import CUDA_OP_TYPES, check_op_types

    model = onnx.load(exported_tiny["onnx"])
    used = {n.op_type for n in model.graph.node}
    assert used <= CUDA_OP_TYPES, used - CUDA_OP_TYPES
    assert not used & {"ScatterElements", "ScatterND", "Scatter", "Loop", "If", "NonZero"}
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    # softplus is translated, never Where(x > 20, x, Softplus(x))
    assert "Softplus" not in used
    check_op_types(model)


def test_op_type_check_rejects_scatter_reduction_and_unknown_ops():
    from onnx import TensorProto, helper

    from deepergat.export.onnx import check_op_types

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    i = helper.make_tensor_value_info("i", TensorProto.INT64, [2])
    u = helper.make_tensor_value_info("u", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    scatter = helper.make_node("ScatterElements", ["x", "i", "u"], ["y"], reduction="add")
    model = helper.make_model(helper.make_graph([scatter], "g", [x, i, u], [y]))
    with pytest.raises(DeepergatError, match="ScatterElements"):
        check_op_types(model)
    custom = helper.make_node("FusedThing", ["x"], ["y"], domain="com.microsoft")
    model = helper.make_model(helper.make_graph([custom], "g", [x], [y]))
    with pytest.raises(DeepergatError, match=r"com\.microsoft::FusedThing"):
        check_op_types(model)


def test_softplus_translation_equals_torch():
    """Max(x, Log(1 + Exp(Min(x, 20)))) against torch's softplus (threshold 20) over the whole
    float32 range that matters, on ONNX Runtime's CPU provider."""
    torch = pytest.importorskip("torch")
    import onnxruntime as ort

    class Soft(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.softplus(x)

    from deepergat.export.onnx import _quiet_exporter, _softplus

    x = torch.cat([torch.linspace(-120, 120, 20001), torch.tensor([-1e30, 1e30, 0.0, 20.0,
                                                                     20.000002, 19.999998])])
    with _quiet_exporter():
        program = torch.onnx.export(
            Soft(), (x[:7],), dynamo=True, dynamic_shapes=({0: torch.export.Dim("n")},),
            opset_version=18,
            custom_translation_table={torch.ops.aten.softplus.default: _softplus},
        )
    proto = program.model_proto
    proto.ir_version = min(proto.ir_version, 10)
    assert {n.op_type for n in proto.graph.node} == {"Min", "Exp", "Add", "Log", "Max"}
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    want = torch.nn.functional.softplus(x).numpy()
    ulp = np.spacing(np.abs(want))
    # log(1 + e^x) loses e^x below ~1e-7 absolute (1 + e^x rounds to 1); elsewhere ≤ 2 ulp
    assert np.all(np.abs(got - want) <= np.maximum(2 * ulp, 1.2e-7))
    assert np.all(got >= 0) and np.all(np.isfinite(got))
