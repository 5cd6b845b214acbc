"""The guard's range measurement: derived ranges against every tensor exposed and measured directly."""

import numpy as np
import onnx
import pytest

from autotimm_deploy.demo import demo_model_path
from autotimm_deploy.exporters.fp16 import probe_inputs
from autotimm_deploy.exporters.onnx_export import ExportConfig, export_onnx, reinfer_shapes
from autotimm_deploy.exporters.pipeline import level_sizes
from autotimm_deploy.exporters.ranges import derived_tensors, measure_ranges
from autotimm_deploy.exporters.repair import run_tensors
from autotimm_deploy.exporters.surgery import apply_decode
from autotimm_deploy.models.readers import load_model_file

# ops whose derived range is the exact range (they only move values, or are monotone elementwise)
EXACT = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Concat", "Relu", "Sigmoid", "Tanh"}


@pytest.fixture(scope="module")
def demo_graph():
    loaded = load_model_file(demo_model_path("detector"))
    raw = export_onnx(loaded, ExportConfig(input_size=(128, 128), batch_size=1, dynamic_batch=True))
    fused = reinfer_shapes(apply_decode(raw, "boxes", loaded.model.strides, loaded.model.num_classes,
                                        level_sizes((128, 128), loaded.model.strides)))
    probes = probe_inputs((1, 3, 128, 128), loaded.metadata["mean"], loaded.metadata["std"])
    return fused, [{"images": x} for _, x in probes]


def _float_names(model):
    float_vi = {v.name for v in list(model.graph.value_info) + list(model.graph.output)
                if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    return sorted({t for n in model.graph.node for t in n.output if t in float_vi})


def test_derived_ranges_equal_or_bound_the_measured_ones(demo_graph):
    model, feeds = demo_graph
    names = _float_names(model)
    derived = derived_tensors(model, names)
    ops = {node.op_type for node in derived.values()}
    assert {"Relu", "Reshape", "Concat", "MaxPool"} <= ops and len(derived) > 0.3 * len(names)  # really skipped
    m = onnx.ModelProto()
    m.CopyFrom(model)
    got = measure_ranges(m, feeds, names)
    # measure_ranges runs ONNX Runtime's optimised graph, run_tensors the graph as written: sums are
    # ordered differently (measured up to 6e-5 relative on the boxes), far below a wrongly derived range
    for feed, ranges in zip(feeds, got):
        exact = run_tensors(model, feed, names, default_type=None)
        assert set(names) <= set(ranges)
        for t in names:
            lo, hi = float(exact[t].min()), float(exact[t].max())
            if t not in derived:
                assert ranges[t] == pytest.approx((lo, hi), rel=1e-4, abs=1e-4), t
            elif derived[t].op_type in EXACT:
                assert ranges[t] == pytest.approx((lo, hi), rel=1e-4, abs=1e-4), (t, derived[t].op_type)
            else:  # an upper bound: never narrower than the truth
                assert ranges[t][0] <= lo + 1e-4 * (1 + abs(lo)) and ranges[t][1] >= hi - 1e-4 * (1 + abs(hi)), (t, derived[t].op_type)


def test_ops_that_can_leave_their_inputs_range_are_measured():
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Resize", ["x", "", "s"], ["cubic"], mode="cubic"),
             helper.make_node("Pad", ["x", "p", "v"], ["padded"], mode="constant"),
             helper.make_node("Add", ["x", "x"], ["sum"]),
             helper.make_node("Resize", ["x", "", "s"], ["near"], mode="nearest")]
    inits = [onnx.numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "s"),
             onnx.numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "p"),
             onnx.numpy_helper.from_array(np.array(1e5, np.float32), "v")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("cubic", "padded", "sum", "near")],
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert set(derived_tensors(m, ["cubic", "padded", "sum", "near"])) == {"near"}
    r = measure_ranges(m, [{"x": np.linspace(-1, 1, 16, dtype=np.float32).reshape(1, 1, 4, 4)}],
                       ["cubic", "padded", "sum", "near"])[0]
    assert r["padded"][1] == 1e5 and r["sum"] == (-2.0, 2.0) and r["near"] == (-1.0, 1.0)
    assert r["cubic"][0] < -1.0 and r["cubic"][1] > 1.0  # cubic overshoots: measured, not derived
