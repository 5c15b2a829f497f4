"""The cross-domain bias dial is real for the teacher itself, not only written into the generator:
on a small world, one shared DMIN FM trained through the pipeline falls further behind the world's
truth in every domain at ``domain_shift`` 2 than at 0 (its per-domain NE above the oracle's, both
on the common normaliser; the oracle is the truth column the world wrote, which no model reads)."""
from __future__ import annotations

import json

import pytest

from exfm_plugin.pipeline.grid import load_grids
from exfm_plugin.pipeline.runner import run_grid

GRID = """
grid: bias_dial_fm
dataset: taobaoad
source: synthetic
size: 80000
data_seed: {data_seed}
vm_schedule: stream
world: {{domain_shift: [0.0, 2.0]}}
seeds: 1
mode: domains
rounds: [0]
model_overrides:
    all: {{embedding_dim: 8, batch_size: 256, learning_rate: 2.0e-3}}
    DeepFM: {{hidden_units: [16], learning_rate: 1.0e-3}}
    DMIN: {{dnn_hidden_units: [32, 16], attention_hidden_units: [16], num_heads: 1,
           use_behavior_refiner: false, attention_dropout: 0}}
tuner_space:
    teacher: DMIN
    student: DeepFM
    method: [none]
"""


def _fm_excess_over_oracle(tmp_path, data_seed: int) -> dict[float, dict[str, float]]:
    """domain_shift -> domain -> the FM's NE minus the oracle's NE on that domain's test day."""
    path = tmp_path / "grid.yaml"
    path.write_text(GRID.format(data_seed=data_seed))
    out: dict[float, dict[str, float]] = {}
    for grid in load_grids(str(path)):
        summary = run_grid(grid, str(tmp_path / "work"), str(tmp_path / "results"), progress=False, follow=False)
        assert summary.failed == 0, summary.failures
        with open(summary.records_path) as f:
            records = [json.loads(line) for line in f]
        fm = [r for r in records if r["kind"] == "fm"]
        assert len(fm) == 3  # one shared FM, evaluated on each domain's rows
        shift = fm[0]["world"]["domain_shift"]
        out[shift] = {r["domain"]: r["metrics"]["NE"] - r["oracle"]["NE"] for r in fm}
    return out


@pytest.mark.slow
@pytest.mark.parametrize("data_seed", [0, 1])
def test_the_shared_fm_falls_further_behind_the_truth_in_every_domain_as_the_dial_grows(tmp_path, data_seed):
    """Measured on this world (80k impressions, 1 seed): 0.18-0.24 at level 0 against 0.26-0.44 at
    level 2, an increase of at least 0.07 in every domain; the test asks for 0.03."""
    excess = _fm_excess_over_oracle(tmp_path, data_seed)
    assert set(excess) == {0.0, 2.0}
    for domain, level0 in excess[0.0].items():
        assert level0 > 0  # the FM is below the truth everywhere: the measure is an excess
        assert excess[2.0][domain] > level0 + 0.03, (domain, excess)
