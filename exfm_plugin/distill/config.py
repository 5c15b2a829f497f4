"""The knobs of ExFM distillation (the paper's Sec. 3.3-3.4), validated once."""
from __future__ import annotations

import difflib
import math
from dataclasses import asdict, fields
from typing import Annotated, Any, Mapping

from pydantic import ConfigDict, Strict, field_validator, model_validator
from pydantic.dataclasses import dataclass

from ..contracts import ADAPTER_CONTROL, FM_PRED, METHODS
from ..errors import check_choice

ADAPTER_INPUTS = ("logit", "prob")

StrictFloat = Annotated[float, Strict()]  # an int is accepted (as a float), a string or a bool is not


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
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

    method: Annotated[str, Strict()] = "none"
    label_scale: StrictFloat = 1.0
    grad_scale: StrictFloat = 1.0
    loss_weight: StrictFloat = 1.0
    head_hidden_units: tuple[int, ...] = (64,)
    head_activation: Annotated[str, Strict()] = "ReLU"
    adapter_hidden_units: tuple[int, ...] = (16,)
    adapter_input: Annotated[str, Strict()] = "logit"
    adapter_residual: Annotated[bool, Strict()] = True
    adapter_lr: StrictFloat = 1e-3
    adapter_eps: StrictFloat = 1e-6
    fm_pred_column: Annotated[str, Strict()] = FM_PRED

    @field_validator("method", "adapter_input")
    @classmethod
    def _choice(cls, v: str, info) -> str:
        return check_choice(info.field_name, v, {"method": METHODS, "adapter_input": ADAPTER_INPUTS}[info.field_name])

    @field_validator("label_scale", "grad_scale", "loss_weight", "adapter_lr")
    @classmethod
    def _positive(cls, v: float, info) -> float:
        if not math.isfinite(v) or v <= 0:
            raise ValueError(f"{info.field_name}={v!r} must be a finite number > 0")
        return v

    @field_validator("adapter_eps")
    @classmethod
    def _eps(cls, v: float) -> float:
        if not 0 < v < 0.5:
            raise ValueError(f"adapter_eps={v!r} must be in (0, 0.5)")
        return v

    @field_validator("head_hidden_units", "adapter_hidden_units", mode="before")
    @classmethod
    def _units(cls, v: Any, info) -> tuple[int, ...]:
        units = tuple(v) if isinstance(v, (list, tuple)) else (v,)
        if any(isinstance(u, bool) or not isinstance(u, int) or u <= 0 for u in units):
            raise ValueError(f"{info.field_name}={units!r} must be positive integers")
        return units

    @model_validator(mode="after")
    def _control(self) -> "DistillConfig":
        if self.method == ADAPTER_CONTROL and not self.adapter_residual:
            raise ValueError(f"method={ADAPTER_CONTROL!r} freezes the adapter at its identity start, "
                             f"which needs adapter_residual=True")
        return self

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
        """Build from a YAML block; an unknown key is an error (with its close matches), never ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            hints = {k: difflib.get_close_matches(k, sorted(known), n=2) for k in unknown}
            hint = "".join(f"; {k!r}: did you mean {v}?" for k, v in hints.items() if v)
            raise ValueError(f"unknown distillation option(s) {unknown}; known: {sorted(known)}{hint}")
        return cls(**dict(params))


DISTILL_FIELDS = frozenset(f.name for f in fields(DistillConfig))  # every knob, for key checks elsewhere
