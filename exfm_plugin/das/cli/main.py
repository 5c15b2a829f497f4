"""``exfm das``: publish FM snapshots, run DAS workers, inspect the metadata store.

    exfm das publish --snapshots DIR --model-params JSON_OR_YAML --weights PT --feature-map-dir DIR [--day N]
                     [--spd-key-file KEYS ...]
    exfm das run --snapshots DIR [--metastore URL] --day-files VM=PATH [VM@TASK=PATH ...] --out DIR
                 [--engine inproc|ray] [--workers N] [--shard-rows N] [--poll SECONDS]
                 [--spd-key-file KEYS ...] [--zk-auth-file PATH | --zk-auth-env NAME]
    exfm das status [--metastore URL | --snapshots DIR] [--job ID | --day N] [--zk-auth-file PATH | --zk-auth-env NAME]

Security (``docs/das.md``, "Security"): ``--spd-key-file`` signs published snapshots and makes
``run`` refuse unsigned or wrongly signed ones; ``--zk-auth-file`` / ``--zk-auth-env`` give the
ZooKeeper identities whose digest ACLs protect the DAS namespace. Secrets are read from files or
the environment only, never from the command line.

``--metastore`` defaults to ``sqlite:///<snapshots>/das.db``. Start ``exfm das run`` on as many
machines or processes as you like with the same arguments: they share the work through the
metadata store, and any of them may be killed. With ``--poll`` a task keeps running as the paper's
DAS task does: its updater records each new snapshot, its loader
(:mod:`exfm_plugin.das.service.loader`) loads the one the store names (each once; one that fails
to load is refused) and the day is augmented with it.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from typing import Any

from .common import add_key_option, add_zk_auth_options, default_metastore, spd_keys, zk_auth
from .status import run_status

logger = logging.getLogger("exfm_plugin.das.cli")  # the name before das/ became subpackages

__all__ = ["add_das_parser", "run_das"]


def add_das_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``exfm das`` and its subcommands on the top-level parser (no prefix of a flag is
    taken for the flag: ``allow_abbrev=False`` on every parser)."""
    p = sub.add_parser("das", allow_abbrev=False,
                       help="Data Augmentation Service: FM snapshots -> FM-augmented VM splits",
                       description="Publish FM snapshots to the SPD, run DAS workers that log the FM's "
                                   "predictions onto the VMs' day files, and show the metadata store.")
    p.set_defaults(func=run_das)
    dsub = p.add_subparsers(dest="das_command", metavar="DAS_COMMAND")
    dsub.required = True

    pub = dsub.add_parser("publish", allow_abbrev=False, help="publish a trained FM as a snapshot")
    pub.add_argument("--snapshots", required=True, metavar="DIR", help="the snapshot store (SPD) root")
    pub.add_argument("--model-params", required=True, metavar="JSON_OR_YAML",
                     help="the model's params: a JSON string, or a .json/.yaml file (a FuxiCTR model "
                          "config with Base + expid blocks needs --expid)")
    pub.add_argument("--expid", default=None, help="expid block of a FuxiCTR model config file")
    pub.add_argument("--weights", required=True, metavar="PT",
                     help="the trained weights: a state_dict .pt or a fuxictr checkpoint (.model)")
    pub.add_argument("--feature-map-dir", required=True, metavar="DIR",
                     help="directory with the FM's feature_map.json (and vocab / pretrained tables)")
    pub.add_argument("--day", type=int, default=None, help="last day the FM was trained on")
    pub.add_argument("--snapshot-id", default=None, help="id of the snapshot (default: generated)")
    add_key_option(pub)
    pub.set_defaults(das_func=_run_publish)

    run = dsub.add_parser("run", allow_abbrev=False,
                          help="run one DAS worker: poll the SPD, load the snapshot, augment a day")
    run.add_argument("--snapshots", required=True, metavar="DIR", help="the snapshot store (SPD) root")
    run.add_argument("--metastore", default=None, metavar="URL",
                     help="sqlite:///path.db or zk://host:port/path (default sqlite:///<snapshots>/das.db)")
    run.add_argument("--day-files", required=True, nargs="+", metavar="VM=PATH",
                     help="one day file per VM: NAME=PATH, or NAME@TASK[,TASK]=PATH to give the VM only "
                          "those tasks of a multi-task FM")
    run.add_argument("--out", required=True, metavar="DIR", help="output root; files go to DIR/<day>-<snapshot>/")
    run.add_argument("--engine", choices=["inproc", "ray"], default="inproc")
    run.add_argument("--workers", type=int, default=1, help="Ray actors (engine ray)")
    run.add_argument("--shard-rows", type=int, default=65536,
                     help="rows per shard: the unit of work, lease and memory (engine ray starts its actors "
                          "once per shard: use 10^6 or more there)")
    run.add_argument("--batch-size", type=int, default=8192, help="rows per FM forward pass")
    run.add_argument("--day", type=int, default=None, help="day index (default: from the day files)")
    run.add_argument("--snapshot", default=None,
                     help="augment with this snapshot instead of the one the metadata store names")
    run.add_argument("--owner", default=None, help="this worker's name (default host-pid)")
    run.add_argument("--lease", type=float, default=60.0, help="shard claim lease, seconds")
    run.add_argument("--snapshot-lease", type=float, default=None,
                     help="lease the updater gives the current snapshot, seconds (default max(600, 3 x --poll))")
    run.add_argument("--poll", type=float, default=None, metavar="SECONDS",
                     help="keep running: poll the SPD every SECONDS and augment the day with each new snapshot")
    run.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    add_key_option(run)
    add_zk_auth_options(run)
    run.set_defaults(das_func=_run_run)

    st = dsub.add_parser("status", allow_abbrev=False, help="current snapshot and its lease; shards of a job")
    st.add_argument("--metastore", default=None, metavar="URL")
    st.add_argument("--snapshots", default=None, metavar="DIR", help="for the default metastore URL")
    st.add_argument("--job", default=None, help="job id (<day>-<snapshot_id>)")
    st.add_argument("--day", type=int, default=None, help="show the job of this day with the current snapshot")
    st.add_argument("--json", action="store_true", help="print JSON")
    add_zk_auth_options(st)
    st.set_defaults(das_func=run_status)


