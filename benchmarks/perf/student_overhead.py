"""Training throughput of a VM with ``ah_sa`` vs ``none``, and the serving cost of the
exported model vs the plain VM, measured side by side in one run.

Target: ``ah_sa`` keeps >= 85% of ``none``'s training samples/s for FM and DeepFM on
TaobaoAd-shaped batches (batch 8192, embedding 32); the exported model's parameter count
and inference time equal the plain VM's.

    python benchmarks/perf/student_overhead.py [--steps 8] [--batch-size 8192] [--models FM DeepFM]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from shapes import interleaved_seconds, taobao_batches, taobao_feature_map  # noqa: E402

from exfm_plugin.distill import DistillConfig, ExFMStudent, export_serving_model  # noqa: E402
from exfm_plugin.models import MODEL_REGISTRY  # noqa: E402

MODEL_ARGS = {"FM": {"regularizer": 5e-7},
              "DeepFM": {"hidden_units": [512, 256, 128], "hidden_activations": "relu", "net_dropout": 0}}


def make_student(name, fmap, root, method, seed=0):
    torch.manual_seed(seed)
    vm = MODEL_REGISTRY[name](fmap, model_id=f"{name}_{method}", optimizer="adam", loss="binary_crossentropy",
                              verbose=0, model_root=root, metrics=["AUC"], learning_rate=1e-3,
                              embedding_dim=32, **MODEL_ARGS[name])
    return ExFMStudent(vm, DistillConfig(method=method))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12, help="timed steps per method (median taken)")
    ap.add_argument("--batch-size", type=int, default=8192)
    ap.add_argument("--models", nargs="+", default=["FM", "DeepFM"])
    args = ap.parse_args(argv)
    root = tempfile.mkdtemp(prefix="exfm_bench_")
    fmap = taobao_feature_map(os.path.join(root, "data"))
    batches = taobao_batches(4, args.batch_size)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch_size}, "
          f"{args.steps} interleaved steps per method, median step time")
    print(f"{'model':8s} {'none rows/s':>12s} {'ah_sa rows/s':>13s} {'ratio':>6s} "
          f"{'params plain':>13s} {'params export':>14s} {'infer ratio':>11s}")
    for name in args.models:
        students = {m: make_student(name, fmap, root, m) for m in ("none", "ah_sa")}
        for s in students.values():
            s.train()
        train = interleaved_seconds(
            {m: (lambda i, s=s: s.train_step(batches[i % len(batches)])) for m, s in students.items()},
            args.steps + 2)  # the first calls allocate Adam state; the median ignores them
        plain = students["none"].vm.eval()
        exported = export_serving_model(students["ah_sa"])
        with torch.no_grad():
            infer = interleaved_seconds({"plain": lambda i: plain(batches[i % len(batches)]),
                                         "export": lambda i: exported(batches[i % len(batches)])},
                                        args.steps)
        rate = {m: args.batch_size / t for m, t in train.items()}
        print(f"{name:8s} {rate['none']:12.0f} {rate['ah_sa']:13.0f} {rate['ah_sa'] / rate['none']:6.3f} "
              f"{plain.serving_parameter_count():13d} {exported.serving_parameter_count():14d} "
              f"{infer['export'] / infer['plain']:11.3f}")


if __name__ == "__main__":
    main()
