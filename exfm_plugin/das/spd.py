"""The Snapshot Publishing Database (SPD): a directory of immutable FM snapshots.

The FM trainer publishes a snapshot after each round; the DAS updater and loaders only read.
One snapshot is one directory ``root/<snapshot_id>/``::

    weights.pt                      torch.save(model.state_dict()) (tensors moved to CPU)
    model_params.json               what exfm_plugin.config.build_model needs (JSON)
    feature_map/feature_map.json    the feature map the FM was trained with
    feature_map/feature_vocab.json  fuxictr's vocabulary (when the dataset has one)
    feature_map/<pretrained files>  every ``pretrained_emb`` file the feature map references
    manifest.json                   written last: ids, model, labels, sha256 + size of every file
    signature.json                  with a key: HMAC-SHA256 of the whole manifest (see .signing)

Why this shape: a snapshot is read by tasks that did not train it, possibly on other machines
and after the training data is gone, so it carries everything ``build_model`` and fuxictr's
pretrained-embedding loader need, resolved inside the snapshot directory.

Atomicity: a publish writes into ``root/.tmp-<id>-<pid>-<rand>/`` (every file fsync'ed), then
renames it to ``root/<id>/`` in one ``os.rename``: a reader sees a whole snapshot or nothing.
Names starting with ``.`` are never snapshots (temporary or deleted directories), and a
directory without ``manifest.json`` is never listed. An existing id is never overwritten.

Authenticity: checksums only prove that files and manifest agree. A store opened with
``keys`` (:class:`~.signing.SigningKeys`, from ``--spd-key-file``) signs each manifest it
publishes with the first key and refuses, in :meth:`SnapshotStore.verify` and so in every
load, any snapshot whose signature is missing or verifies under none of the keys
(:class:`SnapshotUnauthenticated`). Without keys, signatures are neither written nor checked.

Ids generated here are ``<UTC time with microseconds>Z-<model tag>-<4 hex>``, e.g.
``20250107T101502.123456Z-dcn-3f9a``: string order is creation order. Listing orders by
(created_at, id), so explicit ids sort by their creation time too.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch
from fuxictr.features import FeatureMap

from ..fsutil import fsync_dir
from .signing import SignatureError, SigningKeys

__all__ = [
    "FeatureMapMismatch",
    "FileEntry",
    "LoadedSnapshot",
    "SPDError",
    "SnapshotCorrupt",
    "SnapshotExists",
    "SnapshotInfo",
    "SnapshotNotFound",
    "SnapshotStore",
    "SnapshotUnauthenticated",
]

logger = logging.getLogger(__name__)

FORMAT = "exfm-snapshot"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "signature.json"
WEIGHTS = "weights.pt"
MODEL_PARAMS = "model_params.json"
FEATURE_MAP_DIR = "feature_map"
FEATURE_MAP_JSON = "feature_map.json"
FEATURE_VOCAB_JSON = "feature_vocab.json"
PRETRAINED_DIR = "pretrained"  # inside feature_map/, for files referenced outside the map's dir
FM_PRED = "fm_pred"

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_HASH_CHUNK = 1 << 20


# --------------------------------------------------------------------------- errors
class SPDError(RuntimeError):
    """Base class of the snapshot store's errors."""


class SnapshotNotFound(SPDError, LookupError):
    """No complete snapshot with that id in the SPD."""


class SnapshotExists(SPDError, FileExistsError):
    """A snapshot with that id already exists; snapshots are never overwritten."""


class SnapshotCorrupt(SPDError):
    """A snapshot's file is missing or does not match the manifest's checksum or size.

    ``file`` is the snapshot-relative path, ``expected`` / ``actual`` the sha256 digests
    (``actual`` is ``"missing"`` for a missing file).
    """

    def __init__(self, message: str, *, snapshot_id: str, file: str,
                 expected: str | None = None, actual: str | None = None) -> None:
        super().__init__(message)
        self.snapshot_id = snapshot_id
        self.file = file
        self.expected = expected
        self.actual = actual


class SnapshotUnauthenticated(SPDError):
    """A key is configured and the snapshot's manifest signature is missing or wrong: refused.

    ``reason`` says which (never a key).
    """

    def __init__(self, message: str, *, snapshot_id: str, reason: str) -> None:
        super().__init__(message)
        self.snapshot_id = snapshot_id
        self.reason = reason


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


