"""Where the shipped configs, grids and reference tables are, in a checkout or an installed wheel.

They are package data of ``exfm_plugin`` (``yaml_configs/``, ``reference/``), located through
``importlib.resources``, never through the working directory, so ``exfm`` runs from anywhere.
"""
from __future__ import annotations

import difflib
import os
from importlib import resources
from pathlib import Path

import yaml


def package_path(*parts: str) -> Path:
    """A file or folder shipped inside ``exfm_plugin`` (a real path: the package is not zipped)."""
    return Path(str(resources.files("exfm_plugin").joinpath(*parts)))


def config_dir() -> Path:
    """The FuxiCTR config folder: ``model_config/*.yaml`` + ``dataset_config.yaml``."""
    return package_path("yaml_configs", "models")


def grids_dir() -> Path:
    return package_path("yaml_configs", "grids")


def reference_dir() -> Path:
    """The paper's Tables 2-5 and the BARS leaderboard (CSV)."""
    return package_path("reference")


def grid_names() -> list[str]:
    """Names of the shipped grids (``exfm run --grid NAME``)."""
    return sorted(p.stem for p in grids_dir().glob("*.yaml"))


def grid_description(name: str) -> str:
    """The grid's ``description`` key, else its first comment line."""
    path = grids_dir() / f"{name}.yaml"
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        raw = {}
    if isinstance(raw, dict) and raw.get("description"):
        return str(raw["description"])
    first = next((line for line in text.splitlines() if line.startswith("#")), "")
    return first.lstrip("# ").strip()


def resolve_grid(name_or_path: str) -> str:
    """A grid file: an existing path as given, else a shipped grid's name (``table2``, with or
    without ``.yaml``). Raises FileNotFoundError naming the close matches."""
    if os.path.isfile(name_or_path):
        return name_or_path
    stem = Path(name_or_path).name
    stem = stem[:-5] if stem.endswith(".yaml") else stem
    shipped = grids_dir() / f"{stem}.yaml"
    if os.sep not in name_or_path and shipped.is_file():
        return str(shipped)
    close = difflib.get_close_matches(stem, grid_names(), n=3)
    hint = f"; did you mean {close}?" if close else f"; shipped grids: {grid_names()}"
    raise FileNotFoundError(f"grid {name_or_path!r} is neither a file nor a shipped grid name{hint}")
