"""The loss pieces of the paper's Eq. 2-5, computed from logits so they stay finite."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def h(logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The paper's h: mean binary cross-entropy of a logit against a target in [0, 1]."""
    return F.binary_cross_entropy_with_logits(logit, target)


def scale_labels(p_teacher: torch.Tensor, label_scale: float) -> torch.Tensor:
    """Label scaling (LS): alpha * p_F, clipped at 1 so the target stays a probability."""
    return torch.clamp(p_teacher * label_scale, max=1.0)


def check_teacher_probs(p_teacher: torch.Tensor, column: str) -> None:
    """Refuse NaN or out-of-[0,1] FM predictions, naming the column, row and value."""
    bad = ~((p_teacher >= 0) & (p_teacher <= 1))  # NaN compares False both ways
    if bool(bad.any()):
        row = int(torch.nonzero(bad.reshape(-1))[0])
        value = float(p_teacher.reshape(-1)[row])
        raise ValueError(f"FM supervision column {column!r} must hold probabilities in [0, 1]; "
                         f"row {row} of the batch has {value}")
