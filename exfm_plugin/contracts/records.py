"""The result-record schema (version 2): the contract between ``pipeline.records.RecordWriter``
and the report.

One record per evaluated cell: a VM trained with one method (``kind="vm"``) or the FM scored on
the VM's test day (``kind="fm"``). Every row compared on one test day, FM and VMs alike, carries
the same ``ne_base_rate`` (the click rate of the VM's training data) and the same ``constant``
(the constant predictor at that rate scored on the same test rows), so NE values of one table
are comparable and "beats the constant" is one comparison. Keys the schema does not name are
kept (measurements grow); the named ones are checked here, once, for writer and reader alike.
"""
from __future__ import annotations

from ..errors import ExfmInputError

from typing import Annotated, Any, Literal, Mapping, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from . import METHODS, VM_SCHEDULES

RECORD_VERSION = 2
EMBEDDING_UPDATES = ("dense", "sparse", "exact")

Finite = Annotated[float, Field(allow_inf_nan=False)]
Probability = Annotated[float, Field(gt=0.0, lt=1.0, allow_inf_nan=False)]
Name = Annotated[str, Field(min_length=1)]


class RecordError(ExfmInputError):
    """A record that does not follow schema version 2; the message names the field and the value."""


class Metrics(BaseModel):
    """The test-day metrics of an ok record; NE is normalised by the record's ``ne_base_rate``."""

    model_config = ConfigDict(extra="allow", strict=True)

    AUC: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
    logloss: Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
    NE: Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
    calibration: Finite | None = None
    gAUC: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] | None = None


class Constant(BaseModel):
    """The constant predictor at ``ne_base_rate`` scored on the record's test rows."""

    model_config = ConfigDict(extra="forbid", strict=True)

    logloss: Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
    NE: Annotated[float, Field(gt=0.0, allow_inf_nan=False)]


class _Base(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    record_version: Literal[2]
    status: Literal["ok", "failed"]
    error: str | None = None
    grid: Name
    cell_id: Name
    config_hash: str | None = None
    dataset: Name
    data_source: Name
    split_note: str | None = None
    round: int
    train_day: int
    test_day: int
    teacher: Name
    label_scale: Finite = 1.0
    grad_scale: Finite = 1.0
    loss_weight: Finite = 1.0
    distill: dict[str, Any] = Field(default_factory=dict)
    seed: int
    domain: str | None = None
    task: str | None = None
    fm_frozen_after_day: int | None = None
    fm_staleness_days: int | None = None
    snapshot_id: str | None = None
    vm_schedule: Literal[VM_SCHEDULES]  # type: ignore[valid-type]
    embedding_update: Literal[EMBEDDING_UPDATES] = "dense"  # type: ignore[valid-type]
    precision: Literal["fp32", "bf16"] = "fp32"
    torch_compile: bool = False
    feature_gap: list[str] = Field(default_factory=list)
    train_rows: int | None = Field(default=None, ge=0)
    ne_base_rate: Probability | None = None
    metrics: Metrics | None = None
    constant: Constant | None = None
    # the world's true probability scored on the same rows (synthetic data only): the ceiling
    oracle: Metrics | None = None
    # the synthetic world's dials (drift, domain_shift); None on real data
    world: dict[str, Finite] | None = None
    data_seed: int | None = None
    calibration_bins: list[list[float]] | None = None
    train_samples_per_s: Finite | None = None
    eval_samples_per_s: Finite | None = None
    wall_time_s: Finite | None = None

    @model_validator(mode="after")
    def _status_fields(self) -> "_Base":
        if self.status == "failed":
            if not self.error:
                raise ValueError("a failed record needs a non-empty 'error'")
            return self
        missing = [k for k in ("metrics", "ne_base_rate", "constant") if getattr(self, k) is None]
        if self.kind == "vm" and self.train_rows is None:
            missing.append("train_rows")
        if missing:
            raise ValueError(f"an ok {self.kind} record needs {', '.join(missing)}")
        return self


class VMRecord(_Base):
    """A vertical model trained with ``method`` on ``train_day`` (schedule ``vm_schedule``)."""

    kind: Literal["vm"]
    student: Name
    method: str

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        if v not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {v!r}")
        return v


class FMRecord(_Base):
    """The foundation model's own score on the VM's test rows (same normaliser as the VMs)."""

    kind: Literal["fm"]
    student: None = None
    method: None = None


Record = Annotated[Union[VMRecord, FMRecord], Field(discriminator="kind")]
_ADAPTER: TypeAdapter = TypeAdapter(Record)


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors(include_url=False):
        loc = ".".join(str(x) for x in e["loc"] if x not in ("vm", "fm")) or "record"
        msg = e["msg"].removeprefix("Value error, ")
        got = "" if e["type"] in ("missing", "value_error") else f" (got {e.get('input')!r})"
        parts.append(f"{loc}: {msg}{got}")
    return "; ".join(parts)


def validate_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``record`` against schema version 2 and return it as plain JSON-ready data, with the
    defaults filled in (``embedding_update``, ``feature_gap``); raise :class:`RecordError`
    naming the cell, the field and the value otherwise. Unknown keys are kept as they are."""
    if not isinstance(record, Mapping):
        raise RecordError(f"a record must be a JSON object, got {type(record).__name__}")
    version = record.get("record_version")
    cell = record.get("cell_id", "?")
    if version != RECORD_VERSION:
        raise RecordError(f"cell {cell}: record_version {version!r} is not supported: this reads version "
                          f"{RECORD_VERSION} only (re-run the grid to write version-{RECORD_VERSION} records)")
    if record.get("kind") not in ("vm", "fm"):
        raise RecordError(f"cell {cell}: kind must be 'vm' or 'fm', got {record.get('kind')!r}")
    try:
        model = _ADAPTER.validate_python(dict(record))
    except ValidationError as e:
        raise RecordError(f"cell {cell} ({record['kind']}): {_describe(e)}") from None
    return model.model_dump(mode="json")
