"""``exfm das run --poll``: a long-running DAS task whose loader (``das.service.loader.SnapshotLoader``)
follows the snapshot the metadata store names.

One real process: it augments the day with snapshot A; a newer B is published and the same
process augments the day again with B; a corrupt C that someone records as current anyway is
refused (the process keeps running, no output for C); the next good snapshot D is augmented.
Expectations come from calling each published model directly on the VM's rows.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from exfm_plugin.das.metastore import open_metastore
from exfm_plugin.das.spd import SnapshotStore
from exfm_plugin.data.dayfile import read_day_columns, write_day_file
from tiny_data import make_tiny_data, random_dcn

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DAY = 6
N_ROWS = 300

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(tiny, root, seed: int):
    model, params = random_dcn(tiny.feature_map, root, seed)
    with torch.no_grad():
        expected = np.concatenate([model(b)["y_pred"].reshape(-1).numpy() for b in tiny.batches(100)])
    return model, params, expected


def _wait_for(path: str, proc: subprocess.Popen, log: str, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise AssertionError(f"exfm das run exited with {proc.returncode}: {open(log).read()[-3000:]}")
        if time.time() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.1)


def test_das_run_poll_follows_new_snapshots_and_refuses_a_corrupt_one(tmp_path):
    tiny = make_tiny_data(str(tmp_path / "tiny"), num_rows=N_ROWS, seed=0)
    ids = np.arange(N_ROWS, dtype=np.int64) * 3 + 10
    vm_file = str(tmp_path / "vm.h5")
    write_day_file(vm_file, dict(tiny.columns, example_id=ids), dataset_id="tiny", day=DAY)
    spd = SnapshotStore(tmp_path / "spd")
    models = {name: _model(tiny, tmp_path, seed) for seed, name in enumerate("ABCD")}

    def publish(name: str) -> None:
        model, params, _ = models[name]
        spd.publish(model, model_params=params, feature_map_dir=str(tmp_path / "tiny"), snapshot_id=name)

    def split(name: str) -> str:
        return str(tmp_path / "out" / f"{DAY}-{name}" / "vm.h5")

    def complete(name: str) -> str:  # stage 2 writes the manifest last
        return str(tmp_path / "out" / f"{DAY}-{name}" / "manifest.json")

    def check(name: str) -> None:
        got = read_day_columns(split(name), ["example_id", "fm_pred"])
        np.testing.assert_array_equal(got["example_id"], ids)
        np.testing.assert_allclose(got["fm_pred"], models[name][2], rtol=0, atol=1e-6)

    publish("A")
    cmd = [sys.executable, "-m", "exfm_plugin.cli", "das", "run", "--snapshots", spd.root,
           "--day-files", f"vm={vm_file}", "--out", str(tmp_path / "out"), "--poll", "0.2",
           "--shard-rows", "128", "--owner", "w", "--no-progress"]
    log = str(tmp_path / "das_run.log")
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"),
                                stdout=subprocess.DEVNULL, stderr=err, text=True)
    try:
        _wait_for(complete("A"), proc, log)
        check("A")
        before = os.stat(split("A")).st_mtime_ns

        publish("B")  # newer: the updater records it, the loader loads it, the day is augmented again
        _wait_for(complete("B"), proc, log)
        check("B")

        # C is corrupted in a staging store and then moved into the SPD whole, so that the
        # updater never sees it intact (it refuses to record it) ...
        staging = SnapshotStore(tmp_path / "staging")
        model, params, _ = models["C"]
        staged = staging.publish(model, model_params=params, feature_map_dir=str(tmp_path / "tiny"), snapshot_id="C")
        path = os.path.join(staged.path, "weights.pt")
        raw = bytearray(open(path, "rb").read())
        raw[len(raw) // 2] ^= 0x5A
        open(path, "wb").write(bytes(raw))
        os.rename(staged.path, os.path.join(spd.root, "C"))
        # ... and someone records it as current anyway: the loader must refuse it
        with open_metastore(f"sqlite:///{os.path.join(spd.root, 'das.db').lstrip('/')}") as store:
            for _ in range(50):  # the updater extends B's lease (a new version) every poll: retry
                cur = store.get_current()
                assert cur.snapshot_id == "B"
                if store.compare_and_set_current("C", expected_version=cur.version, owner="intruder",
                                                 lease_seconds=600):
                    break
            assert store.get_current().snapshot_id == "C"
        time.sleep(2.0)  # ten polls: the loader tries C once and refuses it
        assert proc.poll() is None, open(log).read()[-3000:]
        assert not os.path.exists(os.path.dirname(split("C")))

        publish("D")  # newer than the recorded C: recorded, loaded, augmented
        _wait_for(complete("D"), proc, log)
        check("D")
        assert os.stat(split("A")).st_mtime_ns == before  # earlier outputs are never rewritten
        assert proc.poll() is None
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    log_text = open(log).read()
    assert "loader: refusing snapshot C" in log_text and "loader: refusing snapshot D" not in log_text
