"""Which hyperparameter keys a model accepts, so a typo in a grid is refused, never ignored.

fuxictr models take ``**kwargs`` and silently drop what they do not know (``dnn_hiden_units``
would train the default network), so the keys are checked here: a model accepts the
arguments of its own constructor, of fuxictr's ``BaseModel`` and exfm's training options, the
keys of fuxictr's ``Base`` block, and the keys its shipped BARS expids set (run settings such
as ``optimizer``, ``batch_size``, ``epochs``, read by fuxictr's ``run_expid.py``).
"""
from __future__ import annotations

import difflib
import functools
import inspect
from typing import Any, Iterable

import yaml

from ..models import MODEL_REGISTRY
from ..models.training import TRAINING_OPTIONS
from ..resources import config_dir

# read by fuxictr's run_expid.py / BaseModel.fit rather than by a constructor
RUN_KEYS = frozenset({"model", "dataset_id", "loss", "metrics", "task", "optimizer", "learning_rate",
                      "regularizer", "batch_size", "epochs", "shuffle", "seed", "monitor", "monitor_mode",
                      "group_id", "verbose", "num_workers", "model_root", "max_gradient_norm"})


def _signature_keys(cls: type) -> set[str]:
    keys: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        keys |= {name for name, p in inspect.signature(init).parameters.items()
                 if name not in ("self", "feature_map") and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return keys


@functools.lru_cache(maxsize=None)
def _shipped_blocks() -> dict[str, dict[str, Any]]:
    """Every block of the shipped model configs, by name (``Base`` and the expids)."""
    blocks: dict[str, dict[str, Any]] = {}
    for path in sorted((config_dir() / "model_config").glob("*.yaml")):
        with path.open(encoding="utf-8") as fh:
            blocks.update(yaml.safe_load(fh) or {})
    return blocks


@functools.lru_cache(maxsize=None)
def known_keys(model: str) -> frozenset[str]:
    """Every hyperparameter key ``model`` (a MODEL_REGISTRY name) accepts."""
    keys = _signature_keys(MODEL_REGISTRY[model]) | set(TRAINING_OPTIONS) | set(RUN_KEYS)
    for name, block in _shipped_blocks().items():
        if name == "Base" or (isinstance(block, dict) and block.get("model") == model):
            keys |= set(block)
    return frozenset(keys)


def shipped_value(model: str, key: str) -> Any:
    """The value a shipped expid of ``model`` (or ``Base``) gives ``key``; None if none does."""
    for name, block in _shipped_blocks().items():
        if isinstance(block, dict) and (block.get("model") == model or name == "Base") and block.get(key) is not None:
            return block[key]
    return None


def unknown_keys(models: Iterable[str], keys: Iterable[str]) -> dict[str, list[str]]:
    """``{key: close matches}`` for every key none of ``models`` accepts."""
    accepted = frozenset().union(*(known_keys(m) for m in models))
    return {k: difflib.get_close_matches(k, sorted(accepted), n=3, cutoff=0.7)
            for k in keys if k not in accepted}


def describe_unknown(unknown: dict[str, list[str]]) -> str:
    """``'dnn_hiden_units' (did you mean 'dnn_hidden_units'?)``, one per key."""
    return ", ".join(f"{k!r}" + (f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else "")
                     for k, close in unknown.items())
