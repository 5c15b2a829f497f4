"""DAS augmentation throughput and memory on TaobaoAd-shaped rows, side by side in one run.

* In-process engine, the whole augmentation (plan, stage 1: shard reads + FM + shard writes +
  metadata-store claims, stage 2: VM splits) vs a bare ``torch.no_grad()`` loop of the same
  model over the same rows already in memory as tensors. Target: ratio >= 0.9.
* Ray engine with 1 vs 2 actors on the same rows (one shard), with the fixed cost of a call
  (actor start-up + snapshot load from the SPD) measured separately.
* Peak RSS of the augmentation for two shard sizes, each in a fresh process: the peak above
  the loaded model grows with the shard, not with the day.

Two VMs share half their rows (VM a = first 75% of the rows, VM b = last 75%), so the FM
predicts the union once. The FM is BARS' DCN for TaobaoAd (embedding 32, DNN 512-256-128,
2 cross layers) on a feature map with TaobaoAd_x1's vocabulary sizes.

    python benchmarks/perf/das_throughput.py                  # 200k rows
    python benchmarks/perf/das_throughput.py --rows 50000 --skip-ray
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from shapes import taobao_batches, taobao_feature_map  # noqa: E402

from exfm_plugin.das.augment import AugmentJob, VMSpec, run_worker  # noqa: E402
from exfm_plugin.das.augment.engines import InProcessEngine, RayEngine, to_model_batch  # noqa: E402
from exfm_plugin.das.metastore import open_metastore  # noqa: E402
from exfm_plugin.das.spd import SnapshotStore  # noqa: E402
from exfm_plugin.data.dayfile import write_day_file  # noqa: E402
from exfm_plugin.models import MODEL_REGISTRY  # noqa: E402

DCN_PARAMS = dict(model="DCN", embedding_dim=32, dnn_hidden_units=[512, 256, 128], dnn_activations="relu",
                  num_cross_layers=2, net_dropout=0, batch_norm=False, optimizer="adam",
                  loss="binary_crossentropy", metrics=["logloss"], learning_rate=1e-3, verbose=0)


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the peak excludes the model load."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def make_data(root: str, rows: int, seed: int = 0) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """Two VM day files over ``rows`` distinct TaobaoAd-shaped rows (half of them shared)."""
    fmap_dir = os.path.join(root, "fmap")
    taobao_feature_map(fmap_dir)
    gen = 10000
    batches = taobao_batches(-(-rows // gen), gen, seed=seed, with_teacher=False)
    cols = {k: np.concatenate([b[k].numpy() for b in batches])[:rows] for k in batches[0]}
    cols["example_id"] = np.arange(rows, dtype=np.int64) + 10_000_000
    q = rows // 4
    files = {}
    for name, sl in {"a": slice(0, rows - q), "b": slice(q, rows)}.items():
        files[name] = os.path.join(root, f"vm_{name}.h5")
        write_day_file(files[name], {k: v[sl] for k, v in cols.items()}, dataset_id="taobao_shape", day=6)
    return files, cols


def publish_fm(root: str) -> tuple[SnapshotStore, str]:
    fmap = taobao_feature_map(os.path.join(root, "fmap"))
    torch.manual_seed(0)
    params = dict(DCN_PARAMS, model_root=os.path.join(root, "ckpt"))
    model = MODEL_REGISTRY["DCN"](fmap, **params)
    spd = SnapshotStore(os.path.join(root, "spd"))
    info = spd.publish(model, model_params=params, feature_map_dir=os.path.join(root, "fmap"), snapshot_id="dcn-bench")
    return spd, info.snapshot_id


class TimedEngine(InProcessEngine):
    """The in-process engine, timing its own predict calls (to split FM time from the rest)."""

    predict_seconds = 0.0

    def predict(self, columns, should_stop=None):
        t = time.perf_counter()
        try:
            return super().predict(columns, should_stop)
        finally:
            self.predict_seconds += time.perf_counter() - t


def augment_once(files: dict[str, str], loaded, out: str, shard_rows: int,
                 batch_size: int) -> tuple[float, float, float]:
    """Wall seconds of a whole single-worker augmentation, the seconds spent in the engine, and
    the CPU seconds of this process (all threads)."""
    job = AugmentJob.from_day_files([VMSpec(n, p) for n, p in files.items()], loaded.snapshot_id, out,
                                    shard_rows=shard_rows)
    engine = TimedEngine(loaded, batch_size)
    with open_metastore(f"sqlite://{out}.db") as store:
        t, c = time.perf_counter(), time.process_time()
        report = run_worker(job, store, "bench", 600, loaded=loaded, engine=engine, progress=False)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
    assert report.complete
    return wall, engine.predict_seconds, cpu


def bare_once(loaded, batches: list[dict[str, torch.Tensor]]) -> tuple[float, float]:
    """Wall and CPU seconds of ``model(batch)`` over prepared int64/float32 tensors."""
    model = loaded.model
    t, c = time.perf_counter(), time.process_time()
    with torch.no_grad():
        for b in batches:
            model(b)
    return time.perf_counter() - t, time.process_time() - c


def child_memory(args: argparse.Namespace) -> None:
    """Fresh process: load the FM, reset the peak, augment with ``--shard-rows``, report the peak RSS
    and the peak of the traced (numpy + Python) allocations, which excludes torch's forward pass."""
    import tracemalloc

    files = json.loads(args.files)
    loaded = SnapshotStore(args.spd).load(args.snapshot)
    rss_loaded = _rss_mb("VmRSS")
    reset = _reset_peak_rss()
    tracemalloc.start()
    wall, _, _ = augment_once(files, loaded, os.path.join(args.workdir, f"mem-{args.shard_rows}"),
                              args.shard_rows, args.batch_size)
    traced_peak = tracemalloc.get_traced_memory()[1] / 2 ** 20
    tracemalloc.stop()
    print(json.dumps({"shard_rows": args.shard_rows, "rss_after_load_mb": rss_loaded,
                      "peak_rss_mb": _rss_mb("VmHWM"), "peak_reset": reset, "traced_peak_mb": traced_peak,
                      "seconds": wall}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000, help="distinct rows of the day (the union of the VMs)")
    ap.add_argument("--shard-rows", type=int, default=65536)
    ap.add_argument("--batch-size", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=4, help="best of N for the timed runs (shared machine)")
    ap.add_argument("--memory-shards", type=int, nargs=2, default=[16384, 262144],
                    help="two shard sizes for the peak-RSS runs (the second >= --rows: the day in one shard)")
    ap.add_argument("--memory-batch-size", type=int, default=1024,
                    help="FM batch of the peak-RSS runs: small, so the shard's own memory is visible "
                         "beside the forward pass's working set")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--ray-workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--workdir", default=None)
    # child mode (peak memory of one shard size in a fresh process)
    ap.add_argument("--child-memory", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--files", help=argparse.SUPPRESS)
    ap.add_argument("--spd", help=argparse.SUPPRESS)
    ap.add_argument("--snapshot", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_memory:
        child_memory(args)
        return

    workdir = args.workdir or tempfile.mkdtemp(prefix="das_bench_")
    print(f"workdir {workdir}; torch threads {torch.get_num_threads()}; cpus {os.cpu_count()}", flush=True)
    t = time.perf_counter()
    files, cols = make_data(workdir, args.rows)
    spd, sid = publish_fm(workdir)
    loaded = spd.load(sid)
    print(f"data + FM ready in {time.perf_counter() - t:.1f} s: {args.rows} distinct rows, VM a "
          f"{args.rows - args.rows // 4} + VM b {args.rows - args.rows // 4} rows", flush=True)

    # ---- bare loop vs in-process augmentation, interleaved so that load from other jobs hits both
    features = {k: v for k, v in cols.items() if k not in ("clk",)}
    batches = [to_model_batch(features, a, a + args.batch_size) for a in range(0, args.rows, args.batch_size)]
    bare_once(loaded, batches[:2])  # warm-up (allocator, oneDNN kernels)
    bares, runs = [], []
    for i in range(args.repeats):
        bares.append(bare_once(loaded, batches))
        runs.append(augment_once(files, loaded, os.path.join(workdir, f"aug-{i}"), args.shard_rows, args.batch_size))
    del batches
    bare, bare_cpu = min(x[0] for x in bares), min(x[1] for x in bares)
    aug, aug_predict, _ = min(runs)
    aug_cpu = min(x[2] for x in runs)
    print("\n== in-process augmentation vs bare torch.no_grad() loop (same model, same rows; best of "
          f"{args.repeats}, interleaved)")
    print(f"bare loop                 {bare:7.2f} s   {args.rows / bare:10,.0f} rows/s   cpu {bare_cpu:6.2f} s")
    print(f"augmentation, inproc      {aug:7.2f} s   {args.rows / aug:10,.0f} rows/s   cpu {aug_cpu:6.2f} s   "
          f"(in the engine {aug_predict:.2f} s; plan, shard reads/writes, store, stage 2 {aug - aug_predict:.2f} s)")
    med = statistics.median(x[0] for x in bares) / statistics.median(x[0] for x in runs)
    print(f"ratio augmentation / bare: wall {bare / aug:.3f} (best), {med:.3f} (median), "
          f"cpu time {bare_cpu / aug_cpu:.3f} (best)   (target >= 0.9)")
    print(f"   all runs, wall: bare {', '.join(f'{x[0]:.2f}' for x in bares)} s; "
          f"augmentation {', '.join(f'{x[0]:.2f}' for x in runs)} s")

    # ---- Ray engine
    if not args.skip_ray:
        import logging

        import ray

        logging.getLogger("ray").setLevel(logging.ERROR)  # Ray Data logs every execution at INFO
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
        shard = {k: v for k, v in cols.items() if k != "clk"}
        small = {k: v[:args.batch_size] for k, v in shard.items()}
        print(f"\n== Ray engine on one shard of {args.rows} rows (batch {args.batch_size}); in-process "
              f"engine uses {torch.get_num_threads()} torch threads, each Ray actor 1")
        for w in args.ray_workers:
            eng = RayEngine(spd.root, sid, num_workers=w, batch_size=args.batch_size)
            t = time.perf_counter()
            eng.predict(small)
            fixed = time.perf_counter() - t
            t = time.perf_counter()
            eng.predict(shard)
            full = time.perf_counter() - t
            rest = full - fixed
            steady = (f"~{(args.rows - len(small['example_id'])) / rest:10,.0f} rows/s after it"
                      if rest > 0.1 * full else "rate after it: n/a (the fixed cost dominates)")
            print(f"ray {w} worker(s)   call {full:7.2f} s   {args.rows / full:10,.0f} rows/s   fixed cost per "
                  f"call (actors start + snapshot load, 1 batch) {fixed:5.2f} s   {steady}")
            eng.close()
        ray.shutdown()

    # ---- peak memory vs shard size, each in a fresh process
    if args.skip_memory:
        return
    from exfm_plugin.data.dayfile import read_day_attrs

    row_bytes = sum(np.dtype(c["dtype"]).itemsize * int(np.prod(c["shape"][1:], dtype=np.int64))
                    for c in read_day_attrs(files["a"])["columns"] if c["name"] != "clk")  # as stored
    print(f"\n== peak RSS of the in-process augmentation (fresh process each, batch {args.memory_batch_size}; "
          f"peak reset after the FM load); a row's stored columns take {row_bytes} B")
    for shard_rows in args.memory_shards:
        cmd = [sys.executable, __file__, "--child-memory", "--files", json.dumps(files), "--spd", spd.root,
               "--snapshot", sid, "--shard-rows", str(shard_rows), "--batch-size", str(args.memory_batch_size),
               "--workdir", workdir]
        env = dict(os.environ, MALLOC_ARENA_MAX="2")  # fewer malloc arenas: less RSS noise between runs
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        res = json.loads(out.strip().splitlines()[-1])
        rows = min(shard_rows, args.rows)
        print(f"shard_rows {shard_rows:7d} (one shard's columns ~{rows * row_bytes / 2**20:4.0f} MB): RSS after FM "
              f"load {res['rss_after_load_mb']:5.0f} MB, peak RSS during augmentation {res['peak_rss_mb']:5.0f} MB "
              f"(+{res['peak_rss_mb'] - res['rss_after_load_mb']:4.0f} MB), peak numpy/Python allocations "
              f"{res['traced_peak_mb']:5.0f} MB{'' if res['peak_reset'] else '  (peak RSS not reset: includes the load)'}")


if __name__ == "__main__":
    main()
