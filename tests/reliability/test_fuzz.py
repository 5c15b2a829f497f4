"""Property suites that search for bad inputs the battery missed.

Raw files: valid synthetic files of each dataset are mutated (truncated, a byte flipped, a
column dropped / renamed / duplicated, a bad value put in a cell, a line duplicated). Whatever
the mutation, ``prepare`` either succeeds or raises the project's ``ExfmInputError``; on an
error the previous output is byte-identical. A sample also goes through the CLI: exit status
0 or 2, and with 2 one ``exfm prep:`` line and no traceback.

Grid YAML: a valid grid is mutated (a value of another type, a key removed or added, a
character inserted): ``load_grid`` returns a grid or raises ``GridError`` (an
``ExfmInputError``), nothing else.
"""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_support import SOURCE, copy_raw, run_cli, tree_digest

from exfm_plugin.errors import ExfmInputError

REPO = Path(__file__).resolve().parents[2]
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
#: the text files of each dataset's synthetic input that the mutations edit
TEXT_FILES = {"taobaoad": ["raw_sample.csv", "ad_feature.csv", "user_profile.csv", "behavior_log.csv"],
              "amazon": ["reviews_Electronics_5.json.gz", "meta_Electronics.json.gz"],
              "kuaivideo": ["train.csv", "test.csv"]}
BAD_VALUES = ["", "abc", "-1", "2", "1e309", "nan", "NULL", "0x10", "9" * 30, "1.5", "\"", "é", "\t", "[]", "{}"]


def _read(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def _mutate_csv_columns(data: bytes, how: str, col: int, new_name: str) -> bytes:
    lines = data.decode("utf-8").split("\n")
    rows = [ln.split(",") for ln in lines]
    width = len(rows[0])
    c = col % width
    out = []
    for i, r in enumerate(rows):
        if len(r) != width:
            out.append(r)
        elif how == "drop":
            out.append(r[:c] + r[c + 1:])
        elif how == "duplicate":
            out.append(r + [r[c]])
        else:  # rename
            out.append([new_name if i == 0 and j == c else v for j, v in enumerate(r)])
    return "\n".join(",".join(r) for r in out).encode("utf-8")


@st.composite
def mutations(draw, dataset: str):
    """(file name, function bytes -> bytes, description)."""
    name = draw(st.sampled_from(TEXT_FILES[dataset]))
    kind = draw(st.sampled_from(["truncate", "flip", "insert_value", "dup_line", "drop_line"]
                                + (["drop", "rename", "duplicate"] if name.endswith(".csv") else [])))
    frac = draw(st.floats(0.0, 1.0))
    pos_frac = draw(st.floats(0.0, 1.0))
    value = draw(st.sampled_from(BAD_VALUES) | st.text(max_size=6))
    bit = draw(st.integers(0, 7))
    col = draw(st.integers(0, 20))
    new_name = draw(st.sampled_from(["x", "", "clk", "user", "label", "timestamp"]))

    def apply(data: bytes) -> bytes:
        n = len(data)
        if kind == "truncate":
            return data[: int(n * frac)]
        if kind == "flip":
            i = min(int(n * pos_frac), n - 1)
            return data[:i] + bytes([data[i] ^ (1 << bit)]) + data[i + 1:]
        lines = data.split(b"\n")
        i = min(int(len(lines) * pos_frac), len(lines) - 1)
        if kind == "dup_line":
            return b"\n".join(lines[: i + 1] + lines[i:])
        if kind == "drop_line":
            return b"\n".join(lines[:i] + lines[i + 1:])
        if kind == "insert_value":
            text = lines[i].decode("utf-8", "replace")
            sep = "," if name.endswith(".csv") else ":"
            cells = text.split(sep)
            cells[col % len(cells)] = value if sep == "," else f" {value!r}"
            lines[i] = sep.join(cells).encode("utf-8")
            return b"\n".join(lines)
        return _mutate_csv_columns(data, kind, col, new_name)
    return name, apply, f"{kind} {name} at {frac:.2f}/{pos_frac:.2f} col {col} value {value!r}"


@pytest.fixture(scope="module")
def baseline(raw_root, tmp_path_factory):
    """One good prep output per dataset, the 'previous output' every failed example must leave alone."""
    from data_prep.prepare import prepare

    out = tmp_path_factory.mktemp("prev")
    for dataset in SOURCE:
        prepare(dataset, SOURCE[dataset], str(raw_root / dataset), str(out / dataset))
    return out


def _check_mutated_prep(dataset, mutation, raw_root, baseline, tmp_path_factory) -> None:
    from data_prep.prepare import prepare

    name, apply, what = mutation
    work = tmp_path_factory.mktemp("fz")
    d = copy_raw(raw_root, dataset, work / "in")
    _write(d / name, apply(_read(d / name)))
    out = baseline / dataset
    before = tree_digest(out)
    try:
        prepare(dataset, SOURCE[dataset], str(d), str(out))
    except ExfmInputError:
        assert tree_digest(out) == before, what
    shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("dataset", list(SOURCE))
def test_mutated_raw_files_raise_only_the_project_error(dataset, raw_root, baseline, tmp_path_factory):
    @SETTINGS
    @given(mutation=mutations(dataset))
    def check(mutation):
        _check_mutated_prep(dataset, mutation, raw_root, baseline, tmp_path_factory)
    check()


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(dataset=st.sampled_from(list(SOURCE)), data=st.data())
def test_mutated_raw_files_through_the_cli(dataset, data, raw_root, tmp_path_factory, capsys):
    name, apply, what = data.draw(mutations(dataset))
    work = tmp_path_factory.mktemp("fzcli")
    d = copy_raw(raw_root, dataset, work / "in")
    _write(d / name, apply(_read(d / name)))
    result = run_cli(capsys, ["prep", "--dataset", dataset, "--source", SOURCE[dataset], "--input", d,
                              "--out", work / "out"])
    assert result.code in (0, 2), (what, result.err[-2000:])
    if result.code == 2:
        assert "Traceback" not in result.err and result.error_line.startswith("exfm prep: "), what
        assert not (work / "out" / f"{dataset}_{SOURCE[dataset]}").exists()
    shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------- grid YAML
GRID_TEXT = (REPO / "yaml_configs" / "grids" / "smoke_table4.yaml").read_text()
GRID = yaml.safe_load(GRID_TEXT)
ODD_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**6), st.floats(allow_nan=True),
                       st.text(max_size=8), st.lists(st.integers(-2, 3) | st.text(max_size=4), max_size=3),
                       st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


