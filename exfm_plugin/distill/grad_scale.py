"""Gradient scaling (GS): identity forward, gradient times beta backward.

Placed between the backbone output and the distillation heads only, so beta changes how
hard the FM supervision pulls on the backbone without changing the heads' own gradients.
"""
from __future__ import annotations

import torch


class _GradScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, beta: float) -> torch.Tensor:
        ctx.beta = beta
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return grad_output * ctx.beta, None


def grad_scale(x: torch.Tensor, beta: float) -> torch.Tensor:
    """Return ``x`` unchanged; gradients flowing back through it are multiplied by ``beta``."""
    if beta == 1.0:
        return x
    return _GradScale.apply(x, beta)
