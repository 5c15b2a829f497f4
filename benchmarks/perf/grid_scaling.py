"""Grid scaling: one smoke grid run by the in-process engine and by the Ray engine with 1 and 2
workers, side by side, each from an empty work directory, repeated.

Prints per repetition the wall times, the speed-ups, and the Ray engine's scheduling overhead
per step: (Ray wall - the sum of the in-task step times) / steps, with 1 worker (target < 1 s);
with 2 workers the same capacity measure, (2 x wall - sum) / steps, also counts the time a
worker waits for a dependency. Ray start-up (``ray.init``) is timed apart: a cluster pays it
once, not per grid. Then min/median/max over the repetitions, and the mean in-task seconds of
each step kind (what docs/scale_out.md extrapolates to a full table from).

Every engine trains with one torch thread (a 1-CPU Ray task does), so the runs do equal work.

    python benchmarks/perf/grid_scaling.py                                   # smoke_table2, tiny, 1 seed, 3 reps
    python benchmarks/perf/grid_scaling.py --grid yaml_configs/grids/smoke_table5.yaml --repeats 1
"""
from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import tempfile
import time

import ray
import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from exfm_plugin.pipeline.grid import load_grid  # noqa: E402
from exfm_plugin.pipeline.ray_engine import run_grid_ray  # noqa: E402
from exfm_plugin.pipeline.runner import run_grid  # noqa: E402


def run_inproc(grid, root: str) -> float:
    start = time.perf_counter()
    summary = run_grid(grid, os.path.join(root, "work"), os.path.join(root, "results"), progress=False)
    if summary.failed:
        raise SystemExit(f"in-process run failed: {summary.failures}")
    return time.perf_counter() - start


def run_ray(grid, root: str, workers: int):
    """(init seconds, run wall seconds, summary) of a run on a fresh local Ray with ``workers`` CPUs."""
    start = time.perf_counter()
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    init = time.perf_counter() - start
    try:
        start = time.perf_counter()
        summary = run_grid_ray(grid, os.path.join(root, "work"), os.path.join(root, "results"), progress=False)
        wall = time.perf_counter() - start
    finally:
        ray.shutdown()
    if summary.failed:
        raise SystemExit(f"Ray run ({workers} workers) failed: {summary.failures}")
    return init, wall, summary


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    return "min " + " / median ".join(fmt.format(v) for v in (min(values), statistics.median(values))) + \
        " / max " + fmt.format(max(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", default=os.path.join(REPO, "yaml_configs", "grids", "smoke_table2.yaml"))
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.chdir(REPO)
    torch.set_num_threads(1)
    grid = load_grid(args.grid, size=args.size, seeds=args.seeds)
    rows = collections.defaultdict(list)
    kind_seconds = collections.defaultdict(list)
    print(f"grid {grid.name} ({args.grid}), size {args.size}, {args.seeds} seed(s); {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}")
    for rep in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="grid_scaling_") as tmp:
            inproc = run_inproc(grid, os.path.join(tmp, "inproc"))
            init1, wall1, s1 = run_ray(grid, os.path.join(tmp, "ray1"), 1)
            init2, wall2, s2 = run_ray(grid, os.path.join(tmp, "ray2"), 2)
        steps = s1.steps + 1  # + the data task
        busy1 = sum(r.seconds for r in s1.step_runs)
        busy2 = sum(r.seconds for r in s2.step_runs)
        over1 = (wall1 - busy1) / steps
        over2 = (2 * wall2 - busy2) / steps
        for run in s1.step_runs:
            kind_seconds[run.kind].append(run.seconds)
        for name, value in (("inproc", inproc), ("ray1", wall1), ("ray2", wall2), ("init", (init1 + init2) / 2),
                            ("speedup_inproc", inproc / wall2), ("speedup_ray", wall1 / wall2),
                            ("over1", over1), ("over2", over2), ("plan", s1.plan_seconds)):
            rows[name].append(value)
        print(f"rep {rep + 1}: {steps} steps ({len(s1.step_runs) - 1} VM/FM/DAS/eval + data); wall in-process "
              f"{inproc:.1f} s, Ray 1 worker {wall1:.1f} s, Ray 2 workers {wall2:.1f} s (ray.init {init1:.1f} / "
              f"{init2:.1f} s apart); speed-up 2 workers vs in-process x{inproc / wall2:.2f}, vs 1 worker "
              f"x{wall1 / wall2:.2f}; in-task 1 worker {busy1:.1f} s, 2 workers {busy2:.1f} s; overhead/step 1 worker {over1:.3f} s, 2 workers "
              f"(incl. waiting) {over2:.3f} s; planning {s1.plan_seconds:.2f} s", flush=True)
    print(f"\n== over {args.repeats} repetitions (min / median / max)")
    print(f"wall in-process      {spread(rows['inproc'])} s")
    print(f"wall Ray 1 worker    {spread(rows['ray1'])} s")
    print(f"wall Ray 2 workers   {spread(rows['ray2'])} s")
    print(f"ray.init (apart)     {spread(rows['init'])} s")
    print(f"speed-up 2w vs inproc {spread(rows['speedup_inproc'])}")
    print(f"speed-up 2w vs 1w    {spread(rows['speedup_ray'])}")
    print(f"overhead/step, 1 worker  {spread(rows['over1'], '{:.3f}')} s (target < 1 s): "
          f"{'OK' if max(rows['over1']) < 1.0 else 'OVER'}")
    print(f"overhead/step, 2 workers {spread(rows['over2'], '{:.3f}')} s (incl. waiting on dependencies)")
    print(f"planning             {spread(rows['plan'])} s")
    print("\n== in-task seconds per step kind (Ray, 1 worker, all repetitions): count per run, mean, median")
    for kind, values in sorted(kind_seconds.items()):
        print(f"{kind:8s} {len(values) // args.repeats:4d}  {statistics.mean(values):7.3f}  {statistics.median(values):7.3f}")


if __name__ == "__main__":
    main()
