"""The long-running side of a DAS task: the updater and the loader, both driven by the metadata store.

:mod:`.updater` (:class:`Updater`) polls the SPD, records the newest valid snapshot as current
with a lease, extends that lease while no newer snapshot appears, and garbage-collects replaced
snapshots once their lease has run out. :mod:`.loader` (:class:`SnapshotLoader`) keeps the
snapshot the store names loaded, loading each id once and swapping only a fully loaded one in.
"""
from __future__ import annotations

from .loader import LoaderPrediction, NoSnapshotLoaded, SnapshotLoader, SnapshotRefused
from .updater import Updater

__all__ = ["LoaderPrediction", "NoSnapshotLoaded", "SnapshotLoader", "SnapshotRefused", "Updater"]