def _paths(obj, prefix=()):
    """Every key path of a nested mapping (lists are leaves)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))


KEY_PATHS = sorted(_paths(GRID), key=str)


def _set(obj, path, value, delete=False):
    for k in path[:-1]:
        obj = obj[k]
    if delete:
        obj.pop(path[-1], None)
    else:
        obj[path[-1]] = value


@st.composite
def grid_texts(draw):
    kind = draw(st.sampled_from(["retype", "delete", "add", "char"]))
    if kind == "char":
        i = draw(st.integers(0, len(GRID_TEXT)))
        return GRID_TEXT[:i] + draw(st.sampled_from(["\t", ":", "[", "{", "- ", "\n  x", "'", "&a", "*b", "%"])) \
            + GRID_TEXT[i:]
    grid = yaml.safe_load(GRID_TEXT)
    path = draw(st.sampled_from(KEY_PATHS))
    if kind == "add":
        path = path[:-1] + (draw(st.sampled_from(["extra", "label_scale", "seed", "Teacher", "1"])),)
    _set(grid, path, draw(ODD_VALUES), delete=kind == "delete")
    return yaml.safe_dump(grid)


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=grid_texts())
def test_mutated_grid_loads_or_raises_grid_error(text, tmp_path):
    from exfm_plugin.pipeline.grid import GridError, load_grid

    path = tmp_path / "g.yaml"
    path.write_text(text)
    try:
        grid = load_grid(str(path))
    except GridError as exc:
        assert isinstance(exc, ExfmInputError) and "g.yaml" in str(exc), str(exc)
        return
    assert grid.name  # a grid that loads is a grid
