"""The Snapshot Publishing Database (SPD): a directory of immutable, optionally signed FM snapshots.

The FM trainer publishes a snapshot; the DAS updater and loaders only read. Modules:
:mod:`.store` (:class:`SnapshotStore`: publish, list, verify, load), :mod:`.manifest` (file
names, the manifest, ids, errors), :mod:`.publish` (writing a snapshot's files),
:mod:`.signing` (HMAC signatures of manifests), :mod:`.compat` (does a VM's data fit a
snapshot), :mod:`.snapshot` (rebuilding the model from a snapshot). The layout and the
atomicity rules are in :mod:`.store`'s docstring and ``docs/das.md``.
"""
from __future__ import annotations

from .compat import FeatureMapMismatch, check_compatible
from .manifest import (FileEntry, SnapshotCorrupt, SnapshotExists, SnapshotInfo, SnapshotNotFound,
                       SnapshotUnauthenticated, SPDError, file_sha256, validate_snapshot_id)
from .signing import SignatureError, SigningKeys
from .snapshot import LoadedSnapshot, WeightsMismatch, rebuild_model
from .store import SnapshotStore

__all__ = ["FeatureMapMismatch", "FileEntry", "LoadedSnapshot", "SPDError", "SignatureError", "SigningKeys",
           "SnapshotCorrupt", "SnapshotExists", "SnapshotInfo", "SnapshotNotFound", "SnapshotStore",
           "SnapshotUnauthenticated", "WeightsMismatch", "check_compatible", "file_sha256", "rebuild_model",
           "validate_snapshot_id"]
