"""``exfm export``: a grid cell's trained student as a self-contained FuxiCTR model folder.

Every VM link of a run keeps its serving model (:data:`~exfm_plugin.contracts.SERVING_WEIGHTS`:
the bare VM of :func:`exfm_plugin.distill.export_serving_model`, no heads, no adapter). Exporting
a cell writes a folder that loads from any working directory::

    OUT/model_config.yaml            one expid block: the params that actually ran (batch size,
                                     seed, passes as ``epochs``), ``model_root: ./checkpoints``,
                                     and an ``exfm`` block saying how it was trained
    OUT/dataset_config.yaml          ``data_root: .``, the day files the cell trained and was
                                     tested on, the label
    OUT/<dataset_id>/feature_map.json (+ feature_vocab.json when the run had one)
    OUT/<expid>.model                the state dict (fuxictr's ``BaseModel.save_weights`` format)

Paths of files inside the folder are relative to the folder (``data_root: .``, ``model_root``);
the day files stay where the run prepared them and are written as absolute paths.
:func:`load_exported` resolves the folder's paths and returns ``(model, feature_map)``; with
plain fuxictr, read ``load_config(OUT, expid)`` and join ``data_root``/``model_root`` to ``OUT``
(docs/install.md shows both).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .contracts import SERVING_WEIGHTS, day_file_name
from .errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["Exported", "export_cell", "exported_params", "find_record", "load_exported", "run_export"]

MODEL_ROOT = "./checkpoints"
FEATURE_FILES = ("feature_map.json", "feature_vocab.json")
#: BARS keys of the config the run did not follow (it trained fixed passes, no early stopping)
NOT_RUN = ("early_stop_patience", "model_root", "gpu", "model_id")


@dataclass(frozen=True)
class Exported:
    expid: str
    config_dir: Path
    checkpoint: Path


def find_record(records_paths: list[str], cell: str) -> dict[str, Any]:
    """The last ``ok`` record whose ``cell_id`` starts with ``cell`` (a unique prefix suffices)."""
    from .pipeline.records import read_records

    files: list[str] = []
    for path in records_paths:
        if os.path.isdir(path):
            files += sorted(str(p) for p in Path(path).rglob("*.jsonl"))
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise InputError("no such records file or folder", where=path, expected="a .jsonl file or a results folder")
    records = [r for r in read_records(files) if str(r.get("cell_id", "")).startswith(cell)]
    ids = sorted({r["cell_id"] for r in records})
    if not ids:
        raise InputError(f"no record of cell {cell!r}", where=", ".join(records_paths),
                         expected="a cell_id of these records (see the records' cell_id field)")
    if len(ids) > 1:
        raise InputError(f"cell {cell!r} matches {len(ids)} cells {ids[:5]}", where=", ".join(records_paths),
                         expected="a longer, unique cell_id prefix")
    ok = [r for r in records if r.get("status") == "ok"]
    if not ok:
        raise InputError(f"cell {ids[0]} has no successful record", where=", ".join(records_paths),
                         expected="a cell that trained (status ok)")
    record = ok[-1]
    if record.get("kind") != "vm" or not record.get("vm_artifact"):
        raise InputError(f"cell {ids[0]} is a {record.get('kind')} record without a student artifact",
                         where=", ".join(records_paths),
                         expected="a VM cell (FM snapshots are published to the SPD: exfm das)")
    return record


def _ran_params(spec: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """The link's params as they ran: the passes it made as ``epochs`` (not BARS' 100 with early
    stopping), no device, ``model_root`` inside the folder, and how exfm trained it."""
    params = {k: v for k, v in spec["params"].items() if k not in NOT_RUN}
    schedule = record.get("vm_schedule", "day")
    passes = int(spec.get("passes", 1))
    days = [record["train_day"]] if schedule == "day" else list(range(1, record["train_day"] + 1))
    params.update(epochs=passes, seed=spec.get("seed", params.get("seed")), model_root=MODEL_ROOT, gpu=-1)
    params["exfm"] = {
        "grid": record.get("grid"), "cell_id": record["cell_id"], "teacher": record.get("teacher"),
        "method": record.get("method"), "vm_schedule": schedule,
        "train_days": days, "passes_per_day": passes, "test_day": record["test_day"], "domain": record.get("domain"),
        "task": record.get("task"), "distill": spec.get("distill"),
        "metrics": {k: v for k, v in (record.get("metrics") or {}).items() if isinstance(v, (int, float))},
    }
    return params


def _student_artifact(record: dict[str, Any], work: str | os.PathLike | None) -> str:
    """The record's student artifact: as the record names it (relative to where the run ran), or
    the same step in ``work`` (the run's ``--work`` folder) when given."""
    from .pipeline.artifacts import ArtifactStore

    if work is None:
        return str(record["vm_artifact"])
    named = Path(record["vm_artifact"])
    return str(ArtifactStore(Path(work) / "artifacts").path(named.parent.name, named.name))


def export_cell(record: dict[str, Any], out: str | os.PathLike, work: str | os.PathLike | None = None) -> Exported:
    """Write ``record``'s serving model, its configs and feature map into ``out`` (created);
    ``work``: the run's ``--work`` folder, when the export runs elsewhere than the run did."""
    from .pipeline.artifacts import ArtifactStore

    try:  # the student's link and its prepared data, read through the store
        store, kind, key = ArtifactStore.locate(_student_artifact(record, work))
        link = store.path(kind, key)
        spec = store.meta(kind, key)["spec"]
        prep = store.meta("prep", spec["prep"])
    except (FileNotFoundError, KeyError) as exc:
        raise InputError(f"the student artifact of cell {record['cell_id']} is gone ({exc})",
                         where=_student_artifact(record, work),
                         expected="the run's --work folder as it was (run export where the run ran or pass "
                                  "--work, or rerun the grid with the same --work folder)") from None
    checkpoint = link / SERVING_WEIGHTS
    if not checkpoint.is_file():
        raise InputError(f"the student artifact of cell {record['cell_id']} has no {SERVING_WEIGHTS}",
                         where=str(link), expected="a VM link of exfm run")
    data_dir = store.path("prep", spec["prep"]) / prep["data_dir"]
    dataset_id = prep["dataset_id"]
    expid = f"{spec['student']}_{record['method']}_{record['cell_id']}"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / dataset_id).mkdir(exist_ok=True)
    for name in FEATURE_FILES:
        if (data_dir / name).is_file():
            shutil.copyfile(data_dir / name, out / dataset_id / name)
    params = {"model": spec["student"], "dataset_id": dataset_id, **_ran_params(spec, record)}
    (out / "model_config.yaml").write_text(yaml.safe_dump({expid: params}, sort_keys=False))
    day = lambda d: str((data_dir / day_file_name(d)).resolve())  # noqa: E731
    dataset = {dataset_id: {"data_root": ".", "data_format": "h5",
                            "train_data": day(record["train_day"]), "valid_data": day(record["test_day"]),
                            "test_data": day(record["test_day"]), "label": spec.get("label")}}
    (out / "dataset_config.yaml").write_text(yaml.safe_dump(dataset, sort_keys=False))
    target = out / f"{expid}.model"
    shutil.copyfile(checkpoint, target)
    if record.get("domain") is not None:
        logger.warning("cell %s is a domain VM: dataset_config names the whole day files; its test rows were "
                       "domain %s's", record["cell_id"], record["domain"])
    return Exported(expid, out, target)


