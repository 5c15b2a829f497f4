"""Readers on small files written here in each real format, and their errors on bad input."""
from __future__ import annotations

import ast
import gzip
import json
from pathlib import Path

import h5py
import numpy as np
import polars as pl
import pytest

from data_prep.errors import DataFormatError
from data_prep.readers import amazon, read, taobaoad

DAY0 = 1494000000 - (1494000000 + 8 * 3600) % 86400  # 2017-05-06 00:00:00 Beijing time


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "".join(r + "\n" for r in rows))
    return path


def taobao_raw(d: Path, *, samples=None, behaviors=None, sample_header="user,time_stamp,adgroup_id,pid,noclk,clk"):
    """Alibaba raw files with the quirks of real copies: ``noclk``, ``customer_id``, a trailing
    space in the last user_profile header, NULL brand, blank levels, ids written as floats."""
    if samples is None:
        samples = [f"7,{DAY0 + 100},1,430548_1007,1,0", f"8.0,{DAY0 + 200},2.0,430539_1007,0,1",
                   f"7,{DAY0 + 86400 + 5},3,430548_1007,1,0"]
    write_csv(d / "raw_sample.csv", sample_header, samples)
    write_csv(d / "ad_feature.csv", "adgroup_id,cate_id,campaign_id,customer_id,brand,price",
              ["1,10,100,1000,NULL,12.5", "2,20,200,2000,55.0,3", "3,10,300,3000,56,1e3"])
    write_csv(d / "user_profile.csv",
              "userid,cms_segid,cms_group_id,final_gender_code,age_level,pvalue_level,shopping_level,"
              "occupation,new_user_class_level ",
              ["7,0,5,2,3,,3,0,2", "8,0,1,1,2,1,3,1,"])
    if behaviors is not None:
        write_csv(d / "behavior_log.csv", "user,time_stamp,btag,cate,brand", behaviors)
    return d


def test_taobao_raw_joins_and_header_quirks(tmp_path):
    res = taobaoad.read_raw(taobao_raw(tmp_path))
    df = res.frame
    assert res.time_kind == "unix_seconds" and res.labels == ["clk"]
    assert df["time"].to_list() == [DAY0 + 100, DAY0 + 200, DAY0 + 86400 + 5]
    assert df["userid"].to_list() == [7, 8, 7]
    assert df["adgroup_id"].to_list() == [1, 2, 3]
    assert df["customer"].to_list() == [1000, 2000, 3000]  # read from customer_id
    assert df["brand"].to_list() == [None, 55, 56]  # NULL and "55.0"
    assert df["price"].to_list() == [12.5, 3.0, 1000.0]
    assert df["pvalue_level"].to_list() == [None, 1, None]
    assert df["new_user_class_level"].to_list() == [2, None, 2]  # header had a trailing space
    assert df["clk"].to_list() == [0, 1, 0] and df["clk"].dtype == pl.Int8
    full = res.full_frame()  # no behaviour log: empty sequences
    assert full["cate_his"].to_list() == [[], [], []]


def test_behaviour_sequences_exclude_impression_time_and_later(tmp_path):
    t = DAY0 + 1000
    behaviors = [f"7,{t - 3},pv,11,101", f"7,{t - 2},cart,12,", f"7,{t - 1},buy,13,103",
                 f"7,{t},fav,99,999",        # at the impression second: excluded
                 f"7,{t + 1},pv,98,998",     # after: excluded
                 f"8,{t - 10},pv,50,500"]    # another user
    samples = [f"7,{t},1,p,1,0", f"7,{t - 2},1,p,1,0", f"9,{t},1,p,1,0"]
    res = taobaoad.read_raw(taobao_raw(tmp_path, samples=samples, behaviors=behaviors))
    full = res.full_frame().sort("time")
    rows = {(r["userid"], r["time"]): r for r in full.iter_rows(named=True)}
    r = rows[(7, t)]
    assert r["cate_his"] == [11, 12, 13]  # most recent last
    assert r["brand_his"] == [101, None, 103]  # aligned: a missing brand keeps its slot
    assert r["btag_his"] == ["pv", "cart", "buy"]
    assert rows[(7, t - 2)]["cate_his"] == [11]  # only the behaviour strictly before t-2
    assert rows[(9, t)]["cate_his"] == []  # user without behaviours
    for row in full.iter_rows(named=True):
        assert 99 not in row["cate_his"] and 98 not in row["cate_his"]


