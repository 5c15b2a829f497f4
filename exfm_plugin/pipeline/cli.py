"""``exfm run``: run a grid's cells through the streaming protocol."""
from __future__ import annotations

import argparse
import signal

from ..cli_parsing import float_at_least, int_at_least


def add_run_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a grid (a shipped name or a YAML file) through the streaming protocol",
                       description="Expand a grid into content-addressed steps (prep, FM per day, DAS per "
                                   "FM and day, VM per cell), run what is not done yet, append one record "
                                   "per cell to RESULTS/records/<grid>.jsonl.")
    p.add_argument("--grid", required=True, nargs="+", metavar="GRID",
                   help="grid file(s) or shipped grid name(s) (exfm grids lists them)")
    p.add_argument("--data-root", default=None, metavar="DIR",
                   help="real dataset files (the grid's real_source format) instead of synthetic data")
    p.add_argument("--device", default=None, help="cpu or cuda:N (default cpu)")
    p.add_argument("--gpu", type=int_at_least(-1), default=None, metavar="N",
                   help="FuxiCTR's flag: the same as --device cuda:N; -1 = cpu")
    p.add_argument("--seeds", type=int_at_least(1), default=None, metavar="N",
                   help="number of seeds (overrides the grid)")
    p.add_argument("--size", default=None, help="synthetic data size: tiny|small|medium|full or impressions")
    p.add_argument("--vm-schedule", default=None, choices=["day", "stream"],
                   help="how VMs train (overrides the grid): 'day' = a fresh VM on day 5+r (the paper's "
                        "public protocol), 'stream' = one VM continued day by day from day 1")
    p.add_argument("--engine", default="inproc", choices=["inproc", "ray"],
                   help="how the grid's steps run: 'inproc' = one after another in this process, 'ray' = "
                        "as Ray tasks on a local Ray or the cluster at --address (docs/scale_out.md)")
    p.add_argument("--das-engine", default="inproc", choices=["inproc", "ray"],
                   help="how a DAS step runs FM inference: in its process, or on a Ray Data actor pool")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="--engine ray: join this Ray cluster (e.g. HEAD_IP:6379 or 'auto'); default: start a "
                        "local Ray")
    p.add_argument("--workers", type=int_at_least(1), default=None, metavar="N",
                   help="--engine ray, local Ray: steps run at once (default: one per core / --cpus-per-step)")
    p.add_argument("--cpus-per-step", type=float_at_least(0, strict=True), default=1.0, metavar="N",
                   help="--engine ray: CPUs each step asks for (also its torch threads)")
    p.add_argument("--gpus-per-step", type=float_at_least(0), default=0.0, metavar="N",
                   help="--engine ray: GPUs each step asks for (0.5: two steps share a GPU); > 0 trains on the "
                        "GPU Ray assigns, so leave --device at cpu")
    p.add_argument("--work", default="work", metavar="DIR", help="artifact directory (reused across runs)")
    p.add_argument("--results", default="results", metavar="DIR", help="records directory")
    p.add_argument("--threads", type=int_at_least(1), default=None, metavar="N",
                   help="torch intra-op threads (default: torch's); small models on a few cores train "
                        "faster as several 1-thread runs of different grids than as one run on all cores")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars and no per-cell console lines (unless -v); RESULTS/logs/<grid>.log "
                        "keeps them")
    p.set_defaults(func=run_run)


def add_plan_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="print a grid's steps (keys, built or not, shared by which cells); trains nothing",
                       description="Replay a grid's records against the artifact directory without building "
                                   "anything: every step (prep, FM per teacher/seed/day, DAS per FM snapshot and "
                                   "day, VM link per cell chain and day, VM eval, FM eval), its content key, "
                                   "whether it is built in WORK, and the cells that need it. The keys hash the "
                                   "prepared data: if it is not built, only the prep step is shown, unless "
                                   "--prepare builds it (data only).")
    p.add_argument("--grid", required=True, nargs="+", metavar="GRID",
                   help="grid file(s) or shipped grid name(s) (exfm grids lists them)")
    p.add_argument("--work", default="work", metavar="DIR", help="artifact directory, as given to exfm run")
    p.add_argument("--data-root", default=None, metavar="DIR", help="as exfm run --data-root")
    p.add_argument("--seeds", type=int_at_least(1), default=None, metavar="N", help="as exfm run --seeds")
    p.add_argument("--size", default=None, help="as exfm run --size (tiny|small|medium|full or impressions)")
    p.add_argument("--vm-schedule", default=None, choices=["day", "stream"], help="as exfm run --vm-schedule")
    p.add_argument("--prepare", action="store_true",
                   help="build the data steps (prep, domain split) if missing, so that every step can be "
                        "planned; nothing is trained")
    p.add_argument("--list", action="store_true", help="print every cell and every step (also -v/--verbose)")
    p.set_defaults(func=_run_plan)


