"""``exfm das status``: what the metadata store holds, for an operator (see :mod:`.main`)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from .common import default_metastore, zk_auth

__all__ = ["run_status"]


def _fmt_time(expires: float | None, now: float) -> str:
    if expires is None:
        return "-"
    left = expires - now
    return f"expires in {left:.1f} s" if left > 0 else f"expired {-left:.1f} s ago"


def run_status(args: argparse.Namespace) -> int:
    """``exfm das status``: the current snapshot and its lease, the shards of a job (text or JSON)."""
    from ..metastore import CLAIMED, DONE, PENDING, open_metastore

    if args.metastore is None and args.snapshots is None:
        print("exfm das status: give --metastore URL or --snapshots DIR", file=sys.stderr)
        return 2
    url = args.metastore or default_metastore(args.snapshots)
    now = time.time()
    with open_metastore(url, auth=zk_auth(args)) as store:
        access = store.access_summary()
        current = store.get_current()
        job_id = args.job
        if job_id is None and args.day is not None and current is not None:
            job_id = f"{args.day}-{current.snapshot_id}"
        shards = store.job_status(job_id) if job_id else {}
        expired = store.expired_snapshots(now)
    out: dict[str, Any] = {"metastore": url, "access": access, "now": now, "expired_snapshots": expired,
                           "current": None if current is None else {
                               "snapshot_id": current.snapshot_id, "version": current.version,
                               "owner": current.owner, "lease_expires_at": current.lease_expires_at,
                               "lease_seconds_left": current.lease_expires_at - now}}
    if job_id:
        counts = {s: sum(sh.state == s for sh in shards.values()) for s in (DONE, CLAIMED, PENDING)}
        counts["claimed_expired"] = sum(sh.state == CLAIMED and sh.claimable(now) for sh in shards.values())
        out["job"] = {"job_id": job_id, "shards": len(shards), **counts,
                      "attempts": sum(sh.attempts for sh in shards.values()),
                      "claims": [{"shard_id": sh.shard_id, "owner": sh.owner, "attempts": sh.attempts,
                                  "lease_expires_at": sh.lease_expires_at}
                                 for sh in shards.values() if sh.state == CLAIMED]}
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"metastore {url}")
    print(f"access: {access}")
    if current is None:
        print("current snapshot: none")
    else:
        print(f"current snapshot: {current.snapshot_id} (version {current.version}, owner {current.owner}, "
              f"lease {_fmt_time(current.lease_expires_at, now)})")
    if expired:
        print(f"expired snapshots awaiting GC: {', '.join(expired)}")
    if job_id:
        j = out["job"]
        if not shards:
            print(f"job {job_id}: unknown (no shards registered)")
        else:
            print(f"job {job_id}: {j['shards']} shards: {j['done']} done, {j['claimed']} claimed "
                  f"({j['claimed_expired']} with an expired lease), {j['pending']} pending; {j['attempts']} attempts")
            for c in j["claims"]:
                print(f"  {c['shard_id']}: claimed by {c['owner']} (attempt {c['attempts']}, "
                      f"lease {_fmt_time(c['lease_expires_at'], now)})")
    return 0
