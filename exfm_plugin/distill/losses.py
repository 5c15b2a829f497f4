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


def invalid_teacher_probs(p_teacher: torch.Tensor) -> torch.Tensor:
    """Boolean mask of FM predictions that are NaN or outside [0, 1]."""
    return ~((p_teacher >= 0) & (p_teacher <= 1))  # NaN compares False both ways


class TeacherProbCheck:
    """Validates the FM supervision of every training batch without a host sync per step.

    Each batch adds its count of invalid values (NaN or outside [0, 1]), and the first invalid
    value seen with its row and step, to tensors on the batch's device; :meth:`check`
    reads them (one sync) and raises. The student calls :meth:`check` every ``every`` steps
    (1 on CPU, where reading a CPU tensor costs nothing; 100 on an accelerator), at the end
    of ``fit`` and at export, so an invalid value is always an error, at most ``every - 1``
    steps late on an accelerator.
    """

    def __init__(self, column: str, every: int = 1):
        if every < 1:
            raise ValueError(f"every={every!r} must be >= 1")
        self.column = column
        self.every = every
        self.steps = 0
        self._bad: torch.Tensor | None = None
        self._first_value: torch.Tensor | None = None
        self._first_step: torch.Tensor | None = None
        self._first_row: torch.Tensor | None = None

    def observe(self, p_teacher: torch.Tensor) -> None:
        """Count the batch's invalid values on the device; check every ``every`` steps."""
        bad = invalid_teacher_probs(p_teacher).reshape(-1)
        if self._bad is None:
            zero = torch.zeros((), dtype=torch.long, device=p_teacher.device)
            self._bad, self._first_step, self._first_row = zero, zero - 1, zero - 1
            self._first_value = torch.zeros((), dtype=p_teacher.dtype, device=p_teacher.device)
        count = bad.sum()
        first_here = self._bad.eq(0) & count.gt(0)
        row = bad.to(torch.uint8).argmax()
        value = p_teacher.reshape(-1)[row]
        self._first_row = torch.where(first_here, row, self._first_row)
        self._first_value = torch.where(first_here, value, self._first_value)
        self._first_step = torch.where(first_here, torch.full_like(self._first_step, self.steps), self._first_step)
        self._bad = self._bad + count
        self.steps += 1
        if self.steps % self.every == 0:
            self.check()

    def check(self) -> None:
        """Raise a ValueError naming the column, the count, the first bad value and its step."""
        if self._bad is None or int(self._bad) == 0:
            return
        raise ValueError(f"FM supervision column {self.column!r} must hold probabilities in [0, 1]; "
                         f"{int(self._bad)} value(s) in training steps 0..{self.steps - 1} are not, "
                         f"the first is {float(self._first_value)} in row {int(self._first_row)} "
                         f"of the batch of step {int(self._first_step)}")
