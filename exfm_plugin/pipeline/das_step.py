"""The ``das`` step: one day's rows augmented with an FM snapshot's predictions, for every VM
that trains on that day, through the Data Augmentation Service with the snapshot pinned (stage
1 predicts the union of the VMs' rows once, stage 2 writes each VM's split)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .context import Context
from .fm_steps import FMStep
from .steps import Built, Step


@dataclass(frozen=True, eq=False, repr=False)
class DASStep(Step):
    """``fm``'s predictions on ``day`` for each VM of ``vms``: name -> (day file, tasks or None)."""

    kind = "das"
    fm: FMStep
    day: int
    vms: tuple[tuple[str, str, tuple[str, ...] | None], ...]  # (name, day file, tasks), sorted by name

    @property
    def spec(self) -> dict[str, Any]:
        return {"fm": self.fm.key, "day": self.day,
                "vms": {n: [os.path.abspath(p), list(t) if t else None] for n, p, t in self.vms}}

    @property
    def deps(self) -> tuple[Step, ...]:
        return (self.fm,)

    def input_key(self, vm_name: str) -> str:
        """The key a VM link's spec gives this step's split for ``vm_name`` (its ``input``)."""
        return f"{self.fm.key}/{self.day}/{vm_name}"

    def build(self, ctx: Context, tmp: Path, inputs: Mapping[str, Built]) -> dict[str, Any]:
        from ..das.augment import AugmentJob, VMSpec, run_worker
        from ..das.metastore import open_metastore
        from ..das.spd import SnapshotStore

        fm = inputs[self.fm.key].meta
        job = AugmentJob(tuple(VMSpec(n, p, t) for n, p, t in self.vms), fm["snapshot_id"], str(tmp / "out"), self.day)
        engine = None
        if ctx.engine == "ray":
            from ..das.augment import RayEngine

            engine = lambda loaded: RayEngine(fm["spd_root"], fm["snapshot_id"], num_workers=2)  # noqa: E731
        with open_metastore(f"sqlite:///{tmp / 'das.db'}") as store:
            report = run_worker(job, store, owner=f"pipeline-{os.getpid()}", snapshots=SnapshotStore(fm["spd_root"]),
                                engine=engine, progress=False)
        return {"splits": {n: os.path.relpath(p, tmp) for n, p in report.outputs.items()}}


def split_file(built: Built, vm_name: str) -> str:
    """The file of ``vm_name``'s split in a built DAS step."""
    return str(built.path / built.meta["splits"][vm_name])
