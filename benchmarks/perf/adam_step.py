"""Adam's optimizer step alone, in torch's three implementations side by side: the per-parameter
loop (torch's CPU default), the multi-tensor ``_foreach`` ops and the fused kernel that
``prefer_fused`` picks (exfm_plugin/models/kernels/sparse_optim.py). The parameter shapes are a
small TaobaoAd DeepFM student's (embedding tables of 20k, 3k and 200 rows x 8, a [32, 16] MLP);
only the shapes matter to the step's cost, so random gradients stand in for a model.

    python benchmarks/perf/adam_step.py [--rounds 3] [--steps 200] [--threads 1]

Prints ms per step of each implementation per round (the three interleaved within a round) and
min / median / max over rounds of fused / loop and fused / multi-tensor time ratios."""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

SHAPES = [(20000, 8)] * 3 + [(3000, 8)] * 20 + [(200, 8)] * 10 + [(200, 32), (32,), (32, 16), (16,), (16, 1), (1,)]
IMPLEMENTATIONS = {"loop": {"foreach": False}, "multi-tensor": {"foreach": True}, "fused": {"fused": True}}


def ms_per_step(options: dict, steps: int) -> float:
    """Mean time of ``steps`` Adam steps after 5 warm-up steps, in ms."""
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in SHAPES]
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer = torch.optim.Adam(params, lr=1e-3, **options)
    for _ in range(5):
        optimizer.step()
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - start) / steps * 1e3


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{sum(torch.Size(s).numel() for s in SHAPES):,} parameters in {len(SHAPES)} tensors, "
          f"{args.steps} steps, {args.threads} thread(s), load {os.getloadavg()[0]:.1f}")
    rounds = []
    for r in range(args.rounds):
        ms = {name: ms_per_step(options, args.steps) for name, options in IMPLEMENTATIONS.items()}
        rounds.append(ms)
        print(f"round {r + 1}: " + ", ".join(f"{name} {v:.3f} ms" for name, v in ms.items()))
    for base in ("loop", "multi-tensor"):
        ratios = sorted(m["fused"] / m[base] for m in rounds)
        print(f"fused / {base} time: min {ratios[0]:.2f}, median {statistics.median(ratios):.2f}, "
              f"max {ratios[-1]:.2f}")


if __name__ == "__main__":
    main()
