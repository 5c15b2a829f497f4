"""The DAS augmenter: two VMs whose day files share rows, an FM snapshot from the SPD, equal
workers coordinating through the metadata store (SQLite always, ZooKeeper when EXFM_ZK_HOSTS
is set; under CI a missing ZooKeeper fails instead of skipping).

Expectations are independent of the augmenter: FM predictions are recomputed by calling the
trained model directly on the rows, row sets come from how the test built the day files, and
the multi-worker run with a SIGKILL is compared with a plain single-worker run.
"""
from __future__ import annotations

import errno
import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import pytest
import torch

from exfm_plugin.cli import main as exfm_main
from exfm_plugin.das.augment import AugmentError, AugmentJob, VMSpec, plan_job, run_worker, shared, worker
from exfm_plugin.das.augment.plan import ensure_plan_file
from exfm_plugin.das.metastore import open_metastore
from exfm_plugin.das.spd import FeatureMapMismatch, SnapshotStore
from exfm_plugin.data.dayfile import DayFileError, read_day_attrs, read_day_columns, write_day_file
from exfm_plugin.fsutil import write_json_atomic
from exfm_plugin.models import MODEL_REGISTRY
from tiny_data import make_tiny_data, model_kwargs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N_ROWS = 600
A_ROWS = np.arange(0, 400)          # VM a: rows 0..399 in order
B_ROWS = np.arange(250, 600)        # VM b: rows 250..599, written shuffled; 150 rows shared with a
DAY = 6


# --------------------------------------------------------------------------- fixtures
pytestmark = pytest.mark.usefixtures("one_thread")


def _train(model, batches, steps: int = 8) -> None:
    model._max_gradient_norm = 10.0
    model.train()
    for step in range(steps):
        model.train_step(batches[step % len(batches)])
    model.eval()


def _direct_predictions(model, tiny, key: str = "y_pred") -> np.ndarray:
    """The FM's probabilities for every tiny row, straight from model(batch)."""
    model.eval()
    with torch.no_grad():
        return np.concatenate([model(b)[key].reshape(-1).numpy() for b in tiny.batches(100)])


class World:
    """Tiny data, two overlapping VM day files, a DCN FM published to an SPD."""

    def __init__(self, root) -> None:
        self.root = root
        self.tiny = make_tiny_data(str(root / "tiny"), num_rows=N_ROWS, seed=0)
        self.ids = np.arange(N_ROWS, dtype=np.int64) * 7 + 1000  # example ids are not row numbers
        cols = dict(self.tiny.columns, example_id=self.ids)
        b_rows = np.random.default_rng(1).permutation(B_ROWS)
        self.vm_rows = {"a": A_ROWS, "b": b_rows}
        self.day_files = {}
        for name, rows in self.vm_rows.items():
            path = str(root / f"vm_{name}.h5")
            write_day_file(path, {k: v[rows] for k, v in cols.items()}, dataset_id="tiny", day=DAY)
            self.day_files[name] = path
        torch.manual_seed(0)
        self.params = dict(model_kwargs(root), model="DCN", dnn_hidden_units=[16], num_cross_layers=2)
        self.model = MODEL_REGISTRY["DCN"](self.tiny.feature_map, **self.params)
        _train(self.model, list(self.tiny.batches(128)))
        self.expected = _direct_predictions(self.model, self.tiny)  # by row
        self.spd = SnapshotStore(str(root / "spd"))
        self.info = self.spd.publish(self.model, model_params=self.params,
                                     feature_map_dir=str(root / "tiny"), trained_through_day=DAY - 1)
        self.loaded = self.spd.load(self.info.snapshot_id)
        self.union = np.union1d(A_ROWS, B_ROWS)

    def vms(self) -> list[VMSpec]:
        return [VMSpec(name, path) for name, path in self.day_files.items()]

    def job(self, out, shard_rows: int = 128) -> AugmentJob:
        return AugmentJob.from_day_files(self.vms(), self.info.snapshot_id, str(out), shard_rows=shard_rows)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return World(tmp_path_factory.mktemp("das_world"))








