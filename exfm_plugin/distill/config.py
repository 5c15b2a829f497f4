"""The knobs of ExFM distillation (the paper's Sec. 3.3-3.4), validated once."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from ..contracts import ADAPTER_CONTROL, METHODS

ADAPTER_INPUTS = ("logit", "prob")


@dataclass(frozen=True)
class DistillConfig:
    """How a VM consumes the FM supervision.

    method: ``none`` (true label only), ``kd`` (both labels on the serving head, Eq. 2),
        ``ah`` (Auxiliary Head, Eq. 3-5), ``ah_sa`` (AH + Student Adapter, Algorithm 1),
        ``ah_sa_frozen`` (the adapter control: ``ah_sa`` with the same two heads and losses but
        the adapter never updated, frozen at its identity start, so ``ah_sa`` minus it is the
        adapter's own effect).
    label_scale: alpha (LS); the FM probability is multiplied by it and clipped at 1.
    grad_scale: beta (GS); multiplies the gradient from the distillation heads into the backbone.
    loss_weight: w (LW) on the auxiliary-head loss.
    head_hidden_units: hidden layers of each distillation head psi (an MLP ending in one logit).
    adapter_hidden_units: hidden layers of the Student Adapter MLP.
    adapter_input: ``logit`` feeds logit(clip(p_F, eps, 1-eps)) to the adapter, ``prob`` feeds p_F.
    adapter_residual: the adapter outputs input-logit + MLP(input) with the MLP's last layer
        zero-initialised, so it starts as the identity on the FM's logit and learns a correction
        (the form the paper's Theorem 3.2 analyses: teacher + u^T H x).
    adapter_lr: learning rate of the adapter's own Adam optimizer.
    fm_pred_column: the batch column carrying the FM probability (``fm_pred`` or ``fm_pred/<label>``).
    """

    method: str = "none"
    label_scale: float = 1.0
    grad_scale: float = 1.0
    loss_weight: float = 1.0
    head_hidden_units: tuple[int, ...] = (64,)
    head_activation: str = "ReLU"
    adapter_hidden_units: tuple[int, ...] = (16,)
    adapter_input: str = "logit"
    adapter_residual: bool = True
    adapter_lr: float = 1e-3
    adapter_eps: float = 1e-6
    fm_pred_column: str = "fm_pred"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is not one of {list(METHODS)}")
        for name in ("label_scale", "grad_scale", "loss_weight", "adapter_lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name}={value!r} must be a finite number > 0")
        if self.method == ADAPTER_CONTROL and not self.adapter_residual:
            raise ValueError(f"method={ADAPTER_CONTROL!r} freezes the adapter at its identity start, "
                             f"which needs adapter_residual=True")
        if not 0 < self.adapter_eps < 0.5:
            raise ValueError(f"adapter_eps={self.adapter_eps!r} must be in (0, 0.5)")
        if self.adapter_input not in ADAPTER_INPUTS:
            raise ValueError(f"adapter_input={self.adapter_input!r} is not one of {list(ADAPTER_INPUTS)}")
        for name in ("head_hidden_units", "adapter_hidden_units"):
            units = tuple(getattr(self, name))
            if any(not isinstance(u, int) or u <= 0 for u in units):
                raise ValueError(f"{name}={units!r} must be positive integers")
            object.__setattr__(self, name, units)

    @property
    def uses_teacher(self) -> bool:
        return self.method != "none"

    @property
    def uses_aux_head(self) -> bool:
        return self.method in ("ah", "ah_sa", ADAPTER_CONTROL)

    @property
    def uses_adapter(self) -> bool:
        """A second head fed by the adapter's output (trained or frozen)."""
        return self.method in ("ah_sa", ADAPTER_CONTROL)

    @property
    def trains_adapter(self) -> bool:
        return self.method == "ah_sa"

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (tuples as lists): what a step key and a record hold."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, params: Mapping[str, Any]) -> "DistillConfig":
        """Build from a YAML block; an unknown key is an error, never ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"unknown distillation option(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(params))
