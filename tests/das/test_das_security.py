"""DAS security: ZooKeeper digest ACLs (real server) and HMAC-signed snapshot manifests.

The ZooKeeper cases need a server: ``bash scripts/zookeeper.sh install`` then
``export "$(bash scripts/zookeeper.sh start)"`` (sets EXFM_ZK_HOSTS=127.0.0.1:PORT). Without it
they skip, except under CI (env ``CI`` set), where they fail.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import time

import numpy as np
import pytest
import torch

from exfm_plugin.cli import main as exfm_main
from exfm_plugin.das.metastore import MetastoreAccessDenied, open_metastore
from exfm_plugin.das.service.loader import SnapshotRefused, SnapshotLoader
from exfm_plugin.das.spd.signing import SignatureError, SigningKeys
from exfm_plugin.das.spd import SnapshotStore, SnapshotUnauthenticated
from exfm_plugin.das.service.updater import Updater
from exfm_plugin.das.metastore.zk_auth import ZkAuthError, load_zk_auth, parse_zk_auth
from exfm_plugin.data.dayfile import write_day_file
from tiny_data import make_tiny_data, random_dcn
from zk_support import require_zk, unique_chroot

pytestmark = pytest.mark.usefixtures("one_thread")

RW_PW = "rw-Secret-7f3a9c"  # distinctive strings: a leak is found by plain substring search
RO_PW = "ro-Secret-52be01"
CREDS = f"rw = das:{RW_PW}\nro = viewer:{RO_PW}\n"
OLD_KEY = "old-spd-key-" + "a1" * 16
NEW_KEY = "new-spd-key-" + "b2" * 16
DAY = 6


# =============================================================================== ZooKeeper ACLs
def _kazoo(hosts: str, auth: str | None = None):
    from kazoo.client import KazooClient

    c = KazooClient(hosts=hosts, auth_data=[("digest", auth)] if auth else None)
    c.start(timeout=5)
    return c


@pytest.fixture
def zk_ns(request):
    """(hosts, chroot, url) of a private namespace; deleted afterwards with the DAS identity."""
    hosts = require_zk()
    chroot = unique_chroot(request)
    yield hosts, chroot, f"zk://{hosts}{chroot}"
    c = _kazoo(hosts, f"das:{RW_PW}")
    try:
        c.delete(chroot, recursive=True)
    except Exception as e:  # noqa: BLE001 - cleanup must not hide the test's result
        logging.getLogger(__name__).warning("could not delete %s: %s", chroot, e)
    finally:
        c.stop()
        c.close()


RW = parse_zk_auth(CREDS, "test credentials")
RO = parse_zk_auth(f"ro = viewer:{RO_PW}", "test read-only credentials")


def _state(store, job: str):
    cur = store.get_current()
    return cur, {sid: (s.state, s.owner, s.lease_expires_at, s.attempts) for sid, s in store.job_status(job).items()}


def _one_line_denial(exc: MetastoreAccessDenied, node: str, perm: str) -> str:
    msg = str(exc)
    assert "\n" not in msg and exc.path == node and exc.permission == perm
    assert f"denied {perm} permission on {node}" in msg
    assert RW_PW not in msg and RO_PW not in msg
    return msg


@pytest.mark.zookeeper
def test_unauthenticated_client_cannot_move_pointer_extend_lease_or_claim(zk_ns):
    hosts, chroot, url = zk_ns
    with open_metastore(url, auth=RW) as das, open_metastore(url) as anon:
        assert das.compare_and_set_current("snap-a", expected_version=None, owner="das", lease_seconds=60)
        das.register_shards("job1", ["s0", "s1"])
        before = _state(das, "job1")

        with pytest.raises(MetastoreAccessDenied) as e:
            anon.compare_and_set_current("snap-evil", expected_version=1, owner="evil", lease_seconds=600)
        _one_line_denial(e.value, f"{chroot}/current", "READ")
        with pytest.raises(MetastoreAccessDenied) as e:
            anon.extend_lease("snap-a", owner="evil", lease_seconds=3600)
        _one_line_denial(e.value, f"{chroot}/current", "READ")
        with pytest.raises(MetastoreAccessDenied) as e:
            anon.claim_shard("job1", "evil", 600)
        _one_line_denial(e.value, f"{chroot}/jobs/job1", "READ")
        with pytest.raises(MetastoreAccessDenied) as e:
            anon.register_shards("job1", ["s9"])
        _one_line_denial(e.value, f"{chroot}/jobs/job1", "CREATE")

        # The server itself refuses the raw writes (not only this client's code paths).
        from kazoo.exceptions import NoAuthError

        raw = _kazoo(hosts)
        try:
            evil = json.dumps({"snapshot_id": "snap-evil", "lease_expires_at": time.time() + 600,
                               "owner": "evil", "updated_at": time.time()}).encode()
            with pytest.raises(NoAuthError):
                raw.set(f"{chroot}/current", evil)
            with pytest.raises(NoAuthError):
                raw.set(f"{chroot}/jobs/job1/s0", b'{"state": "claimed", "owner": "evil"}')
            with pytest.raises(NoAuthError):
                raw.delete(f"{chroot}/jobs/job1/s1")
            with pytest.raises(NoAuthError):
                raw.create(f"{chroot}/retired/snap-a", b"{}")
        finally:
            raw.stop()
            raw.close()

        assert _state(das, "job1") == before  # nothing changed, not even a version
        # The DAS identity can do all of it.
        assert das.extend_lease("snap-a", owner="das", lease_seconds=120)
        assert das.get_current().version == before[0].version + 1
        assert das.claim_shard("job1", "das", 60) == "s0"
        cur = das.get_current()
        assert das.compare_and_set_current("snap-b", expected_version=cur.version, owner="das", lease_seconds=60)
        assert das.get_current().snapshot_id == "snap-b"
        assert "protected" in das.access_summary() and "'das' ALL" in das.access_summary()


@pytest.mark.zookeeper
def test_read_only_identity_reads_status_but_cannot_write(zk_ns, capsys, monkeypatch):
    hosts, chroot, url = zk_ns
    with open_metastore(url, auth=RW) as das:
        assert das.compare_and_set_current("snap-a", expected_version=None, owner="das", lease_seconds=60)
        das.register_shards("6-snap-a", ["s0", "s1"])
        assert das.claim_shard("6-snap-a", "das", 60) == "s0"
        before = _state(das, "6-snap-a")
        with open_metastore(url, auth=RO) as ro:
            assert _state(ro, "6-snap-a") == before  # reads everything the tasks wrote
            summary = ro.access_summary()
            assert summary.startswith("protected") and "'viewer' READ" in summary
            for write, node, perm in [
                (lambda: ro.compare_and_set_current("x", expected_version=before[0].version, owner="v",
                                                    lease_seconds=9), f"{chroot}/current", "WRITE"),
                (lambda: ro.extend_lease("snap-a", owner="v", lease_seconds=999), f"{chroot}/current", "WRITE"),
                (lambda: ro.claim_shard("6-snap-a", "v", 60), f"{chroot}/jobs/6-snap-a/s1", "WRITE"),
                (lambda: ro.register_shards("other", ["s0"]), f"{chroot}/jobs", "CREATE"),
            ]:
                with pytest.raises(MetastoreAccessDenied) as e:
                    write()
                assert "read-only" in _one_line_denial(e.value, node, perm)
        assert _state(das, "6-snap-a") == before

    # `exfm das status` with the read-only identity from an environment variable
    monkeypatch.setenv("EXFM_TEST_ZK_RO", f"ro = viewer:{RO_PW}")
    capsys.readouterr()
    assert exfm_main(["das", "status", "--metastore", url, "--zk-auth-env", "EXFM_TEST_ZK_RO", "--day", "6"]) == 0
    out = capsys.readouterr().out
    assert "current snapshot: snap-a" in out and "access: protected" in out and "1 claimed" in out
    assert RO_PW not in out
    # ... and without credentials: one line naming the node and the permission, exit 2
    assert exfm_main(["das", "status", "--metastore", url]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"denied READ permission on {chroot}" in err and "--zk-auth-file" in err


@pytest.mark.zookeeper
def test_open_namespace_says_so_and_is_secured_once_credentials_arrive(zk_ns, capsys):
    hosts, chroot, url = zk_ns
    with open_metastore(url) as anon:  # as before this issue: no option, open namespace
        assert anon.compare_and_set_current("snap-a", expected_version=None, owner="t", lease_seconds=60)
        anon.register_shards("job1", ["s0"])
    capsys.readouterr()
    assert exfm_main(["das", "status", "--metastore", url]) == 0
    out = capsys.readouterr().out
    assert "access: OPEN" in out and "current snapshot: snap-a" in out

    with open_metastore(url, auth=RW) as das:  # a task with credentials secures what it finds
        cur, shards = _state(das, "job1")
        assert cur.snapshot_id == "snap-a" and shards["s0"][0] == "pending"
    raw = _kazoo(hosts, f"das:{RW_PW}")
    try:
        nodes, todo = [], [chroot]
        while todo:
            p = todo.pop()
            nodes.append(p)
            todo += [f"{p}/{c}" for c in raw.get_children(p)]
        assert {f"{chroot}/jobs/job1/s0", f"{chroot}/current", f"{chroot}/retired"} <= set(nodes)
        for p in nodes:  # every DAS node: the rw identity ALL, the ro identity READ, nobody else
            acl = {(a.id.scheme, a.id.id.split(":")[0], a.perms) for a in raw.get_acls(p)[0]}
            assert acl == {("digest", "das", 31), ("digest", "viewer", 1)}, p
    finally:
        raw.stop()
        raw.close()
    with open_metastore(url) as anon:
        with pytest.raises(MetastoreAccessDenied):
            anon.claim_shard("job1", "evil", 60)


@pytest.mark.zookeeper
def test_credentials_never_appear_in_logs_or_errors(zk_ns, tmp_path, caplog, capsys):
    hosts, chroot, url = zk_ns
    wrong = parse_zk_auth("rw = das:not-the-Password-99", "wrong credentials")
    messages = []
    with caplog.at_level(logging.DEBUG):  # every logger, kazoo's too
        with open_metastore(url, auth=RW) as das:
            das.compare_and_set_current("snap-a", expected_version=None, owner="das", lease_seconds=60)
            das.register_shards("job1", ["s0"])
        with pytest.raises(MetastoreAccessDenied) as e:  # a wrong password fails at open
            open_metastore(url, auth=wrong)
        messages.append(str(e.value))
        with open_metastore(url, auth=RO) as ro:
            with pytest.raises(MetastoreAccessDenied) as e:
                ro.extend_lease("snap-a", owner="v", lease_seconds=5)
            messages.append(str(e.value))
        cred_file = tmp_path / "zk.creds"
        cred_file.write_text(CREDS)
        os.chmod(cred_file, 0o600)
        assert exfm_main(["das", "status", "--metastore", url, "--zk-auth-file", str(cred_file)]) == 0
    logged = [r.getMessage() for r in caplog.records]
    printed = capsys.readouterr()
    # kazoo really logs its AUTH packet at DEBUG: it is there, redacted
    assert any("Auth(" in m and "<redacted>" in m for m in logged)
    everything = "\n".join(logged + messages + [printed.out, printed.err, repr(RW), repr(RO)])
    from kazoo.security import make_digest_acl_credential

    digests = [make_digest_acl_credential(u, p).split(":", 1)[1] for u, p in (("das", RW_PW), ("viewer", RO_PW))]
    for secret in (RW_PW, RO_PW, "not-the-Password-99", *digests):  # nor the ACL's password digests
        assert secret not in everything
    assert "'das'" in messages[0] and "wrong password" in messages[0]


def test_zk_credentials_parsing_names_the_line_never_the_secret(tmp_path, monkeypatch):
    auth = parse_zk_auth("# tasks\nrw = das:pw-one  # comment\n\nro=viewer:pw:two", "f")
    assert (auth.rw.user, auth.rw.password, auth.ro.user, auth.ro.password) == ("das", "pw-one", "viewer", "pw:two")
    assert not auth.read_only and parse_zk_auth("ro = v:p", "f").read_only
    assert auth.auth_data() == [("digest", "das:pw-one"), ("digest", "viewer:pw:two")]
    assert "pw-one" not in repr(auth) and "pw:two" not in repr(auth)
    monkeypatch.setenv("DAS_ZK", "rw = das:pw-one; ro = viewer:pw-3")
    assert load_zk_auth(env="DAS_ZK").ro.password == "pw-3"
    assert load_zk_auth() is None
    for text, where in [("rw = das:pw-one\nrw = other:pw-x", "line 2"), ("das:pw-one", "line 1"),
                        ("rw = das", "line 1"), ("ro = v:p\nrw = das:pw one", "line 2")]:
        with pytest.raises(ZkAuthError) as e:
            parse_zk_auth(text, "creds")
        assert f"creds, line {where.split()[-1]}" in str(e.value) and "pw-one" not in str(e.value)
    with pytest.raises(ZkAuthError, match="different users"):
        parse_zk_auth("rw = a:p1\nro = a:p2", "creds")
    with pytest.raises(ZkAuthError, match="not both"):
        load_zk_auth(file="x", env="DAS_ZK")
    with pytest.raises(ZkAuthError, match="NOPE_UNSET is not set"):
        load_zk_auth(env="NOPE_UNSET")
    with pytest.raises(ValueError, match="zk:// stores only"):
        open_metastore(f"sqlite://{tmp_path}/m.db", auth=auth)


# =============================================================================== signed snapshots
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_data(str(tmp_path_factory.mktemp("tiny")), num_rows=256)


@pytest.fixture(scope="module")
def models(tiny, tmp_path_factory):
    """Two tiny DCNs with clearly different predictions, and their params."""
    root = tmp_path_factory.mktemp("models")
    return [random_dcn(tiny.feature_map, root, seed) for seed in (0, 1)]


def _key_file(path, *keys) -> str:
    path.write_text("# SPD keys, newest first\n" + "".join(k + "\n" for k in keys))
    os.chmod(path, 0o600)
    return str(path)


def _publish(spd, tiny, models, which=0, snapshot_id=None) -> str:
    model, params = models[which]
    return spd.publish(model, model_params=params, feature_map_dir=tiny.feature_map.data_dir,
                       snapshot_id=snapshot_id).snapshot_id


def _swap_weights_consistently(snap_dir: str, attacker_model) -> None:
    """What someone with write access to the SPD (and no key) can do: new weights, matching manifest."""
    weights = os.path.join(snap_dir, "weights.pt")
    torch.save({k: v.detach().cpu() for k, v in attacker_model.state_dict().items()}, weights)
    raw = open(weights, "rb").read()
    mpath = os.path.join(snap_dir, "manifest.json")
    manifest = json.load(open(mpath))
    manifest["files"]["weights.pt"] = {"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}
    with open(mpath, "w") as f:
        json.dump(manifest, f, indent=2)


def _batch(tiny, rows=64):
    return {k: torch.from_numpy(v[:rows]) for k, v in tiny.columns.items()}


def test_tampered_snapshot_is_refused_with_a_key(tiny, models, tmp_path):
    keys = SigningKeys.from_files([_key_file(tmp_path / "spd.key", OLD_KEY)])
    signed = SnapshotStore(tmp_path / "spd", keys=keys)
    unkeyed = SnapshotStore(tmp_path / "spd")
    b = _publish(signed, tiny, models, 0, "snap-b")
    sig = json.load(open(os.path.join(signed.get(b).path, "signature.json")))
    assert sig["algorithm"] == "hmac-sha256" and sig["key_id"] == keys.signing_key_id and OLD_KEY not in str(sig)
    original = signed.load(b).predict_batch(_batch(tiny))["fm_pred"]

    _swap_weights_consistently(signed.get(b).path, models[1][0])
    # the attack works against checksums alone: the snapshot verifies and serves the attacker's model
    swapped = unkeyed.load(b).predict_batch(_batch(tiny))["fm_pred"]
    assert np.abs(swapped - original).max() > 1e-3
    with pytest.raises(SnapshotUnauthenticated) as e:
        signed.verify(b)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("snapshot snap-b refused: signature does not verify")
    assert OLD_KEY not in msg
    with pytest.raises(SnapshotUnauthenticated):
        signed.load(b)

    # missing signature: unsigned publisher, or signature.json removed
    u = _publish(unkeyed, tiny, models, 0, "snap-unsigned")
    with pytest.raises(SnapshotUnauthenticated, match="snap-unsigned refused: signature missing"):
        signed.verify(u)
    c = _publish(signed, tiny, models, 0, "snap-c")
    signed.verify(c)
    os.remove(os.path.join(signed.get(c).path, "signature.json"))
    with pytest.raises(SnapshotUnauthenticated, match="signature missing"):
        signed.verify(c)


def test_tampered_snapshot_keeps_the_previous_one_serving(tiny, models, tmp_path):
    keys = SigningKeys.from_files([_key_file(tmp_path / "spd.key", OLD_KEY)])
    spd = SnapshotStore(tmp_path / "spd", keys=keys)
    batch = _batch(tiny)
    with open_metastore(f"sqlite://{tmp_path}/meta.db") as store:
        a = _publish(spd, tiny, models, 0, "snap-a")
        expected_a = spd.load(a).predict_batch(batch)["fm_pred"]
        updater = Updater(spd, store, owner="u1", lease_seconds=60, poll_interval=1)
        assert updater.poll_once() == a
        with SnapshotLoader(spd, store, poll_interval=0.05) as loader:
            assert loader.wait_for(a, timeout=20)
            b = _publish(spd, tiny, models, 1, "snap-b")
            _swap_weights_consistently(spd.get(b).path, models[0][0])
            # the updater never records it ...
            assert updater.poll_once() == a and "signature does not verify" in updater.refused[b]
            assert store.get_current().snapshot_id == a
            # ... and if someone moves the pointer anyway, the loader refuses it and keeps serving a
            cur = store.get_current()
            assert store.compare_and_set_current(b, expected_version=cur.version, owner="evil", lease_seconds=60)
            with pytest.raises(SnapshotRefused, match="snap-b refused: signature does not verify"):
                loader.wait_for(b, timeout=20)
            r = loader.predict(batch)
            assert r.snapshot_id == a
            np.testing.assert_array_equal(r.predictions["fm_pred"], expected_a)


def test_rotation_accepts_old_key_snapshots_and_signs_with_the_new_key(tiny, models, tmp_path):
    old_only = SigningKeys.from_files([_key_file(tmp_path / "old.key", OLD_KEY)])
    a = _publish(SnapshotStore(tmp_path / "spd", keys=old_only), tiny, models, 0, "snap-old")
    # rotation: the new key first; as two lines of one file, or as two files
    rotated_one_file = SigningKeys.from_files([_key_file(tmp_path / "both.key", NEW_KEY, OLD_KEY)])
    rotated_two_files = SigningKeys.from_files([_key_file(tmp_path / "new.key", NEW_KEY), str(tmp_path / "old.key")])
    assert rotated_one_file.key_ids == rotated_two_files.key_ids and rotated_one_file.key_ids[1] == old_only.key_ids[0]
    spd = SnapshotStore(tmp_path / "spd", keys=rotated_one_file)
    spd.verify(a)  # old-key snapshot still accepted
    assert spd.verify_signature(spd.get(a)) == old_only.signing_key_id
    c = _publish(spd, tiny, models, 1, "snap-new")
    # the new snapshot's HMAC, computed here from the definition: new key, prefix + canonical JSON
    info = spd.get(c)
    body = json.dumps(json.load(open(os.path.join(info.path, "manifest.json"))), sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False).encode()
    expected = hmac.new(NEW_KEY.encode(), b"exfm-snapshot-manifest-v1\n" + body, hashlib.sha256).hexdigest()
    sig = json.load(open(os.path.join(info.path, "signature.json")))
    assert hmac.compare_digest(sig["hmac"], expected) and sig["key_id"] == rotated_one_file.signing_key_id
    SnapshotStore(tmp_path / "spd", keys=rotated_two_files).load(c)
    # once the old key is dropped, its snapshots are refused; the old key alone refuses new ones
    new_only = SnapshotStore(tmp_path / "spd", keys=SigningKeys.from_files([str(tmp_path / "new.key")]))
    new_only.verify(c)
    with pytest.raises(SnapshotUnauthenticated, match="not an accepted key"):
        new_only.verify(a)
    with pytest.raises(SnapshotUnauthenticated, match="not an accepted key"):
        SnapshotStore(tmp_path / "spd", keys=old_only).verify(c)


def test_key_file_errors_name_the_file_and_line_not_the_key(tmp_path):
    short = "too-short-key-123"
    path = _key_file(tmp_path / "k", NEW_KEY, short)
    with pytest.raises(SignatureError) as e:
        SigningKeys.from_files([path])
    assert f"{path}, line 3" in str(e.value) and short not in str(e.value) and NEW_KEY not in str(e.value)
    with pytest.raises(SignatureError, match="holds no key"):
        SigningKeys.from_files([_key_file(tmp_path / "empty")])
    with pytest.raises(SignatureError, match="twice"):
        SigningKeys.from_files([_key_file(tmp_path / "a", NEW_KEY), _key_file(tmp_path / "b", NEW_KEY)])
    assert NEW_KEY not in repr(SigningKeys.from_files([_key_file(tmp_path / "c", NEW_KEY)]))


def test_cli_run_with_key_refuses_tampered_snapshot_and_keeps_the_previous(tiny, models, tmp_path, capsys):
    key = _key_file(tmp_path / "spd.key", NEW_KEY)
    ids = np.arange(tiny.num_rows, dtype=np.int64) + 100
    day_file = str(tmp_path / "vm.h5")
    write_day_file(day_file, dict(tiny.columns, example_id=ids), dataset_id="tiny", day=DAY)
    spd = str(tmp_path / "spd")
    for which, sid in ((0, "fm-a"), (1, "fm-b")):
        model, params = models[which]
        weights, pfile = tmp_path / f"{sid}.pt", tmp_path / f"{sid}.json"
        torch.save(model.state_dict(), weights)
        pfile.write_text(json.dumps(params))
        assert exfm_main(["das", "publish", "--snapshots", spd, "--model-params", str(pfile), "--weights",
                          str(weights), "--feature-map-dir", tiny.feature_map.data_dir, "--snapshot-id", sid,
                          "--spd-key-file", key]) == 0
        if sid == "fm-a":
            run = ["das", "run", "--snapshots", spd, "--day-files", f"vm={day_file}", "--out",
                   str(tmp_path / "out"), "--no-progress", "--spd-key-file", key]
            assert exfm_main(run) == 0
            assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["job_id"] == f"{DAY}-fm-a"
    _swap_weights_consistently(os.path.join(spd, "fm-b"), models[0][0])
    capsys.readouterr()
    assert exfm_main(run) == 0  # the newest snapshot is refused: the day stays labelled by fm-a
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["job_id"] == f"{DAY}-fm-a"
    assert exfm_main(run + ["--snapshot", "fm-b"]) == 2  # pinned to the tampered one: one clear line
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("exfm das run: snapshot fm-b refused: signature does not verify")
    assert NEW_KEY not in err


def test_ray_actors_check_the_signature_too(tiny, models, tmp_path):
    """The Ray engine's actors reload the snapshot themselves: they get the key file paths, not keys."""
    from exfm_plugin.das.augment.engines import _SnapshotPredictor

    key = _key_file(tmp_path / "spd.key", NEW_KEY)
    spd = SnapshotStore(tmp_path / "spd", keys=SigningKeys.from_files([key]))
    a = _publish(spd, tiny, models, 0, "snap-a")
    assert _SnapshotPredictor(spd.root, a, 1, (key,)).loaded.snapshot_id == a
    _swap_weights_consistently(spd.get(a).path, models[1][0])
    with pytest.raises(SnapshotUnauthenticated, match="snap-a refused"):
        _SnapshotPredictor(spd.root, a, 1, (key,))