# --------------------------------------------------------------------------- publish
def _fuxictr_config_dir(path: str) -> str | None:
    """The FuxiCTR config folder ``path`` belongs to (a folder holding ``model_config/*.yaml`` or
    ``model_config.yaml``, or one of those files), or None for a standalone file."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return path
    folder = os.path.dirname(path)
    if os.path.basename(folder) == "model_config":
        return os.path.dirname(folder)
    return folder if os.path.basename(path) == "model_config.yaml" else None


def _load_params(text: str, expid: str | None) -> dict[str, Any]:
    import yaml

    from ...errors import InputError

    config_dir = _fuxictr_config_dir(text) if expid is not None and os.path.exists(text) else None
    if config_dir is not None:  # FuxiCTR's layout: the Base block may live in another file
        from fuxictr.utils import load_model_config

        try:
            return load_model_config(config_dir, expid)
        except (RuntimeError, AssertionError) as exc:
            raise ValueError(f"--model-params {text} --expid {expid}: {exc or 'expid not found'} "
                             f"(FuxiCTR config folder {config_dir})") from None
    if os.path.isfile(text):
        source = f"--model-params {text}"
        try:
            with open(text) as f:
                data = json.load(f) if text.endswith(".json") else yaml.safe_load(f)
        except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
            raise InputError(f"not valid {'JSON' if text.endswith('.json') else 'YAML'} "
                             f"({' '.join(str(exc).split())})", where=source,
                             expected="a mapping of the model's params") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--model-params {text!r} is neither a file nor a JSON object ({exc})") from None
        source = "--model-params"
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping of model params, got {type(data).__name__}")
    if expid is not None:
        if expid not in data:
            raise ValueError(f"{source}: no expid {expid!r}; it holds {sorted(data)}")
        params = dict(data.get("Base", {}))
        params.update(data[expid])
        data = params
    if "model" not in data:
        raise ValueError(f"{source}: params lack 'model' (one of the exfm models); "
                         f"for a FuxiCTR config with Base + expid blocks pass --expid")
    return data


def _run_publish(args: argparse.Namespace) -> int:
    import torch

    from ..spd.snapshot import rebuild_model
    from ..spd import SnapshotStore

    keys = spd_keys(args)  # a bad key file fails before any work
    params = _load_params(args.model_params, args.expid)
    fmap_path = os.path.join(args.feature_map_dir, "feature_map.json")
    if not os.path.exists(fmap_path):
        raise FileNotFoundError(f"--feature-map-dir {args.feature_map_dir}: no feature_map.json")
    with open(fmap_path) as f:
        dataset_id = json.load(f).get("dataset_id", params.get("dataset_id", "dataset"))
    params.setdefault("model_root", os.path.join(os.path.abspath(args.snapshots), ".publish"))
    params.setdefault("optimizer", "adam")
    params.setdefault("loss", "binary_crossentropy")
    params.setdefault("metrics", ["logloss", "AUC"])
    state = _load_weights(args.weights)
    model, _ = rebuild_model(params, dataset_id, args.feature_map_dir, state,
                             weights_name=f"--weights {args.weights}", params_name="--model-params")
    info = SnapshotStore(args.snapshots, keys=keys).publish(model, model_params=params, feature_map_dir=args.feature_map_dir,
                                                 trained_through_day=args.day, snapshot_id=args.snapshot_id)
    print(json.dumps({"snapshot_id": info.snapshot_id, "snapshots": os.path.abspath(args.snapshots)}))
    return 0


def _load_weights(path: str) -> dict:
    """The state_dict in ``path`` (a state_dict .pt or a fuxictr checkpoint); a file that is not
    one is the user's error (InputError naming it), whatever torch's loader raised."""
    import torch

    from ...errors import InputError

    expected = "a torch state_dict (torch.save(model.state_dict(), PATH)) or a fuxictr .model checkpoint"
    if not os.path.isfile(path):
        raise InputError("weights file not found" if not os.path.exists(path) else "weights path is not a file",
                         where=f"--weights {path}", expected=expected)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, IndexError... on garbage
        raise InputError(f"not a loadable torch file (torch.load raised {type(exc).__name__})",
                         where=f"--weights {path}", expected=expected) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"the file holds a {type(state).__name__}, not a state_dict of tensors",
                         where=f"--weights {path}", expected=expected)
    return state


# --------------------------------------------------------------------------- run
def _run_run(args: argparse.Namespace) -> int:
    from ..augment import VMSpec, default_owner
    from ..metastore import open_metastore
    from ..spd import SnapshotStore
    from ..service.updater import Updater

    vms = [VMSpec.parse(s) for s in args.day_files]
    owner = args.owner or default_owner()
    keys = spd_keys(args)
    if keys is None:
        logger.warning("no --spd-key-file: snapshots are checked by sha256 only, not authenticated")
    snapshots = SnapshotStore(args.snapshots, keys=keys)
    url = args.metastore or default_metastore(args.snapshots)
    with open_metastore(url, auth=zk_auth(args)) as store:
        poll = args.poll or 60.0
        updater = Updater(snapshots, store, owner=owner, poll_interval=poll,
                          lease_seconds=args.snapshot_lease or max(600.0, 3 * poll))
        updater.poll_once()
        stop = threading.Event()
        if args.poll is not None:  # keep polling (and extending the lease) while jobs run
            threading.Thread(target=updater.run, args=(stop,), name="das-updater", daemon=True).start()
        try:
            return _run_jobs(args, store, snapshots, vms, owner)
        finally:
            stop.set()


def _run_jobs(args: argparse.Namespace, store: Any, snapshots: Any, vms: list, owner: str) -> int:
    """Augment the day once with the pinned or current snapshot; with ``--poll``, keep running and
    augment it again with each snapshot the loader makes current."""
    from ..service.loader import SnapshotLoader

    if args.snapshot is not None or args.poll is None:
        snapshot_id = args.snapshot
        if snapshot_id is None:
            current = store.get_current()
            snapshot_id = current.snapshot_id if current is not None else None
        if snapshot_id is None:
            print(f"exfm das run: no snapshot in {args.snapshots} (publish one with `exfm das publish`)",
                  file=sys.stderr)
            return 2
        job = _job(args, vms, snapshot_id)  # a bad day file fails before the snapshot is loaded
        _augment(args, store, job, owner, snapshots.load(snapshot_id, device="cpu"))
        while args.poll is not None:  # pinned: the job is done; keep the updater running
            time.sleep(args.poll)
        return 0
    # a service: the loader keeps the store's current snapshot loaded (each snapshot once; one
    # that fails to load is refused and the old one stays current) while jobs run
    done: set[str] = set()
    loader = SnapshotLoader(snapshots, store, device="cpu", poll_interval=args.poll)
    loader.poll_once()  # the first job need not wait for the thread
    with loader:
        while True:
            loaded = loader.current
            if loaded is None:
                logger.info("no snapshot loaded yet; polling again in %.1f s", args.poll)
            elif loaded.snapshot_id not in done:
                done.add(loaded.snapshot_id)
                try:
                    _augment(args, store, _job(args, vms, loaded.snapshot_id), owner, loaded)
                except Exception:  # one bad snapshot must not stop augmentation for good
                    logger.exception("augmenting with snapshot %s failed; not retried with it", loaded.snapshot_id)
            time.sleep(args.poll)


def _job(args: argparse.Namespace, vms: list, snapshot_id: str) -> Any:
    from ..augment import AugmentJob

    return AugmentJob.from_day_files(vms, snapshot_id, args.out, day=args.day, shard_rows=args.shard_rows)


def _augment(args: argparse.Namespace, store: Any, job: Any, owner: str, loaded: Any) -> None:
    """Run one worker on ``job`` with the ``loaded`` snapshot; prints its report as a JSON line."""
    from ..augment import run_worker
    from ..augment.engines import make_engine

    engine = (None if args.engine == "inproc" else
              (lambda _l: make_engine("ray", snapshot_store_root=args.snapshots, snapshot_id=loaded.snapshot_id,
                                      num_workers=args.workers, batch_size=args.batch_size,
                                      spd_key_files=args.spd_key_file)))
    report = run_worker(job, store, owner, args.lease, loaded=loaded, engine=engine, batch_size=args.batch_size,
                        poll_interval=min(1.0, args.lease / 4), progress=not args.no_progress)
    print(json.dumps(report.to_dict()), flush=True)


def run_das(args: argparse.Namespace) -> int:
    """Run a parsed ``exfm das`` command; input errors are raised as ExfmInputError, which
    ``exfm_plugin.cli.main`` (the one formatter) prints as one line, exit status 2."""
    from ...data.dayfile import DayFileError
    from ...errors import ExfmInputError
    from ..augment import AugmentError
    from ..metastore import MetastoreError
    from ..spd import SPDError

    # FeatureMapMismatch and WeightsMismatch are SPDErrors
    errors = (AugmentError, DayFileError, MetastoreError, SPDError, FileNotFoundError, ValueError)
    try:
        return int(args.das_func(args) or 0)
    except errors as exc:
        if isinstance(exc, ExfmInputError):
            raise
        raise ExfmInputError(str(exc)) from exc  # the same text, printed by main()
