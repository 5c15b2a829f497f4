"""Adam's optimizer step alone, in torch's three implementations side by side: the per-parameter
loop (torch's CPU default), the multi-tensor ``_foreach`` ops and the fused kernel that
``prefer_fused`` picks (exfm_plugin/models/kernels/sparse_optim.py). The parameter shapes are a
small TaobaoAd DeepFM student's (embedding tables of 20k, 3k and 200 rows x 8, a [32, 16] MLP);
only the shapes matter to the step's cost, so random gradients stand in for a model.

    python benchmarks/perf/adam_step.py [--steps 200] [--threads 1]

Steps are interleaved one by one (``shapes.interleaved_seconds``); prints the median ms per step
of each implementation and the fused kernel's speed over the other two, paired step by step
(``shapes.paired_ratio``: median [min, max]). Run it 3 times for min / median / max."""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from shapes import interleaved_seconds, paired_ratio  # noqa: E402

SHAPES = [(20000, 8)] * 3 + [(3000, 8)] * 20 + [(200, 8)] * 10 + [(200, 32), (32,), (32, 16), (16,), (16, 1), (1,)]
IMPLEMENTATIONS = {"loop": {"foreach": False}, "multi-tensor": {"foreach": True}, "fused": {"fused": True}}


def adam(options: dict) -> torch.optim.Adam:
    """An Adam over fresh parameters of :data:`SHAPES` with random gradients."""
    params = [torch.nn.Parameter(torch.randn(shape)) for shape in SHAPES]
    for p in params:
        p.grad = torch.randn_like(p)
    return torch.optim.Adam(params, lr=1e-3, **options)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{sum(torch.Size(s).numel() for s in SHAPES):,} parameters in {len(SHAPES)} tensors, "
          f"{args.steps} steps, {args.threads} thread(s), load {os.getloadavg()[0]:.1f}")
    optimizers = {name: adam(options) for name, options in IMPLEMENTATIONS.items()}
    rounds: dict[str, list[float]] = {}
    seconds = interleaved_seconds({name: (lambda i, o=o: o.step()) for name, o in optimizers.items()},
                                  args.steps, warmup=5, rounds=rounds)
    print(", ".join(f"{name} {s * 1e3:.3f} ms" for name, s in seconds.items()))
    for base in ("loop", "multi-tensor"):
        median, low, high = paired_ratio(rounds, base, "fused")
        print(f"fused speed over {base}: {median:.2f} [{low:.2f}, {high:.2f}]")


if __name__ == "__main__":
    main()