def exported_params(folder: str | os.PathLike, expid: str | None = None) -> dict[str, Any]:
    """fuxictr's ``load_config(folder, expid)`` with the folder's relative paths (``data_root``,
    ``model_root``, day files) made absolute against ``folder``: the same params from any cwd.
    ``expid`` defaults to the folder's only expid."""
    from fuxictr.utils import load_config

    folder = Path(folder).resolve()
    config = folder / "model_config.yaml"
    if not config.is_file():
        raise InputError("not an exported model folder", where=str(folder),
                         expected="a folder written by exfm export (model_config.yaml, dataset_config.yaml)")
    expids = list(yaml.safe_load(config.read_text()) or {})
    if expid is None:
        if len(expids) != 1:
            raise InputError(f"{len(expids)} expids {expids}", where=str(config), expected="one, or pass expid")
        expid = expids[0]
    params = load_config(str(folder), expid)
    for key in ("data_root", "model_root", "train_data", "valid_data", "test_data"):
        if isinstance(params.get(key), str) and not os.path.isabs(params[key]):
            params[key] = str(folder / params[key])
    return params


def load_exported(folder: str | os.PathLike, expid: str | None = None, device: str = "cpu"):
    """``(model, feature_map)`` of an ``exfm export`` folder, from any working directory: the
    plain VM (a fuxictr ``BaseModel``) with its weights loaded, in eval mode, on ``device``.

    It is fuxictr's own recipe (``load_config``, ``FeatureMap.load``, ``model_class(feature_map,
    **params)``, ``load_weights``) with the folder's paths resolved by :func:`exported_params`."""
    from fuxictr.features import FeatureMap

    from .config import build_model

    params = exported_params(folder, expid)
    params["gpu"] = int(device.split(":")[1]) if device.startswith("cuda") else -1
    feature_map = FeatureMap(params["dataset_id"], os.path.join(params["data_root"], params["dataset_id"]))
    feature_map.load(os.path.join(feature_map.data_dir, "feature_map.json"), params)
    if params.get("label"):
        feature_map.labels = [params["label"]]
    model = build_model(params, feature_map)
    model.load_weights(os.path.join(str(Path(folder).resolve()), f"{params['model_id']}.model"))
    model.eval()
    return model, feature_map


def run_export(args) -> int:
    """CLI body of ``exfm export``."""
    record = find_record(args.records, args.cell)
    done = export_cell(record, args.out, getattr(args, "work", None))
    print(f"exported cell {record['cell_id']} ({record['student']}, {record['method']}, teacher "
          f"{record['teacher']}, seed {record['seed']}) -> {done.checkpoint}")
    print(f"load it: exfm_plugin.load_exported({str(done.config_dir)!r}) -> (model, feature_map)")
    return 0
