"""What a snapshot of the SPD is on disk: its file names, its manifest, its id, and the errors.

A snapshot is one directory ``<root>/<snapshot_id>/`` (layout in :mod:`.store`); its
``manifest.json``, written last, names the model, dataset, labels and the sha256 + size of every
file. :class:`SnapshotInfo` is that manifest parsed: cheap to read, nothing is hashed or loaded.
"""
from __future__ import annotations

from ...errors import ExfmInputError

import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch

from ...contracts import FM_PRED, fm_pred_column

__all__ = ["FileEntry", "SPDError", "SnapshotCorrupt", "SnapshotExists", "SnapshotInfo", "SnapshotNotFound",
           "SnapshotUnauthenticated", "file_sha256", "new_snapshot_id", "snapshot_outputs",
           "validate_snapshot_id"]

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

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_HASH_CHUNK = 1 << 20


# --------------------------------------------------------------------------- errors
class SPDError(ExfmInputError, RuntimeError):
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
        return snapshot_outputs(self.labels, self.multitask)

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
    if not isinstance(snapshot_id, str) or not ID_RE.match(snapshot_id) or snapshot_id in (".", ".."):
        raise ValueError(f"snapshot_id {snapshot_id!r}: expected 1-200 characters of [A-Za-z0-9._-] "
                         f"starting with a letter or digit")
    return snapshot_id


def _model_tag(model: torch.nn.Module) -> str:
    return re.sub(r"[^a-z0-9]+", "", type(model).__name__.lower())[:16] or "model"


def new_snapshot_id(model: torch.nn.Module, now: datetime | None = None) -> str:
    """``<UTC time with microseconds>Z-<model tag>-<4 hex>``: string order is creation order."""
    now = now or datetime.now(timezone.utc)
    return f"{now.strftime('%Y%m%dT%H%M%S.%f')}Z-{_model_tag(model)}-{secrets.token_hex(2)}"


def file_sha256(path: str) -> tuple[str, int]:
    """(hex sha256, size in bytes) of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def snapshot_outputs(labels: tuple[str, ...] | list[str], multitask: bool) -> tuple[str, ...]:
    """The prediction columns of an FM: ``fm_pred``, or ``fm_pred/<label>`` per label if multi-task."""
    if multitask:
        return tuple(fm_pred_column(label, multitask=True) for label in labels)
    return (FM_PRED,)
