"""Linear layers for decode's few rows on a CPU.

MKL computes y = x·Wᵀ for a handful of rows x at about half the speed it computes the same product
as (W·xᵀ)ᵀ, with the weight as the first operand: over SmolLM2-135M's 211 linear layers on 2 AVX2
cores, 2 rows take 87 ms one way and 41 ms the other, 16 rows 84 and 65 ms, 64 rows are even
(bench/engine.py measures the whole step). The rows a decode step runs (one or two per request) are
that few; prompts and training batches keep `F.linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# From 2 up to this many rows (batch × positions) a product runs weight-first (one row is a
# matrix-vector product either way); measured, not derived.
MAX_FEW_ROWS = 32


class FewRowsLinear(nn.Linear):
    """An nn.Linear whose forward takes the weight-first product for few rows on a CPU (the same
    parameters, state dict and type checks: only the class of an existing layer is changed)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if not 1 < rows <= MAX_FEW_ROWS or x.device.type != "cpu" or torch.is_grad_enabled():
            return F.linear(x, self.weight, self.bias)
        out = torch.mm(self.weight, x.reshape(rows, self.in_features).t()).t()
        if self.bias is not None:
            out = out + self.bias
        return out.contiguous().reshape(*x.shape[:-1], self.out_features)  # callers .view() it


def use_few_rows_linear(model: nn.Module) -> None:
    """Switch every linear layer of `model` to `FewRowsLinear`, in place."""
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = FewRowsLinear
