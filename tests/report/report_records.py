"""Version-2 result records for the report tests, written by the pipeline's own RecordWriter.

The writer stamps the record version; until it stamps version 2 itself, the dicts set it
(a key of the record overrides the writer's stamp), so the fixtures go through the same code
path as a real run.
"""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any, Iterable

from exfm_plugin.contracts.records import RECORD_VERSION
from exfm_plugin.pipeline.records import RecordWriter

_ids = itertools.count()
BASE_RATE = 0.05   # the VM's training click rate: the one NE normaliser of a test day
TEST_RATE = 0.06   # the test day's click rate


def entropy(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def constant_logloss(p: float = BASE_RATE, q: float = TEST_RATE) -> float:
    """Closed form of the constant predictor p's log loss on rows whose click rate is q."""
    return -(q * math.log(p) + (1 - q) * math.log(1 - p))


CONSTANT = {"logloss": constant_logloss(), "NE": constant_logloss() / entropy(BASE_RATE)}


def vm(auc: float = 0.6, logloss: float = 0.2, **kw: Any) -> dict[str, Any]:
    """An ok VM record (teacher DMIN, student FM, method none, seed 0); keywords override fields."""
    r = {"record_version": RECORD_VERSION, "kind": "vm", "status": "ok", "error": None, "grid": "table2",
         "cell_id": f"c{next(_ids)}", "config_hash": "h", "dataset": "taobaoad", "data_source": "synthetic",
         "split_note": None, "round": 0, "train_day": 5, "test_day": 6, "teacher": "DMIN", "student": "FM",
         "method": "none", "label_scale": 1.0, "grad_scale": 1.0, "loss_weight": 1.0, "distill": {}, "seed": 0,
         "domain": None, "task": None, "fm_frozen_after_day": None, "fm_staleness_days": 0, "snapshot_id": "s",
         "vm_schedule": "day", "embedding_update": "dense", "feature_gap": [], "train_rows": 1000,
         "ne_base_rate": BASE_RATE, "constant": dict(CONSTANT),
         "metrics": {"AUC": auc, "logloss": logloss, "NE": logloss / entropy(BASE_RATE), "calibration": 1.0},
         "train_samples_per_s": 1000.0, "eval_samples_per_s": 5000.0, "wall_time_s": 1.0}
    r.update(kw)
    return r


def fm(auc: float = 0.65, logloss: float = 0.19, **kw: Any) -> dict[str, Any]:
    """An ok FM record scored on the same test day and normaliser as :func:`vm`."""
    return vm(auc, logloss, **{"kind": "fm", "student": None, "method": None, **kw})


def write(path: Path, records: Iterable[dict[str, Any]]) -> Path:
    """Append ``records`` through the pipeline's RecordWriter; returns the file."""
    writer = RecordWriter(path)
    for r in records:
        writer.append({"record_version": RECORD_VERSION, **r})
    return writer.path


def write_raw(path: Path, records: Iterable[dict[str, Any]]) -> Path:
    """Write JSON lines as they are: a file from an older or foreign writer, which RecordWriter
    (validating against the schema) would refuse to write."""
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
