"""exfm_plugin.fsutil: a write either completes (whole, durable) or leaves the old target and no
temp behind, whatever the writer does inside the block: raise, get killed, race another writer.

Expectations are the contract itself: the target's bytes equal exactly the old or the new
content, and the directory holds no ``.*.tmp`` entry after an exception.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exfm_plugin import fsutil
from exfm_plugin.fsutil import atomic_dir, atomic_file, is_temp_name

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Boom(Exception):
    pass


def _temps(directory) -> list[str]:
    return [n for n in os.listdir(directory) if is_temp_name(n)]


def _tree(root) -> dict[str, bytes]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


# --------------------------------------------------------------------------- atomic_file
@settings(max_examples=40, deadline=None)
@given(old=st.one_of(st.none(), st.binary(max_size=2000)), new=st.binary(max_size=2000),
       cut=st.floats(0, 1), fail=st.booleans())
def test_atomic_file_is_old_or_new_never_partial(tmp_path_factory, old, new, cut, fail):
    """Any content, any failure point: after the block the target holds exactly the old bytes
    (or nothing, if there were none) when the writer raised, exactly the new ones otherwise."""
    d = tmp_path_factory.mktemp("f")
    target = d / "out.bin"
    if old is not None:
        target.write_bytes(old)
    try:
        with atomic_file(target) as tmp:
            assert os.path.dirname(tmp) == str(d) and is_temp_name(os.path.basename(tmp))
            with open(tmp, "wb") as f:
                f.write(new[: int(len(new) * cut)] if fail else new)
            if fail:
                raise Boom
    except Boom:
        pass
    if fail:
        assert (target.read_bytes() if target.exists() else None) == old
    else:
        assert target.read_bytes() == new
    assert _temps(d) == []


def test_atomic_file_exclusive_creates_once(tmp_path):
    target = tmp_path / "plan.json"
    with atomic_file(target, exclusive=True) as tmp:
        _write(tmp, b"first")
    with pytest.raises(FileExistsError, match="plan.json"):
        with atomic_file(target, exclusive=True) as tmp:
            _write(tmp, b"second")
    assert target.read_bytes() == b"first" and _temps(tmp_path) == []
    assert oct(os.stat(target).st_mode & 0o777) == oct(0o666 & ~_umask())  # as open() would create it


def test_atomic_file_fsyncs_data_before_rename_and_dir_after(tmp_path, monkeypatch):
    """The one fsync policy, observed: the temp's data, then the rename, then the parent dir."""
    events: list[tuple[str, str]] = []
    real_replace = os.replace
    monkeypatch.setattr(fsutil, "fsync_file", lambda p: events.append(("fsync_file", os.path.basename(p))))
    monkeypatch.setattr(fsutil, "fsync_dir", lambda p: events.append(("fsync_dir", str(p))))
    monkeypatch.setattr(fsutil.os, "replace", lambda a, b: (events.append(("replace", os.path.basename(b))),
                                                            real_replace(a, b))[1])
    with atomic_file(tmp_path / "x.h5") as tmp:
        _write(tmp, b"data")
    assert [e[0] for e in events] == ["fsync_file", "replace", "fsync_dir"]
    assert events[0][1] == os.path.basename(tmp) and events[2][1] == str(tmp_path)


