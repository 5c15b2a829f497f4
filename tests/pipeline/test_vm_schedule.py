"""VM schedules: ``stream`` continues one VM day by day (state carried exactly, the
unsupervised day-1 prefix shared by every method), ``day`` trains a fresh VM on day 5+r."""
import glob
import os

import torch
import yaml

from exfm_plugin.config import build_model
from exfm_plugin.data import H5DataLoader
from exfm_plugin.distill import DistillConfig, ExFMStudent
from exfm_plugin.pipeline.grid import expand_cells, load_grid
from exfm_plugin.pipeline.records import read_records
from exfm_plugin.pipeline.runner import run_grid
from exfm_plugin.pipeline.context import Context
from exfm_plugin.pipeline.params import bars_params, load_feature_map
from exfm_plugin.pipeline.prep_steps import prepare_data
from exfm_plugin.pipeline.training import train_one_pass
from exfm_plugin.pipeline.artifacts import ArtifactStore
from exfm_plugin.contracts import SERVING_WEIGHTS

TINY = 6000


def write_grid(tmp_path, **fields):
    grid = {"grid": "s", "dataset": "taobaoad", "size": TINY, "seeds": 1, "vm_schedule": "stream",
            "model_overrides": {"all": {"embedding_dim": 4, "batch_size": 256},
                                "DCN": {"dnn_hidden_units": [8]}},
            "tuner_space": {"teacher": "DCN", "student": "FM", "method": ["none", "kd", "ah_sa", "ah_sa_frozen"]}}
    grid.update(fields)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(grid))
    return str(path)


def test_stream_cells_train_days_one_to_train_day_with_the_previous_days_snapshot():
    cell = expand_cells(load_grid(write_grid_in_memory(rounds=[0, 2], fm_frozen_after_day=None)))[0]
    assert cell.train_days == [1, 2, 3, 4, 5]
    assert [cell.fm_day_for(d) for d in cell.train_days] == [None, 1, 2, 3, 4]


def write_grid_in_memory(**block):
    import tempfile
    from pathlib import Path

    tmp = Path(tempfile.mkdtemp())
    return write_grid(tmp, rounds=block.pop("rounds", [0]),
                      tuner_space={"teacher": "DCN", "student": "FM", "method": "ah", **block})


def test_a_frozen_fm_labels_every_later_day_with_its_last_snapshot():
    cells = expand_cells(load_grid(write_grid_in_memory(rounds=[2], fm_frozen_after_day=2)))
    assert [cells[0].fm_day_for(d) for d in cells[0].train_days] == [None, 1, 2, 2, 2, 2, 2]


def test_stream_chain_equals_one_uninterrupted_run_and_shares_the_unsupervised_prefix(tmp_path):
    grid = load_grid(write_grid(tmp_path))
    summary = run_grid(grid, str(tmp_path / "work"), str(tmp_path / "results"), progress=False)
    assert summary.failed == 0, summary.failures
    links = glob.glob(str(tmp_path / "work" / "artifacts" / "vm" / "*"))
    # none: days 1..5; each of kd, ah_sa, ah_sa_frozen: days 2..5 on the shared day-1 link
    assert len(links) == 5 + 3 * 4
    records = read_records([summary.records_path])
    vm = {r["method"]: r for r in records if r["kind"] == "vm"}
    assert all(r["vm_schedule"] == "stream" and r["train_rows"] == vm["none"]["train_rows"] for r in vm.values())

    # the none VM of the chain == one VM trained day after day in one process, same loader seeds
    ctx = Context(grid, ArtifactStore(tmp_path / "work" / "artifacts"), progress=False)
    prep = prepare_data(ctx)
    cell = next(c for c in expand_cells(grid) if c.method == "none")
    params = bars_params(grid, prep, "FM", cell.seed)
    fmap = load_feature_map(prep, params, labels=["clk"])
    torch.manual_seed(cell.seed)
    vm = build_model(dict(params, model_root=str(tmp_path / "ck"), gpu=-1), fmap)
    student = ExFMStudent(vm, DistillConfig(method="none"))
    for day in range(1, 6):
        loader = H5DataLoader(fmap, prep.day_file(day), batch_size=256, shuffle=True, seed=cell.seed * 1000 + day * 10)
        train_one_pass(student, loader, "", False)
    last = [p for p in links if _link_day(p) == 5 and _link_method(p) == "none"]
    assert len(last) == 1
    chained = torch.load(os.path.join(last[0], SERVING_WEIGHTS), weights_only=True)
    for name, value in vm.state_dict().items():
        torch.testing.assert_close(chained[name], value, rtol=0, atol=1e-6, msg=name)


def _link_spec(path):
    import json

    with open(os.path.join(path, "meta.json")) as f:
        return json.load(f)["spec"]


def _link_day(path):
    return _link_spec(path)["day"]


def _link_method(path):
    return _link_spec(path)["distill"]["method"]


def test_the_adapter_control_stays_the_identity_while_the_trained_adapter_moves(tmp_path):
    from exfm_plugin.distill.heads import StudentAdapter

    grid = load_grid(write_grid(tmp_path, tuner_space={"teacher": "DCN", "student": "FM",
                                                       "method": ["ah_sa", "ah_sa_frozen"]}))
    summary = run_grid(grid, str(tmp_path / "work"), str(tmp_path / "results"), progress=False)
    assert summary.failed == 0, summary.failures
    p = torch.linspace(0.001, 0.999, 101).view(-1, 1)
    out = {}
    for path in glob.glob(str(tmp_path / "work" / "artifacts" / "vm" / "*")):
        if _link_day(path) == 5:
            state = torch.load(os.path.join(path, "student.pt"), weights_only=True)["student"]
            adapter = StudentAdapter()
            adapter.load_state_dict({k[len("adapter."):]: v for k, v in state.items() if k.startswith("adapter.")})
            with torch.no_grad():
                out[_link_method(path)] = adapter(p)
    torch.testing.assert_close(out["ah_sa_frozen"], torch.logit(p, eps=1e-6))  # the identity on the FM logit
    assert (out["ah_sa"] - torch.logit(p, eps=1e-6)).abs().max() > 1e-3  # four days of its own updates


def test_the_command_line_schedule_overrides_grid_and_tuner_blocks(tmp_path):
    path = write_grid(tmp_path, tuner_space=[{"teacher": "DCN", "student": "FM", "method": "none"},
                                             {"teacher": "DCN", "student": "FM", "method": "ah", "vm_schedule": "stream"}])
    assert {c.vm_schedule for c in expand_cells(load_grid(path))} == {"stream"}
    cells = expand_cells(load_grid(path, vm_schedule="day"))
    assert {c.vm_schedule for c in cells} == {"day"} and {c.train_days == [5] for c in cells} == {True}
