"""Experiment configs in FuxiCTR's YAML format.

The shipped config folder (``exfm_plugin/yaml_configs/models``) has FuxiCTR's own layout,
``model_config/*.yaml`` (``Base`` + one block per expid) beside ``dataset_config.yaml``, so
``fuxictr.utils.load_config(config_dir, expid)`` reads it. ``load_experiment`` calls fuxictr's
two loaders and merges them the way fuxictr does (dataset keys override model keys), with an
optional separate dataset folder.
"""
from __future__ import annotations

import copy
import functools
import glob
import os

from fuxictr.utils import load_dataset_config, load_model_config

from .models import MODEL_REGISTRY
from .resources import config_dir

# the shipped folders under their historical names (``yaml_configs/...``, a source checkout's layout)
_SHIPPED = {"yaml_configs/models": config_dir, "yaml_configs/datasets": config_dir}


def _config_dir(path: str | os.PathLike | None) -> str:
    """``None`` (or the historical default names) is the shipped config folder; any other
    path is used as given and must exist."""
    if path is None:
        return str(config_dir())
    path = os.fspath(path)
    if os.path.isdir(path):
        return path
    shipped = _SHIPPED.get(path.rstrip("/"))
    if shipped is not None:
        return str(shipped())
    raise FileNotFoundError(f"config dir {path!r} not found (relative to {os.getcwd()}); expected a folder "
                            f"with model_config/*.yaml or model_config.yaml")


def _yaml_stamp(*dirs: str) -> tuple:
    """(path, mtime, size) of every YAML file the loaders may read: a changed file changes it."""
    files = sorted({f for d in dirs for pattern in ("*.yaml", "*/*.yaml") for f in glob.glob(os.path.join(d, pattern))})
    return tuple((f, st.st_mtime_ns, st.st_size) for f in files for st in [os.stat(f)])


@functools.lru_cache(maxsize=512)
def _load_experiment(expid: str, model_dir: str, dataset_dir: str | None, stamp: tuple) -> dict:
    params = load_model_config(model_dir, expid)
    params.update(load_dataset_config(dataset_dir or model_dir, params["dataset_id"]))
    return params


def load_experiment(expid: str, model_dir: str | os.PathLike | None = None,
                    dataset_dir: str | os.PathLike | None = None) -> dict:
    """Params of one expid: ``Base`` + the expid block, then its dataset's block on top.
    Both folders default to the shipped config folder; ``dataset_dir`` defaults to ``model_dir``.
    Cached while the YAML files are unchanged (fuxictr parses every model config file per call,
    ~0.05 s, and a grid step asks several times); the caller gets its own copy."""
    model_dir = _config_dir(model_dir)
    data_dir = _config_dir(dataset_dir) if dataset_dir is not None else None
    stamp = _yaml_stamp(model_dir, *([data_dir] if data_dir else []))
    return copy.deepcopy(_load_experiment(expid, model_dir, data_dir, stamp))


def build_model(params: dict, feature_map):
    """Instantiate ``params["model"]`` (a MODEL_REGISTRY name, or ``ExFMStudent``) with the full
    params, as fuxictr's ``run_expid.py`` does (``model_class(feature_map, **params)``)."""
    name = params.get("model")
    if name == "ExFMStudent":  # a VM with the paper's heads, named by a config (vm_model + distill)
        from .distill import ExFMStudent

        return ExFMStudent(feature_map, **params)
    if name not in MODEL_REGISTRY:
        raise ValueError(f"model={name!r} is not a known model; expected one of {sorted(MODEL_REGISTRY)}")
    return MODEL_REGISTRY[name](feature_map, **params)
