"""Does a VM's data fit an FM snapshot? The check DAS runs before any prediction.

The FM was trained on the union of the VMs' features, so a VM file may hold more features than
the FM reads, never fewer, and every feature the FM reads must be encoded as it was at training
(type, vocabulary size, sequence length, pretrained width, the token -> id vocabulary itself).
A mismatch would not crash: it would make the FM predict on garbage ids, so it is refused with
:class:`FeatureMapMismatch` naming every offending feature.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from fuxictr.features import FeatureMap

from ...data.dayfile import read_day_attrs
from .manifest import FEATURE_MAP_JSON, FEATURE_VOCAB_JSON, SPDError

__all__ = ["FeatureMapMismatch", "check_compatible"]


class FeatureMapMismatch(SPDError, ValueError):
    """The VM's data does not hold the features the FM snapshot was trained on.

    ``mismatches`` maps each offending feature to what is wrong with it.
    """

    def __init__(self, snapshot_id: str, mismatches: Mapping[str, str]) -> None:
        self.snapshot_id = snapshot_id
        self.mismatches = dict(mismatches)
        lines = "; ".join(f"{name}: {why}" for name, why in self.mismatches.items())
        super().__init__(f"snapshot {snapshot_id} does not match the VM data in "
                         f"{len(self.mismatches)} feature(s): {lines}")


def check_compatible(snapshot_id: str, feature_map: FeatureMap, day_attrs_or_feature_map: Any) -> None:
    """Raise :class:`FeatureMapMismatch` naming every feature of the FM's ``feature_map`` that the
    VM's data lacks or encodes differently (type, vocab size, max_len, pretrain dim, vocabulary).

    Accepts a fuxictr ``FeatureMap``, a feature-map JSON dict, day-file attributes
    (``read_day_attrs``: only presence, type and width can be checked there), or a path to
    a ``feature_map.json``, a directory holding one, or an HDF5 day file. Features the VM
    has and the FM does not are fine (the FM was trained on the union of features).
    """
    other = day_attrs_or_feature_map
    vocab_other: Mapping[str, Any] | None = None
    if isinstance(other, (str, os.PathLike)):
        path = os.fspath(other)
        if os.path.isdir(path):
            path = os.path.join(path, FEATURE_MAP_JSON)
        if path.endswith((".h5", ".hdf5")):
            other = read_day_attrs(path)
        else:
            with open(path, encoding="utf-8") as f:
                other = json.load(f)
            vocab_path = os.path.join(os.path.dirname(path), FEATURE_VOCAB_JSON)
            vocab_other = _read_json_or_none(vocab_path)
    elif isinstance(other, FeatureMap):
        vocab_other = _read_json_or_none(os.path.join(other.data_dir or "", FEATURE_VOCAB_JSON))

    ours = {k: v for k, v in feature_map.features.items() if v.get("type") != "meta"}
    if isinstance(other, FeatureMap):
        problems = _compare_specs(ours, dict(other.features))
    elif isinstance(other, Mapping) and "features" in other:
        feats = other["features"]
        specs = ({k: v for item in feats for k, v in item.items()} if isinstance(feats, list) else dict(feats))
        problems = _compare_specs(ours, specs)
    elif isinstance(other, Mapping) and "columns" in other:
        columns = other["columns"]
        if isinstance(columns, str):
            columns = json.loads(columns)
        problems = _compare_columns(ours, {c["name"]: c for c in columns})
    else:
        raise TypeError(f"check_compatible: expected a FeatureMap, a feature-map dict, day-file attrs "
                        f"or a path, got {type(other).__name__}")
    if vocab_other is not None:
        ours_vocab = _read_json_or_none(os.path.join(feature_map.data_dir, FEATURE_VOCAB_JSON)) or {}
        for name in ours:
            if name in problems or name not in ours_vocab or name not in vocab_other:
                continue
            if ours_vocab[name] != vocab_other[name]:
                problems[name] = "vocabulary differs (same features, different token -> id encoding)"
    if problems:
        raise FeatureMapMismatch(snapshot_id, problems)


def _read_json_or_none(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _compare_specs(ours: Mapping[str, dict], theirs: Mapping[str, dict]) -> dict[str, str]:
    problems: dict[str, str] = {}
    for name, spec in ours.items():
        other = theirs.get(name)
        if other is None:
            problems[name] = f"missing in the VM data (FM type {spec.get('type')})"
            continue
        why = []
        if other.get("type") != spec.get("type"):
            why.append(f"type {other.get('type')!r}, FM expects {spec.get('type')!r}")
        else:
            for key in ("vocab_size", "max_len", "pretrain_dim"):
                if key in spec and other.get(key) != spec[key]:
                    why.append(f"{key} {other.get(key)!r}, FM expects {spec[key]!r}")
        if why:
            problems[name] = "; ".join(why)
    return problems


def _compare_columns(ours: Mapping[str, dict], columns: Mapping[str, dict]) -> dict[str, str]:
    """Day-file columns hold dtype and shape only: check presence, kind and width."""
    problems: dict[str, str] = {}
    for name, spec in ours.items():
        col = columns.get(name)
        ftype = spec.get("type")
        if col is None:
            problems[name] = f"missing in the VM data (FM type {ftype})"
            continue
        shape = list(col.get("shape", []))
        dtype = np.dtype(col.get("dtype", "float32"))
        is_int = np.issubdtype(dtype, np.integer)
        if ftype == "categorical":
            if len(shape) != 1 or not is_int:
                problems[name] = f"column {dtype} {shape}, FM expects 1-D integer ids (categorical)"
        elif ftype == "numeric":
            if len(shape) != 1:
                problems[name] = f"column shape {shape}, FM expects 1-D values (numeric)"
        elif ftype == "sequence":
            if len(shape) != 2 or not is_int:
                problems[name] = f"column {dtype} {shape}, FM expects 2-D integer ids (sequence)"
            elif spec.get("max_len") is not None and shape[1] != spec["max_len"]:
                problems[name] = f"max_len {shape[1]}, FM expects {spec['max_len']}"
        elif ftype == "embedding":
            dim = spec.get("pretrain_dim")
            if len(shape) != 2 or (dim is not None and shape[1] != dim):
                problems[name] = f"column shape {shape}, FM expects (rows, {dim}) (embedding)"
    return problems
