"""``exfm export``: a grid cell's trained student as a plain FuxiCTR model folder.

Every VM link of a run keeps the exported serving model (``serving_model.pt``: the bare VM of
:func:`exfm_plugin.distill.export_serving_model`, no heads, no adapter). Exporting a cell writes
what a FuxiCTR user loads with their own tools::

    OUT/model_config.yaml     one expid block: model, dataset_id and every hyperparameter
    OUT/dataset_config.yaml   the prepared day files (data_format: h5, data_root)
    OUT/<expid>.model         the state dict (fuxictr's BaseModel.save_weights format)

so ``fuxictr.utils.load_config(OUT, expid)`` + ``FeatureMap.load`` + ``model.load_weights``
rebuild the served model.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import InputError

SERVING = "serving_model.pt"  # the file vm_stages writes into every VM link


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


def _prepared_data_dir(link_dir: Path, prep_key: str) -> Path:
    """The prepared day files of the run that trained ``link_dir`` (``<artifacts>/prep/<key>``)."""
    prep_dir = link_dir.parent.parent / "prep" / prep_key
    with open(prep_dir / "meta.json") as f:
        return prep_dir / json.load(f)["data_dir"]


def export_cell(record: dict[str, Any], out: str | os.PathLike) -> Exported:
    """Write ``record``'s serving model and its configs into ``out`` (created)."""
    link = Path(record["vm_artifact"])
    checkpoint, meta_path = link / SERVING, link / "meta.json"
    if not checkpoint.is_file() or not meta_path.is_file():
        raise InputError(f"the student artifact of cell {record['cell_id']} is gone", where=str(link),
                         expected=f"{SERVING} and meta.json (rerun the grid with the same --work folder)")
    spec = json.loads(meta_path.read_text())["spec"]
    data_dir = _prepared_data_dir(link, spec["prep"])
    with open(data_dir / "feature_map.json") as f:
        dataset_id = json.load(f)["dataset_id"]
    expid = f"{spec['student']}_{record['method']}_{record['cell_id']}"
    params = {k: v for k, v in spec["params"].items() if k not in ("model_root", "gpu")}
    params.update(model=spec["student"], dataset_id=dataset_id)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model_config.yaml").write_text(yaml.safe_dump({expid: params}, sort_keys=False))
    days = {f"day_{d}": str(data_dir / f"day_{d}.h5") for d in range(1, 9)}
    dataset = {dataset_id: {"data_root": str(data_dir.parent), "data_format": "h5",
                            "train_data": days[f"day_{record['train_day']}"],
                            "valid_data": days[f"day_{record['test_day']}"],
                            "test_data": days[f"day_{record['test_day']}"],
                            "label": spec.get("label")}}
    (out / "dataset_config.yaml").write_text(yaml.safe_dump(dataset, sort_keys=False))
    target = out / f"{expid}.model"
    shutil.copyfile(checkpoint, target)
    return Exported(expid, out, target)


def run_export(args) -> int:
    """CLI body of ``exfm export``."""
    record = find_record(args.records, args.cell)
    done = export_cell(record, args.out)
    print(f"exported cell {record['cell_id']} ({record['student']}, {record['method']}, teacher "
          f"{record['teacher']}, seed {record['seed']}) -> {done.checkpoint}")
    print(f"load it with fuxictr: load_config({str(done.config_dir)!r}, {done.expid!r})")
    return 0
