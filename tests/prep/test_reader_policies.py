"""The documented time and duplicate policies (data_prep.policies) in every reader: KuaiVideo's
negative timestamps and exact duplicate lines, counted like TaobaoAd's, end to end."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_prep.errors import DataFormatError
from data_prep.policies import drop_exact_duplicates, drop_out_of_window
from data_prep.prepare import prepare
from data_prep.readers import kuaivideo
from data_prep.synthetic import generate_raw


@pytest.fixture(scope="module")
def kuai(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("kuai")
    generate_raw("kuaivideo", str(d), size=1000, seed=2)
    return d


def edited_copy(src: Path, dst: Path, edit) -> tuple[list[str], list[str]]:
    """``dst`` = ``src`` with train.csv's data lines replaced by ``edit(lines)``."""
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    header, *lines = (src / "train.csv").read_text().splitlines(keepends=True)
    new = edit(list(lines))
    (dst / "train.csv").write_text(header + "".join(new))
    return lines, new


def with_time(line: str, t: int) -> str:
    return str(t) + line[line.index(","):]


def test_kuaivideo_negative_timestamp_dropped_counted_reported(kuai, tmp_path):
    lines, _ = edited_copy(kuai, tmp_path / "in", lambda L: L[:5] + [with_time(L[5], -17)] + L[6:])
    res = kuaivideo.read_bars(tmp_path / "in")
    base = kuaivideo.read_bars(kuai)
    assert res.counts["rows_out_of_window"] == 1 and res.frame.height == base.frame.height - 1
    assert res.frame["time"].min() >= 0 and any("negative timestamp" in n for n in res.notes)
    summary = prepare("kuaivideo", "bars", str(tmp_path / "in"), str(tmp_path / "out"))
    assert summary.out_of_window_dropped == 1 and summary.rows_read == base.frame.height
    assert summary.total_rows == base.frame.height - 1
    saved = json.loads((tmp_path / "out" / "kuaivideo_bars" / "prep_summary.json").read_text())
    assert saved["out_of_window_dropped"] == 1 and any("dropped 1 of" in n and "negative" in n for n in saved["notes"])


def test_kuaivideo_many_negative_timestamps_are_refused(kuai, tmp_path):
    lines, _ = edited_copy(kuai, tmp_path / "in", lambda L: [with_time(ln, -1) if k % 20 == 0 else ln
                                                             for k, ln in enumerate(L)])
    with pytest.raises(DataFormatError) as info:
        kuaivideo.read_bars(tmp_path / "in")
    err = info.value
    assert err.path.endswith("train.csv") and err.column == "timestamp" and err.value == -1
    assert "never negative" in str(err) and "at most 1%" in err.expected


def test_kuaivideo_exact_duplicate_lines_counted_and_dropped_on_request(kuai, tmp_path):
    lines, new = edited_copy(kuai, tmp_path / "in", lambda L: L + L[:3])
    summary = prepare("kuaivideo", "bars", str(tmp_path / "in"), str(tmp_path / "out"))
    base = kuaivideo.read_bars(kuai).frame.height
    assert (summary.duplicate_rows, summary.duplicates_dropped, summary.total_rows) == (3, 0, base + 3)
    assert any("3 exact duplicate rows kept" in n for n in summary.notes)
    dropped = prepare("kuaivideo", "bars", str(tmp_path / "in"), str(tmp_path / "out2"), drop_duplicates=True)
    assert (dropped.duplicates_dropped, dropped.total_rows) == (3, base)


def test_window_helper_bounds_nulls_and_refusal():
    import polars as pl

    frame = pl.DataFrame({"t": [5, 10, 19, 20, None] + [12] * 495})
    kept, n = drop_out_of_window(frame, "t", 10, 20, "10..19", path="f", dataset="x")
    assert n == 3 and kept["t"].to_list() == [10, 19] + [12] * 495  # [lo, hi), a null is outside
    with pytest.raises(DataFormatError, match="6 of 500 rows"):
        drop_out_of_window(frame.with_columns(pl.Series("t", [1] * 6 + [12] * 494)), "t", 10, None, "10..",
                           path="f", dataset="x")
    dedup, k = drop_exact_duplicates(pl.DataFrame({"a": [1, 1, 2, 1], "b": [0, 0, 0, 1]}), ["a", "b"])
    assert k == 1 and dedup.rows() == [(1, 0), (2, 0), (1, 1)]
