"""The declared plan gives every step the key the replay engine it replaced gave it.

``data/plan_golden.json`` was written by the code before the plan existed (commit 8e664c2, issue
23: steps were found by replaying each record's job against a store answering placeholders, and
the file was written from that replay's requests and its ``step_graph.plan`` dependencies): for six tiny grids
(``stream`` and ``day`` schedules, rounds, a freeze day, scales, two students, domains, tasks, a
feature gap with crossed student hyperparameters, ``epochs`` FM training, a grid whose VM cells
fail in training) it holds, per grid, every step's kind, key and dependencies and, per record, its
cell id, its steps, the step it reports and the FM snapshot that supervised it. Keys hash the
work directory's absolute paths (a DAS step names its day files), so both sides are written with
the work directory replaced by ``<WORK>`` and the keys re-hashed, inputs first (:func:`relativize`).
Equal keys mean the new code reuses every artifact an old run built and writes the same records.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from exfm_plugin.pipeline.artifacts import ArtifactStore, step_key
from exfm_plugin.pipeline.context import Context
from exfm_plugin.pipeline.grid import load_grid
from exfm_plugin.pipeline.jobs import grid_jobs
from exfm_plugin.pipeline.plan import plan_grid
from exfm_plugin.pipeline.prep_steps import prepare_data

GOLDEN = json.loads((Path(__file__).parent / "data" / "plan_golden.json").read_text())
KEY = re.compile(r"\b[0-9a-f]{16}\b")
DATA_KINDS = ("prep", "domains")


def relativize(value, root: str, keys: dict[str, str]):
    """``value`` with ``root`` written ``<WORK>`` and every key already seen replaced by its own
    relativized key (the generator of the golden file used this very function)."""
    if isinstance(value, str):
        return KEY.sub(lambda m: keys.get(m.group(0), m.group(0)), value.replace(root, "<WORK>"))
    if isinstance(value, dict):
        return {k: relativize(v, root, keys) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [relativize(v, root, keys) for v in value]
    return value


def ancestors(deps: dict[str, list[str]], key: str) -> set[str]:
    """Every step ``key`` waits for, directly or not."""
    seen: set[str] = set()
    todo = list(deps[key])
    while todo:
        k = todo.pop()
        if k not in seen:
            seen.add(k)
            todo.extend(deps[k])
    return seen


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("golden")


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_every_key_and_record_is_the_replay_engines(name, work):
    golden = GOLDEN[name]
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(golden["grid"]))
    grid = load_grid(str(path))
    root = str((work / "work").resolve())
    ctx = Context(grid, ArtifactStore(Path(root) / "artifacts"), progress=False)  # one prep for all grids
    prep = prepare_data(ctx)
    plan = plan_grid(ctx, prep, grid_jobs(grid))

    keys: dict[str, str] = {}
    for step in [*plan.data, *plan.steps.values()]:  # dependencies first: their keys are known
        keys[step.key] = step_key(step.kind, relativize(step.spec, root, keys))
    assert sorted(keys[s.key] for s in plan.data) == golden["data"]
    assert {keys[s.key]: s.kind for s in plan.steps.values()} == {k: v["kind"] for k, v in golden["steps"].items()}
    deps = {keys[s.key]: [keys[d.key] for d in s.deps if d.kind not in DATA_KINDS] for s in plan.steps.values()}
    for key, old in golden["steps"].items():  # the old graph also named a VM link's FM beside its DAS step
        assert set(deps[key]) <= set(old["deps"]), key
        assert ancestors(deps, key) == ancestors({k: v["deps"] for k, v in golden["steps"].items()}, key), key

    records = []
    for record in plan.records:
        assert record.error is None, record.error  # the golden grids plan (g_tasks fails in training)
        records.append({"kind": record.kind, "cell_id": record.cell_id, "record_step": keys[record.step.key],
                        "snapshot_id": record.snapshot_id,
                        "steps": sorted(keys[s.key] for s in plan.closure(record))})
    assert records == golden["jobs"]
