"""Where a grid's time goes: run it in-process in a temporary work directory and attribute
every second of wall time to a step kind (prep, FM per day, DAS, VM link, VM eval, FM eval,
report) and a phase (data loading, forward/backward, optimizer step, evaluation, DAS
inference, other), without touching the pipeline's code: its functions are wrapped at run
time (monkeypatching) and the optimizer's global step hooks mark the optimizer steps.

Attribution is exclusive: a nested frame's seconds go to it, not to its caller. Step kind =
the innermost step the artifact store is building (``ArtifactStore.build``; a step found done is
not counted as its kind) or ``report`` (the per-cell outputs); time outside them is
``orchestration``. Phases: ``data loading`` = waiting for the next batch of an ``H5DataLoader``;
``optimizer step`` = inside ``Optimizer.step``; ``forward/backward`` = the rest of a training
pass (``train_one_pass``: forward, loss, backward, clip, zero_grad); ``DAS inference`` / ``evaluation``
= the teacher's ``predict_batch`` in a DAS step / elsewhere, a VM's ``predict`` and the metrics;
``model build`` = constructing a model from its params (``build_model``: layers, initialisation,
optimizer); ``checkpoint I/O`` = ``torch.save`` / ``torch.load``; ``other`` = the rest of a step
(the student wrapper, the serving export, publishing snapshots, writing splits, loss
bookkeeping; in prep, the data preparation itself).

    python benchmarks/perf/profile_grid.py --grid yaml_configs/grids/smoke_table2.yaml [more grids: one lane] [--seeds 1]
        [--out profile.md] [--keep DIR]
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

KIND_NAMES = {"prep": "prep", "domains": "prep", "fm": "FM (per day)", "das": "DAS", "vm": "VM link",
              "vm_eval": "VM eval", "fm_eval": "FM eval", "report": "report", None: "orchestration"}
KIND_ORDER = ["prep", "FM (per day)", "DAS", "VM link", "VM eval", "FM eval", "report", "orchestration"]
PHASES = ["data loading", "forward/backward", "optimizer step", "evaluation", "DAS inference", "model build",
          "checkpoint I/O", "other"]


class Profile:
    """A stack of (kind, phase) frames; the wall time between two events goes to the top frame."""

    def __init__(self) -> None:
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)
        self.builds: dict[str, int] = defaultdict(int)
        self.stack: list[tuple[str | None, str]] = [(None, "other")]
        self.last = time.perf_counter()

    def _tick(self) -> None:
        now = time.perf_counter()
        kind, phase = self.stack[-1]
        self.seconds[(KIND_NAMES.get(kind, kind), phase)] += now - self.last
        self.last = now

    def push(self, kind: str | None = None, phase: str | None = None) -> None:
        self._tick()
        top_kind, top_phase = self.stack[-1]
        self.stack.append((kind or top_kind, phase or top_phase))

    def pop(self) -> None:
        self._tick()
        self.stack.pop()

    @contextlib.contextmanager
    def frame(self, kind: str | None = None, phase: str | None = None):
        self.push(kind, phase)
        try:
            yield
        finally:
            self.pop()

    def phase_of_prediction(self) -> str:
        return "DAS inference" if self.stack[-1][0] == "das" else "evaluation"


def _wrap(fn, prof: Profile, kind: str | None = None, phase: str | None = None):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with prof.frame(kind, phase):
            return fn(*args, **kwargs)
    return wrapper


def instrument(prof: Profile) -> None:
    """Wrap the pipeline's functions (in every module that imported them by name)."""
    import torch.optim.optimizer as step_hooks
    from fuxictr.pytorch.models import BaseModel

    from exfm_plugin.das.spd.snapshot import LoadedSnapshot
    from exfm_plugin.data.loader import H5DataLoader
    from exfm_plugin.pipeline import artifacts, evaluation, fm_steps, runner, training, vm_steps

    build = artifacts.ArtifactStore.build

    def store_build(self, kind, spec, fn):
        def counted(tmp):
            prof.builds[KIND_NAMES.get(kind, kind)] += 1
            with prof.frame(kind, "other"):
                return fn(tmp)
        return build(self, kind, spec, counted)

    artifacts.ArtifactStore.build = store_build
    runner.write_cell_outputs = _wrap(runner.write_cell_outputs, prof, "report", "other")
    train_pass = _wrap(training.train_one_pass, prof, phase="forward/backward")
    metrics = _wrap(evaluation.evaluate_predictions, prof, phase="evaluation")
    step_modules = (evaluation, fm_steps, vm_steps)  # the modules that call them (imported by name)
    for module in step_modules:
        if hasattr(module, "train_one_pass"):
            module.train_one_pass = train_pass
        if hasattr(module, "evaluate_predictions"):
            module.evaluate_predictions = metrics

    iterate = H5DataLoader.__iter__

    def timed_iter(self):
        it = iterate(self)
        while True:
            prof.push(phase="data loading")
            try:
                batch = next(it)
            except StopIteration:
                return
            finally:
                prof.pop()
            yield batch

    H5DataLoader.__iter__ = timed_iter
    predict_batch = LoadedSnapshot.predict_batch

    def timed_predict_batch(self, batch):
        with prof.frame(phase=prof.phase_of_prediction()):
            return predict_batch(self, batch)

    LoadedSnapshot.predict_batch = timed_predict_batch
    BaseModel.predict = _wrap(BaseModel.predict, prof, phase="evaluation")
    for module in step_modules:
        if hasattr(module, "build_model"):
            module.build_model = _wrap(getattr(module, "build_model"), prof, phase="model build")
    torch.save = _wrap(torch.save, prof, phase="checkpoint I/O")
    torch.load = _wrap(torch.load, prof, phase="checkpoint I/O")
    step_hooks.register_optimizer_step_pre_hook(lambda opt, args, kwargs: prof.push(phase="optimizer step"))
    step_hooks.register_optimizer_step_post_hook(lambda opt, args, kwargs: prof.pop())