class CountingSnapshot:
    """The loaded snapshot, counting the rows it is asked to predict."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.rows = 0
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def predict_batch(self, batch):
        self.calls += 1
        self.rows += len(next(iter(batch.values())))
        return self.inner.predict_batch(batch)


def _check_split(world: World, job: AugmentJob, vm: str, key: str = "fm_pred") -> dict[str, np.ndarray]:
    """The VM's split holds exactly its rows, in its file's order, with the direct FM predictions."""
    out = job.vm_output(vm)
    cols = read_day_columns(out, ["example_id", "click", key, "user_id"])
    rows = world.vm_rows[vm]
    np.testing.assert_array_equal(cols["example_id"], world.ids[rows])
    np.testing.assert_array_equal(cols["click"], world.tiny.columns["click"][rows])
    np.testing.assert_array_equal(cols["user_id"], world.tiny.columns["user_id"][rows])
    np.testing.assert_allclose(cols[key], world.expected[rows], rtol=0, atol=1e-6)
    attrs = read_day_attrs(out)
    assert attrs["snapshot_id"] == world.info.snapshot_id and attrs["vm_name"] == vm
    return cols


def _shard_files(job: AugmentJob) -> list[str]:
    return sorted(glob.glob(os.path.join(job.job_dir, "shards", "*.h5")))


def _leftover_temps(job: AugmentJob) -> list[str]:
    return [p for p in glob.glob(os.path.join(job.job_dir, "**", ".*"), recursive=True) if p.endswith(".tmp")]


# --------------------------------------------------------------------------- the two stages
def test_each_vm_gets_its_rows_and_shared_rows_are_predicted_once(world, store_url, tmp_path):
    counting = CountingSnapshot(world.loaded)
    job = world.job(tmp_path / "out", shard_rows=128)
    assert job.job_id == f"{DAY}-{world.info.snapshot_id}"
    with open_metastore(store_url) as store:
        report = run_worker(job, store, "w1", 30, loaded=counting, batch_size=50, progress=False)
        status = store.job_status(job.job_id)
    assert report.complete and report.assembled
    for vm in ("a", "b"):
        _check_split(world, job, vm)
    # 400 + 350 VM rows, 150 shared: 600 distinct rows, each predicted exactly once
    assert counting.rows == len(world.union) == 600
    assert report.rows_predicted == 600
    assert len(status) == len(_shard_files(job)) == 5  # ceil(600 / 128)
    assert all(s.state == "done" and s.attempts == 1 for s in status.values())
    ids = np.concatenate([h5py.File(p, "r")["example_id"][...] for p in _shard_files(job)])
    np.testing.assert_array_equal(np.sort(ids), world.ids[world.union])  # every distinct row in one shard, once
    with h5py.File(_shard_files(job)[0], "r") as f:
        assert f.attrs["snapshot_id"] == world.info.snapshot_id
    plan = json.load(open(os.path.join(job.job_dir, "plan.json")))
    assert plan["num_shared_rows"] == 150 and plan["num_rows"] == 600 and plan["num_vm_rows"] == 750
    assert json.load(open(os.path.join(job.job_dir, "manifest.json")))["splits"] == {"a": "a.h5", "b": "b.h5"}
    assert not _leftover_temps(job)

    # a second run of a complete job predicts nothing and keeps the files
    before = os.stat(job.vm_output("a")).st_mtime_ns
    with open_metastore(store_url) as store:
        again = run_worker(job, store, "w2", 30, loaded=counting, progress=False)
    assert again.complete and not again.shards_done and counting.rows == 600
    assert os.stat(job.vm_output("a")).st_mtime_ns == before


def test_same_job_id_with_other_inputs_is_refused(world, tmp_path):
    out = tmp_path / "out"
    with open_metastore(f"sqlite://{tmp_path}/m.db") as store:
        run_worker(world.job(out, shard_rows=300), store, "w1", 30, loaded=world.loaded, progress=False)
        with pytest.raises(AugmentError, match="shard_rows"):
            run_worker(world.job(out, shard_rows=100), store, "w1", 30, loaded=world.loaded, progress=False)


def test_plan_file_first_writer_wins_and_is_never_rewritten(world, tmp_path):
    """Stage 1's plan.json (plan.ensure_plan_file over fsutil.write_json_atomic): the first plan is
    recorded as its JSON, the same plan again is accepted without a rewrite, another is refused."""
    first = plan_job(world.job(tmp_path / "out", shard_rows=128), world.loaded)
    path = os.path.join(first.job.job_dir, "plan.json")
    ensure_plan_file(first)
    assert json.load(open(path)) == json.loads(json.dumps(first.to_json()))
    recorded, mtime = open(path, "rb").read(), os.stat(path).st_mtime_ns
    ensure_plan_file(plan_job(world.job(tmp_path / "out", shard_rows=128), world.loaded))  # same inputs
    other = plan_job(world.job(tmp_path / "out", shard_rows=100), world.loaded)
    assert other.job.job_id == first.job.job_id and other.fingerprint != first.fingerprint
    with pytest.raises(AugmentError, match=r"differs in \[.*'shard_rows'.*'shards'"):
        ensure_plan_file(other)
    assert open(path, "rb").read() == recorded and os.stat(path).st_mtime_ns == mtime
    assert write_json_atomic(path, {"x": 1}, exclusive=True) is False  # an existing file is kept
    assert write_json_atomic(str(tmp_path / "new.json"), {"x": 1}, exclusive=True) is True
    assert json.load(open(tmp_path / "new.json")) == {"x": 1}


def test_multitask_fm_gives_each_vm_its_own_task(tmp_path):
    tiny = make_tiny_data(str(tmp_path / "mt"), num_rows=300, seed=3, multitask=True)
    ids = np.arange(300, dtype=np.int64) + 50
    cols = dict(tiny.columns, example_id=ids)
    files = {}
    for name, rows in {"clk": np.arange(0, 200), "lk": np.arange(100, 300), "both": np.arange(0, 300, 2)}.items():
        files[name] = str(tmp_path / f"{name}.h5")
        write_day_file(files[name], {k: v[rows] for k, v in cols.items()}, dataset_id="tiny", day=3)
    torch.manual_seed(0)
    params = dict(model_kwargs(tmp_path), model="MultiTaskDMIN", target_field="cate_id", sequence_field="cate_his",
                  dnn_hidden_units=[16], tower_hidden_units=[8], attention_hidden_units=[8], num_heads=2,
                  pos_emb_dim=4)
    model = MODEL_REGISTRY["MultiTaskDMIN"](tiny.feature_map, **params)
    _train(model, list(tiny.batches(100)), steps=4)
    expected = {t: _direct_predictions(model, tiny, f"{t}_pred") for t in ("click", "like")}
    spd = SnapshotStore(str(tmp_path / "spd"))
    info = spd.publish(model, model_params=params, feature_map_dir=str(tmp_path / "mt"))
    loaded = spd.load(info.snapshot_id)
    vms = [VMSpec("clk", files["clk"], ("click",)), VMSpec.parse(f"lk@like={files['lk']}"),
           VMSpec.parse(f"both={files['both']}")]
    job = AugmentJob.from_day_files(vms, info.snapshot_id, str(tmp_path / "out"), shard_rows=64)
    counting = CountingSnapshot(loaded)
    with open_metastore(f"sqlite://{tmp_path}/m.db") as store:
        run_worker(job, store, "w", 30, loaded=counting, progress=False)
    assert counting.rows == 300  # the union of the three VMs, once
    wanted = {"clk": ["click"], "lk": ["like"], "both": ["click", "like"]}
    for name, tasks in wanted.items():
        attrs = read_day_attrs(job.vm_output(name))
        preds = sorted(c["name"] for c in attrs["columns"] if c["name"].startswith("fm_pred"))
        assert preds == [f"fm_pred/{t}" for t in tasks] and attrs["fm_tasks"] == tasks
        got = read_day_columns(job.vm_output(name), ["example_id", *preds])
        rows = got["example_id"] - 50
        for t in tasks:
            np.testing.assert_allclose(got[f"fm_pred/{t}"], expected[t][rows], rtol=0, atol=1e-6)
    assert not np.allclose(expected["click"], expected["like"])

    bad = AugmentJob.from_day_files([VMSpec("f", files["clk"], ("follow",))], info.snapshot_id,
                                    str(tmp_path / "out2"))
    with open_metastore(f"sqlite://{tmp_path}/m2.db") as store:
        with pytest.raises(AugmentError, match="'follow'.*click.*like"):
            run_worker(bad, store, "w", 30, loaded=loaded, progress=False)
    assert not os.path.exists(bad.job_dir)


def test_mismatched_feature_map_or_task_is_refused_before_any_work(world, tmp_path):
    cols = dict(world.tiny.columns, example_id=world.ids)
    cols.pop("price")
    cols["cate_his"] = cols["cate_his"][:, :4]
    bad = str(tmp_path / "bad.h5")
    write_day_file(bad, cols, dataset_id="tiny", day=DAY)
    job = AugmentJob.from_day_files([VMSpec("a", world.day_files["a"]), VMSpec("odd", bad)],
                                    world.info.snapshot_id, str(tmp_path / "out"))
    with open_metastore(f"sqlite://{tmp_path}/m.db") as store:
        with pytest.raises(FeatureMapMismatch) as err:
            run_worker(job, store, "w", 30, loaded=world.loaded, progress=False)
        msg = str(err.value)
        assert "price" in msg and "cate_his" in msg and "bad.h5" in msg and "'odd'" in msg
        assert set(err.value.mismatches) == {"price", "cate_his"}

        single = AugmentJob.from_day_files([VMSpec("a", world.day_files["a"], ("like",))],
                                           world.info.snapshot_id, str(tmp_path / "out"))
        with pytest.raises(AugmentError, match="'like'.*click"):
            run_worker(single, store, "w", 30, loaded=world.loaded, progress=False)

        no_ids = str(tmp_path / "noid.h5")
        write_day_file(no_ids, world.tiny.columns, dataset_id="tiny", day=DAY)
        with pytest.raises(DayFileError, match="noid.h5.*example_id"):
            run_worker(AugmentJob.from_day_files([VMSpec("x", no_ids)], world.info.snapshot_id,
                                                 str(tmp_path / "out")), store, "w", 30,
                       loaded=world.loaded, progress=False)
        assert store.job_status(job.job_id) == {}
    assert not os.path.exists(os.path.join(tmp_path, "out"))


# --------------------------------------------------------------------------- leases and failures
def test_worker_whose_claim_expired_does_not_publish(world, store_url, tmp_path, monkeypatch):
    """A paused worker (its renewals stall) loses its claim to another; it must discard its output."""
    monkeypatch.setattr(worker._LeaseKeeper, "_run", lambda self: None)  # renewals stall
    monkeypatch.setenv(worker.SLOW_SHARD_ENV, "2.0")
    job = world.job(tmp_path / "out", shard_rows=1000)  # one shard
    lease = 1.0
    stolen = threading.Event()

    def thief() -> None:
        with open_metastore(store_url) as store:
            deadline = time.time() + 20
            while time.time() < deadline:
                st = store.job_status(job.job_id).get("shard-00000")
                if st is not None and st.owner == "paused":
                    time.sleep(max(0.0, st.lease_expires_at - time.time()) + 0.1)
                    if store.claim_shard(job.job_id, "thief", 60) == "shard-00000":
                        stolen.set()
                    return
                time.sleep(0.02)

    t = threading.Thread(target=thief)
    t.start()
    with open_metastore(store_url) as store:
        report = run_worker(job, store, "paused", lease, loaded=world.loaded, wait=False, progress=False)
        t.join()
        status = store.job_status(job.job_id)["shard-00000"]
    assert stolen.is_set()
    assert report.shards_discarded == ["shard-00000"] and not report.shards_done
    assert not _shard_files(job) and not _leftover_temps(job)
    assert status.state == "claimed" and status.owner == "thief" and status.attempts == 2


def test_disk_full_leaves_no_partial_shard_or_split(world, tmp_path, monkeypatch):
    real = h5py.Group.create_dataset
    fail = {"on": None}

    def create_dataset(self, name, *args, **kwargs):
        if fail["on"] is not None and fail["on"](self.file.filename, name):
            raise OSError(errno.ENOSPC, "No space left on device (simulated)")
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", create_dataset)
    job = world.job(tmp_path / "out", shard_rows=300)
    url = f"sqlite://{tmp_path}/m.db"
    # 1) the disk fills while a shard's predictions are written (after its example_id column)
    fail["on"] = lambda fn, name: "shards" in fn and name.startswith("fm_pred")
    with open_metastore(url) as store, pytest.raises(OSError, match="No space"):
        run_worker(job, store, "w1", 0.5, loaded=world.loaded, progress=False)
    assert not _shard_files(job) and not _leftover_temps(job)
    time.sleep(0.6)  # w1's claim expires, as if it had died
    # 2) shards go through, the disk fills while stage 2 writes VM b's split
    fail["on"] = lambda fn, name: os.path.basename(fn).startswith(".b.h5")
    with open_metastore(url) as store, pytest.raises(OSError, match="No space"):
        run_worker(job, store, "w2", 30, loaded=world.loaded, progress=False)
    assert len(_shard_files(job)) == 2 and not os.path.exists(job.vm_output("b"))
    assert not os.path.exists(os.path.join(job.job_dir, "manifest.json"))
    assert not [p for p in os.listdir(job.job_dir) if p.endswith(".tmp")]
    # 3) space again: the job completes with the right content; the failed shard was retried
    fail["on"] = None
    with open_metastore(url) as store:
        report = run_worker(job, store, "w3", 30, loaded=world.loaded, progress=False)
        assert store.job_status(job.job_id)["shard-00000"].attempts == 2
    assert report.complete and not report.shards_done  # stage 2 only
    for vm in ("a", "b"):
        _check_split(world, job, vm)


# --------------------------------------------------------------------------- real processes, SIGKILL
def _worker_cmd(world: World, url: str, out, owner: str) -> list[str]:
    return [sys.executable, "-m", "exfm_plugin.cli", "das", "run", "--snapshots", world.spd.root,
            "--metastore", url, "--day-files", *[f"{k}={v}" for k, v in world.day_files.items()],
            "--out", str(out), "--shard-rows", "150", "--batch-size", "64", "--owner", owner,
            "--lease", "2", "--no-progress"]


def test_killed_worker_shard_is_redone_and_output_equals_single_worker(world, store_url, tmp_path):
    """Two real `exfm das run` processes; the first to hold a claim is SIGKILLed mid-shard (each shard
    sleeps 1.5 s before publishing); the other must redo that shard after its lease expires."""
    out = tmp_path / "multi"
    env = dict(os.environ, OMP_NUM_THREADS="1", **{worker.SLOW_SHARD_ENV: "1.5"})
    procs = {owner: subprocess.Popen(_worker_cmd(world, store_url, out, owner), cwd=REPO, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for owner in ("w0", "w1")}
    job = world.job(out, shard_rows=150)
    victim = in_flight = None
    try:
        with open_metastore(store_url) as store:
            deadline = time.time() + 60
            while victim is None and time.time() < deadline:
                for sid, st in store.job_status(job.job_id).items():
                    if st.state == "claimed":
                        victim = st.owner
                        procs[victim].send_signal(signal.SIGKILL)
                        break
                else:
                    time.sleep(0.02)
            assert victim is not None, [p.communicate(timeout=5) for p in procs.values()]
            procs[victim].wait()
            in_flight = [sid for sid, st in store.job_status(job.job_id).items()
                         if st.state == "claimed" and st.owner == victim]
            survivor = "w1" if victim == "w0" else "w0"
            _, err = procs[survivor].communicate(timeout=90)
            assert procs[survivor].returncode == 0, err[-3000:]
            status = store.job_status(job.job_id)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    assert procs[victim].returncode == -signal.SIGKILL
    assert len(in_flight) == 1  # killed mid-shard: its claim was still open
    assert all(s.state == "done" for s in status.values()) and len(status) == 4
    assert status[in_flight[0]].attempts >= 2
    with h5py.File(job.shard_path(in_flight[0]), "r") as f:
        assert f.attrs["owner"] == survivor
    # every distinct row published exactly once
    ids = np.concatenate([h5py.File(p, "r")["example_id"][...] for p in _shard_files(job)])
    np.testing.assert_array_equal(np.sort(ids), world.ids[world.union])
    assert not _leftover_temps(job)

    # the reference: one in-process worker, no kill
    ref = world.job(tmp_path / "single", shard_rows=150)
    with open_metastore(f"sqlite://{tmp_path}/ref.db") as store:
        run_worker(ref, store, "alone", 30, loaded=world.loaded, progress=False)
    for vm in ("a", "b"):
        multi = _check_split(world, job, vm)
        single = read_day_columns(ref.vm_output(vm), ["example_id", "fm_pred", "click", "user_id"])
        for key, arr in single.items():
            np.testing.assert_array_equal(multi[key], arr)

    # exfm das status reads the same store
    assert exfm_main(["das", "status", "--metastore", store_url, "--job", job.job_id, "--json"]) == 0


def test_status_cli_reports_current_snapshot_and_shards(world, tmp_path, capsys):
    url = f"sqlite://{tmp_path}/m.db"
    job = world.job(tmp_path / "out", shard_rows=200)
    with open_metastore(url) as store:
        store.compare_and_set_current(world.info.snapshot_id, expected_version=None, owner="u", lease_seconds=100)
        store.register_shards(job.job_id, ["shard-00000", "shard-00001", "shard-00002"])
        assert store.claim_shard(job.job_id, "w", 50) == "shard-00000"
        assert store.complete_shard(job.job_id, "shard-00000", "w")
        assert store.claim_shard(job.job_id, "w", 50) == "shard-00001"
    capsys.readouterr()
    assert exfm_main(["das", "status", "--metastore", url, "--day", str(DAY), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["current"]["snapshot_id"] == world.info.snapshot_id
    assert 99 < data["current"]["lease_seconds_left"] <= 100
    assert data["job"]["job_id"] == job.job_id
    assert (data["job"]["done"], data["job"]["claimed"], data["job"]["pending"]) == (1, 1, 1)
    assert data["job"]["claims"][0]["owner"] == "w"
    assert exfm_main(["das", "status", "--metastore", url, "--job", job.job_id]) == 0
    text = capsys.readouterr().out
    assert "1 done, 1 claimed" in text and "shard-00001: claimed by w" in text


def test_cli_publish_from_checkpoint_then_run(world, tmp_path, capsys):
    """publish: params + weights -> SPD; run: updater records it, the worker augments the day."""
    weights = tmp_path / "dcn.model"
    torch.save(world.model.state_dict(), weights)
    params_file = tmp_path / "params.json"
    params_file.write_text(json.dumps(world.params))
    spd = tmp_path / "spd"
    assert exfm_main(["das", "publish", "--snapshots", str(spd), "--model-params", str(params_file),
                      "--weights", str(weights), "--feature-map-dir", str(world.root / "tiny"),
                      "--day", "5", "--snapshot-id", "fm-day5"]) == 0
    assert json.loads(capsys.readouterr().out)["snapshot_id"] == "fm-day5"
    assert SnapshotStore(str(spd)).get("fm-day5").trained_through_day == 5
    out = tmp_path / "out"
    assert exfm_main(["das", "run", "--snapshots", str(spd), "--day-files",
                      *[f"{k}={v}" for k, v in world.day_files.items()], "--out", str(out),
                      "--shard-rows", "256", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["complete"] and report["job_id"] == f"{DAY}-fm-day5"
    assert os.path.exists(spd / "das.db")  # the default metastore
    job = AugmentJob.from_day_files(world.vms(), "fm-day5", str(out))
    for vm in ("a", "b"):
        got = read_day_columns(job.vm_output(vm), ["example_id", "fm_pred"])
        np.testing.assert_allclose(got["fm_pred"], world.expected[world.vm_rows[vm]], rtol=0, atol=1e-6)
    # a bad day file is one clear error line, exit status 2
    assert exfm_main(["das", "run", "--snapshots", str(spd), "--day-files", "x=/nonexistent.h5",
                      "--out", str(out), "--no-progress"]) == 2
    assert "/nonexistent.h5" in capsys.readouterr().err


def test_gather_reads_scattered_rows_in_bounded_slabs(tmp_path, monkeypatch):
    path = str(tmp_path / "g.h5")
    data = np.arange(50_000, dtype=np.int64).reshape(-1, 2) * 3  # 25_000 rows of 2
    with h5py.File(path, "w") as f:
        f["x"] = data
    monkeypatch.setattr(shared, "_MAX_SPAN", 1000)
    monkeypatch.setattr(shared, "_GAP_ROWS", 50)
    idx = np.unique(np.random.default_rng(0).integers(0, 25_000, 3000))
    slabs = []
    with h5py.File(path, "r") as f:
        ds = f["x"]

        class Spy:
            shape, dtype = ds.shape, ds.dtype

            def __getitem__(self, key):
                slabs.append(key.stop - key.start)
                return ds[key]

        np.testing.assert_array_equal(shared._gather(Spy(), idx), data[idx])
        np.testing.assert_array_equal(shared._gather(Spy(), np.arange(10, 20)), data[10:20])
    assert max(slabs) <= 1000 and len(slabs) >= 25  # never the whole file at once
