import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

from tiny_data import make_tiny_data  # noqa: E402
from zk_support import require_zk, unique_chroot, zk_cleanup  # noqa: E402


@pytest.fixture
def tiny(tmp_path):
    return make_tiny_data(str(tmp_path / "tiny"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is several times faster than two on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=["sqlite", pytest.param("zk", marks=pytest.mark.zookeeper)])
def store_url(request, tmp_path):
    """Each metadata-store test runs on SQLite and on the real ZooKeeper."""
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path}/meta.db"
        return
    hosts = require_zk()
    chroot = unique_chroot(request)
    yield f"zk://{hosts}{chroot}"
    zk_cleanup(chroot)
