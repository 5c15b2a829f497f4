"""End to end: ``exfm prep`` on raw files written here -> 8 HDF5 days + fuxictr feature map."""
from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from fuxictr.features import FeatureMap
from fuxictr.pytorch.layers import FeatureEmbeddingDict

from data_prep.errors import DataFormatError
from data_prep.prepare import prepare
from exfm_plugin.cli import main
from exfm_plugin.data.dayfile import read_day_attrs, read_day_columns

CST = timezone(timedelta(hours=8))
DAY1 = date(2017, 5, 6)
T0 = int(datetime(2017, 5, 6, tzinfo=CST).timestamp())
BTAGS = ["pv", "cart", "fav", "buy"]


def beijing_day(t: int) -> int:
    return (datetime.fromtimestamp(t, CST).date() - DAY1).days + 1


def write_taobao(d: Path, seed: int = 0, n: int = 480) -> dict:
    """Raw Alibaba files (with real header quirks) and the rows as Python data for expectations."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    users = list(range(1, 31))
    level = {u: (None if u % 7 == 0 else 1 + u % 4) for u in users}
    ads = {a: dict(cate=1 + a % 4, brand=(None if a % 5 == 0 else 100 + a % 3), price=round(1 + a * 3.7, 2))
           for a in range(1, 13)}
    ads[12]["cate"] = 77  # an ad of a rare category: fewer than 10 rows -> OOV
    imps = []
    for _ in range(n):
        a = int(rng.integers(1, 12)) if rng.random() < 0.98 else 12
        imps.append((int(rng.choice(users)), T0 + int(rng.integers(0, 8 * 86400)), a, int(rng.random() < 0.2)))
    # the two sides of a day boundary
    imps += [(1, T0 + 86400 - 1, 1, 0), (2, T0 + 86400, 2, 1)]
    with open(d / "raw_sample.csv", "w") as f:
        f.write("user,time_stamp,adgroup_id,pid,nonclk,clk\n")
        for u, t, a, c in imps:
            f.write(f"{u},{t},{a}.0,430548_1007,{1 - c},{c}\n")
    with open(d / "ad_feature.csv", "w") as f:
        f.write("adgroup_id,cate_id,campaign_id,customer,brand,price\n")
        for a, v in ads.items():
            f.write(f"{a},{v['cate']},{a % 3},{a % 2},{'NULL' if v['brand'] is None else v['brand']},{v['price']}\n")
    with open(d / "user_profile.csv", "w") as f:
        f.write("userid,cms_segid,cms_group_id,final_gender_code,age_level,pvalue_level,shopping_level,"
                "occupation,new_user_class_level \n")
        for u in users:
            f.write(f"{u},0,{u % 3},{1 + u % 2},{u % 5},{'' if u % 4 == 0 else 1},2,0,"
                    f"{'' if level[u] is None else level[u]}\n")
    behs = []
    for _ in range(3000):
        behs.append((int(rng.choice(users)), T0 - 3 * 86400 + int(rng.integers(0, 11 * 86400)),
                     BTAGS[int(rng.integers(0, 4))], int(rng.integers(1, 6)), int(rng.integers(100, 103))))
    for u, t, _, _ in imps[:40]:  # behaviours at the impression's own second: must not leak
        behs.append((u, t, "buy", 99, 999))
    with open(d / "behavior_log.csv", "w") as f:
        f.write("user,time_stamp,btag,cate,brand\n")
        for u, t, b, c, br in behs:
            f.write(f"{u},{t},{b},{c},{br}\n")
    return {"imps": imps, "ads": ads, "behs": behs, "level": level}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def prepped(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep")
    data = write_taobao(root / "raw")
    return root, data


def test_exfm_prep_end_to_end(prepped, capsys):
    root, data = prepped
    rc = main(["prep", "--dataset", "taobaoad", "--source", "raw", "--input", str(root / "raw"),
               "--out", str(root / "out")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "taobaoad_raw" in printed and "rate clk" in printed and "calendar_beijing" in printed
    out = root / "out" / "taobaoad_raw"
    files = sorted(out.glob("day_*.h5"))
    assert [f.name for f in files] == [f"day_{d}.h5" for d in range(1, 9)]
    expected_days = Counter(beijing_day(t) for _, t, _, _ in data["imps"])
    ids, total = [], 0
    for d in range(1, 9):
        cols = read_day_columns(out / f"day_{d}.h5")
        attrs = read_day_attrs(out / f"day_{d}.h5")
        assert attrs["day"] == d and attrs["num_rows"] == expected_days[d]
        assert all(beijing_day(int(t)) == d for t in cols["time"])
        assert cols["example_id"].dtype.kind == "i" and set(cols) >= {"domain", "clk", "cate_his", "price"}
        assert np.all(np.diff(cols["example_id"]) > 0)
        ids.append(cols["example_id"].astype(np.int64))
        total += len(cols["clk"])
    all_ids = np.concatenate(ids)
    assert total == len(data["imps"]) and len(np.unique(all_ids)) == total
    assert np.all(np.diff(all_ids) > 0)  # increasing in time order across days
    summary = json.loads((out / "prep_summary.json").read_text())
    assert summary["rows_per_day"] == [expected_days[d] for d in range(1, 9)]
    clicks = Counter(beijing_day(t) for _, t, _, c in data["imps"] if c)
    assert summary["label_rate_per_day"]["clk"][0] == pytest.approx(clicks[1] / expected_days[1])
    dom = json.loads((out / "domains.json").read_text())
    assert sorted(set(dom["mapping"].values())) == [0, 1, 2]
    assert not list((root / "out").glob(".*"))  # no temporary directories left


def _decode(vocab: dict[str, int]) -> dict[int, str]:
    return {i: t for t, i in vocab.items()}


def test_vocabulary_round_trip_through_fuxictr(prepped):
    root, data = prepped
    out = root / "out" / "taobaoad_raw"
    if not out.exists():
        prepare("taobaoad", "raw", str(root / "raw"), str(root / "out"))
    fmap = FeatureMap("taobaoad_raw", str(out))
    fmap.load(str(out / "feature_map.json"), {"embedding_dim": 4})
    vocab = json.loads((out / "feature_vocab.json").read_text())
    feats = fmap.features
    assert feats["cate_his"]["share_embedding"] == "cate_id" and feats["btag_his"]["share_embedding"] == "btag"
    assert feats["cate_his"]["vocab_size"] == feats["cate_id"]["vocab_size"] == max(vocab["cate_id"].values()) + 1
    assert vocab["cate_his"] == vocab["cate_id"] and feats["cate_his"]["max_len"] == 50
    for name in ("adgroup_id", "userid", "pid", "brand"):
        v = vocab[name]
        assert v["__PAD__"] == 0 and v["__OOV__"] == len(v) - 1 == feats[name]["vocab_size"] - 1
    assert feats["price"]["type"] == "numeric" and feats["group_id"]["type"] == "meta"
    # independent expectation: vocabulary = tokens seen >= 10 times in days 1..4 (min_categr_count)
    fit = [i for i in data["imps"] if beijing_day(i[1]) <= 4]
    ad_counts = Counter(a for _, _, a, _ in fit)
    cate_counts = Counter(data["ads"][a]["cate"] for _, _, a, _ in fit)
    inv_ad, inv_cate = _decode(vocab["adgroup_id"]), _decode(vocab["cate_id"])
    assert "12" not in vocab["adgroup_id"] and "77" not in vocab["cate_id"]  # rare: OOV
    imps_by_time = {}
    for u, t, a, c in data["imps"]:
        imps_by_time.setdefault((u, t), []).append(a)
    beh_by_user = {}
    for u, t, b, c, br in sorted(data["behs"], key=lambda x: x[1]):
        beh_by_user.setdefault(u, []).append((t, c))
    injected = {(u, t, c) for u, t, _, c, _ in data["behs"] if c == 99}
    checked = leaks = 0
    for d in range(1, 9):
        cols = read_day_columns(out / f"day_{d}.h5")
        users = np.array([int(_decode(vocab["group_id"])[i]) for i in cols["group_id"]])
        for row in range(len(cols["time"])):
            a_tok = inv_ad[int(cols["adgroup_id"][row])]
            u, t = int(users[row]), int(cols["time"][row])
            ads_here = imps_by_time[(u, t)]
            if a_tok == "__OOV__":
                assert any(ad_counts[a] < 10 for a in ads_here)
            else:
                assert int(a_tok) in ads_here and ad_counts[int(a_tok)] >= 10
            # behaviour history: strictly before t, most recent last, last 50, decoded via the vocab
            hist = [c for bt, c in beh_by_user.get(u, []) if bt < t][-50:]
            got = [inv_cate[int(i)] for i in cols["cate_his"][row] if i != 0]
            want = [str(c) if str(c) in vocab["cate_id"] else "__OOV__" for c in hist]
            assert got == want
            if (u, t, 99) in injected:  # a behaviour logged at the impression's own second
                assert len(got) == min(len([1 for bt, _ in beh_by_user[u] if bt < t]), 50)
                leaks += 1
            checked += 1
    assert checked == len(data["imps"]) and leaks >= 30
    assert cate_counts[77] < 10
    # fuxictr's embedding layer accepts the encoded day
    emb = FeatureEmbeddingDict(fmap, 4)
    cols = read_day_columns(out / "day_6.h5")
    X = {k: torch.from_numpy(v.astype(np.float32 if k == "price" else np.int64)) for k, v in cols.items()
         if k in fmap.features and fmap.features[k]["type"] != "meta"}
    res = emb(X)
    assert res["cate_his"].shape == (len(cols["time"]), 50, 4)


def test_failed_run_keeps_the_good_output(prepped, capsys):
    root, _ = prepped
    out = root / "out"
    if not (out / "taobaoad_raw").exists():
        prepare("taobaoad", "raw", str(root / "raw"), str(out))
    before = {p.name: sha(p) for p in (out / "taobaoad_raw").iterdir()}
    bad = root / "bad"
    shutil.copytree(root / "raw", bad, dirs_exist_ok=True)
    lines = (bad / "raw_sample.csv").read_text().splitlines()
    lines[5] = lines[5].rsplit(",", 2)[0] + ",0,2"
    (bad / "raw_sample.csv").write_text("\n".join(lines) + "\n")
    rc = main(["prep", "--dataset", "taobaoad", "--source", "raw", "--input", str(bad), "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "raw_sample.csv" in err and "'clk'" in err and "data row 5" in err
    with pytest.raises(DataFormatError):
        prepare("taobaoad", "raw", str(bad), str(out))
    after = {p.name: sha(p) for p in (out / "taobaoad_raw").iterdir()}
    assert after == before
    assert not list(out.glob(".*"))


def test_kuaivideo_prep_pretrained_embedding(tmp_path):
    d = tmp_path / "kuai"
    d.mkdir()
    rng = np.random.default_rng(1)
    with open(d / "train.csv", "w") as f:
        f.write("timestamp,user_id,item_id,is_click,is_like,is_follow,pos_items,neg_items\n")
        for i in range(160):
            pos = "^".join(str(x) for x in rng.integers(1, 9, rng.integers(0, 4)))
            f.write(f"{760000000000 + i * 7},{i % 5},{1 + i % 8},{int(rng.random() < .3)},{int(i % 40 == 0)},0,{pos},3\n")
    with h5py.File(d / "item_visual_emb_dim64.h5", "w") as f:
        f["key"] = np.arange(1, 12)  # items 9..11 appear only in the embedding file
        f["value"] = rng.normal(size=(11, 64)).astype(np.float32)
    s = prepare("kuaivideo", "bars", str(d), str(tmp_path / "out"))
    assert s.rows_per_day == [20] * 8 and s.tasks == ["is_click", "is_like", "is_follow"]
    out = Path(s.data_dir)
    fmap = FeatureMap("kuaivideo_bars", str(out))
    fmap.load(str(out / "feature_map.json"), {"embedding_dim": 8})
    spec = fmap.features["item_emb"]
    assert spec["pretrained_emb"] == "pretrained_item_emb.h5" and (out / spec["pretrained_emb"]).exists()
    assert spec["freeze_emb"] is True and spec["pretrain_dim"] == 64
    vocab = json.loads((out / "feature_vocab.json").read_text())
    assert {"9", "10", "11"} <= set(vocab["item_emb"]) and vocab["item_emb"]["9"] > spec["oov_idx"]
    assert fmap.features["pos_items_emb"]["share_embedding"] == "item_emb"
    emb = FeatureEmbeddingDict(fmap, 8)
    cols = read_day_columns(out / "day_8.h5")
    X = {k: torch.from_numpy(v.astype(np.int64)) for k, v in cols.items()
         if k in fmap.features and fmap.features[k]["type"] != "meta"}
    res = emb(X)
    with h5py.File(d / "item_visual_emb_dim64.h5") as f:
        want = f["value"][int(_decode(vocab["item_emb"])[int(cols["item_emb"][0])]) - 1]
    layer = emb.embedding_layers["item_emb"]
    got = layer.pretrain_embedding.weight[int(cols["item_emb"][0])].detach().numpy()
    assert np.allclose(got, want, atol=1e-6) and not layer.pretrain_embedding.weight.requires_grad
    assert res["pos_items_emb"].shape[1] == 100


def test_amazon_raw_prep_equal_count_days(tmp_path):
    import gzip

    d = tmp_path / "amz"
    d.mkdir()
    rng = np.random.default_rng(2)
    with gzip.open(d / "reviews_Electronics_5.json.gz", "wt") as f:
        for u in range(20):
            for k in range(5):
                f.write(json.dumps({"reviewerID": f"U{u}", "asin": f"I{rng.integers(0, 30)}",
                                    "unixReviewTime": 1300000000 + int(rng.integers(0, 10 ** 8))}) + "\n")
    with open(d / "meta_Electronics.json", "w") as f:
        for i in range(30):
            f.write(repr({"asin": f"I{i}", "categories": [["Electronics", f"C{i % 4}"]]}) + "\n")
    s = prepare("amazon", "raw", str(d), str(tmp_path / "out"), seed=1)
    assert sum(s.rows_per_day) == 160 and s.rows_per_day == [20] * 8
    assert s.split_method == "equal_count_time"
    cols = read_day_columns(Path(s.data_dir) / "day_1.h5")
    assert cols["item_history"].shape[1] == 100 and set(np.unique(cols["label"])) <= {0, 1}


def test_synthetic_taobaoad_prep(tmp_path):
    synthetic = pytest.importorskip("data_prep.synthetic")
    if not hasattr(synthetic, "generate_raw"):
        pytest.skip("data_prep.synthetic.generate_raw not built yet")
    s = prepare("taobaoad", "synthetic", None, str(tmp_path / "out"), size="tiny", seed=0)
    assert len(s.rows_per_day) == 8 and sum(s.rows_per_day) == s.total_rows > 0
    assert all(Path(s.data_dir, f"day_{d}.h5").exists() for d in range(1, 9))
