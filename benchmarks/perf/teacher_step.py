"""The smoke grids' DMIN teachers, this checkout vs a base commit, side by side in one process:
the same outputs and gradients (the exactness check), then train rows/s of both, interleaved.

Each setup is a teacher of ``make reproduce`` exactly as the pipeline builds it (the grid's BARS
config plus its ``model_overrides``, on the prepared synthetic data of its dataset, batch 256):

    t2  smoke_table2  DMIN            TaobaoAd   (lane A; also smoke_table4 / fig grids)
    t3  smoke_table3  DMIN            Amazon     (lane B)
    t5  smoke_table5  MultiTaskDMIN   KuaiVideo  (lane B; click and like)
    s2  smoke_table2  DeepFM student  TaobaoAd   (method ah_sa, random FM predictions)

The base commit's ``exfm_plugin`` is read with ``git archive`` into a temporary package
(``exfm_base``; the package imports itself relatively, so both live in one process). Both
models are built with the same seed, the base model's ``state_dict`` is loaded into the new
one (so the layout must be the same), and on the same batches (train mode, the same seed before
each forward, so dropout draws the same masks where the random stream is unchanged) the
outputs, the loss and every parameter's gradient are compared; then both take ``--check-steps``
optimizer steps from the same state and their predictions on another batch are compared. Timing:
``train_step`` calls interleaved one by one (first caller alternating), median seconds per step;
'paired' is the median [min, max] over rounds of the two back-to-back steps' ratio.

    python benchmarks/perf/teacher_step.py [--base 8e664c2] [--setups t2 t3 t5] [--steps 30]
        [--threads 1] [--data-root DIR]

``--data-root`` keeps the prepared data (``exfm prep --source synthetic --size small``; about a
minute for KuaiVideo) between runs.
"""
from __future__ import annotations

import argparse
import importlib
import io
import itertools
import json
import os
import subprocess
import sys
import tarfile
import tempfile

import torch

sys.path.insert(0, os.path.dirname(__file__))
from shapes import interleaved_seconds, paired_ratio  # noqa: E402

from exfm_plugin.config import load_experiment  # noqa: E402
from exfm_plugin.data.loader import H5DataLoader  # noqa: E402
from exfm_plugin.pipeline.grid import load_grid  # noqa: E402
from exfm_plugin.pipeline.grid_schema import model_params  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SETUPS = {"t2": ("smoke_table2", "DMIN", "taobaoad", None),
          "t3": ("smoke_table3", "DMIN", "amazon", None),
          "t5": ("smoke_table5", "MultiTaskDMIN", "kuaivideo", ["is_click", "is_like"]),
          "s2": ("smoke_table2", "DeepFM", "taobaoad", None)}
STUDENT_METHOD = "ah_sa"  # the s2 setup: an ExFM student with every head (and the adapter's own step)
DROP = ("data_root", "data_format", "train_data", "valid_data", "test_data", "feature_cols", "label_col",
        "min_categr_count", "model_root", "dataset_id")


