"""Training throughput of a VM with ``ah_sa`` vs ``none``, dense and row-sparse embedding
updates, and the serving cost of the exported model vs the plain VM, side by side in one run.

Target: ``ah_sa`` keeps >= 90% of ``none``'s training rows/s for FM, FmFM and DeepFM, with
``embedding_update`` dense and sparse, on TaobaoAd-shaped batches (real vocabulary sizes,
batch 8192, embedding 32, BARS hyperparameters); the exported model's parameter count and
inference time equal the plain VM's.

    python benchmarks/perf/student_overhead.py [--steps 8] [--batch-size 8192]
        [--models FM FmFM DeepFM] [--modes dense sparse]
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

import torch

sys.path.insert(0, os.path.dirname(__file__))
from shapes import (add_allocator_option, apply_allocator, bars_model_params,  # noqa: E402
                    interleaved_seconds, paired_ratio, taobao_batches, taobao_feature_map)

from exfm_plugin.distill import DistillConfig, ExFMStudent, export_serving_model  # noqa: E402
from exfm_plugin.models import MODEL_REGISTRY  # noqa: E402

METHODS = ("none", "ah_sa")


def make_student(name: str, fmap, root: str, method: str, mode: str, seed: int = 0) -> ExFMStudent:
    torch.manual_seed(seed)
    params = bars_model_params(name, model_id=f"{name}_{mode}_{method}", model_root=root,
                               embedding_update=mode)
    vm = MODEL_REGISTRY[name](fmap, **params)
    return ExFMStudent(vm, DistillConfig(method=method))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8, help="timed steps per method (median taken)")
    ap.add_argument("--batch-size", type=int, default=8192)
    ap.add_argument("--models", nargs="+", default=["FM", "FmFM", "DeepFM"])
    ap.add_argument("--modes", nargs="+", default=["dense", "sparse"], choices=["dense", "sparse"])
    add_allocator_option(ap)
    args = ap.parse_args(argv)
    args.allocator_name = apply_allocator(args.allocator)
    root = tempfile.mkdtemp(prefix="exfm_bench_")
    fmap = taobao_feature_map(os.path.join(root, "data"))
    batches = taobao_batches(3, args.batch_size)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, allocator {args.allocator_name}, batch {args.batch_size}, emb 32, "
          f"BARS hyperparameters; median of {args.steps} interleaved steps per method. 'ratio' = ah_sa / none "
          f"rows/s from the median step times; 'paired [min, max]' = the median (range) over rounds of the two "
          f"back-to-back steps' ratio; 'cpu ratio' = from median CPU time (all threads), steadier on a shared machine")
    print(f"{'model':7s} {'update':6s} {'none rows/s':>12s} {'ah_sa rows/s':>13s} {'ratio':>6s} "
          f"{'paired [min, max]':>19s} {'cpu ratio':>9s} "
          f"{'params plain':>13s} {'params export':>14s} {'infer ratio':>11s}")
    for name in args.models:
        for mode in args.modes:
            students = {m: make_student(name, fmap, root, m, mode) for m in METHODS}
            for s in students.values():
                s.train()
            cpu: dict[str, float] = {}
            rounds: dict[str, list[float]] = {}
            train = interleaved_seconds(
                {m: (lambda i, s=s: s.train_step(batches[i % len(batches)])) for m, s in students.items()},
                args.steps, cpu=cpu, rounds=rounds)
            paired, paired_lo, paired_hi = paired_ratio(rounds, "none", "ah_sa")
            plain = students["none"].vm.eval()
            exported = export_serving_model(students["ah_sa"])
            with torch.no_grad():
                infer = interleaved_seconds({"plain": lambda i: plain(batches[i % len(batches)]),
                                             "export": lambda i: exported(batches[i % len(batches)])},
                                            args.steps, warmup=1)
            rate = {m: args.batch_size / t for m, t in train.items()}
            print(f"{name:7s} {mode:6s} {rate['none']:12.0f} {rate['ah_sa']:13.0f} "
                  f"{rate['ah_sa'] / rate['none']:6.3f} {paired:7.3f} [{paired_lo:.2f}, {paired_hi:.2f}] "
                  f"{cpu['none'] / cpu['ah_sa']:9.3f} "
                  f"{plain.serving_parameter_count():13d} {exported.serving_parameter_count():14d} "
                  f"{infer['export'] / infer['plain']:11.3f}", flush=True)
            del students, plain, exported
            gc.collect()


if __name__ == "__main__":
    main()