def test_behaviour_sequences_keep_last_50(tmp_path):
    t = DAY0 + 5000
    behaviors = [f"7,{t - 100 + i},pv,{i},1" for i in range(80)]
    res = taobaoad.read_raw(taobao_raw(tmp_path, samples=[f"7,{t},1,p,1,0"], behaviors=behaviors))
    assert res.full_frame()["cate_his"].to_list() == [list(range(30, 80))]


def bars_taobao_header() -> str:
    return ("clk,btag_his,cate_his,brand_his,userid,cms_segid,cms_group_id,final_gender_code,age_level,"
            "pvalue_level,shopping_level,occupation,new_user_class_level,adgroup_id,cate_id,campaign_id,"
            "customer,brand,price,pid,btag")


def bars_taobao_row(clk=0, cate_his="1^2^3", btag_his="1^2^1", user=5) -> str:
    return f"{clk},{btag_his},{cate_his},7^8^9,{user},0,1,2,3,,1,0,2,11,1,21,31,NULL,9.9,430548_1007,1"


def test_taobao_bars(tmp_path):
    write_csv(tmp_path / "train.csv", bars_taobao_header(), [bars_taobao_row(0), bars_taobao_row(1, "", "", 6)])
    write_csv(tmp_path / "test.csv", bars_taobao_header(), [bars_taobao_row(0, "4", "2", 7)])
    res = read("taobaoad", "bars", tmp_path)
    df = res.frame
    assert res.time_kind == "file_order"
    assert df["time"].to_list() == [0, 1, 2] and df["part"].to_list() == [0, 0, 1]
    assert df["cate_his"].to_list() == [[1, 2, 3], [], [4]]
    assert df["btag_his"].to_list() == [["1", "2", "1"], [], ["2"]]
    assert df["brand"].to_list() == [None, None, None]
    assert df["userid"].to_list() == [5, 6, 7]


#: review times are written as T0 + t: the reader keeps only reviews dated 1995 .. 2014 (policies.py)
T0 = 1_300_000_000


def write_reviews(path: Path, reviews: list[tuple[str, str, int]]) -> Path:
    lines = [json.dumps({"reviewerID": u, "asin": i, "reviewerName": "x", "helpful": [0, 0], "reviewText": "ok",
                         "overall": 5.0, "summary": "s", "unixReviewTime": T0 + t, "reviewTime": "01 1, 2014"})
             for u, i, t in reviews]
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    return path


def write_meta_literal(path: Path, cats: dict[str, list[list[str]]]) -> Path:
    # the old dump: Python-literal lines (single quotes), not JSON
    lines = [repr({"asin": a, "categories": c, "title": "it's"}) for a, c in cats.items()]
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    return path


