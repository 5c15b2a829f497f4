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

Atomicity: a publish writes into a temporary sibling ``root/.<id>.<rand>.tmp/`` and renames it to
``root/<id>/`` in one ``os.rename`` (:func:`exfm_plugin.fsutil.atomic_dir`, which also fsyncs
every file first): a reader sees a whole snapshot or nothing. Names starting with ``.`` are
never snapshots (temporary or deleted directories), and a directory without ``manifest.json``
is never listed. An existing id is never overwritten.

Modules of the package: :mod:`.manifest` (file names, manifest, ids, errors), :mod:`.publish`
(writing the files), :mod:`.signing` (manifest signatures), :mod:`.compat` (does a VM's data fit
the snapshot), :mod:`.snapshot` (the loaded model); this module is the store.

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

import json
import logging
import os
import secrets
import shutil
from datetime import datetime, timezone

import numpy as np
import torch

from ...fsutil import atomic_dir, fsync_dir
from .compat import FeatureMapMismatch
from .manifest import (FEATURE_MAP_DIR, FEATURE_MAP_JSON, MANIFEST, MODEL_PARAMS, SIGNATURE, WEIGHTS, ID_RE,
                       FileEntry, SnapshotCorrupt, SnapshotExists, SnapshotInfo, SnapshotNotFound, SPDError,
                       SnapshotUnauthenticated, file_sha256, new_snapshot_id, validate_snapshot_id)
from .publish import jsonable, write_snapshot
from .signing import SignatureError, SigningKeys
from .snapshot import LoadedSnapshot, rebuild_model, torch_device

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
    "file_sha256",
    "validate_snapshot_id",
]

logger = logging.getLogger("exfm_plugin.das.spd")  # the name before das/ became subpackages


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
        from ...models import MODEL_REGISTRY

        created = datetime.now(timezone.utc)
        snapshot_id = (validate_snapshot_id(snapshot_id) if snapshot_id is not None
                       else new_snapshot_id(model, created))
        if trained_through_day is not None and (isinstance(trained_through_day, bool)
                                                or not isinstance(trained_through_day, (int, np.integer))):
            raise ValueError(f"trained_through_day={trained_through_day!r}: expected an integer day or None")
        params = jsonable(dict(model_params), "")
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
        try:
            with atomic_dir(final) as tmp:  # a non-empty target makes the rename fail: never overwrites
                manifest = write_snapshot(tmp, model, snapshot_id=snapshot_id, created=created, params=params,
                                          fmap_dir=fmap_dir, fmap_obj=fmap_obj,
                                          trained_through_day=trained_through_day, keys=self.keys)
        except FileExistsError as e:
            if isinstance(e, SnapshotExists) or not os.path.lexists(final):
                raise
            raise SnapshotExists(f"snapshot {snapshot_id} was published concurrently in {self.root}") from e
        info = SnapshotInfo.from_manifest(final, manifest)
        logger.info("published snapshot %s (%s, dataset %s, trained through day %s) to %s%s",
                    snapshot_id, name, dataset_id, trained_through_day, final,
                    "" if self.keys is None else f", signed with SPD key id {self.keys.signing_key_id}")
        return info

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
            if entry.name.startswith(".") or not entry.is_dir() or not ID_RE.match(entry.name):
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

    def load(self, snapshot_id: str, device: str | torch.device = "cpu") -> LoadedSnapshot:
        """Verify, rebuild the model from the snapshot's own params and feature map, load the
        weights (strict) and switch to eval mode."""
        info = self.verify(snapshot_id)
        dev, gpu = torch_device(device)
        with open(os.path.join(info.path, MODEL_PARAMS), encoding="utf-8") as f:
            params = json.load(f)
        params["gpu"] = gpu
        params.setdefault("model_root", os.path.join(os.getcwd(), "checkpoints"))
        state = torch.load(os.path.join(info.path, WEIGHTS), map_location=dev, weights_only=True)
        model, feature_map = rebuild_model(params, info.dataset_id, os.path.join(info.path, FEATURE_MAP_DIR), state,
                                           weights_name=f"snapshot {snapshot_id}: weights",
                                           params_name=f"{MODEL_PARAMS} ({info.model})")
        model.to(dev)
        model.device = dev
        model.eval()
        logger.info("loaded snapshot %s (%s) on %s", snapshot_id, info.model, dev)
        return LoadedSnapshot(info, model, feature_map)
