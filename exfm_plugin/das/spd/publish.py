"""Writing a snapshot's files into a directory that will be renamed into the SPD.

:meth:`.store.SnapshotStore.publish` checks its arguments, then calls :func:`write_snapshot` on a
temporary directory of :func:`exfm_plugin.fsutil.atomic_dir` (which fsyncs everything and
renames it into place). Everything ``build_model`` and fuxictr's pretrained-embedding loader
need is copied in and resolved inside the snapshot directory.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import numpy as np
import torch

from .manifest import (FEATURE_MAP_DIR, FEATURE_MAP_JSON, FEATURE_VOCAB_JSON, FORMAT, FORMAT_VERSION, MANIFEST,
                       MODEL_PARAMS, PRETRAINED_DIR, SIGNATURE, WEIGHTS, file_sha256, snapshot_outputs)
from .signing import SigningKeys

__all__ = ["copy_feature_map", "jsonable", "write_json", "write_snapshot"]

_COPY_CHUNK = 1 << 20


def jsonable(value: Any, where: str) -> Any:
    """Params as YAML would give them: tuples become lists, numpy scalars Python numbers."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"model_params{where}: key {k!r} is not a string; model_params must be JSON-serialisable")
            out[k] = jsonable(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"model_params{where}={value!r} ({type(value).__name__}) is not JSON-serialisable; "
                    f"pass the plain config values build_model needs")


def write_json(path: str, obj: Any) -> None:
    """Indented JSON with a final newline (fsync'ed by the atomic directory, not here)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _copy_file(src: str, dst: str) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        shutil.copyfileobj(fi, fo, _COPY_CHUNK)


def _save_weights(model: torch.nn.Module, path: str) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with open(path, "wb") as f:
        torch.save(state, f)


def _is_multitask(model: torch.nn.Module) -> bool:
    from fuxictr.pytorch.models import MultiTaskModel

    return isinstance(model, MultiTaskModel)


def write_snapshot(out: str, model: torch.nn.Module, *, snapshot_id: str, created: datetime, params: dict,
                   fmap_dir: str, fmap_obj: dict, trained_through_day: int | None,
                   keys: SigningKeys | None) -> dict[str, Any]:
    """Write every file of a snapshot into the directory ``out``, the manifest last (and its
    signature when ``keys`` are given); returns the manifest."""
    os.makedirs(os.path.join(out, FEATURE_MAP_DIR), exist_ok=True)
    _save_weights(model, os.path.join(out, WEIGHTS))
    fmap_obj, params = copy_feature_map(fmap_dir, fmap_obj, params, out)
    write_json(os.path.join(out, FEATURE_MAP_DIR, FEATURE_MAP_JSON), fmap_obj)
    write_json(os.path.join(out, MODEL_PARAMS), params)
    files = {}
    for dirpath, _, names in os.walk(out):
        for fname in names:
            full = os.path.join(dirpath, fname)
            rel = os.path.relpath(full, out).replace(os.sep, "/")
            digest, size = file_sha256(full)
            files[rel] = {"sha256": digest, "size": size}
    labels = list(fmap_obj.get("labels", []))
    multitask = _is_multitask(model)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "snapshot_id": snapshot_id,
        "created_at": created.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "created_at_unix": created.timestamp(),
        "model": params["model"],
        "model_id": params.get("model_id", getattr(model, "model_id", params["model"])),
        "dataset_id": fmap_obj.get("dataset_id"),
        "trained_through_day": None if trained_through_day is None else int(trained_through_day),
        "labels": labels,
        "multitask": multitask,
        "outputs": list(snapshot_outputs(labels, multitask)),
        "torch_version": torch.__version__,
        "files": dict(sorted(files.items())),
    }
    write_json(os.path.join(out, MANIFEST), manifest)
    if keys is not None:  # sign what a reader will parse back
        with open(os.path.join(out, MANIFEST), encoding="utf-8") as f:
            write_json(os.path.join(out, SIGNATURE), keys.sign(json.load(f)))
    return manifest


def copy_feature_map(fmap_dir: str, fmap_obj: dict, params: dict, tmp: str) -> tuple[dict, dict]:
    """Copy the vocabulary and every pretrained file into ``tmp/feature_map/``; a file that
    lives outside ``fmap_dir`` goes to ``pretrained/`` and its references are rewritten."""
    fmap_obj = json.loads(json.dumps(fmap_obj))
    out_dir = os.path.join(tmp, FEATURE_MAP_DIR)
    vocab = os.path.join(fmap_dir, FEATURE_VOCAB_JSON)
    if os.path.isfile(vocab):
        _copy_file(vocab, os.path.join(out_dir, FEATURE_VOCAB_JSON))
    specs: list[dict] = [spec for item in fmap_obj.get("features", []) for spec in item.values()]
    specs += [s for s in params.get("feature_specs") or [] if isinstance(s, dict)]
    renamed: dict[str, str] = {}
    for spec in specs:
        ref = spec.get("pretrained_emb")
        if not ref:
            continue
        if ref not in renamed:
            src = os.path.normpath(os.path.join(fmap_dir, ref))
            if not os.path.isfile(src):
                raise FileNotFoundError(f"pretrained_emb {ref!r} of the feature map in {fmap_dir} "
                                        f"not found at {src}")
            rel = os.path.relpath(src, fmap_dir)
            if os.path.isabs(ref) or rel.startswith(os.pardir) or rel in (FEATURE_MAP_JSON, FEATURE_VOCAB_JSON):
                base = os.path.basename(src)
                rel = os.path.join(PRETRAINED_DIR, base)
                n = 1
                while rel in renamed.values():
                    rel = os.path.join(PRETRAINED_DIR, f"{n}-{base}")
                    n += 1
            renamed[ref] = rel
            dst = os.path.join(out_dir, rel)
            if not os.path.exists(dst):
                _copy_file(src, dst)
        spec["pretrained_emb"] = renamed[ref].replace(os.sep, "/")
    return fmap_obj, params
