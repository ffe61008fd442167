"""torch.compile: every MoRA type traces with no graph break and matches eager forward and backward (under compile the
branch runs moRA/equations; the CPU kernels' ``out=`` calls on strided views broke the graph and failed for rope).

Slow (a compile is tens of seconds on a small CPU): one tiny layer per type through Dynamo + AOTAutograd
(``aot_eager``: the forward/backward graphs, where the reported error arose, without C++ code generation), and one tiny
Llama with rope through the default backend (inductor)."""
import pytest
import torch

from moRA.types import MORA_TYPES
from scripts.compile_report import compiled_difference, layer_breaks, mora_linear, tiny_llama

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("mora_type", MORA_TYPES)
def test_a_mora_layer_compiles_with_no_graph_break(mora_type):
    graphs, breaks = layer_breaks(mora_linear(mora_type), torch.randn(3, 5, 20))
    assert (graphs, breaks) == (1, 0)


@pytest.mark.parametrize("mora_type", MORA_TYPES)
def test_a_compiled_mora_layer_matches_eager_forward_and_backward(mora_type):
    layer = mora_linear(mora_type)
    x = torch.randn(3, 5, 20)
    torch._dynamo.reset()
    outputs = []
    for fn in (layer, torch.compile(layer, backend="aot_eager", fullgraph=True)):
        xi = x.clone().requires_grad_(True)
        layer.zero_grad(set_to_none=True)
        out = fn(xi)
        out.square().sum().backward()
        outputs.append((out.detach(), xi.grad, layer.mora_M["default"].grad))
    assert outputs[0][2].abs().sum() > 0  # M receives a gradient
    for eager, compiled in zip(*outputs):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def test_a_tiny_llama_with_rope_mora_compiles_and_matches_eager():
    model = tiny_llama("rope")
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    m_names = [n for n, p in model.named_parameters() if ".mora_M." in n]
    assert len(m_names) == 14
    torch._dynamo.reset()
    results = []
    for fn in (model, torch.compile(model)):
        model.zero_grad(set_to_none=True)
        logits = fn(input_ids=ids).logits
        logits.float().square().mean().backward()
        grads = dict(model.named_parameters())
        results.append((logits.detach(), [grads[n].grad for n in m_names]))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
    for compiled, eager in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def test_compile_report_difference_is_small_for_rope():
    # the report's own check (eager vs default-backend compile of one layer, output and gradients)
    assert compiled_difference(mora_linear("rope"), torch.randn(3, 5, 20)) < 1e-5
