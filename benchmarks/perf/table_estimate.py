"""What a full table takes on G workers (GPUs or cores), extrapolated from measured step times.

Runs a grid with the Ray engine at two small data sizes, from empty work directories, and
records every step's in-task seconds by kind (prep, fm, das, vm, vm_eval, fm_eval). A step's
time is fitted per kind as ``a + b * rows_per_day`` (training and inference are linear in the
rows; ``a`` is the fixed cost: model build, file opening). The target grid's plan
(planned at the tiny size: its shape does not depend on the size) then gives

* the total step-seconds at the target size: the wall time on one worker, and
* the wall time on G workers, ``max(total / G, critical path)``, the critical path being the
  longest chain of dependent steps weighted by their fitted times.

    python benchmarks/perf/table_estimate.py                      # table2: measure on a subset, tiny and 40k
    python benchmarks/perf/table_estimate.py --workers 4 8 --target-size medium
"""
from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import tempfile

import ray
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from data_prep.synthetic.common import resolve_size  # noqa: E402
from exfm_plugin.pipeline.artifacts import ArtifactStore  # noqa: E402
from exfm_plugin.pipeline.grid import load_grid  # noqa: E402
from exfm_plugin.pipeline.ray_engine import run_grid_ray  # noqa: E402
from exfm_plugin.pipeline.context import Context  # noqa: E402
from exfm_plugin.pipeline.jobs import grid_jobs  # noqa: E402
from exfm_plugin.pipeline.plan import plan_grid  # noqa: E402
from exfm_plugin.pipeline.prep_steps import prepare_data  # noqa: E402

DAYS = 8


def measure(grid_path: str, size, seeds: int, workers: int) -> dict[str, list[float]]:
    """In-task seconds of every step, by kind, of one run from an empty work directory."""
    grid = load_grid(grid_path, size=str(size), seeds=seeds)
    with tempfile.TemporaryDirectory(prefix="table_estimate_") as tmp:
        summary = run_grid_ray(grid, os.path.join(tmp, "work"), os.path.join(tmp, "results"), progress=False)
    if summary.failed:
        raise SystemExit(f"{grid_path} at size {size}: {summary.failures}")
    times = collections.defaultdict(list)
    for run in summary.step_runs:
        times[run.kind].append(run.seconds)
    return times


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(a, b) of ``t = a + b * x`` through the means at two or more x (least squares)."""
    xs, ts = zip(*points)
    if len(set(xs)) < 2:
        raise SystemExit("need step times at two sizes")
    slope, intercept = statistics.linear_regression(xs, ts)
    return max(intercept, 0.0), max(slope, 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default=os.path.join(REPO, "yaml_configs", "grids", "table2.yaml"))
    parser.add_argument("--methods", nargs="+", default=["none", "kd", "ah_sa"],
                        help="methods of the measured subset (the target's other knobs kept)")
    parser.add_argument("--sizes", nargs="+", default=["tiny", "40000"])
    parser.add_argument("--measure-workers", type=int, default=2)
    parser.add_argument("--target-size", default=None, help="default: the target grid's size")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    os.chdir(REPO)
    target = load_grid(args.target)
    with open(args.target) as f:
        raw = yaml.safe_load(f)
    raw["tuner_space"] = dict(raw["tuner_space"], method=args.methods)
    raw["grid"] = f"{target.name}_subset"
    ray.init(num_cpus=args.measure_workers, include_dashboard=False, log_to_driver=False)
    per_kind = collections.defaultdict(list)  # kind -> [(rows/day, mean seconds)]
    with tempfile.TemporaryDirectory(prefix="table_estimate_grid_") as tmp:
        subset = os.path.join(tmp, "subset.yaml")
        with open(subset, "w") as f:
            yaml.safe_dump(raw, f)
        for size in args.sizes:
            rows = resolve_size(target.dataset, int(size) if size.isdigit() else size) / DAYS
            times = measure(subset, size, 1, args.measure_workers)
            print(f"size {size} ({rows:.0f} rows/day): " + ", ".join(
                f"{k} n={len(v)} mean {statistics.mean(v):.2f} s" for k, v in sorted(times.items())), flush=True)
            for kind, values in times.items():
                per_kind[kind].append((rows, statistics.mean(values)))
    ray.shutdown()
    fits = {kind: fit(points) for kind, points in per_kind.items()}
    target_size = args.target_size or target.size
    target_rows = resolve_size(target.dataset, int(target_size) if str(target_size).isdigit() else target_size) / DAYS
    seconds = {kind: a + b * target_rows for kind, (a, b) in fits.items()}
    print(f"\nfit per kind (t = a + b * rows/day) -> at {target_size} ({target_rows:.0f} rows/day):")
    for kind, (a, b) in sorted(fits.items()):
        print(f"  {kind:8s} a {a:6.2f} s  b {b * 1e3:8.4f} ms/row  -> {seconds[kind]:9.1f} s")
    # the target's plan, at the tiny size
    shape = load_grid(args.target, size="tiny")
    with tempfile.TemporaryDirectory(prefix="table_estimate_plan_") as tmp:
        ctx = Context(shape, ArtifactStore(tmp), progress=False)
        plan = plan_grid(ctx, prepare_data(ctx), grid_jobs(shape))
    counts = collections.Counter(step.kind for step in plan.steps.values())
    finish: dict[str, float] = {}
    for key, step in plan.steps.items():  # dependencies first
        finish[key] = seconds[step.kind] + max((finish[d.key] for d in step.deps), default=0.0)
    total = seconds["prep"] + sum(seconds[step.kind] for step in plan.steps.values())
    critical = seconds["prep"] + max(finish.values())
    print(f"\n{target.name}: {len(grid_jobs(shape))} records, {len(plan.steps)} steps {dict(sorted(counts.items()))}")
    print(f"total step time {total / 3600:.2f} h; critical path {critical / 60:.1f} min")
    for g in args.workers:
        print(f"  {g} worker(s): {max(total / g, critical) / 3600:.2f} h")


if __name__ == "__main__":
    main()
