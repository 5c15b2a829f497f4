"""Peak memory of the TaobaoAd raw reader at 1%, 3% and 10% of the real size.

    python benchmarks/perf/prep_memory.py                    # 1, 3, 10 %; 3 runs each
    python benchmarks/perf/prep_memory.py --sizes 1,3 --repeats 1

The real files: ``raw_sample.csv`` 26,557,961 impressions and ``behavior_log.csv``
723,268,134 behaviours (27.2 per impression, 22 days, ~23 GB) for 1,141,729 users and
846,811 ads. At each size the four files are written in the real format with every count
scaled by the same fraction (so behaviours per user and per impression stay real) by a
dedicated numpy writer (``data_prep.synthetic`` simulates a click model in memory and
writes ~3 behaviours per impression: too slow and the wrong ratio here). Writing is not
timed or measured.

Each run is a fresh child process that reads the files with ``taobaoad.read_raw`` (the log
split by user into bucket files, the sequences computed bucket by bucket) and attaches the
sequences to all impressions in slices of ``--slice`` rows, as a writer streaming day files
would, keeping only a checksum. The child reports its own peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``) and impressions/s and behaviours/s over the whole
read. Targets: peak RSS at 10% within 1.5x of 1% and under 4 GB, so the real files fit a
24 GB machine. Files go under ``--workdir`` (default /tmp) and are deleted afterwards.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REAL = {"impressions": 26_557_961, "behaviours": 723_268_134, "users": 1_141_729, "ads": 846_811}
DAY0 = 1494000000 - (1494000000 + 8 * 3600) % 86400  # 2017-05-06 00:00 Beijing time
LOG_DAYS, IMP_DAYS = 22, 8
CHUNK = 2_000_000
RSS_RATIO_TARGET, RSS_GB_TARGET = 1.5, 4.0


# ----------------------------------------------------------------------------- writer
def _write_chunks(path: Path, header: str, n: int, make, seed: int) -> None:
    """``n`` rows of ``make(rng, rows)`` frames appended to a CSV, CHUNK rows at a time."""
    with open(path, "wb") as f:
        f.write((header + "\n").encode())
        for i, start in enumerate(range(0, n, CHUNK)):
            df = make(np.random.default_rng([seed, i]), min(CHUNK, n - start))
            df.write_csv(f, include_header=False, null_value="NULL")


def write_raw(out: Path, fraction: float) -> dict[str, int]:
    """The four raw TaobaoAd files at ``fraction`` of every real count; returns the counts."""
    import polars as pl

    out.mkdir(parents=True, exist_ok=True)
    n = {k: max(1, int(round(v * fraction))) for k, v in REAL.items()}
    users, ads = n["users"], n["ads"]

    def impressions(r: np.random.Generator, m: int) -> pl.DataFrame:
        clk = (r.random(m) < 0.051).astype(np.int8)
        return pl.DataFrame({"user": r.integers(1, users + 1, m),
                             "time_stamp": DAY0 + r.integers(0, IMP_DAYS * 86400, m),
                             "adgroup_id": r.integers(1, ads + 1, m),
                             "pid": np.where(r.random(m) < 0.5, "430548_1007", "430539_1007"),
                             "nonclk": 1 - clk, "clk": clk})

    def behaviours(r: np.random.Generator, m: int) -> pl.DataFrame:
        brand = r.integers(1, 461_498, m).astype(float)
        brand[r.random(m) < 0.05] = np.nan
        return pl.DataFrame({"user": r.integers(1, users + 1, m),
                             "time_stamp": DAY0 + r.integers(-(LOG_DAYS - IMP_DAYS) * 86400, IMP_DAYS * 86400, m),
                             "btag": r.choice(np.array(["pv", "cart", "fav", "buy"]), m, p=[0.9, 0.04, 0.03, 0.03]),
                             "cate": r.integers(1, 12_979, m),
                             "brand": pl.Series(brand, nan_to_null=True).cast(pl.Int64)})

    def ad_feature(r: np.random.Generator, m: int) -> pl.DataFrame:
        return pl.DataFrame({"adgroup_id": np.arange(1, m + 1), "cate_id": r.integers(1, 6_770, m),
                             "campaign_id": r.integers(1, 423_437, m), "customer": r.integers(1, 255_876, m),
                             "brand": r.integers(1, 99_815, m), "price": np.round(r.lognormal(4, 1.2, m), 2)})

    def user_profile(r: np.random.Generator, m: int) -> pl.DataFrame:
        return pl.DataFrame({"userid": np.arange(1, m + 1), "cms_segid": r.integers(0, 97, m),
                             "cms_group_id": r.integers(0, 13, m), "final_gender_code": r.integers(1, 3, m),
                             "age_level": r.integers(0, 7, m), "pvalue_level": r.integers(1, 4, m),
                             "shopping_level": r.integers(1, 4, m), "occupation": r.integers(0, 2, m),
                             "new_user_class_level ": r.integers(1, 5, m)})

    _write_chunks(out / "raw_sample.csv", "user,time_stamp,adgroup_id,pid,nonclk,clk", n["impressions"], impressions, 1)
    _write_chunks(out / "behavior_log.csv", "user,time_stamp,btag,cate,brand", n["behaviours"], behaviours, 2)
    _write_chunks(out / "ad_feature.csv", "adgroup_id,cate_id,campaign_id,customer,brand,price", ads, ad_feature, 3)
    _write_chunks(out / "user_profile.csv", "userid,cms_segid,cms_group_id,final_gender_code,age_level,"
                  "pvalue_level,shopping_level,occupation,new_user_class_level ", users, user_profile, 4)
    return n


# ------------------------------------------------------------------------------ child
def child(raw_dir: str, work_dir: str, slice_rows: int) -> dict:
    """One measured read: read_raw, then every impression's sequences in slices."""
    import polars as pl

    from data_prep.readers import taobaoad

    t = time.perf_counter()
    res = taobaoad.read_raw(raw_dir, work_dir=work_dir)
    read_s = time.perf_counter() - t
    frame = res.frame
    elements = 0
    for start in range(0, frame.height, slice_rows):
        part = res.add_sequences(frame.slice(start, slice_rows))
        elements += int(part["cate_his"].list.len().sum())
    seconds = time.perf_counter() - t
    seq = res.add_sequences
    return {"impressions": frame.height, "behaviours": seq.log_rows, "buckets": seq.n_buckets,
            "sequence_elements": elements, "read_s": round(read_s, 1), "seconds": round(seconds, 1),
            "frame_mb": round(frame.estimated_size() / 2 ** 20),
            "disk_mb": {k: round(v / 2 ** 20) for k, v in seq.disk_bytes.items()},
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "polars_threads": pl.thread_pool_size()}


