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


def _science_lane(makefile: str, name: str) -> list[str]:
    match = re.search(rf"^{name} := \$\(addprefix yaml_configs/grids/,(.*)\)$", makefile, re.M)
    assert match, f"{name} not found in the Makefile"
    return [grid.strip() for grid in match.group(1).split()]


def test_make_science_runs_every_grid_once():
    """`make science` = both `make reproduce` lanes plus its own two lanes: every smoke and
    science grid, each in one lane only (a grid in both would be trained twice or raced)."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^science: .*?(?=^\S)", makefile, re.M | re.S).group(0)
    assert "--grid $(LANE_A) $(SCIENCE_A)" in recipe and "--grid $(LANE_B) $(SCIENCE_B)" in recipe
    lanes = (_lane(makefile, "LANE_A") + _lane(makefile, "LANE_B")
             + _science_lane(makefile, "SCIENCE_A") + _science_lane(makefile, "SCIENCE_B"))
    shipped = sorted(p.name for pattern in ("smoke_*.yaml", "science_*.yaml")
                     for p in (ROOT / "yaml_configs" / "grids").glob(pattern))
    assert sorted(lanes) == shipped
