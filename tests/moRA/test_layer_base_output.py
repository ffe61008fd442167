"""MoRA's branch is added to whatever the base layer returns, whatever its memory layout (quantized and custom base
layers can return non-contiguous tensors): the output is base + branch and M receives a gradient."""
import peft
import pytest
import torch

from moRA import MORA_TYPES, MoraConfig, MoraLayer


def _non_contiguous_base(linear: torch.nn.Linear) -> None:
    """The same values as ``linear(x)``, as a transposed (non-contiguous) tensor."""
    weight, bias = linear.weight, linear.bias

    def forward(x, *args, **kwargs):
        return (weight @ x.T + bias[:, None]).T  # x: (N, k) → (N, d), stored as (d, N)

    linear.forward = forward


@pytest.mark.parametrize("mora_type", MORA_TYPES)
def test_branch_is_added_to_a_non_contiguous_base_output(mora_type):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(32, 64))
    model = peft.get_peft_model(net, MoraConfig(r=4, mora_type=mora_type, target_modules=["0"], init_weights=False))
    layer = next(m for m in model.modules() if isinstance(m, MoraLayer))
    base = layer.get_base_layer()
    x = torch.randn(5, 32)
    with torch.no_grad():
        expected = base(x) + x @ layer.get_delta_weight("default").T
    _non_contiguous_base(base)
    assert not base(x).is_contiguous()
    out = model(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.square().sum().backward()
    grad = layer.mora_M["default"].grad
    assert grad is not None and grad.abs().max() > 0