def _run_plan(args: argparse.Namespace) -> int:
    from .plan_cli import run_plan

    return run_plan(args)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``exfm run``: says how far the grid got; ``exfm_plugin.cli.main`` prints it as
    one line, exit 130. Recorded cells and finished steps are kept (a step being built leaves
    no temporary: ``fsutil.atomic_dir`` removes it), so rerunning the command resumes."""

    def __init__(self, grid: str, done: int, total: int) -> None:
        self.grid, self.done, self.total = grid, done, total
        super().__init__(f"interrupted after {done}/{total} cells of grid {grid}; rerun the same command to resume")


def interrupted(grid, results_dir: str) -> RunInterrupted:
    """The :class:`RunInterrupted` of ``grid``, counted from its records file (wherever the
    interrupt landed: a step, a record's write, between cells), with a line in the run's log."""
    from pathlib import Path

    from .logging_run import run_log, run_logging
    from .records import RecordWriter
    from .jobs import cell_id, grid_jobs

    ids = {cell_id(grid, cell) for _, cell in grid_jobs(grid)}
    done = len(ids & RecordWriter(Path(results_dir) / "records" / f"{grid.name}.jsonl").done_cells())
    with run_logging(results_dir, grid.name, console=False):
        run_log.warning("grid %s: interrupted (Ctrl-C) after %d/%d cells; rerun the same command to resume",
                        grid.name, done, len(ids))
    return RunInterrupted(grid.name, done, len(ids))


def resolve_device(device: str | None, gpu: int | None) -> str:
    """The device of ``--device`` / ``--gpu`` (FuxiCTR's ``gpu: N``, -1 = cpu); both given must agree."""
    from .grid import GridError

    from_gpu = None if gpu is None else ("cpu" if gpu < 0 else f"cuda:{gpu}")
    if device is not None and from_gpu is not None and device != from_gpu:
        raise GridError(f"--device {device} and --gpu {gpu} name different devices; give one of them")
    return device or from_gpu or "cpu"


def run_run(args: argparse.Namespace) -> int:
    """CLI body of ``exfm run``; bad input raises GridError, which ``exfm_plugin.cli.main`` prints."""
    from .grid import GridError, load_grids
    from .runner import check_device

    # every grid is validated, and the device checked, before any work starts
    args.device = resolve_device(args.device, args.gpu)
    if args.engine == "ray" and args.device != "cpu":
        raise GridError(f"--device {args.device}: with --engine ray each step gets its GPU from Ray; "
                        f"use --gpus-per-step instead")
    if args.engine != "ray" and (args.address or args.workers):
        raise GridError("--address and --workers are options of --engine ray")
    check_device(args.device)
    grids = [grid for path in args.grid  # a file with world dial lists gives one grid per level
             for grid in load_grids(path, seeds=args.seeds, data_root=args.data_root, size=args.size,
                                    vm_schedule=args.vm_schedule)]
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    status = 0
    for grid in grids:
        try:
            summary = _run_one(args, grid)
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the bookkeeping short
            raise interrupted(grid, args.results) from None
        print(f"grid {summary.grid}: {summary.ok} cells ok, {summary.failed} failed, {summary.skipped} already "
              f"done, {summary.seconds:.0f} s -> {summary.records_path}")
        for failure in summary.failures:
            print(f"  failed: {failure}")
        status = status or (1 if summary.failed else 0)
    return status


def _run_one(args: argparse.Namespace, grid):
    """One grid through the engine ``args`` names; returns its RunSummary."""
    if args.engine == "ray":
        from .ray_engine import run_grid_ray

        return run_grid_ray(grid, args.work, args.results, address=args.address, workers=args.workers,
                            cpus_per_step=args.cpus_per_step, gpus_per_step=args.gpus_per_step,
                            das_engine=args.das_engine, progress=not args.no_progress)
    from .runner import run_grid

    return run_grid(grid, args.work, args.results, device=args.device, das_engine=args.das_engine,
                    progress=not args.no_progress, follow=not args.no_progress or getattr(args, "verbose", False))
