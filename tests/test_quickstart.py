"""The README's quickstart runs end to end on tiny synthetic data and reports every method."""
import ast
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_example_runs(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(REPO, "examples", "quickstart.py"), str(tmp_path)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {line.split()[0]: ast.literal_eval(line.split(maxsplit=1)[1])
            for line in out.stdout.splitlines() if line.split() and line.split()[0] in
            ("teacher", "none", "kd", "ah", "ah_sa")}
    assert set(rows) == {"teacher", "none", "kd", "ah", "ah_sa"}
    for metrics in rows.values():
        assert set(metrics) == {"AUC", "logloss", "NE", "calibration"}
        assert 0.0 <= metrics["AUC"] <= 1.0 and metrics["logloss"] > 0 and metrics["NE"] > 0
    assert os.path.exists(tmp_path / "data" / "taobaoad_synthetic" / "day_5.fm.h5")
