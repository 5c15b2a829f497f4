"""DAS updater (SPD -> metadata store, lease, GC) and loader (hot swap), on SQLite and ZooKeeper.

The ZooKeeper cases need a server: ``bash scripts/zookeeper.sh install`` then
``export "$(bash scripts/zookeeper.sh start)"`` (sets EXFM_ZK_HOSTS=127.0.0.1:PORT). Without it
they skip, except under CI (env ``CI`` set), where they fail.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter

import numpy as np
import pytest
import torch

from exfm_plugin.das.metastore import LeaseLostError, open_metastore
from exfm_plugin.das.service.loader import NoSnapshotLoaded, SnapshotRefused, SnapshotLoader
from exfm_plugin.das.spd import SnapshotStore
from exfm_plugin.das.service.updater import Updater
from tiny_data import make_tiny_data, random_dcn



pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- stores





@pytest.fixture
def stores(store_url):
    """Open any number of connections to the same store (each DAS task has its own)."""
    opened = []

    def open_one():
        s = open_metastore(store_url)
        opened.append(s)
        return s

    yield open_one
    for s in opened:
        s.close()


@pytest.fixture
def store(stores):
    return stores()


class Proxy:
    """Forwards to a store; subclasses override methods to count or fail."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)


# ----------------------------------------------------------------------------- snapshots

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_data(str(tmp_path_factory.mktemp("tiny")), num_rows=256)


@pytest.fixture(scope="module")
def models(data, tmp_path_factory):
    """Two differently initialised tiny DCNs, and the params that rebuild them."""
    root = tmp_path_factory.mktemp("models")
    return [random_dcn(data.feature_map, root, seed) for seed in (0, 1)]


@pytest.fixture
def spd(tmp_path):
    return SnapshotStore(tmp_path / "spd")


def publish(spd, data, models, which: int = 0, snapshot_id: str | None = None) -> str:
    model, params = models[which]
    return spd.publish(model, model_params=params, feature_map_dir=data.feature_map.data_dir,
                       snapshot_id=snapshot_id).snapshot_id


def corrupt(spd, snapshot_id: str) -> None:
    path = os.path.join(spd.get(snapshot_id).path, "weights.pt")
    raw = bytearray(open(path, "rb").read())
    raw[len(raw) // 2] ^= 0x5A
    open(path, "wb").write(bytes(raw))


def batch_of(data, rows: int = 64) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v[:rows]) for k, v in data.columns.items()}


def set_current(store, snapshot_id: str) -> None:
    cur = store.get_current()
    assert store.compare_and_set_current(snapshot_id, expected_version=cur.version if cur else None,
                                         owner="test", lease_seconds=60)


# ----------------------------------------------------------------------------- updater

def test_updater_records_newest_extends_lease_and_switches(spd, store, data, models):
    updater = Updater(spd, store, owner="u1", lease_seconds=30, poll_interval=1)
    assert updater.poll_once() is None and store.get_current() is None  # empty SPD

    a = publish(spd, data, models)
    b = publish(spd, data, models, 1)
    assert updater.poll_once() == b  # the newest, not the first
    cur = store.get_current()
    assert cur.snapshot_id == b and cur.owner == "u1"
    assert cur.lease_expires_at > time.time() + 25

    leases = [cur]
    for _ in range(2):  # nothing new: each poll extends the lease of the same snapshot
        time.sleep(0.02)
        assert updater.poll_once() == b
        leases.append(store.get_current())
    assert [x.snapshot_id for x in leases] == [b, b, b]
    assert leases[0].lease_expires_at < leases[1].lease_expires_at < leases[2].lease_expires_at
    assert leases[0].version < leases[1].version < leases[2].version

    c = publish(spd, data, models)
    assert updater.poll_once() == c
    assert store.get_current().snapshot_id == c
    assert a in {s.snapshot_id for s in spd.list()}  # nothing expired yet: nothing collected


def test_updater_never_goes_back_to_an_older_snapshot(spd, store, data, models):
    old = publish(spd, data, models)
    new = publish(spd, data, models, 1)
    set_current(store, new)  # e.g. recorded by another updater
    updater = Updater(spd, store, owner="u", lease_seconds=30, poll_interval=1)
    assert updater.poll_once() == new
    assert store.get_current().snapshot_id == new and old != new


