"""The steps of the streaming protocol, each a content-addressed artifact.

prep (8 day files) -> FM (one snapshot per day it has trained through, published to the SPD)
-> DAS (the FM-augmented split of a day, for every VM of that day) -> VM (train on day t with a
method, evaluate the serving model on day t+1). Every step's key hashes its configuration and
its inputs' keys, so a step shared by many cells runs once.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fuxictr.features import FeatureMap
from tqdm import tqdm

from ..config import build_model, load_experiment
from ..contracts import DAYS, day_file_name, fm_pred_column, truth_column
from ..data import H5DataLoader, read_day_attrs, read_day_columns, write_day_file
from ..data.dayfile import column_names, extra_attrs
from ..metrics import binary_entropy, evaluate_metrics, logloss
from .artifacts import ArtifactStore, step_key
from .grid import Grid, model_params
from .logging_run import run_log
from .records import calibration_bins

logger = logging.getLogger(__name__)

EVAL_METRICS = ["AUC", "logloss", "NE", "calibration"]
EVAL_BATCH = 8192


@dataclass
class Context:
    """What every step needs: the grid, where artifacts live, and the device."""

    grid: Grid
    store: ArtifactStore
    device: str = "cpu"
    engine: str = "inproc"
    progress: bool = True
    _memo: dict = field(default_factory=dict)

    @property
    def gpu(self) -> int:
        return int(self.device.split(":")[1]) if self.device.startswith("cuda") else -1

    def memo(self, key: tuple, fn):
        """Run ``fn`` once per key in this process; a failure is remembered and re-raised, so a
        broken shared step (an FM) fails its cells at once instead of retrying for each."""
        if key not in self._memo:
            try:
                self._memo[key] = ("ok", fn())
            except Exception as exc:  # noqa: BLE001 - stored and re-raised for every dependent cell
                self._memo[key] = ("error", exc)
        status, value = self._memo[key]
        if status == "error":
            raise value
        return value


# ------------------------------------------------------------------------------------ data
@dataclass(frozen=True)
class PreparedData:
    key: str
    data_dir: str
    dataset_id: str
    split_note: str | None

    def day_file(self, day: int) -> str:
        return os.path.join(self.data_dir, day_file_name(day))


def prep_stage(ctx: Context) -> PreparedData:
    grid = ctx.grid
    source = grid.effective_source
    spec = {"dataset": grid.dataset, "source": source, "data_seed": grid.data_seed}
    if source == "synthetic":
        spec.update(size=grid.size, world=grid.world.model_dump(), truth=1)
    else:
        spec["data_root"] = os.path.abspath(grid.data_root)

    def build(tmp: Path) -> dict:
        from data_prep.prepare import prepare

        summary = prepare(grid.dataset, source, grid.data_root if source != "synthetic" else None, str(tmp),
                          seed=grid.data_seed, size=grid.size if source == "synthetic" else "tiny",
                          drift=grid.world.drift, domain_shift=grid.world.domain_shift)
        return {"data_dir": os.path.relpath(summary.data_dir, tmp), "dataset_id": summary.dataset_id}

    def run() -> PreparedData:
        key, path, meta = ctx.store.build("prep", spec, build)
        data_dir = str(path / meta["data_dir"])
        note = read_day_attrs(os.path.join(data_dir, day_file_name(DAYS[0]))).get("split_note")
        return PreparedData(key, data_dir, meta["dataset_id"], note or None)

    return ctx.memo(("prep",), run)


def domain_day_file(ctx: Context, prep: PreparedData, day: int, domain: str) -> str:
    """The rows of one TaobaoAd domain on one day, as a day file of their own (a VM's data)."""
    def build(tmp: Path) -> dict:
        for d in DAYS:
            attrs = read_day_attrs(prep.day_file(d))
            cols = read_day_columns(prep.day_file(d))
            for dom in np.unique(cols["domain"]):
                keep = cols["domain"] == dom
                extra = {**extra_attrs(attrs), "domain": str(int(dom))}
                write_day_file(tmp / f"day_{d}.domain_{int(dom)}.h5", {k: v[keep] for k, v in cols.items()},
                               dataset_id=attrs["dataset_id"], day=d, time_range=attrs.get("time_range"), attrs=extra)
        return {}

    def run() -> Path:
        return ctx.store.build("domains", {"prep": prep.key}, build)[1]

    path = ctx.memo(("domains", prep.key), run) / f"day_{day}.domain_{domain}.h5"
    if not path.exists():
        raise FileNotFoundError(f"{path}: domain {domain!r} has no rows on day {day}")
    return str(path)


def load_feature_map(prep: PreparedData, params: dict, labels: list[str] | None = None) -> FeatureMap:
    """The prepared feature map with the params' feature_specs, group id and ``use_features``
    (fuxictr's key: a VM's features when it lacks some of the FM's) and, for a task VM, only
    its own label."""
    fmap = FeatureMap(prep.dataset_id, prep.data_dir)
    fmap.load(os.path.join(prep.data_dir, "feature_map.json"), params)
    fmap.num_fields = fmap.get_num_fields()  # fuxictr counts fields before applying use_features
    if labels is not None:
        fmap.labels = list(labels)
    return fmap


@functools.lru_cache(maxsize=None)
def _feature_map_json(data_dir: str) -> dict:
    """The prepared feature_map.json, read once per run (every cell asks for it)."""
    with open(os.path.join(data_dir, "feature_map.json")) as f:
        return json.load(f)


def _feature_specs(prep: PreparedData) -> dict[str, dict]:
    """Feature name -> spec of the prepared feature map, in its order."""
    return {k: v for feat in _feature_map_json(prep.data_dir)["features"] for k, v in feat.items()}


def _feature_names(prep: PreparedData) -> set[str]:
    return set(_feature_specs(prep))


# ------------------------------------------------------------------------------------ models
def _kept_features(prep: PreparedData, drop: tuple[str, ...]) -> list[str]:
    """The prepared features minus ``drop``; a dropped feature that a kept one shares its
    embedding with, or one the data does not have, is refused."""
    features = _feature_specs(prep)
    unknown = sorted(set(drop) - set(features))
    if unknown:
        raise ValueError(f"vm_drop_features names {unknown}, which the prepared data does not have "
                         f"(features: {sorted(features)})")
    kept = [k for k in features if k not in drop]
    for name in kept:
        target = features[name].get("share_embedding")
        if target in drop:
            raise ValueError(f"vm_drop_features drops {target!r}, whose embedding {name!r} shares; "
                             f"drop both or neither")
    return kept


def bars_params(ctx: Context, prep: PreparedData, model: str, seed: int, drop_features: tuple[str, ...] = ()) -> dict:
    """BARS hyperparameters of ``model`` for the grid's dataset, with the grid's overrides,
    the model config's feature_specs narrowed to the features this data has, the prepared
    data's group id (for gAUC) and, for a VM that lacks some of the FM's features, the
    features it keeps (fuxictr's ``use_features``)."""
    base = load_experiment(f"{model}_{ctx.grid.bars_dataset_id}", model_dir=ctx.grid.base_config)
    params = model_params(ctx.grid, model, base)
    for key in ("data_root", "data_format", "train_data", "valid_data", "test_data", "feature_cols", "label_col",
                "min_categr_count", "model_root", "dataset_id"):
        params.pop(key, None)
    names = _feature_names(prep) - set(drop_features)
    specs = []
    for spec in params.get("feature_specs") or []:
        wanted = spec["name"] if isinstance(spec["name"], list) else [spec["name"]]
        present = [n for n in wanted if n in names]
        if present:
            specs.append({**spec, "name": present})
    params.update(seed=seed, verbose=0, feature_specs=specs or None,
                  group_id="group_id" if "group_id" in names else None)
    if drop_features:
        params["use_features"] = _kept_features(prep, drop_features)
    return params


TRAINING_OPTIONS = {"embedding_update": "dense", "precision": "fp32", "torch_compile": False}


def training_options(params: dict) -> dict:
    """How a model was trained (sparse embedding updates, bf16 autocast, torch.compile):
    recorded with every result, defaults filled in."""
    return {k: params.get(k, default) for k, default in TRAINING_OPTIONS.items()}


def jsonable_params(params: dict) -> dict:
    """What a step's key and a snapshot's ``model_params.json`` hold: everything but the device."""
    return {k: v for k, v in params.items() if k != "gpu"}


def train_one_pass(model, loader, desc: str, progress: bool) -> tuple[int, float]:
    """One pass over ``loader`` with ``model.train_step``; returns (rows, seconds)."""
    model.train()
    model._max_gradient_norm = 10.0
    rows, start = 0, time.perf_counter()
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        model.train_step(batch)
        rows += len(next(iter(batch.values())))
    return rows, time.perf_counter() - start


@dataclass(frozen=True)
class FMSnapshot:
    key: str
    spd_root: str
    snapshot_id: str
    teacher: str
    through_day: int
    dir: str


def fm_stage(ctx: Context, prep: PreparedData, teacher: str, seed: int, through_day: int) -> FMSnapshot:
    """The FM trained through ``through_day``, published to its lineage's SPD.

    ``stream`` (default, the paper's one pass in arrival order): the FM of day d is the FM of
    day d-1 plus one pass over day d (weights and optimizer state carried on); ``epochs``:
    a fresh FM trained for ``fm_epochs`` passes over days 1..d.
    """
    from ..das.spd import SnapshotExists, SnapshotNotFound, SnapshotStore

    grid = ctx.grid
    params = bars_params(ctx, prep, teacher, seed)
    lineage = {"prep": prep.key, "teacher": teacher, "params": jsonable_params(params), "seed": seed,
               "fm_training": grid.fm_training, "fm_epochs": grid.fm_epochs}
    parent = (fm_stage(ctx, prep, teacher, seed, through_day - 1)
              if grid.fm_training == "stream" and through_day > 1 else None)
    spec = {**lineage, "through_day": through_day, "parent": parent.key if parent else None}
    spd_root = str(ctx.store.root / "spd" / step_key("lineage", lineage))

    def build(tmp: Path) -> dict:
        fmap = load_feature_map(prep, params)
        torch.manual_seed(seed)
        params_run = dict(params, model_root=str(tmp / "checkpoints"), gpu=ctx.gpu)
        model = build_model(params_run, fmap)
        if parent is not None:
            model.load_state_dict(torch.load(Path(parent.dir) / "weights.pt", map_location=model.device))
            model.optimizer.load_state_dict(torch.load(Path(parent.dir) / "optimizer.pt", map_location=model.device))
            days, passes = [through_day], 1
        else:
            days = [through_day] if grid.fm_training == "stream" else list(range(1, through_day + 1))
            passes = 1 if grid.fm_training == "stream" else grid.fm_epochs
        rows = secs = 0.0
        for p in range(passes):
            loader = H5DataLoader(fmap, [prep.day_file(d) for d in days], batch_size=params["batch_size"],
                                  shuffle=True, seed=seed * 1000 + through_day * 10 + p)
            r, s = train_one_pass(model, loader, f"FM {teacher} day {days[-1]}", ctx.progress)
            rows, secs = rows + r, secs + s
            run_log.info("[Train] FM %s seed %d day %s pass %d/%d: %d rows, %.1f s", teacher, seed,
                         ",".join(map(str, days)), p + 1, passes, r, s)
        torch.save(model.state_dict(), tmp / "weights.pt")
        torch.save(model.optimizer.state_dict(), tmp / "optimizer.pt")
        snapshot_id = f"{teacher}-d{through_day}-{step_key('fm', spec)}"
        spd = SnapshotStore(spd_root)
        try:
            spd.get(snapshot_id)  # published by an earlier, interrupted run of this very step
        except SnapshotNotFound:
            try:
                spd.publish(model, model_params=jsonable_params(params), feature_map_dir=prep.data_dir,
                            trained_through_day=through_day, snapshot_id=snapshot_id)
            except SnapshotExists:  # another process building this very step published first
                spd.get(snapshot_id)
        return {"snapshot_id": snapshot_id, "spd_root": spd_root, "train_rows": rows, "train_seconds": secs}

    def run() -> FMSnapshot:
        key, path, meta = ctx.store.build("fm", spec, build)
        return FMSnapshot(key, meta["spd_root"], meta["snapshot_id"], teacher, through_day, str(path))

    return ctx.memo(("fm", teacher, seed, through_day), run)


# ------------------------------------------------------------------------------------ DAS
def das_stage(ctx: Context, fm: FMSnapshot, day: int, vms: dict[str, tuple[str, tuple[str, ...] | None]]) -> dict[str, str]:
    """The FM-augmented split of ``day`` for every VM (name -> (day file, tasks)), through
    the Data Augmentation Service with the FM's snapshot pinned: stage 1 predicts the union of
    the VMs' rows once, stage 2 writes each VM's split."""
    from ..das.augment import AugmentJob, VMSpec, run_worker
    from ..das.metastore import open_metastore
    from ..das.spd import SnapshotStore

    spec = {"fm": fm.key, "day": day, "vms": {n: [os.path.abspath(p), list(t) if t else None]
                                              for n, (p, t) in sorted(vms.items())}}

    def build(tmp: Path) -> dict:
        job = AugmentJob(tuple(VMSpec(n, p, t) for n, (p, t) in sorted(vms.items())), fm.snapshot_id,
                         str(tmp / "out"), day)
        engine = None
        if ctx.engine == "ray":
            from ..das.augment import RayEngine

            engine = lambda loaded: RayEngine(fm.spd_root, fm.snapshot_id, num_workers=2)  # noqa: E731
        with open_metastore(f"sqlite:///{tmp / 'das.db'}") as store:
            report = run_worker(job, store, owner=f"pipeline-{os.getpid()}", snapshots=SnapshotStore(fm.spd_root),
                                engine=engine, progress=False)
        return {"splits": {n: os.path.relpath(p, tmp) for n, p in report.outputs.items()}}

    def run() -> dict[str, str]:
        key, path, meta = ctx.store.build("das", spec, build)
        return {n: str(path / p) for n, p in meta["splits"].items()}

    return ctx.memo(("das", fm.key, day, tuple(sorted(vms))), run)


# ------------------------------------------------------------------------------------ evaluation
def evaluate_predictions(y: np.ndarray, pred: np.ndarray, group: np.ndarray | None,
                         base_rate: float) -> dict[str, Any]:
    """Metrics of one prediction vector; NE is normalised by ``base_rate``, the common
    normaliser of every row compared on the same test day."""
    metrics = EVAL_METRICS + (["gAUC"] if group is not None else [])
    values = evaluate_metrics(y, pred, metrics, group_id=group, train_label_mean=base_rate)
    return {"metrics": {k: float(v) for k, v in values.items()}, "calibration_bins": calibration_bins(y, pred)}


def constant_metrics(y: np.ndarray, base_rate: float) -> dict[str, float]:
    """The constant predictor at the common normaliser's rate, scored on the same rows."""
    value = logloss(y, np.full(len(y), base_rate))
    return {"logloss": value, "NE": value / binary_entropy(base_rate)}


def oracle_metrics(path: str, label: str, base_rate: float) -> dict[str, Any] | None:
    """The world's true probability scored like a model on the same rows (the ceiling of a
    synthetic test day); None where the day file has no truth column (real data)."""
    column = truth_column(label)
    if column not in column_names(read_day_attrs(path)):
        return None
    y, group = labels_and_groups(path, label)
    truth = read_day_columns(path, [column])[column].astype(np.float64)
    return evaluate_predictions(y, truth, group, base_rate)["metrics"]


def labels_and_groups(path: str, label: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A test day's labels, and its group ids (for gAUC) where the day file has them."""
    names = [label] + (["group_id"] if "group_id" in column_names(read_day_attrs(path)) else [])
    cols = read_day_columns(path, names)
    return cols[label].astype(np.float64), cols.get("group_id")


def fm_eval_stage(ctx: Context, fm: FMSnapshot, test_file: str, label: str, base_rate: float) -> dict:
    """The FM's own metrics on a test day (for "does the FM beat the VMs"), NE on the VMs'
    common normaliser ``base_rate``."""
    from ..das.spd import SnapshotStore

    spec = {"fm": fm.key, "test_file": os.path.abspath(test_file), "label": label, "base_rate": base_rate}

    def build(tmp: Path) -> dict:
        loaded = SnapshotStore(fm.spd_root).load(fm.snapshot_id, device=ctx.device)
        loader = H5DataLoader(loaded.feature_map, test_file, split="test", batch_size=EVAL_BATCH,
                              allow_missing_labels=True)
        column = fm_pred_column(label, loaded.info.multitask)
        start = time.perf_counter()
        pred = np.concatenate([loaded.predict_batch(b)[column] for b in loader])
        secs = time.perf_counter() - start
        y, group = labels_and_groups(test_file, label)
        return {**evaluate_predictions(y, pred, group, base_rate), "constant": constant_metrics(y, base_rate),
                "ne_base_rate": base_rate, "eval_samples_per_s": len(y) / max(secs, 1e-9)}

    return ctx.memo(("fm_eval",) + tuple(spec.values()), lambda: ctx.store.build("fm_eval", spec, build)[2])


def day_label_mean(path: str, label: str) -> float:
    return float(read_day_columns(path, [label])[label].astype(np.float64).mean())


def all_labels(prep: PreparedData) -> list[str]:
    return list(_feature_map_json(prep.data_dir)["labels"])
