"""Contract tests of the DAS metadata store, the same on SQLite and on a real ZooKeeper.

The ZooKeeper cases need a server: ``bash scripts/zookeeper.sh install`` then
``export "$(bash scripts/zookeeper.sh start)"`` (sets EXFM_ZK_HOSTS=127.0.0.1:PORT). Without it
they skip, except under CI (env ``CI`` set), where they fail so they can never be silently skipped.
"""
from __future__ import annotations

import importlib.util
import logging
import multiprocessing as mp
import socket
import sys
import threading
import time

if mp.parent_process() is not None and "exfm_plugin" not in sys.modules:
    # A spawned worker of this file only needs the metastore modules: register the package
    # without running its __init__ (which imports torch and the models, ~5 s per process).
    _spec = importlib.util.find_spec("exfm_plugin")
    sys.modules["exfm_plugin"] = importlib.util.module_from_spec(_spec)

import pytest  # noqa: E402

from exfm_plugin.das.metastore import (  # noqa: E402
    LeaseLostError,
    MetastoreUnavailable,
    ShardState,
    SnapshotLease,
    open_metastore,
)

from zk_support import ZK_HOSTS, require_zk, unique_chroot, zk_cleanup  # noqa: E402
SPAWN = mp.get_context("spawn")










@pytest.fixture
def store(store_url: str):
    with open_metastore(store_url) as s:
        yield s


@pytest.fixture
def zk_chroot(request: pytest.FixtureRequest) -> str:
    require_zk()
    chroot = unique_chroot(request)
    yield chroot
    zk_cleanup(chroot)


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting until {what}")
        time.sleep(0.02)


