"""TaobaoAd as Tianchi ships it: ``*.csv.tar.gz`` tar archives holding one csv each.

The expectation is the same files read as plain CSV: an archive must change nothing (every
column of every row, the behaviour sequences included), also when it is parsed in many blocks;
an archive under a plain or ``.gz`` name is named as a tar archive in the error.
"""
from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import polars as pl
import pytest

from data_prep.errors import DataFormatError
from data_prep.readers import REAL_FILES, common, read, taobaoad
from data_prep.readers.common import open_binary, open_text
from data_prep.synthetic import generate_raw

FILES = ("raw_sample", "ad_feature", "user_profile", "behavior_log")


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("taobao_plain")
    generate_raw("taobaoad", str(d), size=1500, seed=3)
    return d


def tar_gz(src: Path, dst: Path, *, extra_first: bytes | None = None) -> None:
    """``dst`` = a gzipped tar archive holding ``src`` under its own name, as Tianchi's are."""
    with tarfile.open(dst, "w:gz") as tar:
        if extra_first is not None:  # a macOS resource fork, as archives made on a Mac carry
            info = tarfile.TarInfo("._" + src.name)
            info.size = len(extra_first)
            tar.addfile(info, io.BytesIO(extra_first))
        tar.add(src, arcname=src.name)


def archived(plain: Path, dst: Path, **kw) -> Path:
    dst.mkdir()
    for name in FILES:
        tar_gz(plain / f"{name}.csv", dst / f"{name}.csv.tar.gz", **kw)
    return dst


def full_frame(d: Path) -> pl.DataFrame:
    return read("taobaoad", "raw", d).full_frame()


def test_tar_gz_as_shipped_reads_like_the_csv(plain, tmp_path):
    want = full_frame(plain)
    d = archived(plain, tmp_path / "tar", extra_first=b"\x00\x05\x16\x07 resource fork")
    assert sorted(p.name for p in d.iterdir()) == sorted(f"{n}.csv.tar.gz" for n in FILES)
    res = read("taobaoad", "raw", d)
    assert all(p.endswith(".csv.tar.gz") for p in res.files.values()) and len(res.files) == 4
    got = res.full_frame()
    assert got.equals(want) and got["cate_his"].list.len().sum() > 0  # behaviour sequences too


def test_archive_parsed_in_many_blocks_is_the_same(plain, tmp_path, monkeypatch):
    monkeypatch.setattr(common, "ARCHIVE_BLOCK_BYTES", 1024)  # ~25 rows a block
    d = archived(plain, tmp_path / "tar")
    assert full_frame(d).equals(full_frame(plain))


def test_bad_cell_in_an_archive_names_its_row(plain, tmp_path, monkeypatch):
    monkeypatch.setattr(common, "ARCHIVE_BLOCK_BYTES", 1024)
    d = tmp_path / "bad"
    d.mkdir()
    lines = (plain / "raw_sample.csv").read_text().splitlines(keepends=True)
    cells = lines[200].split(",")
    cells[1] = "soon"  # time_stamp of data row 200, blocks away from the first
    lines[200] = ",".join(cells)
    (tmp_path / "raw_sample.csv").write_text("".join(lines))
    tar_gz(tmp_path / "raw_sample.csv", d / "raw_sample.csv.tar.gz")
    for name in FILES[1:]:
        tar_gz(plain / f"{name}.csv", d / f"{name}.csv.tar.gz")
    with pytest.raises(DataFormatError) as info:
        read("taobaoad", "raw", d)
    err = info.value
    assert (err.column, err.row, err.value) == ("time_stamp", 200, "soon") and err.path.endswith(".csv.tar.gz")


@pytest.mark.parametrize("name", ["raw_sample.csv.gz", "raw_sample.csv"])
def test_archive_under_a_csv_name_is_named_a_tar_archive(plain, tmp_path, name):
    d = tmp_path / "renamed"
    d.mkdir()
    for other in FILES[1:3]:
        (d / f"{other}.csv").write_bytes((plain / f"{other}.csv").read_bytes())
    tar_gz(plain / "raw_sample.csv", d / name)
    with pytest.raises(DataFormatError, match="is a tar archive") as info:
        read("taobaoad", "raw", d)
    assert info.value.path.endswith(name) and "raw_sample.csv.tar.gz" in info.value.expected
    assert "missing column" not in str(info.value)


def test_gzipped_csv_named_tar_gz_and_truncated_archive_are_refused(plain, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    for other in FILES[1:3]:
        (d / f"{other}.csv").write_bytes((plain / f"{other}.csv").read_bytes())
    with gzip.open(d / "raw_sample.csv.tar.gz", "wb") as g:  # a gzipped csv, no tar inside
        g.write((plain / "raw_sample.csv").read_bytes())
    with pytest.raises(DataFormatError, match="named as a tar archive but is not one"):
        read("taobaoad", "raw", d)
    tar_gz(plain / "raw_sample.csv", tmp_path / "whole.tar.gz")
    data = (tmp_path / "whole.tar.gz").read_bytes()
    (d / "raw_sample.csv.tar.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError) as info:
        read("taobaoad", "raw", d)
    assert info.value.path.endswith("raw_sample.csv.tar.gz")


def test_archive_is_streamed_not_extracted(tmp_path):
    """Reading the first line consumes a few compressed blocks, not the archive."""
    rng = __import__("numpy").random.default_rng(0)
    csv = tmp_path / "behavior_log.csv"
    rows = rng.integers(0, 10**9, size=(200_000, 3))
    csv.write_text("user,time_stamp,cate\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    tar_gz(csv, tmp_path / "behavior_log.csv.tar.gz")
    size = os.path.getsize(tmp_path / "behavior_log.csv.tar.gz")
    with open_binary(tmp_path / "behavior_log.csv.tar.gz") as f:
        assert f.readline() == b"user,time_stamp,cate\n"
        assert f.fileobj.tell() < size / 10  # compressed bytes consumed so far
        assert sum(1 for _ in f) == len(rows)
    with open_text(tmp_path / "behavior_log.csv.tar.gz") as t:  # the text view (as the JSON readers use)
        assert t.readline() == "user,time_stamp,cate\n" and t.readline() == "{},{},{}\n".format(*rows[0])


def test_real_files_list_accepts_the_shipped_archives():
    from exfm_plugin.pipeline import grid

    groups = REAL_FILES[("taobaoad", "raw")]
    for name in ("raw_sample", "ad_feature", "user_profile"):
        group = next(g for g in groups if g[0] == f"{name}.csv")
        assert f"{name}.csv.tar.gz" in group and f"{name}.csv.gz" in group
        assert group == tuple(common.with_gz(taobaoad.RAW_NAMES[name]))  # the reader's own names
    if grid.REAL_FILES is not REAL_FILES:
        pytest.fail("exfm_plugin.pipeline.grid must use data_prep.readers.REAL_FILES (one list of names)")
