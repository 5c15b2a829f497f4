"""Training and prediction rows/s with dense vs row-sparse embedding updates
(``embedding_update``), side by side in one run, and the AUC after one pass over the same
synthetic day with each.

Part 1, speed: the BARS TaobaoAd hyperparameters of each model (yaml_configs/models) on
TaobaoAd-shaped batches with the real vocabulary sizes (benchmarks/perf/shapes.py: about 92M
embedding parameters at embedding_dim 32, batch 8192). Dense and sparse copies of a model
(same seed, same initial weights) run step by step interleaved; the median step gives rows/s.
Target on 2 cores: sparse >= 5x dense training rows/s for FM and DeepFM. A third copy, 'frozen',
trains with every embedding table frozen (dense mode, tables with requires_grad off): the step
without any embedding update, so 'ceiling' = frozen / dense is the most any embedding update
scheme could gain over dense Adam for that model on this machine.

Part 2, accuracy: one pass over day ``--auc-day`` of the synthetic TaobaoAd data (``exfm prep``'s
generator, ``--auc-size`` impressions over 8 days) with the BARS settings, then AUC on the next
day, for each seed and mode; the sparse-minus-dense difference is printed beside the spread
across seeds of the dense runs.

    python benchmarks/perf/train_throughput.py [--models FM DeepFM ...] [--steps 4]
        [--auc-models FM DeepFM] [--auc-seeds 2] [--auc-size medium] [--skip-auc] [--skip-speed]
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
from exfm_plugin.models.sparse_optim import feature_embedding_tables  # noqa: E402

MODES = ("dense", "sparse")
ALL_MODELS = ["FM", "FmFM", "DeepFM", "DCN", "DCNv2", "DMIN"]


def build(name: str, fmap, root: str, mode: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    params = bars_model_params(name, **overrides)
    params.update(model_id=f"{name}_{mode}", model_root=root, embedding_update=mode)
    model = MODEL_REGISTRY[name](fmap, **params)
    model._max_gradient_norm = 10.0
    return model


def speed(args, root: str) -> bool:
    fmap = taobao_feature_map(os.path.join(root, "shape_data"))
    batches = taobao_batches(3, args.batch_size, with_teacher=False)
    print(f"== speed: TaobaoAd vocabulary sizes, batch {args.batch_size}, emb 32, BARS hyperparameters; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, allocator {args.allocator_name}; median of {args.steps} "
          f"interleaved steps (DMIN {args.dmin_steps})")
    print("rows/s from the median wall time of a step; 'cpu ratio' = the same ratio from the median CPU "
          "time (all threads) of a step, steadier on a shared machine")
    print(f"{'model':7s} {'params':>7s} {'train dense':>12s} {'train sparse':>13s} {'ratio':>6s} {'cpu ratio':>9s} "
          f"{'pred dense':>11s} {'pred sparse':>12s} {'ratio':>6s} {'cpu ratio':>9s} {'frozen':>8s} {'ceiling':>7s}")
    ok = True
    for name in args.models:
        try:
            models = {m: build(name, fmap, root, m) for m in MODES}
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
        train_cpu, pred_cpu = {}, {}
        train = interleaved_seconds({m: (lambda i, mod=mod: mod.train_step(batches[i % len(batches)]))
                                     for m, mod in models.items()}, steps, cpu=train_cpu)
        for m in models.values():
            m.eval()
        with torch.no_grad():
            pred = interleaved_seconds({m: (lambda i, mod=mod: mod(batches[i % len(batches)]))
                                        for m, mod in models.items() if m in MODES}, steps, warmup=1, cpu=pred_cpu)
        n_params = sum(p.numel() for p in models["dense"].parameters())
        tr = {m: args.batch_size / t for m, t in train.items()}
        pr = {m: args.batch_size / t for m, t in pred.items()}
        print(f"{name:7s} {n_params / 1e6:6.1f}M {tr['dense']:12.0f} {tr['sparse']:13.0f} "
              f"{tr['sparse'] / tr['dense']:6.2f} {train_cpu['dense'] / train_cpu['sparse']:9.2f} "
              f"{pr['dense']:11.0f} {pr['sparse']:12.0f} {pr['sparse'] / pr['dense']:6.2f} "
              f"{pred_cpu['dense'] / pred_cpu['sparse']:9.2f} {tr['frozen']:8.0f} {tr['frozen'] / tr['dense']:7.2f}",
              flush=True)
        del models
        gc.collect()
    return ok


def auc_after_one_pass(args, root: str) -> None:
    from fuxictr.features import FeatureMap

    from data_prep.prepare import prepare
    from exfm_plugin.data import H5DataLoader

    data_dir = args.auc_data
    if data_dir is None:  # prepared once, then reused by later runs
        cache = os.path.join(tempfile.gettempdir(), f"exfm_bench_taobaoad_{args.auc_size}")
        data_dir = os.path.join(cache, "taobaoad_synthetic")
        if not os.path.exists(os.path.join(data_dir, f"day_{args.auc_day + 1}.h5")):
            start = time.perf_counter()
            data_dir = prepare("taobaoad", "synthetic", None, cache, seed=0, size=args.auc_size).data_dir
            print(f"(prepared synthetic TaobaoAd, size {args.auc_size}, in {time.perf_counter() - start:.0f} s)")
        print(f"(synthetic TaobaoAd day files: {data_dir})")
    dataset_id = os.path.basename(os.path.normpath(data_dir))
    train_file = os.path.join(data_dir, f"day_{args.auc_day}.h5")
    test_file = os.path.join(data_dir, f"day_{args.auc_day + 1}.h5")
    print(f"== accuracy: one pass over day {args.auc_day}, AUC on day {args.auc_day + 1}, BARS settings "
          f"(batch 8192, emb 32, lr 1e-3), seeds 0..{args.auc_seeds - 1}")
    print(f"{'model':7s} {'seed':>4s} {'AUC dense':>10s} {'AUC sparse':>11s} {'sparse-dense':>13s} "
          f"{'rows/s dense':>13s} {'rows/s sparse':>14s}")
    for name in args.auc_models:
        aucs = {m: [] for m in MODES}
        for seed in range(args.auc_seeds):
            row = {}
            for mode in MODES:
                params = bars_model_params(name)
                fmap = FeatureMap(dataset_id, data_dir)
                fmap.load(os.path.join(data_dir, "feature_map.json"), params)
                model = build(name, fmap, root, mode, seed=seed)
                loader = H5DataLoader(fmap, train_file, batch_size=params["batch_size"], shuffle=True, seed=seed)
                model.train()
                rows, start = 0, time.perf_counter()
                for batch in loader:
                    model.train_step(batch)
                    rows += len(batch[fmap.labels[0]])
                rate = rows / (time.perf_counter() - start)
                test = H5DataLoader(fmap, test_file, split="test", batch_size=65536)
                auc = model.evaluate(test, metrics=["AUC"])["AUC"]
                aucs[mode].append(auc)
                row[mode] = (auc, rate)
                del model
                gc.collect()
            print(f"{name:7s} {seed:4d} {row['dense'][0]:10.4f} {row['sparse'][0]:11.4f} "
                  f"{row['sparse'][0] - row['dense'][0]:+13.4f} {row['dense'][1]:13.0f} {row['sparse'][1]:14.0f}",
                  flush=True)
        diffs = [s - d for s, d in zip(aucs["sparse"], aucs["dense"])]
        spread = max(aucs["dense"]) - min(aucs["dense"])
        print(f"{name:7s} mean sparse-dense {sum(diffs) / len(diffs):+.4f}; dense AUC spread over seeds "
              f"{spread:.4f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=ALL_MODELS, choices=ALL_MODELS)
    ap.add_argument("--steps", type=int, default=4, help="timed steps per mode (median taken)")
    ap.add_argument("--dmin-steps", type=int, default=2, help="timed steps for DMIN (slow on CPU)")
    ap.add_argument("--batch-size", type=int, default=8192)
    ap.add_argument("--auc-models", nargs="+", default=["FM", "DeepFM"], choices=ALL_MODELS)
    ap.add_argument("--auc-seeds", type=int, default=2)
    ap.add_argument("--auc-size", default="medium", help="synthetic size (tiny/small/medium or a row count)")
    ap.add_argument("--auc-day", type=int, default=5)
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
        auc_after_one_pass(args, root)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
