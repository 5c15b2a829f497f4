"""Nothing left behind: temporaries of dead processes are swept, never-current snapshots collected."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from exfm_plugin.fsutil import HOST_TAG, atomic_dir, atomic_file, pid_alive, sweep_stale_temps, temp_owner

REPO = Path(__file__).resolve().parents[2]


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not pid_alive(proc.pid)
    return proc.pid


def test_temp_names_carry_host_and_pid(tmp_path):
    with atomic_file(tmp_path / "f.json") as tmp:
        assert temp_owner(os.path.basename(tmp)) == (HOST_TAG, os.getpid())
    with atomic_dir(tmp_path / "d") as tmp:
        assert temp_owner(os.path.basename(tmp)) == (HOST_TAG, os.getpid())
    assert temp_owner("f.json") is None and temp_owner(".x.tmp") is None


def test_sweep_removes_only_dead_processes_temps(tmp_path):
    dead = _dead_pid()
    stale_dir = tmp_path / f".out.{HOST_TAG}-{dead}-0123abcd.tmp"
    stale_dir.mkdir()
    (stale_dir / "day_1.h5").write_bytes(b"x")
    stale_file = tmp_path / f".x.json.{HOST_TAG}-{dead}-89abcdef.tmp"
    stale_file.write_text("{}")
    live = tmp_path / f".out.{HOST_TAG}-{os.getppid()}-00000000.tmp"  # our parent is alive
    live.mkdir()
    other_host = tmp_path / f".out.ffffff-{dead}-00000000.tmp" if HOST_TAG != "ffffff" else None
    if other_host:
        other_host.mkdir()
    legacy = tmp_path / ".out.0123abcd.tmp"  # a name without an owner: unknown writer, kept
    legacy.mkdir()
    keep = tmp_path / "out"
    keep.mkdir()
    removed = sweep_stale_temps(tmp_path)
    assert sorted(removed) == sorted([str(stale_dir), str(stale_file)])
    assert live.exists() and legacy.exists() and keep.exists() and (other_host is None or other_host.exists())


def test_sweep_keeps_the_old_tree_of_a_swap_killed_between_renames(tmp_path):
    """atomic_dir(replace=True) renames the old tree aside, then the new one in: killed in between,
    the renamed-aside old tree is the only copy, so it is kept."""
    dead = _dead_pid()
    old = tmp_path / f".data.old.{HOST_TAG}-{dead}-0123abcd.tmp"
    old.mkdir()
    assert sweep_stale_temps(tmp_path) == [] and old.exists()
    (tmp_path / "data").mkdir()  # once the target exists again, the old copy is garbage
    assert sweep_stale_temps(tmp_path) == [str(old)]


def test_a_killed_prep_leaves_a_temp_that_the_next_prep_removes(tmp_path):
    """Kill ``exfm prep`` while it writes; the temp it leaves is gone after the next successful run."""
    out = tmp_path / "out"
    code = ("import os, data_prep.prepare as p\n"
            "import exfm_plugin.data.dayfile as d\n"
            "orig = d.write_day_file\n"
            "def die(path, *a, **k):\n"
            "    orig(path, *a, **k)\n"
            "    os._exit(9)\n"
            "d.write_day_file = die\n"
            f"p.prepare('taobaoad', 'synthetic', {str(tmp_path / 'raw')!r}, {str(out)!r}, size=1000)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 9, proc.stderr[-2000:]
    temps = [n for n in os.listdir(out) if temp_owner(n)]
    assert len(temps) == 1 and temp_owner(temps[0])[0] == HOST_TAG and not pid_alive(temp_owner(temps[0])[1])
    from data_prep.prepare import prepare

    prepare("taobaoad", "raw", str(tmp_path / "raw"), str(out))
    assert [n for n in os.listdir(out) if n.startswith(".")] == []
    assert (out / "taobaoad_raw" / "day_8.h5").exists()


# ------------------------------------------------------------------------- snapshots
@pytest.fixture(scope="module")
def snap_world(tmp_path_factory):
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_data import make_tiny_data, random_dcn

    root = tmp_path_factory.mktemp("snaps")
    data = make_tiny_data(str(root / "tiny"), num_rows=128)
    return data, random_dcn(data.feature_map, root, 0)


def test_never_current_snapshots_are_collected_after_the_lease(tmp_path, snap_world):
    """Published in the order a, b (corrupt), c, d: the updater records d straight away, so a, b
    and c never become current. Once older than the lease they are deleted; d stays, and a
    snapshot newer than the current one (e, not yet recorded) is never touched."""
    from exfm_plugin.das.metastore import open_metastore
    from exfm_plugin.das.spd import SnapshotStore
    from exfm_plugin.das.service.updater import Updater

    data, (model, params) = snap_world
    spd = SnapshotStore(str(tmp_path / "spd"))
    for sid in ("a", "b", "c", "d"):
        spd.publish(model, model_params=params, feature_map_dir=data.feature_map.data_dir, snapshot_id=sid)
    weights = Path(spd.get("b").path) / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    with open_metastore(f"sqlite://{tmp_path}/meta.db") as store:
        updater = Updater(spd, store, owner="u", lease_seconds=60, poll_interval=1)
        assert updater.poll_once() == "d"
        assert [s.snapshot_id for s in spd.list()] == ["a", "b", "c", "d"]  # younger than the lease
        spd.publish(model, model_params=params, feature_map_dir=data.feature_map.data_dir, snapshot_id="e")
        created_e = spd.get("e").created_at
        later = created_e + 61
        deleted = updater.collect_never_current("d", now=later)
        assert sorted(deleted) == ["a", "b", "c"]
        assert [s.snapshot_id for s in spd.list()] == ["d", "e"]
        assert store.get_current().snapshot_id == "d"
