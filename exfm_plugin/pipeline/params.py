"""A model's parameters for a step: BARS hyperparameters with the grid's overrides, narrowed to
the prepared data's features; the fuxictr feature map they build on; how it was trained."""
from __future__ import annotations

import os
from typing import Any

from fuxictr.features import FeatureMap

from ..config import load_experiment
from .grid import Cell, Grid, model_params
from .prep_steps import PreparedData, feature_specs

TRAINING_OPTIONS = {"embedding_update": "dense", "precision": "fp32", "torch_compile": False}


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


def kept_features(prep: PreparedData, drop: tuple[str, ...]) -> list[str]:
    """The prepared features minus ``drop``; a dropped feature that a kept one shares its
    embedding with, or one the data does not have, is refused."""
    features = feature_specs(prep)
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


def bars_params(grid: Grid, prep: PreparedData, model: str, seed: int, drop_features: tuple[str, ...] = ()) -> dict:
    """BARS hyperparameters of ``model`` for the grid's dataset, with the grid's overrides,
    the model config's feature_specs narrowed to the features this data has, the prepared
    data's group id (for gAUC) and, for a VM that lacks some of the FM's features, the
    features it keeps (fuxictr's ``use_features``)."""
    base = load_experiment(f"{model}_{grid.bars_dataset_id}", model_dir=grid.base_config)
    params = model_params(grid, model, base)
    for key in ("data_root", "data_format", "train_data", "valid_data", "test_data", "feature_cols", "label_col",
                "min_categr_count", "model_root", "dataset_id"):
        params.pop(key, None)
    names = set(feature_specs(prep)) - set(drop_features)
    specs = []
    for spec in params.get("feature_specs") or []:
        wanted = spec["name"] if isinstance(spec["name"], list) else [spec["name"]]
        present = [n for n in wanted if n in names]
        if present:
            specs.append({**spec, "name": present})
    params.update(seed=seed, verbose=0, feature_specs=specs or None,
                  group_id="group_id" if "group_id" in names else None)
    if drop_features:
        params["use_features"] = kept_features(prep, drop_features)
    return params


def student_params(grid: Grid, prep: PreparedData, cell: Cell) -> dict[str, Any]:
    """The VM's BARS hyperparameters with the grid's overrides and the cell's crossed ones."""
    params = bars_params(grid, prep, cell.student, cell.seed, drop_features=cell.feature_gap)
    return model_params(grid, cell.student, params, dict(cell.hparams)) if cell.hparams else params


def training_options(params: dict) -> dict:
    """How a model was trained (sparse embedding updates, bf16 autocast, torch.compile):
    recorded with every result, defaults filled in."""
    return {k: params.get(k, default) for k, default in TRAINING_OPTIONS.items()}


def jsonable_params(params: dict) -> dict:
    """What a step's key and a snapshot's ``model_params.json`` hold: everything but the device."""
    return {k: v for k, v in params.items() if k != "gpu"}