def amazon_files(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    reviews = [("u1", "a", 30), ("u1", "b", 10), ("u1", "c", 20), ("u2", "a", 5), ("u2", "d", 6),
               ("u3", "e", 1)] + [("u4", f"x{i}", 100 + i) for i in range(5)]
    write_reviews(d / "reviews_Electronics_5.json.gz", reviews)
    cats = {"a": [["Electronics", "Cams"], ["Other"]], "b": [["Electronics", "TV"]], "c": [["Electronics"]],
            "d": [["Electronics", "Audio", "Hi"]], "e": [["Electronics", "Cams"]]}
    cats.update({f"x{i}": [["Electronics", "Misc"]] for i in range(5)})
    write_meta_literal(d / "meta_Electronics.json.gz", cats)
    return d


def test_amazon_raw_din_samples(tmp_path):
    d = amazon_files(tmp_path)
    assert ast.literal_eval(gzip.open(d / "meta_Electronics.json.gz", "rt").readline())["asin"] == "a"
    res = amazon.read_raw(d, seed=3)
    df = res.frame
    pos, neg = df.filter(pl.col("label") == 1), df.filter(pl.col("label") == 0)
    # u1: b(10) c(20) a(30) -> 2 positives; u2: 1; u3: none; u4: 4
    assert pos.height == 7 and neg.height == 7
    p = {(r["user_id"], r["item_id"]): r for r in pos.iter_rows(named=True)}
    assert p[("u1", "c")]["item_history"] == ["b"] and p[("u1", "a")]["item_history"] == ["b", "c"]
    assert p[("u1", "a")]["cate_id"] == "Cams" and p[("u1", "a")]["cate_history"] == ["TV", "Electronics"]
    assert p[("u2", "d")]["cate_id"] == "Hi"
    reviewed = {}
    for u, i in zip(["u1"] * 3 + ["u2"] * 2 + ["u3"] + ["u4"] * 5, ["a", "b", "c", "a", "d", "e"] + [f"x{k}" for k in range(5)]):
        reviewed.setdefault(u, set()).add(i)
    for r in neg.iter_rows(named=True):
        assert r["item_id"] not in reviewed[r["user_id"]]
    assert df["time"].is_sorted()
    again = amazon.read_raw(d, seed=3).frame
    assert again.equals(df)  # seeded


def test_amazon_meta_json_lines_and_bars(tmp_path):
    d = tmp_path
    write_reviews(d / "reviews_Electronics_5.json.gz", [("u", "a", 1), ("u", "b", 2), ("v", "c", 3)])
    (d / "meta_Electronics.json").write_text(
        json.dumps({"asin": "a", "categories": [["E", "A"]]}) + "\n" + json.dumps({"asin": "b", "category": ["E", "B"]}) + "\n")
    df = amazon.read_raw(d).frame
    assert df.filter(pl.col("label") == 1)["cate_id"].to_list() == ["B"]
    b = tmp_path / "bars"
    write_csv(b / "train.csv", "label,user_id,item_id,cate_id,item_history,cate_history",
              ["1,1,5,2,3^4,2^2", "0,1,6.0,2,3^4,2^2"])
    write_csv(b / "test.csv", "label,user_id,item_id,cate_id,item_history,cate_history", ["1,2,7,3,,"])
    res = read("amazon", "bars", b)
    assert res.frame["item_id"].to_list() == [5, 6, 7]
    assert res.frame["item_history"].to_list() == [[3, 4], [3, 4], []]
    assert res.time_kind == "file_order"


KUAI_HEADER = "timestamp,user_id,item_id,is_click,is_like,is_follow,pos_items,neg_items"


def kuai_files(d: Path, rows=None, emb=None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    rows = rows or ["760000000300,1,10,1,0,0,11^12,13", "760000000100,2,11,0,0,0,,10^12",
                    "760000000200,1,12,1,1,1,10,"]
    write_csv(d / "train.csv", KUAI_HEADER, rows)
    with h5py.File(d / "item_visual_emb_dim64.h5", "w") as f:
        f["key"] = np.array([b"10", b"11", b"12", b"99"])
        f["value"] = emb if emb is not None else np.ones((4, 64), dtype=np.float32)
    return d


def test_kuaivideo(tmp_path):
    res = read("kuaivideo", "bars", kuai_files(tmp_path))
    df = res.frame
    assert res.time_kind == "relative" and res.labels == ["is_click", "is_like", "is_follow"]
    assert df["time"].to_list() == [760000000100, 760000000200, 760000000300]  # sorted by timestamp
    assert df["pos_items"].to_list() == [[], [10], [11, 12]]
    assert df["neg_items"].to_list() == [[10, 12], [], [13]]
    spec = {f["name"]: f for f in res.features}
    assert spec["item_emb"]["pretrained_emb"].endswith("item_visual_emb_dim64.h5")
    assert spec["item_emb"]["freeze_emb"] is True and spec["item_emb"]["pretrain_dim"] == 64


# --------------------------------------------------------------------------- bad input
def _raises(fn, *, path_part: str, column: str | None = None, words: tuple[str, ...] = ()):
    with pytest.raises(DataFormatError) as ei:
        fn()
    err = ei.value
    assert path_part in str(err), str(err)
    if column is not None:
        assert err.column == column and f"'{column}'" in str(err), str(err)
    for w in words:
        assert w in str(err), str(err)
    return err


def test_missing_file(tmp_path):
    taobao_raw(tmp_path)
    (tmp_path / "ad_feature.csv").unlink()
    _raises(lambda: taobaoad.read_raw(tmp_path), path_part="ad_feature.csv", words=("not found",))


def test_misspelled_column_suggests_closest(tmp_path):
    taobao_raw(tmp_path, sample_header="user,time_stamp,adgroup_idd,pid,noclk,clk")
    _raises(lambda: taobaoad.read_raw(tmp_path), path_part="raw_sample.csv", column="adgroup_id",
            words=("missing column", "adgroup_idd"))


def test_wrong_type_names_column_and_row(tmp_path):
    taobao_raw(tmp_path, samples=[f"7,{DAY0},1,p,1,0", f"7,{DAY0},abc,p,1,0"])
    err = _raises(lambda: taobaoad.read_raw(tmp_path), path_part="raw_sample.csv", column="adgroup_id",
                  words=("abc", "integer"))
    assert err.row == 2


def test_label_not_binary(tmp_path):
    taobao_raw(tmp_path, samples=[f"7,{DAY0},1,p,1,0", f"7,{DAY0},1,p,0,2"])
    err = _raises(lambda: taobaoad.read_raw(tmp_path), path_part="raw_sample.csv", column="clk", words=("0 or 1",))
    assert err.row == 2


@pytest.mark.parametrize("col,cell", [("cate_his", '"1^2,3"'), ("cate_his", "1|2"), ("btag_his", "1|2")])
def test_sequence_with_bad_separator(tmp_path, col, cell):
    row = bars_taobao_row(cate_his=cell) if col == "cate_his" else bars_taobao_row(btag_his=cell)
    write_csv(tmp_path / "train.csv", bars_taobao_header(), [bars_taobao_row(), row])
    err = _raises(lambda: read("taobaoad", "bars", tmp_path), path_part="train.csv", column=col, words=("'^'",))
    assert err.row == 2


def test_unquoted_comma_in_sequence_shifts_fields(tmp_path):
    write_csv(tmp_path / "train.csv", bars_taobao_header(), [bars_taobao_row(), bars_taobao_row(cate_his="1^2,3")])
    err = _raises(lambda: read("taobaoad", "bars", tmp_path), path_part="train.csv",
                  words=("22 fields", "header has 21", "'^'-joined"))
    assert err.row == 2


def test_empty_and_header_only_files(tmp_path):
    taobao_raw(tmp_path)
    (tmp_path / "raw_sample.csv").write_text("")
    _raises(lambda: taobaoad.read_raw(tmp_path), path_part="raw_sample.csv", words=("empty",))
    taobao_raw(tmp_path, samples=[])
    _raises(lambda: taobaoad.read_raw(tmp_path), path_part="raw_sample.csv", words=("no data rows",))


def test_truncated_gz(tmp_path):
    d = amazon_files(tmp_path)
    p = d / "reviews_Electronics_5.json.gz"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    _raises(lambda: amazon.read_raw(d), path_part="reviews_Electronics_5.json.gz", words=("truncated",))


def test_bad_review_and_meta_lines(tmp_path):
    d = amazon_files(tmp_path)
    p = d / "reviews_Electronics_5.json.gz"
    with gzip.open(p, "at") as f:
        f.write(json.dumps({"reviewerID": "u9", "asin": "a", "unixReviewTime": "yesterday"}) + "\n")
    err = _raises(lambda: amazon.read_raw(d), path_part="reviews_Electronics_5.json.gz", column="unixReviewTime")
    assert err.row == 12
    d2 = amazon_files(tmp_path / "b")
    with gzip.open(d2 / "meta_Electronics.json.gz", "at") as f:
        f.write("{'asin': 'z', 'categories': [[\n")
    _raises(lambda: amazon.read_raw(d2), path_part="meta_Electronics.json.gz", words=("neither JSON nor",))


def test_kuaivideo_bad_embedding_and_labels(tmp_path):
    _raises(lambda: read("kuaivideo", "bars", kuai_files(tmp_path / "a", emb=np.ones((3, 64), np.float32))),
            path_part="item_visual_emb_dim64.h5", column="value", words=("shape",))
    rows = ["1,1,10,1,0,0,11,13", "2,2,11,0,0,yes,,"]
    err = _raises(lambda: read("kuaivideo", "bars", kuai_files(tmp_path / "b", rows=rows)), path_part="train.csv",
                  column="is_follow", words=("0 or 1",))
    assert err.row == 2
