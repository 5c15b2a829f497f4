"""A real ZooKeeper for the DAS tests: where it is, and how tests get a private corner of it."""
from __future__ import annotations

import logging
import os
import uuid

import pytest

ZK_HOSTS = os.environ.get("EXFM_ZK_HOSTS", "").strip()
ZK_HOWTO = ("needs a real ZooKeeper: bash scripts/zookeeper.sh install && "
            "export \"$(bash scripts/zookeeper.sh start)\"  (sets EXFM_ZK_HOSTS=127.0.0.1:PORT)")


def require_zk() -> str:
    """The server's hosts; skip without one locally, fail in CI (the tests must run there)."""
    if not ZK_HOSTS:
        if os.environ.get("CI"):
            pytest.fail("CI is set but EXFM_ZK_HOSTS is not: the ZooKeeper tests must run in CI; " + ZK_HOWTO)
        pytest.skip(ZK_HOWTO)
    return ZK_HOSTS


def unique_chroot(request: pytest.FixtureRequest) -> str:
    """A chroot unique to this test, named after it for debugging."""
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[:80]
    return f"/exfm-test/{name}-{uuid.uuid4().hex[:8]}"


def zk_cleanup(chroot: str) -> None:
    from kazoo.client import KazooClient

    client = KazooClient(hosts=ZK_HOSTS)
    try:
        client.start(timeout=5)
        client.delete(chroot, recursive=True)
    except Exception as e:  # cleanup only: never hide the test's own result
        logging.getLogger(__name__).warning("could not delete %s: %s", chroot, e)
    finally:
        client.stop()
        client.close()