def import_base(rev: str, root: str):
    """``exfm_plugin`` of commit ``rev`` as the package ``exfm_base``."""
    tar = subprocess.run(["git", "-C", REPO, "archive", rev, "exfm_plugin"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(root, filter="data")
    os.rename(os.path.join(root, "exfm_plugin"), os.path.join(root, "exfm_base"))
    sys.path.insert(0, root)
    for name in ("exfm_base.models", "exfm_base.distill"):
        importlib.import_module(name)
    return importlib.import_module("exfm_base")


def prepared(dataset: str, data_root: str) -> str:
    """The prepared synthetic data of ``dataset`` (prepared once per ``data_root``)."""
    data_dir = os.path.join(data_root, f"{dataset}_synthetic")
    if not os.path.exists(os.path.join(data_dir, "feature_map.json")):
        from exfm_plugin.cli import main as exfm

        exfm(["prep", "--dataset", dataset, "--source", "synthetic", "--size", "small", "--out", data_root])
    return data_dir


def smoke_setup(name: str, data_root: str, model_root: str, num_batches: int):
    """(params, feature map, batches of day 1) of a smoke grid's teacher, built as the pipeline does."""
    from fuxictr.features import FeatureMap

    grid_name, model, dataset, labels = SETUPS[name]
    grid = load_grid(os.path.join(REPO, "exfm_plugin", "yaml_configs", "grids", f"{grid_name}.yaml"))
    params = model_params(grid, model, load_experiment(f"{model}_{grid.bars_dataset_id}"))
    for key in DROP:
        params.pop(key, None)
    data_dir = prepared(dataset, data_root)
    with open(os.path.join(data_dir, "feature_map.json")) as f:
        names = {k for feat in json.load(f)["features"] for k in feat}
    specs = []
    for spec in params.get("feature_specs") or []:
        wanted = spec["name"] if isinstance(spec["name"], list) else [spec["name"]]
        if any(n in names for n in wanted):
            specs.append({**spec, "name": [n for n in wanted if n in names]})
    params.update(seed=0, verbose=0, feature_specs=specs or None, model_root=model_root,
                  group_id="group_id" if "group_id" in names else None)
    fmap = FeatureMap(os.path.basename(data_dir), data_dir)
    fmap.load(os.path.join(data_dir, "feature_map.json"), params)
    fmap.num_fields = fmap.get_num_fields()
    if labels:
        fmap.labels = list(labels)
    loader = H5DataLoader(fmap, os.path.join(data_dir, "day_1.h5"), batch_size=params["batch_size"])
    batches = list(itertools.islice(iter(loader), num_batches))
    gen = torch.Generator().manual_seed(7)
    for batch in batches:  # the FM's predictions a student reads (ignored by a teacher)
        batch["fm_pred"] = torch.rand(len(batch[fmap.labels[0]]), generator=gen) * 0.9 + 0.05
    return params, fmap, batches


def build(package, params: dict, fmap, model_id: str):
    """The setup's model from ``package`` (``exfm_plugin`` or ``exfm_base``), seeded; a DeepFM is
    wrapped as an ExFM student."""
    torch.manual_seed(0)
    model = package.models.MODEL_REGISTRY[params["model"]](fmap, **{**params, "model_id": model_id})
    if params["model"] == "DeepFM":
        model = package.distill.ExFMStudent(model, package.distill.DistillConfig(method=STUDENT_METHOD))
    model._max_gradient_norm = 10.0
    return model.train()


def outputs_and_grads(model, batch: dict, seed: int):
    """Train-mode outputs, the loss and every gradient of one batch (seeded: same dropout draws)."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    if hasattr(model, "vm"):  # a student: its serving output and its step's loss (heads, adapter step)
        out, loss = model(batch), model.step_loss(batch)
    else:
        out = model(batch)
        loss = model.compute_loss(out, model.get_labels(batch))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in out.items()}, loss.detach(), grads


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max(max |a|, 1e-12): the largest difference relative to the tensor's scale."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / max(float(a.abs().max()), 1e-12))


def exactness(base, new, batches: list[dict], check_steps: int) -> dict:
    """Largest relative differences: outputs, loss and gradients on three batches, and the
    predictions after ``check_steps`` optimizer steps of both from the same state.

    A gradient that is zero in exact arithmetic comes out as rounding noise: the target
    attention's score bias (softmax ignores a constant shift) is left out of the gradient figure. For the
    same reason the parameters themselves are not compared after the steps (Adam turns that
    noise into steps of size lr, which change nothing the model computes)."""
    new.load_state_dict(base.state_dict())  # the same layout, or this raises
    worst = {"outputs": 0.0, "loss": 0.0, "grads": 0.0, "worst gradient": ""}
    invariant = {f"{name}.attn_mlp.biases.{len(m.attn_mlp.biases) - 1}" for name, m in new.named_modules()
                 if hasattr(m, "attn_mlp")}
    for i, batch in enumerate(batches[:3]):
        (ob, lb, gb), (on, ln, gn) = outputs_and_grads(base, batch, i), outputs_and_grads(new, batch, i)
        if ob.keys() != on.keys() or gb.keys() != gn.keys():
            raise AssertionError(f"outputs {sorted(ob)} vs {sorted(on)}, grads {sorted(gb)} vs {sorted(gn)}")
        worst["outputs"] = max(worst["outputs"], *(rel_diff(ob[k], on[k]) for k in ob))
        worst["loss"] = max(worst["loss"], rel_diff(lb, ln))
        for k in gb:
            if k not in invariant and rel_diff(gb[k], gn[k]) >= worst["grads"]:
                worst["grads"], worst["worst gradient"] = rel_diff(gb[k], gn[k]), k
    for i in range(check_steps):
        for model in (base, new):
            torch.manual_seed(100 + i)
            model.train_step(batches[i % len(batches)])
    with torch.no_grad():
        out_b, out_n = base.eval()(batches[-1]), new.eval()(batches[-1])
    base.train(), new.train()
    worst[f"predictions after {check_steps} steps"] = max(rel_diff(out_b[k], out_n[k]) for k in out_b
                                                          if k.endswith("pred"))
    return worst


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="8e664c2",
                    help="the commit to compare with (default: before issue 22's speed work)")
    ap.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    ap.add_argument("--steps", type=int, default=30, help="timed steps per model (median taken)")
    ap.add_argument("--check-steps", type=int, default=20, help="optimizer steps of the exactness check")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (make reproduce: 1)")
    ap.add_argument("--data-root", default=None, help="where the prepared data is kept (default: temporary)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    tmp = tempfile.mkdtemp(prefix="exfm_teacher_step_")
    base_package = import_base(args.base, os.path.join(tmp, "base"))
    import exfm_plugin.distill
    import exfm_plugin.models  # noqa: F401
    new_package = sys.modules["exfm_plugin"]

    data_root = args.data_root or os.path.join(tmp, "data")
    print(f"teacher train_step, base {args.base} vs this checkout; {args.threads} thread(s), "
          f"{args.steps} interleaved steps, load {os.getloadavg()[0]:.1f}", flush=True)
    for name in args.setups:
        params, fmap, batches = smoke_setup(name, data_root, os.path.join(tmp, "models"), 8)
        base = build(base_package, params, fmap, "base")
        new = build(new_package, params, fmap, "new")
        worst = exactness(base, new, batches, args.check_steps)
        rounds: dict[str, list[float]] = {}
        median = interleaved_seconds({"base": lambda i: base.train_step(batches[i % len(batches)]),
                                      "new": lambda i: new.train_step(batches[i % len(batches)])},
                                     args.steps, warmup=2, rounds=rounds)
        rows = {k: len(batches[0][fmap.labels[0]]) / t for k, t in median.items()}
        paired = paired_ratio(rounds, "base", "new")
        print(f"{name} {SETUPS[name][0]:12s} {params['model']:13s} base {rows['base']:7.0f} rows/s  "
              f"new {rows['new']:7.0f} rows/s  new/base {rows['new'] / rows['base']:.2f} "
              f"(paired {paired[0]:.2f} [{paired[1]:.2f}, {paired[2]:.2f}])  load {os.getloadavg()[0]:.1f}", flush=True)
        print("   largest relative difference: " + ", ".join(f"{k} {v:.1e}" if isinstance(v, float) else f"{k} {v}"
                                                       for k, v in worst.items()), flush=True)


if __name__ == "__main__":
    main()
