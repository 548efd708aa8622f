"""core/few_rows.py: the weight-first product equals nn.Linear's within float tolerance for every
row count and input shape (with and without bias), gives a contiguous output callers can .view(),
and leaves a model's parameters, state dict and module types as they were; with autograd on it is
nn.Linear's own path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qadapter.core.few_rows import MAX_FEW_ROWS, FewRowsLinear, use_few_rows_linear
from tests.conftest import tiny_model


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(
    "shape", [(1, 48), (2, 48), (5, 1, 48), (MAX_FEW_ROWS, 48), (3, 7, 48), (MAX_FEW_ROWS + 1, 48)]
)
def test_the_product_equals_nn_linears(shape: tuple[int, ...], bias: bool) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(48, 80, bias=bias)
    x = torch.randn(shape)
    expected = layer(x)
    use_few_rows_linear(layer)
    with torch.inference_mode():
        got = layer(x)
    assert isinstance(layer, FewRowsLinear) and got.is_contiguous() and got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    got.view(-1)  # as attention's q_proj(...).view(...)


def test_a_transposed_input_and_autograd_both_work() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    x = torch.randn(16, 4).t()  # [4, 16], not contiguous
    use_few_rows_linear(layer)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
    layer(x).sum().backward()  # grad enabled: nn.Linear's path
    assert layer.weight.grad is not None


def test_a_model_keeps_its_parameters_and_state_dict() -> None:
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    with torch.inference_mode():
        expected = model(input_ids=ids).logits
        use_few_rows_linear(model)
        got = model(input_ids=ids).logits
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert all(isinstance(m, nn.Linear) for m in model.modules() if isinstance(m, FewRowsLinear))
    assert any(isinstance(m, FewRowsLinear) for m in model.modules())
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