def run_child(raw_dir: Path, slice_rows: int) -> dict:
    work = raw_dir / "work"
    cmd = [sys.executable, __file__, "--child", str(raw_dir), "--child-work", str(work), "--slice", str(slice_rows)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    shutil.rmtree(work, ignore_errors=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _mmm(values: list[float]) -> str:
    return f"{min(values):,.0f} / {statistics.median(values):,.0f} / {max(values):,.0f}"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,3,10", help="percent of the real size, comma-separated")
    ap.add_argument("--repeats", type=int, default=3, help="measured runs per size (files written once)")
    ap.add_argument("--largest-repeats", type=int, default=None,
                    help="runs at the largest size (default: --repeats); it is the expensive one")
    ap.add_argument("--slice", type=int, default=100_000, help="impressions per add_sequences call")
    ap.add_argument("--workdir", default="/tmp", help="where the raw files are written (then deleted)")
    ap.add_argument("--keep", action="store_true", help="keep the raw files")
    ap.add_argument("--json", default=None, help="also write all runs as JSON here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-work", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.child_work, args.slice)))
        return {}

    sizes = [float(s) for s in args.sizes.split(",")]
    free_gb = shutil.disk_usage(args.workdir).free / 2 ** 30
    print(f"free disk under {args.workdir}: {free_gb:.0f} GB; cpus {os.cpu_count()}", flush=True)
    runs: dict[float, list[dict]] = {}
    for pct in sizes:
        raw = Path(tempfile.mkdtemp(prefix=f"exfm_prep_mem_{pct:g}pct_", dir=args.workdir))
        try:
            t = time.perf_counter()
            n = write_raw(raw, pct / 100)
            mb = sum(p.stat().st_size for p in raw.glob("*.csv")) / 2 ** 20
            print(f"{pct:g}%: wrote {n['impressions']:,} impressions, {n['behaviours']:,} behaviours "
                  f"({mb:,.0f} MB CSV) in {time.perf_counter() - t:.0f} s", flush=True)
            runs[pct] = []
            reps = args.largest_repeats if pct == max(sizes) and args.largest_repeats else args.repeats
            for _ in range(reps):
                r = run_child(raw, args.slice)
                r["impressions_per_s"] = r["impressions"] / r["seconds"]
                r["behaviours_per_s"] = r["behaviours"] / r["seconds"]
                runs[pct].append(r)
                print(f"  run: peak RSS {r['peak_rss_mb']:,} MB, {r['seconds']} s (read {r['read_s']} s), "
                      f"{r['buckets']} buckets, frame {r['frame_mb']} MB, work files {r['disk_mb']} MB", flush=True)
        finally:
            if not args.keep:
                shutil.rmtree(raw, ignore_errors=True)

    print(f"\n{'size':>5}  {'impressions':>12}  {'behaviours':>12}  {'peak RSS MB min/med/max':>24}  "
          f"{'impr/s min/med/max':>26}  {'behav/s min/med/max':>30}")
    for pct, rs in runs.items():
        print(f"{pct:>4g}%  {rs[0]['impressions']:>12,}  {rs[0]['behaviours']:>12,}  "
              f"{_mmm([r['peak_rss_mb'] for r in rs]):>24}  {_mmm([r['impressions_per_s'] for r in rs]):>26}  "
              f"{_mmm([r['behaviours_per_s'] for r in rs]):>30}")
    summary: dict = {"runs": {str(k): v for k, v in runs.items()}}
    lo, hi = min(runs), max(runs)
    if lo != hi:
        med = {p: statistics.median(r["peak_rss_mb"] for r in runs[p]) for p in (lo, hi)}
        ratio = med[hi] / med[lo]
        worst = max(r["peak_rss_mb"] for r in runs[hi]) / min(r["peak_rss_mb"] for r in runs[lo])
        ok = ratio <= RSS_RATIO_TARGET and max(r["peak_rss_mb"] for r in runs[hi]) / 1024 < RSS_GB_TARGET
        print(f"\npeak RSS {hi:g}% / {lo:g}%: {ratio:.2f}x (median over median; worst pair {worst:.2f}x); "
              f"target <= {RSS_RATIO_TARGET}x and < {RSS_GB_TARGET:g} GB at {hi:g}%: {'met' if ok else 'NOT met'}")
        summary.update(rss_ratio=ratio, rss_ratio_worst=worst, target_met=ok)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