# ---- url parsing and argument checks (no server needed) --------------------------------------
def test_open_metastore_urls(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open_metastore(f"sqlite://{tmp_path}/a/b.db") as s:
        assert s.path == f"{tmp_path}/a/b.db"
    with open_metastore("plain.db") as s:
        assert s.path == f"{tmp_path}/plain.db"
    with open_metastore(f"sqlite:///{tmp_path}/c.db") as s:  # four slashes: still absolute
        assert s.path == f"{tmp_path}/c.db"
    for bad in ["", "sqlite://", "mysql://h/db", "zk://", ":memory:", "zk://h:1/x?bogus=1",
                "zk://h:1/x?connect_timeout=0", "zk://hostonly/x", "zk://h:1/"]:
        with pytest.raises(ValueError):
            open_metastore(bad)


def test_ids_and_leases_are_validated(store):
    for bad in ["", "a/b", ".", "..", "x\n"]:
        with pytest.raises(ValueError):
            store.compare_and_set_current(bad, expected_version=None, owner="u", lease_seconds=1)
        with pytest.raises(ValueError):
            store.register_shards("job", [bad])
    for bad_lease in [0, -1, float("nan"), float("inf")]:
        with pytest.raises(ValueError):
            store.compare_and_set_current("s", expected_version=None, owner="u", lease_seconds=bad_lease)
        with pytest.raises(ValueError):
            store.claim_shard("job", "w", bad_lease)
    assert store.get_current() is None  # nothing was written by the refused calls


# ---- the current snapshot pointer (Zeus) -------------------------------------------------------
def test_compare_and_set_versions(store):
    assert store.get_current() is None
    assert store.expired_snapshots() == [] and store.job_status("nope") == {}
    assert not store.lease_possibly_lost
    t0 = time.time()
    assert store.compare_and_set_current("s1", expected_version=None, owner="u1", lease_seconds=30)
    assert not store.compare_and_set_current("s2", expected_version=None, owner="u2", lease_seconds=30)
    cur = store.get_current()
    assert isinstance(cur, SnapshotLease)
    assert (cur.snapshot_id, cur.version, cur.owner) == ("s1", 1, "u1")
    assert t0 <= cur.updated_at <= time.time()
    assert cur.lease_expires_at == pytest.approx(cur.updated_at + 30)
    assert not cur.expired()
    # a stale or future version never wins
    assert not store.compare_and_set_current("s2", expected_version=cur.version + 1, owner="u2", lease_seconds=30)
    assert not store.compare_and_set_current("s2", expected_version=cur.version - 1, owner="u2", lease_seconds=30)
    assert store.extend_lease("s1", owner="u1", lease_seconds=30)
    ext = store.get_current()
    assert ext.version == 2 and ext.snapshot_id == "s1"
    assert not store.compare_and_set_current("s2", expected_version=1, owner="u2", lease_seconds=30)
    assert store.compare_and_set_current("s2", expected_version=2, owner="u2", lease_seconds=30)
    new = store.get_current()
    assert (new.snapshot_id, new.version, new.owner) == ("s2", 3, "u2")
    # the same snapshot may be set again (lease takeover): still versioned
    assert store.compare_and_set_current("s2", expected_version=3, owner="u3", lease_seconds=30)
    assert (store.get_current().version, store.get_current().owner) == (4, "u3")
    # a second handle on the same store sees the same state
    with open_metastore(store.url) as other:
        assert other.get_current() == store.get_current()


def _race_round(stores, version, tag):
    barrier = threading.Barrier(len(stores))
    results = [None] * len(stores)

    def racer(i):
        barrier.wait(timeout=10)
        results[i] = stores[i].compare_and_set_current(
            f"{tag}-{i}", expected_version=version, owner=f"updater-{i}", lease_seconds=60)

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


def test_cas_race_threads_one_winner_per_round(store, store_url):
    with open_metastore(store_url) as second:
        racers = [store, store, second]  # two threads share one handle, one has its own
        version = None
        for rnd in range(25):
            results = _race_round(racers, version, f"r{rnd}")
            assert results.count(True) == 1, f"round {rnd}: {results}"
            winner = results.index(True)
            cur = second.get_current()
            assert cur.snapshot_id == f"r{rnd}-{winner}" and cur.owner == f"updater-{winner}"
            assert cur.version == (1 if version is None else version + 1)
            version = cur.version
        # every replaced snapshot is remembered for GC, none of them the current one
        far = time.time() + 3600
        gone = store.expired_snapshots(now=far)
        assert len(gone) == 24 and cur.snapshot_id not in gone


def _cas_process(url, idx, rounds, barrier, out):
    try:
        with open_metastore(url) as store:
            seen = []
            for rnd in range(rounds):
                cur = store.get_current()
                version = None if cur is None else cur.version
                barrier.wait(timeout=60)  # everyone has read the same version
                won = store.compare_and_set_current(f"r{rnd}-p{idx}", expected_version=version,
                                                    owner=f"proc-{idx}", lease_seconds=60)
                seen.append((rnd, version, won))
                barrier.wait(timeout=60)  # everyone has tried before the next read
        out.put((idx, seen, None))
    except BaseException as e:  # report, so the parent fails with the cause
        out.put((idx, None, repr(e)))


def _run_processes(target, args_list, timeout=60.0):
    out = SPAWN.Queue()
    procs = [SPAWN.Process(target=target, args=(*args, out)) for args in args_list]
    for p in procs:
        p.start()
    results = {}
    try:
        for _ in procs:
            idx, value, err = out.get(timeout=timeout)
            assert err is None, f"worker {idx} failed: {err}"
            results[idx] = value
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return results


def test_cas_race_processes_one_winner_per_round(store, store_url):
    n, rounds = 3, 15
    barrier = SPAWN.Barrier(n)
    results = _run_processes(_cas_process, [(store_url, i, rounds, barrier) for i in range(n)])
    for rnd in range(rounds):
        versions = {results[i][rnd][1] for i in range(n)}
        assert len(versions) == 1, f"round {rnd}: processes read different versions {versions}"
        winners = [i for i in range(n) if results[i][rnd][2]]
        assert len(winners) == 1, f"round {rnd}: winners {winners}"
    cur = store.get_current()
    last_winner = next(i for i in range(n) if results[i][rounds - 1][2])
    assert cur.snapshot_id == f"r{rounds - 1}-p{last_winner}"
    assert cur.version == rounds


def test_lease_extension_keeps_current_then_expires(store):
    lease = 0.5
    assert store.compare_and_set_current("snap", expected_version=None, owner="u", lease_seconds=lease)
    versions = [store.get_current().version]
    end = time.monotonic() + 1.2  # longer than two leases
    while time.monotonic() < end:
        time.sleep(0.1)
        cur = store.get_current()
        assert cur.snapshot_id == "snap" and not cur.expired(), "an extended lease must stay fresh"
        assert store.extend_lease("snap", owner="u", lease_seconds=lease)
        versions.append(store.get_current().version)
    assert versions == sorted(set(versions)), "every extension bumps the version"
    last = store.get_current()
    assert last.lease_expires_at == pytest.approx(last.updated_at + lease, abs=1e-3)
    # an extension never shortens a lease
    assert store.extend_lease("snap", owner="u2", lease_seconds=0.01)
    shortened = store.get_current()
    assert shortened.lease_expires_at >= last.lease_expires_at and shortened.owner == "u2"
    time.sleep(max(0.0, shortened.lease_expires_at - time.time()) + 0.05)
    cur = store.get_current()
    assert cur.expired() and cur.snapshot_id == "snap"
    # an expired *current* snapshot is never a GC candidate, and can still be extended
    assert store.expired_snapshots() == []
    assert not store.mark_collected("snap")
    assert store.extend_lease("snap", owner="u", lease_seconds=lease)
    assert not store.get_current().expired()


def test_replaced_snapshot_becomes_gc_candidate_only_after_its_lease(store):
    lease = 0.5
    assert store.compare_and_set_current("old", expected_version=None, owner="u", lease_seconds=lease)
    old = store.get_current()
    assert store.compare_and_set_current("new", expected_version=old.version, owner="u", lease_seconds=30)
    # the old one's lease still runs: not collectable yet
    assert store.expired_snapshots() == []
    assert not store.mark_collected("old")
    assert store.expired_snapshots(now=old.lease_expires_at - 0.01) == []
    assert store.expired_snapshots(now=old.lease_expires_at) == ["old"]
    # a replaced snapshot can no longer be extended, and the attempt writes nothing
    before = store.get_current()
    assert not store.extend_lease("old", owner="u", lease_seconds=30)
    assert store.get_current() == before
    time.sleep(max(0.0, old.lease_expires_at - time.time()) + 0.05)
    assert store.expired_snapshots() == ["old"]
    assert not store.mark_collected("new") and not store.mark_collected("never-seen")
    assert store.mark_collected("old")
    assert store.expired_snapshots() == []
    assert not store.mark_collected("old")


def test_snapshot_made_current_again_is_not_collected(store):
    assert store.compare_and_set_current("a", expected_version=None, owner="u", lease_seconds=0.2)
    assert store.compare_and_set_current("b", expected_version=1, owner="u", lease_seconds=0.2)
    assert store.compare_and_set_current("a", expected_version=2, owner="u", lease_seconds=30)  # rollback to a
    time.sleep(0.25)
    assert store.expired_snapshots() == ["b"]  # a is current again, b retired and expired
    assert not store.mark_collected("a")
    assert store.get_current().snapshot_id == "a"
    # retiring the same id twice keeps one entry, with the latest lease
    assert store.compare_and_set_current("c", expected_version=3, owner="u", lease_seconds=30)
    assert store.expired_snapshots() == ["b"]
    assert sorted(store.expired_snapshots(now=time.time() + 60)) == ["a", "b"]


# ---- work shards -------------------------------------------------------------------------------
def test_shard_lifecycle(store):
    store.register_shards("job", ["s2", "s1"])
    store.register_shards("job", ["s1", "s2", "s3"])  # idempotent, adds s3
    status = store.job_status("job")
    assert list(status) == ["s1", "s2", "s3"]
    assert status["s1"] == ShardState("s1", "pending", None, None, 0)
    t0 = time.time()
    assert store.claim_shard("job", "w1", 30) == "s1"  # offered in id order
    st = store.job_status("job")["s1"]
    assert (st.state, st.owner, st.attempts) == ("claimed", "w1", 1)
    assert t0 + 30 <= st.lease_expires_at <= time.time() + 30
    assert not store.renew_shard("job", "s1", "w2", 30)
    assert not store.complete_shard("job", "s1", "w2")
    assert store.renew_shard("job", "s1", "w1", 60)
    assert store.job_status("job")["s1"].lease_expires_at >= t0 + 60
    assert store.complete_shard("job", "s1", "w1")
    assert store.job_status("job")["s1"].state == "done"
    assert not store.complete_shard("job", "s1", "w1")  # done once
    assert not store.renew_shard("job", "s1", "w1", 30)
    store.register_shards("job", ["s1"])  # re-registering never resets a done shard
    assert store.job_status("job")["s1"].state == "done"
    assert store.claim_shard("job", "w2", 30) == "s2"
    assert store.claim_shard("job", "w2", 30) == "s3"
    assert store.claim_shard("job", "w3", 30) is None  # everything claimed or done
    assert store.claim_shard("other-job", "w3", 30) is None
    assert not store.complete_shard("job", "missing", "w1")


def test_expired_claim_is_reclaimed_and_old_owner_cannot_complete(store):
    store.register_shards("job", ["only"])
    assert store.claim_shard("job", "slow", 0.3) == "only"
    assert store.claim_shard("job", "fast", 0.3) is None  # held: not claimable
    time.sleep(0.35)
    assert store.job_status("job")["only"].claimable()
    assert not store.renew_shard("job", "only", "slow", 30)  # too late, even before anyone reclaims
    assert store.claim_shard("job", "fast", 30) == "only"
    st = store.job_status("job")["only"]
    assert (st.state, st.owner, st.attempts) == ("claimed", "fast", 2)
    assert not store.complete_shard("job", "only", "slow")
    assert not store.renew_shard("job", "only", "slow", 30)
    assert store.job_status("job")["only"].owner == "fast"
    assert store.complete_shard("job", "only", "fast")
    time.sleep(0.05)
    assert store.claim_shard("job", "slow", 30) is None  # done is never claimed again
    assert store.job_status("job")["only"] == ShardState("only", "done", "fast", None, 2)


def test_concurrent_register_is_idempotent(store, store_url):
    shard_ids = [f"s{i:03d}" for i in range(30)]
    with open_metastore(store_url) as other:
        handles = [store, other, store, other]
        barrier = threading.Barrier(len(handles))
        errors = []

        def reg(h):
            try:
                barrier.wait(timeout=10)
                h.register_shards("job", shard_ids)
            except Exception as e:
                errors.append(e)

        threads = [threading.Thread(target=reg, args=(h,)) for h in handles]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    assert errors == []
    status = store.job_status("job")
    assert list(status) == shard_ids and all(s.state == "pending" and s.attempts == 0 for s in status.values())


def test_shard_claimers_threads_with_stalls_complete_each_shard_once(store, store_url):
    """Four workers, one of which stalls past its lease twice: every shard is done exactly once."""
    shard_ids = [f"s{i:02d}" for i in range(30)]
    store.register_shards("job", shard_ids)
    lease = 0.25
    completed: list[tuple[str, str]] = []
    stalled: list[str] = []
    errors = []
    lock = threading.Lock()

    def worker(name, handle, stalls):
        try:
            if stalls:  # claim a few shards, then "work" on them past their lease
                mine = [handle.claim_shard("job", name, lease) for _ in range(stalls)]
                go.set()
                time.sleep(lease + 0.1)
                for sid in mine:
                    assert not handle.complete_shard("job", sid, name), "an expired claim must not complete"
                    with lock:
                        stalled.append(sid)
            go.wait(timeout=10)
            while (sid := handle.claim_shard("job", name, lease)) is not None:
                if handle.complete_shard("job", sid, name):
                    with lock:
                        completed.append((sid, name))
        except BaseException as e:
            errors.append(e)

    go = threading.Event()
    with open_metastore(store_url) as other:
        specs = [("w0", store, 2), ("w1", store, 0), ("w2", other, 0), ("w3", other, 0)]
        threads = [threading.Thread(target=worker, args=spec) for spec in specs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        # workers stop when nothing is claimable; a claim that expired after that is swept here
        while (sid := store.claim_shard("job", "sweeper", 30)) is not None:
            assert store.complete_shard("job", sid, "sweeper")
            completed.append((sid, "sweeper"))
    assert errors == []
    done_ids = [sid for sid, _ in completed]
    assert sorted(done_ids) == shard_ids, "every shard completed exactly once"
    status = store.job_status("job")
    assert all(s.state == "done" for s in status.values())
    assert {sid: status[sid].owner for sid in shard_ids} == dict(completed)
    assert sorted(stalled) == ["s00", "s01"]
    for sid in stalled:
        assert status[sid].attempts >= 2


def _shard_process(url, owner, barrier, out):
    try:
        done = []
        with open_metastore(url) as store:
            barrier.wait(timeout=60)
            while (sid := store.claim_shard("job", owner, 30)) is not None:
                time.sleep(0.002)  # a little work, so the claimers interleave
                if not store.complete_shard("job", sid, owner):
                    raise AssertionError(f"{owner} lost its unexpired claim on {sid}")
                done.append(sid)
        out.put((owner, done, None))
    except BaseException as e:
        out.put((owner, None, repr(e)))


def test_shard_claimers_processes_disjoint(store, store_url):
    shard_ids = [f"s{i:02d}" for i in range(40)]
    store.register_shards("job", shard_ids)
    n = 3
    barrier = SPAWN.Barrier(n)
    results = _run_processes(_shard_process, [(store_url, f"p{i}", barrier) for i in range(n)])
    all_done = [sid for done in results.values() for sid in done]
    assert sorted(all_done) == shard_ids, "disjoint claims, every shard done exactly once"
    status = store.job_status("job")
    for owner, done in results.items():
        for sid in done:
            assert status[sid] == ShardState(sid, "done", owner, None, 1)


# ---- ZooKeeper only: connection loss ----------------------------------------------------------
class TcpProxy:
    """A loopback TCP forwarder whose connections the test can cut (a network partition)."""

    def __init__(self, target: str) -> None:
        host, _, port = target.split(",")[0].rpartition(":")
        self.target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = self._listener.getsockname()[1]
        self._up = threading.Event()
        self._up.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except (socket.timeout, OSError):
                continue
            if not self._up.is_set():
                client.close()  # partitioned: refuse by hanging up at once
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self._up.clear()
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def heal(self) -> None:
        self._up.set()

    def close(self) -> None:
        self.cut()
        self._closed.set()
        self._listener.close()


@pytest.fixture
def proxy():
    p = TcpProxy(require_zk())
    yield p
    p.close()


@pytest.mark.zookeeper
def test_zk_suspended_connection_refuses_lease_writes(zk_chroot, proxy):
    observer = open_metastore(f"zk://{ZK_HOSTS}{zk_chroot}")
    store = open_metastore(f"zk://127.0.0.1:{proxy.port}{zk_chroot}?op_timeout=3")
    try:
        assert store.compare_and_set_current("snap-1", expected_version=None, owner="u", lease_seconds=30)
        store.register_shards("job", ["a", "b"])
        assert store.claim_shard("job", "w", 30) == "a"
        current_before, jobs_before = observer.get_current(), observer.job_status("job")
        assert not store.lease_possibly_lost

        proxy.cut()
        wait_until(lambda: store.lease_possibly_lost, 10, "the store notices the lost connection")
        t0 = time.monotonic()
        with pytest.raises(LeaseLostError, match="lease may be lost"):
            store.extend_lease("snap-1", owner="u", lease_seconds=30)
        with pytest.raises(LeaseLostError):
            store.renew_shard("job", "a", "w", 30)
        with pytest.raises(LeaseLostError):
            store.complete_shard("job", "a", "w")
        with pytest.raises(MetastoreUnavailable):
            store.claim_shard("job", "w", 30)
        with pytest.raises(MetastoreUnavailable):
            store.compare_and_set_current("snap-2", expected_version=current_before.version, owner="u",
                                          lease_seconds=30)
        assert time.monotonic() - t0 < 1.0, "refused at once, not queued until the connection returns"
        assert observer.get_current() == current_before and observer.job_status("job") == jobs_before

        proxy.heal()
        wait_until(lambda: not store.lease_possibly_lost, 15, "the store reconnects and re-verifies")
        time.sleep(0.2)
        # nothing refused during the partition was delivered late
        assert observer.get_current() == current_before and observer.job_status("job") == jobs_before
        assert store.renew_shard("job", "a", "w", 30)
        assert store.complete_shard("job", "a", "w")
        assert store.extend_lease("snap-1", owner="u", lease_seconds=30)
        assert observer.job_status("job")["a"].state == "done"
        assert observer.get_current().version == current_before.version + 1
    finally:
        store.close()
        observer.close()


@pytest.mark.zookeeper
def test_zk_session_lost_then_recovered(zk_chroot, proxy, caplog):
    """A partition longer than the session timeout: LOST, then a new session, re-verified."""
    from kazoo.client import KazooClient

    caplog.set_level(logging.INFO, logger="exfm_plugin.das.metastore_zk")
    store = open_metastore(f"zk://127.0.0.1:{proxy.port}{zk_chroot}?session_timeout=4&op_timeout=3")
    # a witness session through the same proxy, with the same timeout: its ephemeral node
    # disappears when the server expires sessions cut off by the partition
    witness = KazooClient(hosts=f"127.0.0.1:{proxy.port}", timeout=4)
    direct = KazooClient(hosts=ZK_HOSTS)
    observer = open_metastore(f"zk://{ZK_HOSTS}{zk_chroot}")
    try:
        direct.start(timeout=5)
        witness.start(timeout=5)
        witness.create(f"{zk_chroot}/witness", ephemeral=True, makepath=True)
        store.register_shards("job", ["a"])
        assert store.claim_shard("job", "w", 60) == "a"
        proxy.cut()
        wait_until(lambda: store.lease_possibly_lost, 10, "the store notices the lost connection")
        wait_until(lambda: direct.exists(f"{zk_chroot}/witness") is None, 15, "the server expires the session")
        with pytest.raises(LeaseLostError):
            store.renew_shard("job", "a", "w", 60)
        proxy.heal()
        wait_until(lambda: not store.lease_possibly_lost, 20, "a new session is re-verified")
        assert any("LOST" in r.getMessage() for r in caplog.records), "the session loss was seen"
        assert any("re-verified" in r.getMessage() for r in caplog.records)
        # the claim lives in the data with its lease (not in the session): still ours, still valid
        assert store.renew_shard("job", "a", "w", 60)
        assert store.complete_shard("job", "a", "w")
        assert observer.job_status("job")["a"] == ShardState("a", "done", "w", None, 1)
    finally:
        for client in (witness, direct):
            client.stop()
            client.close()
        store.close()
        observer.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("suffix, limit", [("", 5.0), ("?connect_timeout=1", 1.0)])
def test_zk_unreachable_host_fails_fast(suffix, limit):
    pytest.importorskip("kazoo")
    port = _free_port()  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(MetastoreUnavailable) as info:
        open_metastore(f"zk://127.0.0.1:{port}/exfm{suffix}")
    elapsed = time.monotonic() - t0
    assert elapsed < 10 and elapsed < limit + 3
    assert f"127.0.0.1:{port}" in str(info.value) and f"{limit:g} s" in str(info.value)