# --------------------------------------------------------------------------- records
@dataclass(frozen=True)
class FileEntry:
    """One file of a snapshot as the manifest records it."""

    sha256: str
    size: int


@dataclass(frozen=True)
class SnapshotInfo:
    """A complete snapshot as its manifest describes it (cheap: nothing is hashed or loaded)."""

    snapshot_id: str
    path: str
    created_at: float  # unix seconds
    model: str  # model class name (a key of MODEL_REGISTRY)
    dataset_id: str
    trained_through_day: int | None
    labels: tuple[str, ...]
    multitask: bool
    files: Mapping[str, FileEntry] = field(compare=False, repr=False)
    manifest: Mapping[str, Any] = field(compare=False, repr=False)

    @property
    def outputs(self) -> tuple[str, ...]:
        """The keys :meth:`LoadedSnapshot.predict_batch` returns (``fm_pred`` or ``fm_pred/<label>``)."""
        if self.multitask:
            return tuple(f"{FM_PRED}/{label}" for label in self.labels)
        return (FM_PRED,)

    @property
    def sort_key(self) -> tuple[float, str]:
        """Creation order: the SPD's notion of "newer"."""
        return (self.created_at, self.snapshot_id)

    @classmethod
    def from_manifest(cls, path: str, manifest: Mapping[str, Any]) -> "SnapshotInfo":
        if manifest.get("format") != FORMAT or not isinstance(manifest.get("format_version"), int):
            raise ValueError(f"not an {FORMAT} manifest")
        if manifest["format_version"] > FORMAT_VERSION:
            raise ValueError(f"format_version {manifest['format_version']} is newer than this exfm "
                             f"reads ({FORMAT_VERSION}); upgrade exfm")
        files = {name: FileEntry(str(e["sha256"]), int(e["size"])) for name, e in manifest["files"].items()}
        day = manifest.get("trained_through_day")
        return cls(snapshot_id=str(manifest["snapshot_id"]), path=path,
                   created_at=float(manifest["created_at_unix"]), model=str(manifest["model"]),
                   dataset_id=str(manifest["dataset_id"]),
                   trained_through_day=None if day is None else int(day),
                   labels=tuple(manifest["labels"]), multitask=bool(manifest["multitask"]),
                   files=files, manifest=dict(manifest))


# --------------------------------------------------------------------------- helpers
def validate_snapshot_id(snapshot_id: str) -> str:
    """Ids are directory names and metadata-store keys: letters, digits, ``._-``, not hidden."""
    if not isinstance(snapshot_id, str) or not _ID_RE.match(snapshot_id) or snapshot_id in (".", ".."):
        raise ValueError(f"snapshot_id {snapshot_id!r}: expected 1-200 characters of [A-Za-z0-9._-] "
                         f"starting with a letter or digit")
    return snapshot_id


def _model_tag(model: torch.nn.Module) -> str:
    return re.sub(r"[^a-z0-9]+", "", type(model).__name__.lower())[:16] or "model"


def new_snapshot_id(model: torch.nn.Module, now: datetime | None = None) -> str:
    """``<UTC time with microseconds>Z-<model tag>-<4 hex>``: string order is creation order."""
    now = now or datetime.now(timezone.utc)
    return f"{now.strftime('%Y%m%dT%H%M%S.%f')}Z-{_model_tag(model)}-{secrets.token_hex(2)}"


def _jsonable(value: Any, where: str) -> Any:
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
            out[k] = _jsonable(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"model_params{where}={value!r} ({type(value).__name__}) is not JSON-serialisable; "
                    f"pass the plain config values build_model needs")


def _write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_json(path: str, obj: Any) -> None:
    _write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def _copy_file(src: str, dst: str) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        shutil.copyfileobj(fi, fo, _HASH_CHUNK)
        fo.flush()
        os.fsync(fo.fileno())


def _save_weights(model: torch.nn.Module, path: str) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())


