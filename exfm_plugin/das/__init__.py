"""The Data Augmentation Service (DAS): FM snapshots in, FM-augmented VM day files out.

One subpackage a subsystem (``docs/das.md`` walks through them):

* :mod:`.spd`: the Snapshot Publishing Database (publish, manifest, signing, the store).
* :mod:`.metastore`: the leased metadata store (contract, SQLite, ZooKeeper + ACLs, factory).
* :mod:`.augment`: stage 1 (predict the day's shared rows once, shard by shard) and stage 2
  (each VM's augmented split), with the shard plan, the workers and the inference engines.
* :mod:`.service`: the updater (records the newest snapshot with a lease) and the loader.
* :mod:`.cli`: ``exfm das publish | run | status``.

The main public names are importable from here too (``from exfm_plugin.das import
SnapshotStore``); they are resolved on first use, so importing this package (as ``exfm``'s
argument parser does) stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

#: public name -> the subpackage that defines it
_EXPORTS = {
    **dict.fromkeys(["SPDError", "SignatureError", "SigningKeys", "SnapshotInfo", "SnapshotNotFound",
                     "SnapshotStore", "FeatureMapMismatch"], "spd"),
    **dict.fromkeys(["LeaseLostError", "MetadataStore", "MetastoreError", "MetastoreUnavailable",
                     "open_metastore"], "metastore"),
    **dict.fromkeys(["AugmentError", "AugmentJob", "VMSpec", "WorkerReport", "make_engine", "run_worker"], "augment"),
    **dict.fromkeys(["SnapshotLoader", "Updater"], "service"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Resolve a public name from its subpackage on first use (PEP 562)."""
    package = _EXPORTS.get(name)
    if package is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{package}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
