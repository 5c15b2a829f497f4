"""Preparation throughput: synthetic raw TaobaoAd files (with behaviour log) -> 8 HDF5 days.

    python benchmarks/perf/prep_throughput.py --rows 1000000

The raw files are written first by ``data_prep.synthetic.generate_raw`` in a child process
(not timed, not in the memory figure; reused when already there), then this process times
``data_prep.prepare.prepare(..., source="raw")``: reading and joining the four CSV files,
building the behaviour sequences, splitting into days, fitting the vocabulary, encoding and
writing the day files. Reports impressions/s and the peak resident memory
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``). Target: >= 100k impressions/s on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _generate(raw_dir: Path, rows: int, seed: int) -> float:
    marker = raw_dir / "_done.json"
    if marker.exists() and json.loads(marker.read_text()) == {"rows": rows, "seed": seed}:
        return 0.0
    t = time.perf_counter()
    code = ("import sys; from data_prep.synthetic import generate_raw; "
            "generate_raw('taobaoad', sys.argv[1], size=int(sys.argv[2]), seed=int(sys.argv[3]))")
    subprocess.run([sys.executable, "-c", code, str(raw_dir), str(rows), str(seed)], check=True)
    marker.write_text(json.dumps({"rows": rows, "seed": seed}))
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="impressions to generate and prepare")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="where raw and prepared files go (default: a temp dir)")
    ap.add_argument("--json", default=None, help="also write the result as JSON here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="exfm_prep_bench_"))
    raw_dir = work / f"raw_{args.rows}_{args.seed}"
    gen_s = _generate(raw_dir, args.rows, args.seed)
    sizes = {p.name: p.stat().st_size for p in raw_dir.glob("*.csv")}

    t = time.perf_counter()
    import exfm_plugin.data.dayfile  # noqa: F401  (exfm_plugin pulls in torch + fuxictr: a fixed cost)
    from data_prep.prepare import prepare  # imported after generation: RSS below is prep's
    import_s = time.perf_counter() - t

    t = time.perf_counter()
    summary = prepare("taobaoad", "raw", str(raw_dir), str(work / "out"), seed=args.seed)
    seconds = time.perf_counter() - t
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open(raw_dir / "behavior_log.csv", "rb") as f:
        behaviour_rows = sum(1 for _ in f) - 1
    result = {"impressions": summary.total_rows, "behaviour_rows": behaviour_rows, "seconds": round(seconds, 2),
              "impressions_per_s": round(summary.total_rows / seconds), "peak_rss_mb": round(peak_mb),
              "import_seconds": round(import_s, 1), "generate_seconds": round(gen_s, 1), "raw_csv_mb": round(sum(sizes.values()) / 2 ** 20, 1),
              "cpus": os.cpu_count(), "target_impressions_per_s": 100_000}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
