"""The policies for doubtful rows (data_prep.policies): out-of-window times and exact duplicates."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
import pytest
from reliability_support import copy_raw

from data_prep.errors import DataFormatError
from data_prep.policies import MAX_OUT_OF_WINDOW, apply_policies, time_window
from data_prep.readers.common import ReadResult

CST = timezone(timedelta(hours=8))


def cst(*args) -> int:
    return int(datetime(*args, tzinfo=CST).timestamp())


def result(times, dataset="taobaoad", kind="unix_seconds", **cols) -> ReadResult:
    frame = pl.DataFrame({"time": np.asarray(times, dtype=np.int64), "user": np.arange(len(times)), **cols})
    return ReadResult(dataset=dataset, source="raw", frame=frame, time_kind=kind, labels=["clk"], features=[],
                      min_categr_count=1)


def test_taobao_window_edges_are_beijing_midnights():
    lo, hi, text = time_window(result([cst(2017, 5, 6, 12)] * 10))
    assert (lo, hi) == (cst(2017, 5, 6), cst(2017, 5, 14)) and "2017-05-13" in text
    inside = [cst(2017, 5, 6), cst(2017, 5, 13, 23, 59, 59)]
    outside = [cst(2017, 5, 6) - 1, cst(2017, 5, 14)]
    res = result(inside * 100 + outside)
    report = apply_policies(res, where="x")
    assert report.out_of_window == 2 and res.frame.height == 200
    assert res.frame["time"].is_between(lo, hi - 1).all()


def test_at_most_one_percent_is_dropped_more_is_refused():
    good = [cst(2017, 5, 7)] * 1000
    limit = int(MAX_OUT_OF_WINDOW * 1010)  # outliers among 1000 + k rows
    res = result(good + [-1] * limit)
    assert apply_policies(res, where="x").out_of_window == limit
    with pytest.raises(DataFormatError, match=r"outside.*2017-05-06") as info:
        apply_policies(result(good + [-1] * (limit + 2)), where="dir/x")
    assert info.value.column == "time" and info.value.path == "dir/x"


def test_own_dates_window_is_the_busiest_8_days():
    """Other dates than the paper's: the 8 days holding the most rows; a stray year-2100 row goes."""
    days = [cst(2020, 1, 1) + i * 86400 for i in range(8)] * 50
    res = result(days + [4102444800])
    report = apply_policies(res, where="x")
    assert report.out_of_window == 1 and report.window == ["2020-01-01 .. 2020-01-08 Beijing time"]


def test_a_log_spanning_more_days_keeps_the_equal_count_split():
    res = result([cst(2020, 1, 1) + i * 86400 for i in range(16)] * 10)
    assert time_window(res) is None and apply_policies(res, where="x").out_of_window == 0


def test_milliseconds_are_refused_not_resplit():
    with pytest.raises(DataFormatError, match="outside"):
        apply_policies(result([cst(2017, 5, 7) * 1000 + i for i in range(100)]), where="x")


def test_no_window_for_relative_or_file_order_times():
    assert time_window(result([-5, 10**15], dataset="kuaivideo", kind="relative")) is None
    assert time_window(result([0, 1], kind="file_order")) is None


def test_duplicates_counted_kept_or_dropped_first_kept():
    times = [cst(2017, 5, 7)] * 4
    res = result(times, user=[1, 2, 1, 1], clk=[0, 1, 0, 1])  # row 2 repeats row 0
    assert apply_policies(res, where="x").duplicates == 1 and res.frame.height == 4
    res = result(times, user=[1, 2, 1, 1], clk=[0, 1, 0, 1])
    report = apply_policies(res, where="x", drop_duplicates=True)
    assert report.duplicates_dropped == 1 and res.frame["clk"].to_list() == [0, 1, 1]


def test_file_order_position_is_not_part_of_a_row():
    res = result([0, 1, 2], kind="file_order", part=["train", "train", "test"])
    res.frame = res.frame.with_columns(pl.Series("user", [5, 5, 5]))
    assert apply_policies(res, where="x").duplicates == 2


def test_prep_reports_policies_in_summary_and_feature_map(tmp_path, raw_root):
    from data_prep.prepare import prepare

    d = copy_raw(raw_root, "taobaoad", tmp_path / "in")
    lines = (d / "raw_sample.csv").read_text().splitlines()
    lines = lines[:1] + lines[1:4] + lines[1:]  # 3 exact duplicates
    bad = lines[5].split(",")
    bad[1] = "4102444800"  # year 2100
    lines.insert(6, ",".join(bad))
    (d / "raw_sample.csv").write_text("\n".join(lines) + "\n")
    summary = prepare("taobaoad", "raw", str(d), str(tmp_path / "out"))
    assert (summary.duplicate_rows, summary.duplicates_dropped, summary.out_of_window_dropped) == (3, 0, 1)
    assert summary.rows_read == len(lines) - 1 and summary.total_rows == len(lines) - 2
    saved = json.loads((tmp_path / "out" / "taobaoad_raw" / "prep_summary.json").read_text())
    assert saved["duplicate_rows"] == 3 and any("duplicate" in n for n in saved["notes"])
    fmap = json.loads((tmp_path / "out" / "taobaoad_raw" / "feature_map.json").read_text())
    assert any("duplicate rows 3; dropped 0" in n for n in fmap["notes"])
    assert any("dropped 1" in n for n in fmap["notes"])
    from fuxictr.features import FeatureMap  # fuxictr still reads the map

    FeatureMap("taobaoad_raw", str(tmp_path / "out" / "taobaoad_raw")).load(
        str(tmp_path / "out" / "taobaoad_raw" / "feature_map.json"), {})
    dropped = prepare("taobaoad", "raw", str(d), str(tmp_path / "out2"), drop_duplicates=True)
    assert dropped.duplicates_dropped == 3 and dropped.total_rows == summary.total_rows - 3