def test_racing_updaters_one_winner_same_current(spd, stores, data, models):
    wins, attempts, lock = Counter(), Counter(), threading.Lock()

    class Counting(Proxy):
        def __init__(self, inner, name):
            super().__init__(inner)
            self.name = name

        def compare_and_set_current(self, snapshot_id, **kw):
            ok = self._inner.compare_and_set_current(snapshot_id, **kw)
            with lock:
                attempts[snapshot_id] += 1
                if ok:
                    wins[snapshot_id] += 1
            return ok

    updaters = [Updater(spd, Counting(stores(), f"u{i}"), owner=f"u{i}", lease_seconds=30, poll_interval=1)
                for i in range(2)]
    published = []
    for round_ in range(4):
        published.append(publish(spd, data, models, round_ % 2))
        barrier = threading.Barrier(len(updaters))
        results = [None] * len(updaters)

        def poll(i):
            barrier.wait()
            results[i] = updaters[i].poll_once()

        threads = [threading.Thread(target=poll, args=(i,)) for i in range(len(updaters))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert results == [published[-1]] * len(updaters), (round_, results)
        assert wins[published[-1]] == 1, (round_, dict(wins), dict(attempts))
        for s in (stores(),):
            assert s.get_current().snapshot_id == published[-1]
    assert sum(wins.values()) == len(published)


def test_corrupt_newest_snapshot_is_skipped(spd, store, data, models, caplog, monkeypatch):
    updater = Updater(spd, store, owner="u1", lease_seconds=30, poll_interval=1)
    a = publish(spd, data, models)
    assert updater.poll_once() == a
    before = store.get_current()

    b = publish(spd, data, models, 1)
    corrupt(spd, b)
    with caplog.at_level(logging.ERROR, logger="exfm_plugin.das.updater"):
        assert updater.poll_once() == a
    cur = store.get_current()
    assert cur.snapshot_id == a and cur.lease_expires_at > before.lease_expires_at  # kept, lease extended
    assert b in updater.refused and "weights.pt" in updater.refused[b]
    assert any(b in r.getMessage() and "weights.pt" in r.getMessage() for r in caplog.records)

    verified = []
    real_verify = spd.verify
    monkeypatch.setattr(spd, "verify", lambda sid: verified.append(sid) or real_verify(sid))
    assert updater.poll_once() == a
    assert verified == []  # refused once, not re-hashed at every poll

    c = publish(spd, data, models)
    assert updater.poll_once() == c
    assert store.get_current().snapshot_id == c and verified == [c]


def test_gc_only_after_lease_expired_and_never_the_current(spd, store, data, models):
    lease = 1.2
    updater = Updater(spd, store, owner="u1", lease_seconds=lease, poll_interval=0.1)
    a = publish(spd, data, models)
    assert updater.poll_once() == a
    b = publish(spd, data, models, 1)
    assert updater.poll_once() == b
    replaced_at = time.time()
    assert updater.poll_once() == b
    assert {a, b} <= {s.snapshot_id for s in spd.list()}  # a's lease still runs: kept

    time.sleep(max(0.0, replaced_at + lease + 0.15 - time.time()))
    assert updater.poll_once() == b
    assert [s.snapshot_id for s in spd.list()] == [b]
    assert store.expired_snapshots() == []

    # the current snapshot's own lease runs out (no updater extended it): still never collected
    time.sleep(lease + 0.15)
    assert store.get_current().expired()
    assert updater.collect_garbage() == []
    assert [s.snapshot_id for s in spd.list()] == [b]

    class Lying(Proxy):  # a store that wrongly offers the current snapshot for collection
        def expired_snapshots(self, now=None):
            return [b]

        def mark_collected(self, snapshot_id):
            return True

    assert Updater(spd, Lying(store), owner="u2", lease_seconds=lease, poll_interval=0.1).collect_garbage() == []
    assert [s.snapshot_id for s in spd.list()] == [b]


def test_lease_lost_is_logged_and_retried(spd, store, data, models, caplog):
    a = publish(spd, data, models)

    class Flaky(Proxy):
        failing = True

        def extend_lease(self, snapshot_id, **kw):
            if self.failing:
                raise LeaseLostError("connection suspended")
            return self._inner.extend_lease(snapshot_id, **kw)

    flaky = Flaky(store)
    updater = Updater(spd, flaky, owner="u1", lease_seconds=30, poll_interval=1)
    assert updater.poll_once() == a
    before = store.get_current()
    with caplog.at_level(logging.WARNING, logger="exfm_plugin.das.updater"):
        assert updater.poll_once() is None
    assert store.get_current() == before  # nothing written
    assert any("lease may be lost" in r.getMessage() for r in caplog.records)
    flaky.failing = False
    assert updater.poll_once() == a
    assert store.get_current().version > before.version


def test_updater_run_loop_in_a_thread(spd, store, data, models):
    updater = Updater(spd, store, owner="u1", lease_seconds=5, poll_interval=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=updater.run, args=(stop,))
    thread.start()
    try:
        a = publish(spd, data, models)
        deadline = time.time() + 10
        while (store.get_current() is None or store.get_current().snapshot_id != a) and time.time() < deadline:
            time.sleep(0.02)
        assert store.get_current().snapshot_id == a
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    with pytest.raises(ValueError, match="lease_seconds"):
        Updater(spd, store, owner="u", lease_seconds=1, poll_interval=2)


# ----------------------------------------------------------------------------- loader

def test_predict_before_any_snapshot_is_a_clear_error(spd, store, data):
    loader = SnapshotLoader(spd, store, poll_interval=0.05)
    with pytest.raises(NoSnapshotLoaded, match="no FM snapshot loaded"):
        loader.predict(batch_of(data))
    assert loader.current_snapshot_id is None
    with loader:
        assert loader.current_snapshot_id is None  # the store names nothing yet
        assert loader.wait_for("nothing", timeout=0.1) is False


def test_hot_swap_under_load(spd, store, data, models):
    a = publish(spd, data, models, 0)
    batch = batch_of(data)
    expected = {a: spd.load(a).predict_batch(batch)}
    updater = Updater(spd, store, owner="u1", lease_seconds=30, poll_interval=1)
    assert updater.poll_once() == a

    loads, load_window = Counter(), {}

    def slow_load(sid):
        loads[sid] += 1
        start = time.monotonic()
        if loads.total() > 1:
            time.sleep(1.0)  # loading a big FM takes minutes; the old snapshot must keep answering
        loaded = spd.load(sid)
        load_window[sid] = (start, time.monotonic())
        return loaded

    answers, stop = [], threading.Event()

    def client():
        while not stop.is_set():
            t0 = time.monotonic()
            r = loader.predict(batch)
            answers.append((t0, time.monotonic(), r.snapshot_id, r.predictions))

    with SnapshotLoader(spd, store, poll_interval=0.05, load_fn=slow_load) as loader:
        assert loader.wait_for(a, timeout=20)
        thread = threading.Thread(target=client)
        thread.start()
        try:
            time.sleep(0.1)
            b = publish(spd, data, models, 1)
            expected[b] = spd.load(b).predict_batch(batch)
            assert not np.allclose(expected[a]["fm_pred"], expected[b]["fm_pred"])
            assert updater.poll_once() == b
            assert loader.wait_for(b, timeout=20)
            swapped = time.monotonic()
            time.sleep(0.4)  # several more polls: nothing is loaded again
        finally:
            stop.set()
            thread.join(10)
        assert loader.current_snapshot_id == b

    assert loads == {a: 1, b: 1}
    for _, _, sid, preds in answers:  # every answer wholly from the snapshot it names
        assert sid in expected and list(preds) == ["fm_pred"]
        np.testing.assert_array_equal(preds["fm_pred"], expected[sid]["fm_pred"])
    sids = [sid for _, _, sid, _ in answers]
    first_b = sids.index(b)
    assert set(sids[:first_b]) == {a} and set(sids[first_b:]) == {b}  # one switch, never back
    load_start, load_end = load_window[b]
    during = [sid for t0, t1, sid, _ in answers if t0 >= load_start and t1 <= load_end]
    assert len(during) >= 5 and set(during) == {a}  # the old snapshot kept answering while loading
    after = [sid for t0, _, sid, _ in answers if t0 >= swapped]
    assert after and set(after) == {b}


def test_corrupt_new_snapshot_keeps_old_serving(spd, store, data, models, caplog):
    a = publish(spd, data, models, 0)
    batch = batch_of(data)
    expected_a = spd.load(a).predict_batch(batch)
    set_current(store, a)
    loads = Counter()

    def counting_load(sid):
        loads[sid] += 1
        return spd.load(sid)

    with SnapshotLoader(spd, store, poll_interval=0.05, load_fn=counting_load) as loader:
        assert loader.wait_for(a, timeout=20)
        c = publish(spd, data, models, 1)
        corrupt(spd, c)  # e.g. the bytes rotted after an updater recorded it
        with caplog.at_level(logging.ERROR, logger="exfm_plugin.das.loader"):
            set_current(store, c)
            with pytest.raises(SnapshotRefused, match="weights.pt"):
                loader.wait_for(c, timeout=20)
        time.sleep(0.3)
        assert loader.current_snapshot_id == a
        r = loader.predict(batch)
        assert r.snapshot_id == a
        np.testing.assert_array_equal(r.predictions["fm_pred"], expected_a["fm_pred"])
        assert loads[c] == 1 and c in loader.refused
        assert any(c in rec.getMessage() and "refusing" in rec.getMessage() for rec in caplog.records)

        d = publish(spd, data, models, 1)  # a good snapshot after the bad one is served
        set_current(store, d)
        assert loader.wait_for(d, timeout=20)
        assert loader.predict(batch).snapshot_id == d
    assert loads == {a: 1, c: 1, d: 1}
