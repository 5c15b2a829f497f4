"""Content-addressed steps: when two processes build the same step, the first rename wins and
the other keeps using the winner's directory, never deleting it."""
import os

from exfm_plugin.pipeline import artifacts
from exfm_plugin.pipeline.artifacts import ArtifactStore


def test_a_step_finished_by_another_process_first_is_kept_and_the_loser_cleans_up(tmp_path, monkeypatch):
    store = ArtifactStore(tmp_path)
    real_getpid = os.getpid

    def theirs(tmp):
        (tmp / "out.txt").write_text("theirs")
        return {"who": "theirs"}

    def mine(tmp):
        # while this build runs, "another process" (another pid) builds and renames the same step
        monkeypatch.setattr(artifacts.os, "getpid", lambda: real_getpid() + 100000)
        store.build("step", {"x": 1}, theirs)
        monkeypatch.setattr(artifacts.os, "getpid", real_getpid)
        (tmp / "out.txt").write_text("mine")
        return {"who": "mine"}

    key, path, meta = store.build("step", {"x": 1}, mine)
    assert meta["who"] == "theirs" and (path / "out.txt").read_text() == "theirs"
    assert sorted(os.listdir(tmp_path / "step")) == [key]  # no temporary directory left behind
    assert store.build("step", {"x": 1}, mine)[2]["who"] == "theirs"  # done: never rebuilt
