"""The added modules: distillation heads (psi) and the Student Adapter (SA)."""
from __future__ import annotations

import torch
from fuxictr.pytorch.layers import MLP_Block
from torch import nn


class DistillationHead(nn.Module):
    """psi: an MLP from the backbone vector x to one logit; training-only, dropped at export."""

    def __init__(self, input_dim: int, hidden_units=(64,), activation: str = "ReLU"):
        super().__init__()
        self.mlp = MLP_Block(input_dim=input_dim, hidden_units=list(hidden_units),
                             hidden_activations=activation, output_dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class StudentAdapter(nn.Module):
    """SA: a small MLP mapping the FM probability to a logit re-fitted on fresh labels."""

    def __init__(self, hidden_units=(16,), input_kind: str = "logit", residual: bool = True,
                 eps: float = 1e-6):
        super().__init__()
        self.input_kind = input_kind
        self.residual = residual
        self.eps = eps
        self.mlp = MLP_Block(input_dim=1, hidden_units=list(hidden_units),
                             hidden_activations="ReLU", output_dim=1)
        if residual:
            last = self.mlp.mlp[-1]
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def input_transform(self, p_teacher: torch.Tensor) -> torch.Tensor:
        if self.input_kind == "prob":
            return p_teacher
        return torch.logit(p_teacher, eps=self.eps)

    def forward(self, p_teacher: torch.Tensor) -> torch.Tensor:
        z_in = self.input_transform(p_teacher)
        out = self.mlp(z_in)
        if self.residual:
            base = z_in if self.input_kind == "logit" else torch.logit(p_teacher, eps=self.eps)
            out = out + base
        return out
