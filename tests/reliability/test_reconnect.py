"""The worker's connection-loss rule, on a scripted store: wait for a dropped connection while the
session lives, retry once usable; stop at once when the session is lost or the store never drops."""
from __future__ import annotations

import time

import pytest

from exfm_plugin.das.metastore import LeaseLostError, MetastoreUnavailable
from exfm_plugin.das.augment.worker import _after_reconnect


class ScriptedStore:
    """``usable()`` turns True ``back_after`` seconds after creation; ``session_lost`` as given."""

    url = "zk://scripted/x"

    def __init__(self, back_after: float, *, session_lost: bool = False, reconnect_wait: float = 5.0) -> None:
        self.back_at = time.monotonic() + back_after
        self.session_lost = session_lost
        self.reconnect_wait = reconnect_wait
        self.calls = 0

    def usable(self) -> bool:
        return time.monotonic() >= self.back_at

    def wait_until_usable(self, timeout, should_stop=None):
        from exfm_plugin.das.metastore import MetadataStore
        return MetadataStore.wait_until_usable(self, timeout, should_stop)

    def renew(self) -> bool:
        self.calls += 1
        if not self.usable():
            raise LeaseLostError("connection is SUSPENDED")
        return True


def test_a_drop_shorter_than_the_wait_is_ridden_through():
    store = ScriptedStore(back_after=0.3)
    start = time.monotonic()
    assert _after_reconnect(store, "renew", store.renew) is True
    assert store.calls == 2 and time.monotonic() - start >= 0.3


def test_a_lost_session_stops_at_once():
    store = ScriptedStore(back_after=0.3, session_lost=True)
    with pytest.raises(LeaseLostError):
        _after_reconnect(store, "renew", store.renew)
    assert store.calls == 1


def test_a_store_that_never_drops_does_not_wait():
    store = ScriptedStore(back_after=10, reconnect_wait=0.0)  # SQLite: reconnect_wait 0
    with pytest.raises(LeaseLostError):
        _after_reconnect(store, "renew", store.renew)


def test_a_connection_that_stays_down_stops_after_the_session_timeout():
    store = ScriptedStore(back_after=10, reconnect_wait=0.2)
    start = time.monotonic()
    with pytest.raises(MetastoreUnavailable, match="did not come back within 0.2 s"):
        _after_reconnect(store, "claim", store.renew)
    assert 0.2 <= time.monotonic() - start < 2
