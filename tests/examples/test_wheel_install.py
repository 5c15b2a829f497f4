"""The built wheel, installed outside the checkout, runs a shipped grid by name and the report
(tests/examples/wheel_install_check.sh; about 4 minutes on 2 cores)."""
import os
import re
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_wheel_runs_a_grid_by_name_and_the_report_outside_the_checkout(tmp_path):
    out = subprocess.run(["bash", os.path.join(REPO, "tests", "examples", "wheel_install_check.sh"),
                          "smoke_table2", "tiny"], capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "exfm_plugin imported from the wheel" in out.stdout
    from exfm_plugin.pipeline.grid import load_grid
    from exfm_plugin.pipeline.jobs import grid_jobs

    ok = re.search(r"grid smoke_table2: (\d+) cells ok, (\d+) failed", out.stdout)
    jobs = grid_jobs(load_grid("smoke_table2", seeds=1, size="tiny"))  # every VM cell + FM record, seed 0
    assert ok and (int(ok.group(1)), int(ok.group(2))) == (len(jobs), 0), out.stdout[-2000:]
    assert "OK: wheel install outside the checkout" in out.stdout
