"""DAS rides through a ZooKeeper outage shorter than the session timeout.

A private ZooKeeper (scripts/zookeeper.sh with its own state folder and port, so no other test's
server is touched) backs an ``exfm das run`` worker that is slowed down per shard. Mid-shard the
server is stopped for a few seconds and started again on the same port. The worker must stop its
lease writes, wait, re-check its claim after reconnecting and finish; its output must equal that
of an undisturbed run.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from exfm_plugin.das.augment import AugmentJob, VMSpec
from exfm_plugin.data.dayfile import read_day_columns

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "zookeeper.sh"
pytestmark = pytest.mark.zookeeper


def _installed_root() -> Path | None:
    for base in (os.environ.get("EXFM_ZK_DIR"), str(REPO / ".zk")):
        if base and (Path(base) / "root" / "usr" / "share" / "java" / "zookeeper.jar").exists():
            return Path(base) / "root"
    return None


class PrivateZk:
    """A ZooKeeper server of this test only (state in ``folder``, jars of the installed one)."""

    def __init__(self, folder: Path) -> None:
        self.env = dict(os.environ, EXFM_ZK_DIR=str(folder))
        self.port: str | None = None

    def _script(self, *args: str) -> str:
        proc = subprocess.run(["bash", str(SCRIPT), *args], env=self.env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout.strip()

    def start(self) -> str:
        line = self._script("start", *([self.port] if self.port else []))
        hosts = line.split("=", 1)[1]
        self.port = hosts.rsplit(":", 1)[1]
        return hosts

    def stop(self) -> None:
        self._script("stop")


@pytest.fixture
def private_zk(tmp_path):
    root = _installed_root()
    if root is None and not Path("/usr/share/java/zookeeper.jar").exists():
        msg = "needs ZooKeeper's jars: bash scripts/zookeeper.sh install"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    folder = tmp_path / "zk"
    folder.mkdir()
    if root is not None:
        (folder / "root").symlink_to(root)
    zk = PrivateZk(folder)
    yield zk
    if zk.port:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=zk.env, capture_output=True, timeout=60)


def _worker(das_world, hosts: str, chroot: str, out: Path, delay: float) -> subprocess.Popen:
    url = f"zk://{hosts}{chroot}?session_timeout=30&op_timeout=30"
    cmd = [sys.executable, "-m", "exfm_plugin.cli", *das_world.run_args(
        out, "--snapshot", "s1", "--shard-rows", "32", "--lease", "20", "--metastore", url)]
    env = dict(os.environ, EXFM_DAS_TEST_SHARD_DELAY=str(delay))
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _outputs(das_world, out: Path) -> dict[str, np.ndarray]:
    job = AugmentJob.from_day_files([VMSpec("a", str(das_world.day_file))], "s1", str(out))
    return read_day_columns(job.vm_output("a"), ["example_id", "fm_pred"])


def test_worker_rides_through_a_short_zookeeper_outage(das_world, private_zk, tmp_path):
    hosts = private_zk.start()
    calm = _worker(das_world, hosts, "/calm", tmp_path / "calm", delay=0)
    out, err = calm.communicate(timeout=300)
    assert calm.returncode == 0, err[-3000:]

    proc = _worker(das_world, hosts, "/outage", tmp_path / "outage", delay=1.0)
    shards = tmp_path / "outage"
    deadline = time.monotonic() + 120
    while not list(shards.rglob("shards/*.h5")):  # the first shard is published: mid-job now
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    stopped = time.monotonic()
    private_zk.stop()
    time.sleep(3.0)
    assert proc.poll() is None, "the worker exited while ZooKeeper was down"
    private_zk.start()  # same port, same data: the session is still alive
    outage = time.monotonic() - stopped
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    assert report["complete"], report
    assert "waiting up to" in err, "the worker never saw the outage"
    assert outage < 30  # shorter than the session timeout, as the case requires
    calm_cols, outage_cols = _outputs(das_world, tmp_path / "calm"), _outputs(das_world, tmp_path / "outage")
    np.testing.assert_array_equal(outage_cols["example_id"], calm_cols["example_id"])
    np.testing.assert_array_equal(outage_cols["fm_pred"], calm_cols["fm_pred"])
    shutil.rmtree(tmp_path / "calm", ignore_errors=True)
