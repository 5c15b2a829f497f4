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
    # no temporary directory left behind (the step's lock file stays: unlinking a flock'ed file races)
    assert sorted(os.listdir(tmp_path / "step")) == sorted([key, store.lock_path("step", key).name])
    assert store.build("step", {"x": 1}, mine)[2]["who"] == "theirs"  # done: never rebuilt


def test_an_fm_step_whose_snapshot_another_builder_published_first_still_succeeds(tmp_path, monkeypatch):
    """Two processes building the same FM step (two `make reproduce` lanes reaching one teacher)
    both train it; the one that publishes second gets SnapshotExists and must use the
    published snapshot instead of failing its cells."""
    import yaml

    from exfm_plugin.das import spd as spd_module
    from exfm_plugin.pipeline.grid import load_grid
    from exfm_plugin.pipeline.records import read_records
    from exfm_plugin.pipeline.runner import run_grid

    grid_file = tmp_path / "g.yaml"
    grid_file.write_text(yaml.safe_dump({
        "grid": "g", "dataset": "taobaoad", "size": 6000, "seeds": 1,
        "model_overrides": {"all": {"embedding_dim": 4, "batch_size": 256}, "DCN": {"dnn_hidden_units": [8]}},
        "tuner_space": {"teacher": "DCN", "student": "FM", "method": "ah"}}))
    work, results = tmp_path / "work", tmp_path / "results"
    first = run_grid(load_grid(str(grid_file)), str(work), str(results / "a"), progress=False)
    assert first.failed == 0
    # the other builder: its FM steps are not marked done, and its "is it published yet?" check
    # runs before the winner's publish lands, so its own publish collides
    for done in (work / "artifacts" / "fm").glob("*/DONE"):
        done.unlink()
    real_get, seen = spd_module.SnapshotStore.get, set()

    def late_get(self, snapshot_id, *args, **kwargs):
        if snapshot_id not in seen:
            seen.add(snapshot_id)
            raise spd_module.SnapshotNotFound(snapshot_id)
        return real_get(self, snapshot_id, *args, **kwargs)

    monkeypatch.setattr(spd_module.SnapshotStore, "get", late_get)
    second = run_grid(load_grid(str(grid_file)), str(work), str(results / "b"), progress=False)
    assert (second.ok, second.failed) == (first.ok, 0) and seen
    ids = lambda path: sorted(r["snapshot_id"] for r in read_records([path]))  # noqa: E731
    assert ids(second.records_path) == ids(first.records_path)


def _build_slowly(root, log, results) -> None:
    """One process's build of step ``{"x": 1}``: notes each time ``fn`` runs, and which builder's
    meta the store returned."""
    import time

    def fn(tmp):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(1.0)  # long enough for the other process to arrive while this one builds
        (tmp / "out.txt").write_text(str(os.getpid()))
        return {"builder": os.getpid()}

    results.put(ArtifactStore(root).build("step", {"x": 1}, fn)[2]["builder"])


def test_two_processes_on_one_store_build_a_step_once(tmp_path):
    """The step lock: the second process waits for the first and reuses its artifact (without it
    both would run ``fn``, the loser's result discarded)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    log = tmp_path / "runs.log"
    procs = [ctx.Process(target=_build_slowly, args=(tmp_path / "store", log, results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    builders = {results.get(timeout=5), results.get(timeout=5)}
    ran = log.read_text().split()
    assert len(ran) == 1 and builders == {int(ran[0])}
    store = ArtifactStore(tmp_path / "store")
    key = artifacts.step_key("step", {"x": 1})
    assert (store.path("step", key) / "out.txt").read_text() == ran[0]
