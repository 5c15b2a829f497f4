"""Training and prediction rows/s with dense, lazy sparse and exact sparse embedding updates
(``embedding_update``), side by side in one run, and the AUC of each after a stream of days on
which the dense model is competent.

Part 1, speed: the BARS TaobaoAd hyperparameters of each model (yaml_configs/models) on
TaobaoAd-shaped batches with the real vocabulary sizes (benchmarks/perf/shapes.py: about 92M
embedding parameters at embedding_dim 32, batch 8192). Copies of a model (same seed, same
initial weights) run step by step interleaved; the median step gives rows/s. Target on 2 cores:
sparse >= 5x dense training rows/s for FM and DeepFM. ``exact`` replays every touched row's
skipped Adam steps; its cost depends on how long ago a row was last touched, so it runs twice:
'exact' on the benchmark's 3 cycled batches (a row's gap is at most 3 steps: the cheap end) and
'exact worst' with every row's last touch reset to long ago before each step (each touched row
pays the full catch-up horizon, ~211 skipped steps in float32: the expensive end; the reset, a
fill of the per-row step counters, is inside the timed step). 'flush s' is the time the exact
model's ``eval()`` takes to bring every row up to date after the timed steps. A 'frozen' copy
trains with every embedding table frozen: 'ceiling' = frozen / dense is the most any embedding
update scheme could gain over dense Adam for that model on this machine.

Part 2, accuracy: the smoke grids' setting, where a dense DeepFM beats the constant predictor:
synthetic TaobaoAd (``exfm prep``'s generator, ``--auc-size`` small = 200k impressions over 8
days), one pass a day over days 1..5 in order (the ``stream`` schedule: weights and optimizer
state carried over), embedding_dim 8, DeepFM hidden units [32, 16], lr 1e-3, batch 256, the BARS
regularisers, AUC and log loss on day 6, for each seed and mode. The exact-dense and
sparse-dense AUC differences are printed beside the spread of the dense runs across seeds.

    python benchmarks/perf/train_throughput.py [--models FM DeepFM ...] [--steps 4]
        [--auc-models DeepFM] [--auc-seeds 3] [--auc-size small] [--skip-auc] [--skip-speed]
        [--auc-embedding-regularizer 0]
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile

# idle OpenMP threads sleep instead of spinning, so a process's CPU time is its work (the
# 'cpu ratio' columns) even on a machine shared with other jobs; set before torch loads
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from shapes import (add_allocator_option, apply_allocator, bars_model_params,  # noqa: E402
                    interleaved_seconds, taobao_batches, taobao_feature_map)

from exfm_plugin.models import MODEL_REGISTRY  # noqa: E402
from exfm_plugin.models.kernels.sparse_optim import feature_embedding_tables  # noqa: E402

MODES = ("dense", "sparse", "exact")
STALE_GAP = 10_000  # 'exact worst': every row last touched this many steps ago
ALL_MODELS = ["FM", "FmFM", "DeepFM", "DCN", "DCNv2", "DMIN"]


def build(name: str, fmap, root: str, mode: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    params = bars_model_params(name, **overrides)
    params.update(model_id=f"{name}_{mode}", model_root=root, embedding_update=mode)
    model = MODEL_REGISTRY[name](fmap, **params)
    model._max_gradient_norm = 10.0
    return model


def make_stale(model) -> None:
    """Every row of the exact model's tables last touched STALE_GAP steps ago (moments kept):
    the next lookup of any row replays the full catch-up horizon."""
    for state in model.optimizer.state.values():
        if "row_step" in state:
            state["step"] = torch.clamp(state["step"], min=STALE_GAP + 1)
            state["row_step"].fill_(int(state["step"]) - STALE_GAP)


def speed(args, root: str) -> bool:
    fmap = taobao_feature_map(os.path.join(root, "shape_data"))
    batches = taobao_batches(3, args.batch_size, with_teacher=False)
    print(f"== speed: TaobaoAd vocabulary sizes, batch {args.batch_size}, emb 32, BARS hyperparameters; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, allocator {args.allocator_name}; median of {args.steps} "
          f"interleaved steps (DMIN {args.dmin_steps})")
    print("rows/s from the median wall time of a step; ratios over dense; 'cpu' = the same ratio from the median "
          "CPU time (all threads) of a step, steadier on a shared machine")
    print(f"{'model':7s} {'params':>7s} {'train dense':>12s} {'sparse':>8s} {'ratio':>6s} {'cpu':>5s} "
          f"{'exact':>8s} {'ratio':>6s} {'cpu':>5s} {'worst':>8s} {'ratio':>6s} {'cpu':>5s} {'flush s':>7s} "
          f"{'pred dense':>11s} {'sparse':>8s} {'ratio':>6s} {'frozen':>8s} {'ceiling':>7s}")
    ok = True
    for name in args.models:
        try:
            models = {m: build(name, fmap, root, m) for m in MODES}
            models["worst"] = build(name, fmap, root, "exact")
            models["frozen"] = build(name, fmap, root, "dense")
            for table in feature_embedding_tables(models["frozen"]):
                table.weight.requires_grad_(False)
        except Exception as exc:  # noqa: BLE001 - one broken model must not hide the others
            print(f"{name:7s} build failed: {type(exc).__name__}: {exc}")
            ok = False
            continue
        steps = args.dmin_steps if name == "DMIN" else args.steps
        for m in models.values():
            m.train()
        worst = models["worst"]

        def worst_step(i, mod=worst):
            make_stale(mod)
            return mod.train_step(batches[i % len(batches)])

        fns = {m: (lambda i, mod=mod: mod.train_step(batches[i % len(batches)]))
               for m, mod in models.items() if m != "worst"}
        fns["worst"] = worst_step
        train_cpu, pred_cpu = {}, {}
        train = interleaved_seconds(fns, steps, cpu=train_cpu)
        for state in worst.optimizer.state.values():  # its staleness was staged: nothing to flush
            if "row_step" in state:
                state["row_step"].fill_(int(state["step"]))
        start = time.perf_counter()
        models["exact"].eval()  # brings every row up to date
        flush = time.perf_counter() - start
        for m in models.values():
            m.eval()
        with torch.no_grad():
            pred = interleaved_seconds({m: (lambda i, mod=mod: mod(batches[i % len(batches)]))
                                        for m, mod in models.items() if m in ("dense", "sparse")}, steps,
                                       warmup=1, cpu=pred_cpu)
        n_params = sum(p.numel() for p in models["dense"].parameters())
        tr = {m: args.batch_size / t for m, t in train.items()}
        pr = {m: args.batch_size / t for m, t in pred.items()}
        cols = "".join(f" {tr[m]:8.0f} {tr[m] / tr['dense']:6.2f} {train_cpu['dense'] / train_cpu[m]:5.2f}"
                       for m in ("sparse", "exact", "worst"))
        print(f"{name:7s} {n_params / 1e6:6.1f}M {tr['dense']:12.0f}{cols} {flush:7.2f} "
              f"{pr['dense']:11.0f} {pr['sparse']:8.0f} {pr['sparse'] / pr['dense']:6.2f} "
              f"{tr['frozen']:8.0f} {tr['frozen'] / tr['dense']:7.2f}", flush=True)
        del models, worst, fns
        gc.collect()
    return ok


def auc_after_a_stream(args, root: str) -> None:
    import statistics

    from fuxictr.features import FeatureMap

    from data_prep.prepare import prepare
    from exfm_plugin.data import H5DataLoader

    data_dir = args.auc_data
    last_day = args.auc_days
    if data_dir is None:  # prepared once, then reused by later runs
        cache = os.path.join(tempfile.gettempdir(), f"exfm_bench_taobaoad_{args.auc_size}")
        data_dir = os.path.join(cache, "taobaoad_synthetic")
        if not os.path.exists(os.path.join(data_dir, f"day_{last_day + 1}.h5")):
            start = time.perf_counter()
            data_dir = prepare("taobaoad", "synthetic", None, cache, seed=0, size=args.auc_size).data_dir
            print(f"(prepared synthetic TaobaoAd, size {args.auc_size}, in {time.perf_counter() - start:.0f} s)")
        print(f"(synthetic TaobaoAd day files: {data_dir})")
    dataset_id = os.path.basename(os.path.normpath(data_dir))
    test_file = os.path.join(data_dir, f"day_{last_day + 1}.h5")
    overrides = dict(embedding_dim=8, batch_size=256, learning_rate=1e-3)
    if args.auc_embedding_regularizer is not None:
        overrides["embedding_regularizer"] = args.auc_embedding_regularizer
    print(f"== accuracy: one pass a day over days 1..{last_day} (stream), AUC on day {last_day + 1}; "
          f"{overrides}, DeepFM hidden [32, 16], other BARS settings; seeds 0..{args.auc_seeds - 1}")
    print(f"{'model':7s} {'seed':>4s} " + " ".join(f"{'AUC ' + m:>10s}" for m in MODES) +
          f" {'exact-dense':>12s} {'sparse-dense':>12s} " + " ".join(f"{'logloss ' + m:>14s}" for m in MODES) +
          " " + " ".join(f"{'rows/s ' + m:>13s}" for m in MODES) + f" {'flush s':>7s}")
    for name in args.auc_models:
        extra = dict(hidden_units=[32, 16]) if name == "DeepFM" else {}
        aucs = {m: [] for m in MODES}
        for seed in range(args.auc_seeds):
            row = {}
            for mode in MODES:
                params = bars_model_params(name, **overrides, **extra)
                fmap = FeatureMap(dataset_id, data_dir)
                fmap.load(os.path.join(data_dir, "feature_map.json"), params)
                model = build(name, fmap, root, mode, seed=seed, **overrides, **extra)
                rows, secs = 0, 0.0
                for day in range(1, last_day + 1):  # the VM link steps' stream: one pass a day, in order
                    loader = H5DataLoader(fmap, os.path.join(data_dir, f"day_{day}.h5"),
                                          batch_size=params["batch_size"], shuffle=True, seed=seed * 1000 + day * 10)
                    model.train()
                    start = time.perf_counter()
                    for batch in loader:
                        model.train_step(batch)
                        rows += len(batch[fmap.labels[0]])
                    secs += time.perf_counter() - start
                start = time.perf_counter()
                model.eval()  # exact: brings every row up to date (timed: 'flush s')
                flush = time.perf_counter() - start
                test = H5DataLoader(fmap, test_file, split="test", batch_size=65536)
                result = model.evaluate(test, metrics=["AUC", "logloss"])
                aucs[mode].append(result["AUC"])
                row[mode] = (result["AUC"], result["logloss"], rows / secs, flush)
                del model
                gc.collect()
            print(f"{name:7s} {seed:4d} " + " ".join(f"{row[m][0]:10.4f}" for m in MODES) +
                  f" {row['exact'][0] - row['dense'][0]:+12.4f} {row['sparse'][0] - row['dense'][0]:+12.4f} " +
                  " ".join(f"{row[m][1]:14.4f}" for m in MODES) + " " +
                  " ".join(f"{row[m][2]:13.0f}" for m in MODES) + f" {row['exact'][3]:7.2f}", flush=True)
        spread = max(aucs["dense"]) - min(aucs["dense"])
        for mode in ("exact", "sparse"):
            diffs = [a - d for a, d in zip(aucs[mode], aucs["dense"])]
            print(f"{name:7s} {mode}-dense AUC: min {min(diffs):+.4f} median {statistics.median(diffs):+.4f} "
                  f"max {max(diffs):+.4f}; dense AUC spread over seeds {spread:.4f} "
                  f"(dense mean {statistics.mean(aucs['dense']):.4f})", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=ALL_MODELS, choices=ALL_MODELS)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per mode (median taken)")
    ap.add_argument("--dmin-steps", type=int, default=2, help="timed steps for DMIN (slow on CPU)")
    ap.add_argument("--batch-size", type=int, default=8192)
    ap.add_argument("--auc-models", nargs="+", default=["DeepFM"], choices=ALL_MODELS)
    ap.add_argument("--auc-seeds", type=int, default=3)
    ap.add_argument("--auc-size", default="small", help="synthetic size (tiny/small/medium or a row count)")
    ap.add_argument("--auc-days", type=int, default=5, help="train on days 1..N in order, test on day N+1")
    ap.add_argument("--auc-embedding-regularizer", type=float, default=None,
                    help="override the BARS embedding_regularizer (exact mode applies it to touched rows only)")
    ap.add_argument("--auc-data", default=None, help="a prepared synthetic TaobaoAd directory to reuse")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-auc", action="store_true")
    add_allocator_option(ap)
    args = ap.parse_args(argv)
    args.allocator_name = apply_allocator(args.allocator)
    if isinstance(args.auc_size, str) and args.auc_size.isdigit():
        args.auc_size = int(args.auc_size)
    root = tempfile.mkdtemp(prefix="exfm_train_tp_")
    ok = True
    if not args.skip_speed:
        ok = speed(args, root)
    if not args.skip_auc:
        auc_after_a_stream(args, root)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
