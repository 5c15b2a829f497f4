"""Every reader accepts gzipped inputs: a ``.gz`` copy of each real-format file prepares to
the same day files (every column, every row) and the same vocabulary as the plain file."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from data_prep.prepare import prepare
from data_prep.readers import read
from data_prep.readers.common import find_file
from data_prep.synthetic import generate_bars, generate_raw
from exfm_plugin.data.dayfile import read_day_columns

ROWS = 2500


def gzip_copy(src: Path, dst: Path) -> list[str]:
    """``dst`` = ``src`` with every ``.csv`` / ``.json`` file gzipped (plain copy removed)."""
    shutil.copytree(src, dst)
    zipped = []
    for p in sorted(dst.iterdir()):
        if p.suffix in (".csv", ".json"):
            with open(p, "rb") as f, gzip.open(str(p) + ".gz", "wb") as g:
                shutil.copyfileobj(f, g)
            p.unlink()
            zipped.append(p.name)
    return zipped


def day_columns(out: Path, dataset_id: str) -> dict[int, dict[str, np.ndarray]]:
    return {d: read_day_columns(out / dataset_id / f"day_{d}.h5") for d in range(1, 9)}


@pytest.mark.parametrize("dataset,fmt,expected", [
    ("taobaoad", "raw", {"raw_sample.csv", "ad_feature.csv", "user_profile.csv", "behavior_log.csv"}),
    ("taobaoad", "bars", {"train.csv", "test.csv"}),
    ("kuaivideo", "bars", {"train.csv", "test.csv"}),
    ("amazon", "bars", {"train.csv", "test.csv"}),
])
def test_gz_copy_prepares_identically(tmp_path, dataset, fmt, expected):
    plain = tmp_path / "plain"
    writer = generate_raw if fmt == "raw" or dataset == "kuaivideo" else generate_bars
    writer(dataset, str(plain), size=ROWS, seed=1)
    zipped = gzip_copy(plain, tmp_path / "gz")
    assert expected <= set(zipped), zipped  # every real-format text file of the dataset is gzipped
    outs = {}
    for name in ("plain", "gz"):
        summary = prepare(dataset, fmt, str(tmp_path / name), str(tmp_path / f"out_{name}"), dataset_id="d")
        outs[name] = summary
    assert all(p.endswith(".gz") for k, p in outs["gz"].input_files.items() if k != "item_emb")
    assert outs["gz"].rows_per_day == outs["plain"].rows_per_day and sum(outs["plain"].rows_per_day) > 0
    assert outs["gz"].vocab_sizes == outs["plain"].vocab_sizes
    a, b = day_columns(tmp_path / "out_plain", "d"), day_columns(tmp_path / "out_gz", "d")
    for d in range(1, 9):
        assert a[d].keys() == b[d].keys()
        for col in a[d]:
            np.testing.assert_array_equal(a[d][col], b[d][col], err_msg=f"day {d} column {col}")
    vocab = [json.loads((tmp_path / f"out_{n}" / "d" / "feature_map.json").read_text())["features"]
             for n in ("plain", "gz")]
    assert vocab[0] == vocab[1]


def test_taobaoad_raw_frames_equal_with_gz(tmp_path):
    """Reader level, sequences included (the day files hold them encoded)."""
    generate_raw("taobaoad", str(tmp_path / "plain"), size=1500, seed=2)
    gzip_copy(tmp_path / "plain", tmp_path / "gz")
    a = read("taobaoad", "raw", tmp_path / "plain")
    b = read("taobaoad", "raw", tmp_path / "gz")
    assert b.full_frame().equals(a.full_frame())


def test_find_file_prefers_plain_and_names_gz_in_error(tmp_path):
    (tmp_path / "train.csv.gz").write_bytes(gzip.compress(b"a\n1\n"))
    assert find_file(tmp_path, ["train.csv"], "train file").name == "train.csv.gz"
    (tmp_path / "train.csv").write_text("a\n1\n")
    assert find_file(tmp_path, ["train.csv"], "train file").name == "train.csv"
    with pytest.raises(Exception) as ei:
        find_file(tmp_path, ["test.csv"], "test file")
    assert "test.csv.gz" in str(ei.value)


def test_bad_byte_in_a_gz_row_names_the_row(tmp_path):
    from data_prep.errors import DataFormatError
    from data_prep.readers import taobaoad

    generate_raw("taobaoad", str(tmp_path), size=1000, seed=3)
    p = tmp_path / "raw_sample.csv"
    lines = p.read_bytes().split(b"\n")
    lines[3] = lines[3][:-1] + b"\xff"  # data row 3: its last cell (clk) gets a non-UTF-8 byte
    with gzip.open(str(p) + ".gz", "wb") as g:
        g.write(b"\n".join(lines))
    p.unlink()
    with pytest.raises(DataFormatError) as ei:
        taobaoad.read_raw(tmp_path)
    assert ei.value.row == 3 and "UTF-8" in str(ei.value) and "raw_sample.csv.gz" in str(ei.value)


def test_column_named_twice_is_refused(tmp_path):
    from data_prep.errors import DataFormatError
    from data_prep.readers.common import CsvTable

    p = tmp_path / "train.csv"
    p.write_text("user,clk,clk\n1,0,1\n")
    with pytest.raises(DataFormatError) as ei:
        CsvTable.open(p, {"user": "int", "clk": "label"})
    assert ei.value.column == "clk" and "twice" in str(ei.value)
    p.write_text("user,clk,other,other\n1,0,1,2\n")  # a duplicate the reader does not use is harmless
    assert CsvTable.open(p, {"user": "int", "clk": "label"}).rename == {"user": "user", "clk": "clk"}