def file_sha256(path: str) -> tuple[str, int]:
    """(hex sha256, size in bytes) of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _is_multitask(model: torch.nn.Module) -> bool:
    from fuxictr.pytorch.models import MultiTaskModel

    return isinstance(model, MultiTaskModel)


def _torch_device(device: str | torch.device) -> tuple[torch.device, int]:
    """The device and fuxictr's ``gpu`` index for it (-1 for CPU)."""
    dev = torch.device(device)
    if dev.type == "cpu":
        return dev, -1
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={device!r} requested but CUDA is not available")
        index = 0 if dev.index is None else dev.index
        return torch.device("cuda", index), index
    raise ValueError(f"device={device!r}: expected 'cpu', 'cuda' or 'cuda:N'")


# --------------------------------------------------------------------------- loaded snapshot
@dataclass(frozen=True, eq=False)
class LoadedSnapshot:
    """A snapshot's model, rebuilt and in eval mode, ready to label rows with FM predictions."""

    info: SnapshotInfo
    model: torch.nn.Module
    feature_map: FeatureMap

    @property
    def snapshot_id(self) -> str:
        return self.info.snapshot_id

    def predict_batch(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """FM probabilities for one fuxictr batch dict: ``{"fm_pred": p}`` (single task) or
        ``{"fm_pred/<label>": p}`` per label (multi-task), each a float32 array of shape (B,).

        Extra columns (labels, ``fm_pred``, ids) are ignored; a missing feature is an error.
        """
        needed = [name for name, spec in self.feature_map.features.items() if spec.get("type") != "meta"]
        missing = [name for name in needed if name not in batch]
        if missing:
            raise KeyError(f"snapshot {self.snapshot_id}: batch lacks feature column(s) {missing}; "
                           f"the FM was trained on {needed}")
        inputs = {k: v if isinstance(v, torch.Tensor) else _numpy_to_tensor(v)
                  for k, v in batch.items() if k in self.feature_map.features}
        with torch.no_grad():
            out = self.model(inputs)
        if "y_pred" in out and not self.info.multitask:
            return {FM_PRED: _to_numpy(out["y_pred"])}
        preds = {}
        for label in self.info.labels:
            key = f"{label}_pred"
            if key not in out:
                raise KeyError(f"snapshot {self.snapshot_id}: model {self.info.model} returned "
                               f"{sorted(out)}, expected {key!r} for label {label!r}")
            preds[f"{FM_PRED}/{label}"] = _to_numpy(out[key])
        return preds

    def check_compatible(self, day_attrs_or_feature_map: Any) -> None:
        """Raise :class:`FeatureMapMismatch` naming every FM feature the VM's data lacks or
        encodes differently (type, vocab size, max_len, pretrain dim, vocabulary).

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
                from ..data.dayfile import read_day_attrs

                other = read_day_attrs(path)
            else:
                with open(path, encoding="utf-8") as f:
                    other = json.load(f)
                vocab_path = os.path.join(os.path.dirname(path), FEATURE_VOCAB_JSON)
                vocab_other = _read_json_or_none(vocab_path)
        elif isinstance(other, FeatureMap):
            vocab_other = _read_json_or_none(os.path.join(other.data_dir or "", FEATURE_VOCAB_JSON))

        ours = {k: v for k, v in self.feature_map.features.items() if v.get("type") != "meta"}
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
            ours_vocab = _read_json_or_none(os.path.join(self.feature_map.data_dir, FEATURE_VOCAB_JSON)) or {}
            for name in ours:
                if name in problems or name not in ours_vocab or name not in vocab_other:
                    continue
                if ours_vocab[name] != vocab_other[name]:
                    problems[name] = "vocabulary differs (same features, different token -> id encoding)"
        if problems:
            raise FeatureMapMismatch(self.snapshot_id, problems)


def _numpy_to_tensor(values: Any) -> torch.Tensor:
    """Day-file columns are narrow ints / float32: ids go to int64 (embedding lookups), values to float32."""
    arr = np.asarray(values)
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.int64))
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy().reshape(-1)


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


# --------------------------------------------------------------------------- the store
class SnapshotStore:
    """The SPD rooted at ``root`` (created if missing). Safe for concurrent publishers and readers.

    ``keys``: sign published manifests with the first key and accept only snapshots signed by
    one of them (see the module docstring); None: no signatures (as before).
    """

    def __init__(self, root: str | os.PathLike, keys: SigningKeys | None = None) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.keys = keys
        os.makedirs(self.root, exist_ok=True)

    def __repr__(self) -> str:
        return f"SnapshotStore({self.root!r})"

    def _dir(self, snapshot_id: str) -> str:
        return os.path.join(self.root, validate_snapshot_id(snapshot_id))

    # ---------------------------------------------------------------- publish
    def publish(self, model: torch.nn.Module, *, model_params: dict, feature_map_dir: str,
                trained_through_day: int | None = None, snapshot_id: str | None = None) -> SnapshotInfo:
        """Write ``model`` as a new snapshot, atomically; returns its info.

        ``model_params`` are the params the model was built with (``build_model(params,
        feature_map)`` must rebuild it; ``model`` defaults to the class name);
        ``feature_map_dir`` holds the ``feature_map.json`` (and ``feature_vocab.json``,
        pretrained files) the model was trained with.
        """
        from ..models import MODEL_REGISTRY

        created = datetime.now(timezone.utc)
        snapshot_id = (validate_snapshot_id(snapshot_id) if snapshot_id is not None
                       else new_snapshot_id(model, created))
        if trained_through_day is not None and (isinstance(trained_through_day, bool)
                                                or not isinstance(trained_through_day, (int, np.integer))):
            raise ValueError(f"trained_through_day={trained_through_day!r}: expected an integer day or None")
        params = _jsonable(dict(model_params), "")
        for key, value in model_params.items():
            if isinstance(value, tuple):
                logger.warning("model_params[%r] is a tuple; it is stored as a JSON list, as a YAML config "
                               "would give it", key)
        name = params.setdefault("model", type(model).__name__)
        if MODEL_REGISTRY.get(name) is not type(model):
            raise ValueError(f"model_params['model']={name!r} does not name the class of the published model "
                             f"({type(model).__name__}); build_model could not rebuild it from the snapshot "
                             f"(known models: {sorted(MODEL_REGISTRY)})")
        fmap_dir = os.path.abspath(os.fspath(feature_map_dir))
        fmap_json = os.path.join(fmap_dir, FEATURE_MAP_JSON)
        if not os.path.isfile(fmap_json):
            raise FileNotFoundError(f"feature_map_dir={fmap_dir}: no {FEATURE_MAP_JSON}")
        with open(fmap_json, encoding="utf-8") as f:
            fmap_obj = json.load(f)
        dataset_id = fmap_obj.get("dataset_id")
        model_fmap = getattr(model, "feature_map", None)
        if model_fmap is not None and model_fmap.dataset_id != dataset_id:
            raise ValueError(f"{fmap_json}: dataset_id={dataset_id!r}, but the model was built on "
                             f"dataset_id={model_fmap.dataset_id!r}")
        final = self._dir(snapshot_id)
        if os.path.lexists(final):
            raise SnapshotExists(f"snapshot {snapshot_id} already exists in {self.root}; snapshots are never overwritten")

        tmp = os.path.join(self.root, f".tmp-{snapshot_id}-{os.getpid()}-{secrets.token_hex(3)}")
        os.makedirs(os.path.join(tmp, FEATURE_MAP_DIR))
        try:
            _save_weights(model, os.path.join(tmp, WEIGHTS))
            fmap_obj, params = self._copy_feature_map(fmap_dir, fmap_obj, params, tmp)
            _write_json(os.path.join(tmp, FEATURE_MAP_DIR, FEATURE_MAP_JSON), fmap_obj)
            _write_json(os.path.join(tmp, MODEL_PARAMS), params)
            files = {}
            for dirpath, _, names in os.walk(tmp):
                for fname in names:
                    full = os.path.join(dirpath, fname)
                    rel = os.path.relpath(full, tmp).replace(os.sep, "/")
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
                "model": name,
                "model_id": params.get("model_id", getattr(model, "model_id", name)),
                "dataset_id": dataset_id,
                "trained_through_day": None if trained_through_day is None else int(trained_through_day),
                "labels": labels,
                "multitask": multitask,
                "outputs": [f"{FM_PRED}/{lb}" for lb in labels] if multitask else [FM_PRED],
                "torch_version": torch.__version__,
                "files": dict(sorted(files.items())),
            }
            _write_json(os.path.join(tmp, MANIFEST), manifest)
            if self.keys is not None:  # sign what a reader will parse back
                with open(os.path.join(tmp, MANIFEST), encoding="utf-8") as f:
                    _write_json(os.path.join(tmp, SIGNATURE), self.keys.sign(json.load(f)))
            for dirpath, _, _ in os.walk(tmp):
                fsync_dir(dirpath)
            if os.path.lexists(final):
                raise SnapshotExists(f"snapshot {snapshot_id} already exists in {self.root}; snapshots are never overwritten")
            try:
                os.rename(tmp, final)  # a non-empty target makes this fail: never overwrites
            except OSError as e:
                if os.path.lexists(final):
                    raise SnapshotExists(f"snapshot {snapshot_id} was published concurrently in {self.root}") from e
                raise
            fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        info = SnapshotInfo.from_manifest(final, manifest)
        logger.info("published snapshot %s (%s, dataset %s, trained through day %s) to %s%s",
                    snapshot_id, name, dataset_id, trained_through_day, final,
                    "" if self.keys is None else f", signed with SPD key id {self.keys.signing_key_id}")
        return info

    @staticmethod
    def _copy_feature_map(fmap_dir: str, fmap_obj: dict, params: dict, tmp: str) -> tuple[dict, dict]:
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

    # ---------------------------------------------------------------- read
    def _read_manifest(self, snapshot_id: str) -> SnapshotInfo:
        path = self._dir(snapshot_id)
        if not os.path.isdir(path):
            raise SnapshotNotFound(f"no snapshot {snapshot_id} in {self.root}")
        mpath = os.path.join(path, MANIFEST)
        try:
            with open(mpath, encoding="utf-8") as f:
                manifest = json.load(f)
            info = SnapshotInfo.from_manifest(path, manifest)
        except FileNotFoundError:
            raise SnapshotCorrupt(f"snapshot {snapshot_id}: {MANIFEST} is missing in {path}",
                                  snapshot_id=snapshot_id, file=MANIFEST, actual="missing") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SnapshotCorrupt(f"snapshot {snapshot_id}: unreadable {mpath}: {e}",
                                  snapshot_id=snapshot_id, file=MANIFEST) from e
        if info.snapshot_id != snapshot_id:
            raise SnapshotCorrupt(f"snapshot {snapshot_id}: {mpath} names snapshot {info.snapshot_id!r}",
                                  snapshot_id=snapshot_id, file=MANIFEST)
        return info

    def list(self) -> list[SnapshotInfo]:
        """Complete snapshots, oldest first (temporary, deleted and manifest-less dirs are skipped)."""
        infos = []
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir() or not _ID_RE.match(entry.name):
                continue
            try:
                infos.append(self._read_manifest(entry.name))
            except SPDError as e:
                logger.debug("skipping %s: %s", entry.path, e)
        return sorted(infos, key=lambda i: i.sort_key)

    def latest(self) -> SnapshotInfo | None:
        """The newest complete snapshot (not verified), or None if the SPD is empty."""
        infos = self.list()
        return infos[-1] if infos else None

    def get(self, snapshot_id: str) -> SnapshotInfo:
        """The manifest of one snapshot; :class:`SnapshotNotFound` / :class:`SnapshotCorrupt`."""
        return self._read_manifest(snapshot_id)

    def verify_signature(self, info: SnapshotInfo) -> str | None:
        """With keys: the id of the key that signed ``info``'s manifest, or
        :class:`SnapshotUnauthenticated`; without keys: None (nothing checked)."""
        if self.keys is None:
            return None
        sid = info.snapshot_id
        path = os.path.join(info.path, SIGNATURE)
        try:
            with open(path, encoding="utf-8") as f:
                signature = json.load(f)
        except FileNotFoundError:
            signature = None
        except (OSError, ValueError) as e:
            raise SnapshotUnauthenticated(
                f"snapshot {sid} refused: {SIGNATURE} is unreadable ({type(e).__name__}) and an SPD key is "
                f"configured", snapshot_id=sid, reason="signature unreadable") from None
        try:
            key_id = self.keys.verify(info.manifest, signature)
        except SignatureError as e:
            raise SnapshotUnauthenticated(
                f"snapshot {sid} refused: {e}; an SPD key is configured, so only snapshots whose "
                f"{MANIFEST} is signed by an accepted key are loaded", snapshot_id=sid, reason=str(e)) from None
        logger.debug("snapshot %s: manifest signed with SPD key id %s", sid, key_id)
        return key_id

    def verify(self, snapshot_id: str) -> SnapshotInfo:
        """Check the manifest's signature (when the store has keys), then every file's size and
        sha256 against the manifest; raise :class:`SnapshotUnauthenticated` or
        :class:`SnapshotCorrupt` naming the first bad file."""
        info = self._read_manifest(snapshot_id)
        self.verify_signature(info)
        for rel, entry in info.files.items():
            full = os.path.join(info.path, *rel.split("/"))
            try:
                digest, size = file_sha256(full)
            except FileNotFoundError:
                raise SnapshotCorrupt(
                    f"snapshot {snapshot_id}: file {rel} is missing (expected sha256 {entry.sha256}, "
                    f"{entry.size} bytes)", snapshot_id=snapshot_id, file=rel, expected=entry.sha256,
                    actual="missing") from None
            if digest != entry.sha256 or size != entry.size:
                raise SnapshotCorrupt(
                    f"snapshot {snapshot_id}: file {rel} does not match the manifest: expected sha256 "
                    f"{entry.sha256} ({entry.size} bytes), actual sha256 {digest} ({size} bytes)",
                    snapshot_id=snapshot_id, file=rel, expected=entry.sha256, actual=digest)
        return info

    def delete(self, snapshot_id: str) -> None:
        """Remove a snapshot (garbage collection): renamed away first, so it vanishes atomically."""
        path = self._dir(snapshot_id)
        trash = os.path.join(self.root, f".del-{snapshot_id}-{os.getpid()}-{secrets.token_hex(3)}")
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            raise SnapshotNotFound(f"no snapshot {snapshot_id} in {self.root}") from None
        fsync_dir(self.root)
        shutil.rmtree(trash, ignore_errors=True)
        logger.info("deleted snapshot %s from %s", snapshot_id, self.root)

    def purge_temporary(self, older_than: float = 3600.0) -> list[str]:
        """Remove ``.tmp-*`` / ``.del-*`` leftovers of crashed publishers or deleters older than
        ``older_than`` seconds; returns the removed names."""
        removed = []
        now = time.time()
        for entry in os.scandir(self.root):
            if entry.name.startswith((".tmp-", ".del-")) and entry.is_dir(follow_symlinks=False):
                try:
                    if now - entry.stat(follow_symlinks=False).st_mtime < older_than:
                        continue
                except FileNotFoundError:
                    continue
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.name)
        return removed

    def load(self, snapshot_id: str, device: str | torch.device = "cpu") -> LoadedSnapshot:
        """Verify, rebuild the model from the snapshot's own params and feature map, load the
        weights (strict) and switch to eval mode."""
        from ..config import build_model

        info = self.verify(snapshot_id)
        dev, gpu = _torch_device(device)
        with open(os.path.join(info.path, MODEL_PARAMS), encoding="utf-8") as f:
            params = json.load(f)
        params["gpu"] = gpu
        params.setdefault("model_root", os.path.join(os.getcwd(), "checkpoints"))
        fmap_dir = os.path.join(info.path, FEATURE_MAP_DIR)
        feature_map = FeatureMap(info.dataset_id, fmap_dir)
        feature_map.load(os.path.join(fmap_dir, FEATURE_MAP_JSON), params)
        model = build_model(params, feature_map)
        state = torch.load(os.path.join(info.path, WEIGHTS), map_location=dev, weights_only=True)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise SPDError(f"snapshot {snapshot_id}: weights do not fit the model rebuilt from "
                           f"{MODEL_PARAMS} ({info.model}): {e}") from e
        model.to(dev)
        model.device = dev
        model.eval()
        logger.info("loaded snapshot %s (%s) on %s", snapshot_id, info.model, dev)
        return LoadedSnapshot(info, model, feature_map)
