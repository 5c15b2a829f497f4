"""The DAS metadata store: the current snapshot with its lease, and the shards of each job.

One contract, two backends; the paper's "Zeus". Modules: :mod:`.base` (the contract
:class:`MetadataStore`, its records and errors; imports no backend), :mod:`.sqlite` (the embedded
default), :mod:`.zk` with :mod:`.zk_session` (ZooKeeper through kazoo) and :mod:`.zk_auth`
(ZooKeeper identities and digest ACLs), and :mod:`.factory` (:func:`open_metastore`, the one
module that knows the backends). Importing this package does not import kazoo.
"""
from __future__ import annotations

from .base import (CLAIMED, DONE, PENDING, SHARD_STATES, LeaseLostError, MetadataStore, MetastoreAccessDenied,
                   MetastoreError, MetastoreUnavailable, ShardState, SnapshotLease, validate_lease, validate_name)
from .factory import open_metastore

__all__ = ["CLAIMED", "DONE", "PENDING", "SHARD_STATES", "LeaseLostError", "MetadataStore", "MetastoreAccessDenied",
           "MetastoreError", "MetastoreUnavailable", "ShardState", "SnapshotLease", "open_metastore",
           "validate_lease", "validate_name"]
