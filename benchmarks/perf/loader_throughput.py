"""Rows/s of exfm's H5DataLoader vs fuxictr 2.3.10's parquet loader on TaobaoAd-shaped data.

Builds ``--rows`` synthetic rows shaped like BARS TaobaoAd_x1 after fuxictr's encoding:
16 categorical ids + ``group_id`` (meta copy of ``userid``), 17 id columns in all, the
numeric ``price``, three sequences of length 50 (``cate_his``, ``brand_his``, ``btag_his``,
post-padded with 0, lengths uniform in 0..50) and the label ``clk``. Ids are uniform over
vocabularies of the size BARS' ``min_categr_count=10`` leaves on the 25M-row data (estimated).

The same rows are written once as an exfm HDF5 day file and once as parquet in the layout
fuxictr's ``build_dataset`` writes (ids int64, sequences ``list<int32>``, one file), then each
loader makes ``--passes`` full shuffled passes with ``--batch-size`` in its own subprocess
(best and first pass reported: the machine may be shared), so that
peak memory is per loader: the loading process's ``VmHWM`` (peak RSS), and the peak summed PSS of
the process and all its descendants (Ray's raylet, workers and shared-memory object store
included), sampled every 0.1 s from /proc.

    python benchmarks/perf/loader_throughput.py                 # 1M rows, batch 8192
    python benchmarks/perf/loader_throughput.py --rows 100000   # quick run
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

SEQ_LEN = 50
#: feature -> vocabulary size (ids 1..vocab-1, 0 = padding), estimated for min_categr_count=10
CATEGORICAL = {
    "userid": 600_000, "cms_segid": 98, "cms_group_id": 14, "final_gender_code": 3,
    "age_level": 8, "pvalue_level": 5, "shopping_level": 4, "occupation": 3,
    "new_user_class_level": 6, "adgroup_id": 350_000, "cate_id": 6_800, "campaign_id": 200_000,
    "customer": 120_000, "brand": 75_000, "pid": 3, "btag": 5,
}
SEQUENCES = {"cate_his": "cate_id", "brand_his": "brand", "btag_his": "btag"}
LABEL = "clk"


def feature_map_json() -> dict:
    features = [{"group_id": {"type": "meta", "source": "user"}}]
    features += [{name: {"type": "categorical", "source": "", "vocab_size": v, "padding_idx": 0}}
                 for name, v in CATEGORICAL.items()]
    features += [{"price": {"type": "numeric", "source": "item"}}]
    features += [{name: {"type": "sequence", "source": "user", "vocab_size": CATEGORICAL[share],
                         "max_len": SEQ_LEN, "padding_idx": 0, "share_embedding": share}}
                 for name, share in SEQUENCES.items()]
    return {"dataset_id": "taobao_bench", "num_fields": len(features), "total_features": 0,
            "input_length": 0, "labels": [LABEL], "features": features}


def make_rows(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    cols: dict[str, np.ndarray] = {name: rng.integers(1, v, n) for name, v in CATEGORICAL.items()}
    cols["group_id"] = cols["userid"].copy()
    cols["price"] = rng.lognormal(4.0, 1.0, n)
    lengths = rng.integers(0, SEQ_LEN + 1, n)
    mask = np.arange(SEQ_LEN)[None, :] < lengths[:, None]
    for name, share in SEQUENCES.items():
        cols[name] = np.where(mask, rng.integers(1, CATEGORICAL[share], (n, SEQ_LEN)), 0).astype(np.int32)
    cols[LABEL] = (rng.random(n) < 0.05).astype(np.int64)
    return cols


def write_parquet(path: str, cols: dict[str, np.ndarray]) -> None:
    """fuxictr's layout: ``build_dataset.transform`` maps numpy batches through Ray and writes
    ``ds.to_pandas().to_parquet()``: scalar ids int64, 2-D sequences as ``list<int32>``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {}
    for name, values in cols.items():
        if values.ndim == 2:
            n, width = values.shape
            offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32))
            arrays[name] = pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1)))
        else:
            arrays[name] = pa.array(values)
    pq.write_table(pa.table(arrays), path)


# ---------------------------------------------------------------------------- memory
def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out