def test_killed_writer_leaves_the_old_file(tmp_path):
    """SIGKILL in the middle of writing (no except/finally runs): the old file is intact; the
    temp left behind is recognisably a temp, for the sweepers."""
    target = tmp_path / "day.h5"
    target.write_bytes(b"old content")
    script = textwrap.dedent(f"""
        import os, sys, time
        from exfm_plugin.fsutil import atomic_file
        with atomic_file({str(target)!r}) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half of the new")
                f.flush()
                print("writing", flush=True)
                time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "writing"
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert target.read_bytes() == b"old content"
    assert len(_temps(tmp_path)) == 1


# --------------------------------------------------------------------------- atomic_dir
@settings(max_examples=25, deadline=None)
@given(old=st.one_of(st.none(), st.dictionaries(st.sampled_from(["a", "b", "c/d"]), st.binary(max_size=50),
                                                min_size=1)),
       new=st.dictionaries(st.sampled_from(["a", "x", "c/e", "c/f/g"]), st.binary(max_size=50), min_size=1),
       fail_after=st.integers(0, 4), fail=st.booleans())
def test_atomic_dir_replace_is_old_tree_or_new_tree(tmp_path_factory, old, new, fail_after, fail):
    d = tmp_path_factory.mktemp("d")
    target = d / "dataset"
    if old is not None:
        for rel, data in old.items():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            (target / rel).write_bytes(data)
    try:
        with atomic_dir(target, replace=True) as tmp:
            for i, (rel, data) in enumerate(sorted(new.items())):
                if fail and i == fail_after:
                    raise Boom
                os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
                _write(os.path.join(tmp, rel), data)
            if fail:
                raise Boom
    except Boom:
        pass
    got = _tree(target) if target.exists() else None
    expected = (old if fail else new)
    assert got == ({k.replace("/", os.sep): v for k, v in expected.items()} if expected is not None else None)
    assert _temps(d) == []


def test_atomic_dir_never_overwrites_without_replace(tmp_path):
    target = tmp_path / "snap"
    with atomic_dir(target) as tmp:
        _write(os.path.join(tmp, "manifest.json"), b"one")
    with pytest.raises(FileExistsError, match="snap"):
        with atomic_dir(target) as tmp:
            _write(os.path.join(tmp, "manifest.json"), b"two")
    assert _tree(target) == {"manifest.json": b"one"} and _temps(tmp_path) == []


def test_atomic_dir_concurrent_writers_one_wins(tmp_path):
    """Two writers of the same new directory: exactly one tree lands, whole; the loser gets
    FileExistsError and leaves no temp."""
    target = tmp_path / "snap"
    barrier = threading.Barrier(2)
    results: dict[int, str] = {}

    def write(i: int) -> None:
        try:
            with atomic_dir(target) as tmp:
                for k in range(20):
                    _write(os.path.join(tmp, f"f{k}"), bytes([i]) * 100)
                barrier.wait(timeout=10)  # both hold a complete temp before either renames
            results[i] = "won"
        except FileExistsError:
            results[i] = "lost"

    threads = [threading.Thread(target=write, args=(i,)) for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values()) == ["lost", "won"]
    winner = next(i for i, r in results.items() if r == "won")
    assert _tree(target) == {f"f{k}": bytes([winner]) * 100 for k in range(20)}
    assert _temps(tmp_path) == []


def test_atomic_dir_fsyncs_every_file_and_directory_before_the_rename(tmp_path, monkeypatch):
    synced: list[str] = []
    renamed: list[str] = []
    real_rename = os.rename
    monkeypatch.setattr(fsutil, "fsync_file", lambda p: synced.append(os.path.basename(p)))
    monkeypatch.setattr(fsutil, "fsync_dir", lambda p: synced.append(os.path.basename(str(p)) + "/"))
    monkeypatch.setattr(fsutil.os, "rename", lambda a, b: (renamed.append(list(synced)), real_rename(a, b))[1])
    with atomic_dir(tmp_path / "snap") as tmp:
        os.makedirs(os.path.join(tmp, "feature_map"))
        _write(os.path.join(tmp, "feature_map", "feature_map.json"), b"{}")
        _write(os.path.join(tmp, "weights.pt"), b"w")
    before_rename = renamed[0]
    assert {"feature_map.json", "weights.pt", "feature_map/", os.path.basename(tmp) + "/"} <= set(before_rename)
    assert synced[-1] == tmp_path.name + "/"  # the parent, after the rename
    assert oct(os.stat(tmp_path / "snap").st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
