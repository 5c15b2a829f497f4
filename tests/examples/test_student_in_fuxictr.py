"""examples/student_in_fuxictr.py (the ExFM student in your FuxiCTR code, docs/architecture.md; runnable)
runs end to end: DAS writes day 5's FM column, fuxictr's fit trains the wrapped student, and the
metrics it prints agree with the data (NE recomputed from the day files)."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from exfm_plugin.data.dayfile import read_day_columns

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.slow


def test_student_in_fuxictr_example_runs(tmp_path):
    env = dict(os.environ, TQDM_DISABLE="1")
    out = subprocess.run([sys.executable, os.path.join(REPO, "examples", "student_in_fuxictr.py"), "w",
                          "--size", "tiny"], capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    # logging is set up: fuxictr's verbose=1 lines reach stderr
    assert "[Metrics] AUC:" in out.stderr and "Training finished." in out.stderr
    data = tmp_path / "w" / "data" / "taobaoad_synthetic"
    augmented = next(line.split(": ", 1)[1] for line in out.stdout.splitlines() if line.startswith("augmented day 5"))
    day5 = read_day_columns(str(data / "day_5.h5"))
    aug = read_day_columns(augmented)
    # the FM column sits beside day 5's own rows, in their order, one probability per row
    assert np.array_equal(aug["example_id"], day5["example_id"]) and np.array_equal(aug["clk"], day5["clk"])
    fm_pred = np.asarray(aug["fm_pred"], dtype=np.float64)
    assert fm_pred.shape == day5["clk"].shape and np.all((fm_pred > 0) & (fm_pred < 1)) and fm_pred.std() > 0
    metrics = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("student "))[8:])
    assert 0.0 <= metrics["AUC"] <= 1.0
    p = float(np.mean(day5["clk"]))  # NE normalises by the label rate of the day the student trained on
    entropy = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert metrics["NE"] == pytest.approx(metrics["logloss"] / entropy, rel=1e-6)
