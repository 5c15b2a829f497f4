"""The Amazon raw reader on the publisher's own bytes: the 2014 UCSD 5-core Musical Instruments
review dump (same format as reviews_Electronics_5.json.gz), read end to end by ``exfm prep``.

Every expectation is recomputed here from the raw JSON lines with the standard library (no
polars, no reader code): the samples per user, their time order and each positive's history.
The meta file is written in the real meta dump's format: one Python dict literal per line.
"""
from __future__ import annotations

import gzip
import json
import re
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from data_prep.errors import DataFormatError
from data_prep.readers import amazon
from exfm_plugin.cli import main
from exfm_plugin.data.dayfile import read_day_columns

REPO = Path(__file__).resolve().parents[2]
REAL = REPO.parent / "shared" / "real" / "amazon_musical_instruments_5" / "reviews_Musical_Instruments_5.json.gz"
pytestmark = pytest.mark.skipif(not REAL.is_file(), reason=f"the real UCSD review dump is not at {REAL} "
                                "(CI puts a read-only copy of shared/ beside the checkout)")
CATEGORIES = ["Guitars", "Amplifiers & Effects", "Microphones", "Strings", "Cables", "Keyboards", "Drums"]


def raw_reviews() -> list[dict]:
    with gzip.open(REAL, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def category(asin: str) -> str:
    return CATEGORIES[sum(map(ord, asin)) % len(CATEGORIES)]


def write_meta(path: Path, asins: list[str]) -> None:
    """The real meta dump's format: ``str(dict)`` per line (single quotes: not JSON)."""
    with open(path, "w", encoding="utf-8") as f:
        for k, a in enumerate(asins):
            f.write(str({"asin": a, "title": f"Item {k}'s title", "price": 9.99 + k,
                         "imUrl": f"http://ecx.images-amazon.com/images/I/{a}.jpg",
                         "related": {"also_bought": asins[k + 1:k + 3]}, "salesRank": {"Musical Instruments": k + 1},
                         "categories": [["Musical Instruments", category(a)], ["Other", "Last"]]}) + "\n")


def input_dir(root: Path, lines: list[str] | None = None, meta_asins: list[str] | None = None) -> Path:
    """The real reviews under the Electronics name (edited ``lines`` if given) and a meta file."""
    root.mkdir(parents=True)
    if lines is None:
        shutil.copyfile(REAL, root / "reviews_Electronics_5.json.gz")
    else:
        with gzip.open(root / "reviews_Electronics_5.json.gz", "wt", encoding="utf-8") as f:
            f.write("".join(lines))
    if meta_asins is None:
        meta_asins = sorted({r["asin"] for r in raw_reviews()})
    write_meta(root / "meta_Electronics.json", meta_asins)
    return root


def expected_histories(reviews: list[dict], max_len: int = 100) -> dict[tuple[str, str, int], list[str]]:
    """(user, target item, time) -> the items the user reviewed before it, most recent last."""
    by_user = defaultdict(list)
    for line_no, r in enumerate(reviews):
        by_user[r["reviewerID"]].append((r["unixReviewTime"], line_no, r["asin"]))
    out = {}
    for user, rows in by_user.items():
        rows.sort()  # by time, ties in file order
        for k in range(1, len(rows)):
            t, _, item = rows[k]
            out[(user, item, t)] = [a for _, _, a in rows[max(0, k - max_len):k]]
    return out


@pytest.fixture(scope="module")
def prepped(tmp_path_factory):
    root = tmp_path_factory.mktemp("real_amazon")
    d = input_dir(root / "in")
    return root, d


def test_exfm_prep_on_the_real_dump_matches_the_json(prepped, capsys):
    root, d = prepped
    assert main(["prep", "--dataset", "amazon", "--source", "raw", "--input", str(d), "--out", str(root / "out")]) == 0
    printed = capsys.readouterr().out
    reviews = raw_reviews()
    users = {r["reviewerID"] for r in reviews}
    assert (len(reviews), len(users), len({r["asin"] for r in reviews})) == (10261, 1429, 900)  # the README's facts
    want = expected_histories(reviews)
    assert len(want) == len(reviews) - len(users)  # every review after a user's first is a positive
    out = root / "out" / "amazon_raw"
    summary = json.loads((out / "prep_summary.json").read_text())
    assert summary["total_rows"] == 2 * len(want) == sum(summary["rows_per_day"])  # one negative per positive
    assert summary["out_of_window_dropped"] == summary["duplicate_rows"] == 0
    assert summary["reader_counts"] == {"reviews_read": 10261, "reviews_out_of_window": 0, "review_duplicates_dropped": 0,
                                        "reviewed_items": 900, "reviewed_items_with_meta": 900,
                                        "positives_without_negative": 0}
    assert "amazon_raw" in printed and "no line in" not in printed  # the meta covers every item
    vocab = json.loads((out / "feature_vocab.json").read_text())
    inv = {name: {i: t for t, i in vocab[name].items()} for name in ("group_id", "item_id", "cate_id")}
    reviewed = defaultdict(set)
    for r in reviews:
        reviewed[r["reviewerID"]].add(r["asin"])
    times, seen = [], set()
    for day in range(1, 9):
        cols = read_day_columns(out / f"day_{day}.h5")
        times.append(cols["time"])
        for row in range(len(cols["time"])):
            user, t = inv["group_id"][int(cols["group_id"][row])], int(cols["time"][row])
            item = inv["item_id"][int(cols["item_id"][row])]
            got = [inv["item_id"][int(i)] for i in cols["item_history"][row] if i != 0]
            cates = [inv["cate_id"][int(i)] for i in cols["cate_history"][row] if i != 0]
            if cols["label"][row] == 1:
                hist = want[(user, item, t)]
                seen.add((user, item, t))
            else:  # the negative shares a positive's time and history, and the user never reviewed it
                assert item not in reviewed[user]
                hist = next(h for (u, _, tt), h in want.items() if u == user and tt == t and len(h) == len(got))
            assert got == [a if a in vocab["item_id"] else "__OOV__" for a in hist]
            assert cates == [category(a) if category(a) in vocab["cate_id"] else "__OOV__" for a in hist]
    assert seen == set(want)  # every positive, once
    all_times = np.concatenate(times)
    assert np.all(np.diff(all_times) >= 0)  # time order across the 8 days
    assert all_times.min() >= min(r["unixReviewTime"] for r in reviews)


def test_meta_of_another_category_is_refused(tmp_path):
    d = input_dir(tmp_path / "in", meta_asins=[f"B00000{k:04d}" for k in range(50)])  # no asin of these reviews
    with pytest.raises(DataFormatError) as info:
        amazon.read_raw(d)
    err = info.value
    assert err.path.endswith("meta_Electronics.json") and err.column == "asin"
    assert "only 0 of the 900 reviewed items" in str(err) and "50%" in err.expected


def test_meta_under_the_threshold_is_refused_above_it_counted(tmp_path, capsys):
    asins = sorted({r["asin"] for r in raw_reviews()})
    with pytest.raises(DataFormatError, match="only 449 of the 900"):
        amazon.read_raw(input_dir(tmp_path / "low", meta_asins=asins[:449]))
    d = input_dir(tmp_path / "partial", meta_asins=asins[:600])
    res = amazon.read_raw(d)
    assert res.counts["reviewed_items"] == 900 and res.counts["reviewed_items_with_meta"] == 600
    assert any("300 of 900 reviewed items (33.3%) have no line in meta_Electronics.json" in n for n in res.notes)
    # the category is missing exactly for the targets whose item has no meta line
    missing = set(asins[600:])
    pos = res.frame.filter(pl.col("label") == 1)
    assert pos["cate_id"].is_null().to_list() == [i in missing for i in pos["item_id"].to_list()]
    assert main(["prep", "--dataset", "amazon", "--source", "raw", "--input", str(d),
                 "--out", str(tmp_path / "out")]) == 0
    assert "300 of 900 reviewed items" in capsys.readouterr().out
    saved = json.loads((tmp_path / "out" / "amazon_raw" / "prep_summary.json").read_text())
    assert any("300 of 900 reviewed items" in n for n in saved["notes"])
    assert saved["reader_counts"]["reviewed_items_with_meta"] == 600 and saved["reader_counts"]["reviewed_items"] == 900


def test_doubled_lines_are_dropped_and_counted(tmp_path):
    lines = gzip.open(REAL, "rt", encoding="utf-8").readlines()
    base = amazon.read_raw(input_dir(tmp_path / "base"), seed=4)
    doubled = amazon.read_raw(input_dir(tmp_path / "doubled", [ln for ln in lines for _ in (0, 1)]), seed=4)
    assert doubled.frame.equals(base.frame)  # the same samples, not twice as many
    assert doubled.counts["review_duplicates_dropped"] == len(lines) and base.counts["review_duplicates_dropped"] == 0
    assert any(f"dropped {len(lines)} review lines" in n for n in doubled.notes)


def test_a_1969_review_used_only_as_history_is_dropped(tmp_path):
    lines = gzip.open(REAL, "rt", encoding="utf-8").readlines()
    first = json.loads(lines[0])
    old = dict(first, asin="B_OLD_1969", unixReviewTime=-86400, reviewTime="12 31, 1969")
    res = amazon.read_raw(input_dir(tmp_path / "in", [json.dumps(old) + "\n", *lines]), seed=4)
    base = amazon.read_raw(input_dir(tmp_path / "base"), seed=4)
    assert res.frame.equals(base.frame)  # the old review is in no history
    assert not res.frame["item_history"].list.contains("B_OLD_1969").any()
    assert res.counts["reviews_out_of_window"] == 1
    assert any(re.search(r"dropped 1 of 10262 reviews dated outside 1995-01-01", n) for n in res.notes)


def test_milliseconds_are_refused_naming_the_review_file(tmp_path):
    lines = gzip.open(REAL, "rt", encoding="utf-8").readlines()
    ms = [json.dumps(dict(r, unixReviewTime=r["unixReviewTime"] * 1000)) + "\n" for r in map(json.loads, lines)]
    with pytest.raises(DataFormatError) as info:
        amazon.read_raw(input_dir(tmp_path / "in", ms))
    err = info.value
    assert err.path.endswith("reviews_Electronics_5.json.gz") and err.column == "unixReviewTime"
    assert "10261 of 10261 reviews" in str(err) and "1995-01-01" in str(err)
