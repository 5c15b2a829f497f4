"""Experiment configs in FuxiCTR's YAML format, kept in two directories.

fuxictr's own ``load_config(config_dir, expid)`` expects the model and the dataset configs in
one directory; this project keeps ``yaml_configs/models`` (``model_config/*.yaml``: ``Base`` +
one block per expid) apart from ``yaml_configs/datasets`` (``dataset_config.yaml``), so this
module calls fuxictr's two loaders separately and merges them the way fuxictr does (dataset
keys override model keys).
"""
from __future__ import annotations

import os
from pathlib import Path

from fuxictr.utils import load_dataset_config, load_model_config

from .models import MODEL_REGISTRY

REPO_ROOT = Path(__file__).resolve().parent.parent


def _config_dir(path: str) -> str:
    """A relative config dir is looked up in the working directory, then in the repository
    root, so the defaults work from any working directory of a source checkout."""
    if os.path.isabs(path) or os.path.isdir(path):
        return path
    candidate = REPO_ROOT / path
    if candidate.is_dir():
        return str(candidate)
    raise FileNotFoundError(f"config dir {path!r} not found in {os.getcwd()} nor in {REPO_ROOT}")


def load_experiment(expid: str, model_dir: str = "yaml_configs/models",
                    dataset_dir: str = "yaml_configs/datasets") -> dict:
    """Params of one expid: ``Base`` + the expid block, then its dataset's block on top."""
    params = load_model_config(_config_dir(model_dir), expid)
    params.update(load_dataset_config(_config_dir(dataset_dir), params["dataset_id"]))
    return params


def build_model(params: dict, feature_map):
    """Instantiate ``params["model"]`` from MODEL_REGISTRY with the full params, as fuxictr's
    ``run_expid.py`` does (``model_class(feature_map, **params)``)."""
    name = params.get("model")
    if name not in MODEL_REGISTRY:
        raise ValueError(f"model={name!r} is not a known model; expected one of {sorted(MODEL_REGISTRY)}")
    return MODEL_REGISTRY[name](feature_map, **params)
