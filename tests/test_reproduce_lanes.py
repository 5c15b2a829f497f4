"""`make reproduce` runs every small grid exactly once, across its two lanes."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lane(makefile: str, name: str) -> list[str]:
    match = re.search(rf"^{name} := \$\(addprefix yaml_configs/grids/smoke_,(.*)\)$", makefile, re.M)
    assert match, f"{name} not found in the Makefile"
    return [f"smoke_{grid.strip()}" for grid in match.group(1).split()]


def test_lanes_cover_every_smoke_grid_once():
    makefile = (ROOT / "Makefile").read_text()
    lanes = _lane(makefile, "LANE_A") + _lane(makefile, "LANE_B")
    shipped = sorted(p.name for p in (ROOT / "yaml_configs" / "grids").glob("smoke_*.yaml"))
    assert sorted(lanes) == shipped