def table(prof: Profile, total: float) -> str:
    """The kinds x phases seconds as a markdown table, with totals and shares of the wall time."""
    kinds = [k for k in KIND_ORDER if any(prof.seconds.get((k, p), 0) > 0.05 for p in PHASES)]
    kinds += sorted({k for k, _ in prof.seconds} - set(KIND_ORDER))
    lines = ["| step kind | built | " + " | ".join(PHASES) + " | total s | share |",
             "|---|---:|" + "---:|" * (len(PHASES) + 2)]
    for kind in kinds:
        row = [prof.seconds.get((kind, p), 0.0) for p in PHASES]
        lines.append(f"| {kind} | {prof.builds.get(kind, '')} | " + " | ".join(f"{s:.1f}" for s in row) +
                     f" | {sum(row):.1f} | {100 * sum(row) / total:.0f}% |")
    cols = [sum(prof.seconds.get((k, p), 0.0) for k in kinds) for p in PHASES]
    lines.append("| **all** | | " + " | ".join(f"**{s:.1f}**" for s in cols) + f" | **{sum(cols):.1f}** | 100% |")
    lines.append("| share | | " + " | ".join(f"{100 * s / total:.0f}%" for s in cols) + " | | |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", required=True, nargs="+",
                    help="grid YAML file(s), run in order in one work dir like one `make reproduce` lane "
                         "(e.g. yaml_configs/grids/smoke_table2.yaml)")
    ap.add_argument("--seeds", type=int, default=None, help="override the grid's seed count")
    ap.add_argument("--size", default=None, help="override the grid's synthetic size (tiny/small/medium)")
    ap.add_argument("--out", default=None, help="also write the table (markdown) here")
    ap.add_argument("--keep", default=None, help="work/results directory to keep (default: a temporary one)")
    args = ap.parse_args(argv)

    begin = time.perf_counter()  # the one-time imports (fuxictr's layers alone take seconds), outside the table
    import data_prep.prepare  # noqa: F401
    import exfm_plugin.das.augment  # noqa: F401
    import exfm_plugin.distill  # noqa: F401
    from exfm_plugin.pipeline.grid import load_grids
    from exfm_plugin.pipeline.runner import run_grid
    imports = time.perf_counter() - begin

    overrides = {k: v for k, v in (("seeds", args.seeds), ("size", args.size)) if v is not None}
    grids = [grid for path in args.grid for grid in load_grids(path, **overrides)]
    root = args.keep or tempfile.mkdtemp(prefix="exfm_profile_grid_")
    prof = Profile()
    instrument(prof)
    start = prof.last = time.perf_counter()
    try:
        for grid in grids:
            summary = run_grid(grid, os.path.join(root, "work"), os.path.join(root, "results"), progress=False,
                               follow=False)
            print(f"grid {summary.grid}: {summary.ok} ok, {summary.failed} failed", file=sys.stderr)
        prof._tick()
        total = time.perf_counter() - start
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    head = (f"grid {' '.join(args.grid)} ({', '.join(g.name for g in grids)}), in-process, fresh work dir; "
            f"{total:.0f} s wall (plus {imports:.1f} s of imports before it), torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")
    text = head + "\n\n" + table(prof, total) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