class TreeMemorySampler(threading.Thread):
    """Peak summed PSS of this process and its descendants (shared pages counted once)."""

    def __init__(self, interval: float = 0.1):
        super().__init__(daemon=True)
        self.interval, self.peak_kb, self._stop_event = interval, 0, threading.Event()

    def run(self) -> None:
        me = os.getpid()
        while not self._stop_event.is_set():
            self.peak_kb = max(self.peak_kb, sum(_pss_kb(p) for p in _descendants(me)))
            self._stop_event.wait(self.interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak_kb


# ---------------------------------------------------------------------------- measure
def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status in MiB (VmHWM is reset by exec, unlike
    ``ru_maxrss``, which on Linux keeps the forking parent's peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(kind: str, workdir: str, batch_size: int, seed: int, passes: int) -> dict:
    """``passes`` shuffled passes (epochs) in this process; returns the figures as a dict."""
    import logging

    import torch  # noqa: F401  (imports outside the timed and baseline parts)
    from fuxictr.features import FeatureMap
    from fuxictr.pytorch.dataloaders import RankDataLoader

    from exfm_plugin.data import H5DataLoader

    logging.basicConfig(level=logging.WARNING)
    sampler = TreeMemorySampler()
    sampler.start()
    feature_map = FeatureMap("taobao_bench", workdir)
    feature_map.load(os.path.join(workdir, "feature_map.json"), {"embedding_dim": 32})
    rss_base = _status_mb("VmRSS")
    t0 = time.perf_counter()
    if kind.startswith("h5"):
        loader = H5DataLoader(feature_map, os.path.join(workdir, "day.h5"), split="train",
                              batch_size=batch_size, shuffle=True, seed=seed,
                              device="cpu" if kind == "h5_device_cpu" else None)
    else:
        loader, _ = RankDataLoader(feature_map, stage="train",
                                   train_data=os.path.join(workdir, "day.parquet"),
                                   batch_size=batch_size, shuffle=True, data_format="parquet")
    t1 = time.perf_counter()
    pass_rates, checksum, rows, batches, first_pass_s = [], 0.0, 0, 0, 0.0
    for p in range(passes):
        t_start = time.perf_counter()
        rows = batches = 0
        checksum = 0.0
        for batch in loader:
            rows += len(batch[LABEL])
            checksum += float(batch[LABEL].sum())
            batches += 1
        elapsed = time.perf_counter() - t_start
        first_pass_s = first_pass_s or elapsed
        pass_rates.append(rows / elapsed)
        assert rows == loader.num_samples, (rows, loader.num_samples)
    peak_tree_kb = sampler.stop()
    return {"loader": kind, "rows": rows, "batches": batches, "len": len(loader),
            "setup_s": t1 - t0, "first_pass_s": first_pass_s, "pass_rows_per_s": pass_rates,
            "first_rows_per_s": pass_rates[0], "best_rows_per_s": max(pass_rates),
            "label_sum": checksum,
            "rss_after_imports_mb": rss_base, "peak_rss_mb": _status_mb("VmHWM"),
            "peak_tree_pss_mb": peak_tree_kb / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--batch-size", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=2019)
    ap.add_argument("--workdir", default=None, help="where to write the data (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the written files")
    ap.add_argument("--loaders", default="h5,h5_device_cpu,fuxictr_parquet",
                    help="comma list of h5, h5_device_cpu, fuxictr_parquet")
    ap.add_argument("--compression", default=None, help="h5 compression filter (None or lzf)")
    ap.add_argument("--passes", type=int, default=2,
                    help="full shuffled passes per loader; the best and the first are reported "
                         "(the machine may be shared; device mode uploads during the first)")
    ap.add_argument("--_measure", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._measure:
        print(json.dumps(measure(args._measure, args.workdir, args.batch_size, args.seed, args.passes)))
        return

    from exfm_plugin.data import write_day_file

    workdir = args.workdir or tempfile.mkdtemp(prefix="exfm_loader_bench_")
    os.makedirs(workdir, exist_ok=True)
    try:
        with open(os.path.join(workdir, "feature_map.json"), "w") as f:
            json.dump(feature_map_json(), f)
        t = time.perf_counter()
        cols = make_rows(args.rows, seed=0)
        print(f"generated {args.rows:,} rows in {time.perf_counter() - t:.1f}s")
        t = time.perf_counter()
        write_day_file(os.path.join(workdir, "day.h5"), cols, dataset_id="taobao_bench", day=1,
                       compression=args.compression)
        t_h5 = time.perf_counter() - t
        t = time.perf_counter()
        write_parquet(os.path.join(workdir, "day.parquet"), cols)
        t_pq = time.perf_counter() - t
        del cols
        for name, secs in (("day.h5", t_h5), ("day.parquet", t_pq)):
            size = os.path.getsize(os.path.join(workdir, name)) / 2 ** 20
            print(f"wrote {name}: {size:,.0f} MiB in {secs:.1f}s")

        results = {}
        for kind in args.loaders.split(","):
            cmd = [sys.executable, os.path.abspath(__file__), "--_measure", kind, "--workdir", workdir,
                   "--batch-size", str(args.batch_size), "--seed", str(args.seed), "--passes", str(args.passes)]
            with open(os.path.join(workdir, f"{kind}.log"), "w") as log:
                proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
            if proc.returncode != 0:
                with open(os.path.join(workdir, f"{kind}.log")) as log:
                    print(log.read()[-3000:], file=sys.stderr)
                raise SystemExit(f"{kind} failed (exit {proc.returncode})")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            results[kind] = r
            print(f"{kind:16s} rows/s best {r['best_rows_per_s']:>10,.0f}  first {r['first_rows_per_s']:>10,.0f} "
                  f"(pass {r['first_pass_s']:6.2f}s)  setup {r['setup_s']:6.2f}s  batches {r['batches']}  "
                  f"peak RSS {r['peak_rss_mb']:6,.0f} MiB (imports {r['rss_after_imports_mb']:,.0f})  "
                  f"peak tree PSS {r['peak_tree_pss_mb']:6,.0f} MiB")
        sums = {r["label_sum"] for r in results.values()}
        assert len(sums) == 1, f"loaders disagree on the label sum: {results}"
        if "h5" in results and "fuxictr_parquet" in results:
            h5, pq = results["h5"], results["fuxictr_parquet"]
            print(f"ratio H5DataLoader / fuxictr parquet: best pass {h5['best_rows_per_s'] / pq['best_rows_per_s']:.1f}x, "
                  f"first pass {h5['first_rows_per_s'] / pq['first_rows_per_s']:.1f}x (target >= 10x)")
        print(f"load average (1, 5, 15 min) at the end: {os.getloadavg()} on {os.cpu_count()} CPUs")
        print("memory: 'peak RSS' = VmHWM of the loading subprocess (imports = its RSS after importing "
              "torch/fuxictr/exfm, before loading); 'peak tree PSS' = peak "
              "summed PSS of it and its descendants (Ray raylet/workers/object store), sampled every 0.1 s")
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
