"""The synthetic datasets: exact public formats, determinism, drift, and a learnable hidden world."""
from __future__ import annotations

import ast
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import h5py
import numpy as np
import polars as pl
import pytest

from data_prep.synthetic import generate_bars, generate_raw, make_world

BEIJING = timezone(timedelta(hours=8))
DAYS = [f"2017-05-{d:02d}" for d in range(6, 14)]


def first_line(path: str) -> str:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        return f.readline()


def file_hashes(paths: dict[str, str]) -> dict[str, str]:
    out = {}
    for name, p in paths.items():
        with open(p, "rb") as f:
            out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


def auc(y: np.ndarray, s: np.ndarray) -> float:
    """AUC by the rank formula, ties given their average rank."""
    _, inv, cnt = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(cnt) - (cnt - 1) / 2.0)[inv]
    n1 = y.sum()
    n0 = len(y) - n1
    return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def beijing_date(ts: np.ndarray) -> np.ndarray:
    return np.array([datetime.fromtimestamp(int(t), BEIJING).strftime("%Y-%m-%d") for t in ts])


@pytest.fixture(scope="module")
def taobao_raw(tmp_path_factory) -> dict[str, str]:
    return generate_raw("taobaoad", str(tmp_path_factory.mktemp("tb")), size="tiny", seed=0, with_truth=True)


# ---------------------------------------------------------------- TaobaoAd raw files
def test_taobao_raw_headers_exact(taobao_raw):
    assert first_line(taobao_raw["raw_sample"]) == "user,time_stamp,adgroup_id,pid,nonclk,clk\n"
    assert first_line(taobao_raw["ad_feature"]) == "adgroup_id,cate_id,campaign_id,customer,brand,price\n"
    assert first_line(taobao_raw["user_profile"]) == (
        "userid,cms_segid,cms_group_id,final_gender_code,age_level,pvalue_level,shopping_level,"
        "occupation,new_user_class_level \n")          # the real trailing space
    assert first_line(taobao_raw["behavior_log"]) == "user,time_stamp,btag,cate,brand\n"


def test_taobao_raw_values(taobao_raw):
    ads = pl.read_csv(taobao_raw["ad_feature"], infer_schema=False)
    assert (ads["brand"] == "NULL").sum() > 0
    assert ads["brand"].filter(ads["brand"] != "NULL").str.contains(r"^\d+$").all()
    assert ads["adgroup_id"].n_unique() == len(ads)
    users = pl.read_csv(taobao_raw["user_profile"], infer_schema=False)
    for col in ("pvalue_level", "new_user_class_level "):
        assert users[col].null_count() > 0, col
        assert set(users[col].drop_nulls().unique()) <= {"1", "2", "3", "4"}
    # the three domains of Table 4 (blank / 2 / 1,3,4) are of similar size
    lv = users["new_user_class_level "]
    shares = np.array([lv.is_null().mean(), (lv == "2").mean(), lv.is_in(["1", "3", "4"]).mean()])
    assert shares.min() > 0.2, shares
    samples = pl.read_csv(taobao_raw["raw_sample"])
    assert (samples["nonclk"] + samples["clk"] == 1).all()
    assert set(samples["pid"].unique()) == {"430548_1007", "430539_1007"}
    assert set(samples["adgroup_id"].unique()) <= set(ads["adgroup_id"].cast(pl.Int64))
    behav = pl.read_csv(taobao_raw["behavior_log"])
    assert set(behav["btag"].unique()) == {"pv", "cart", "fav", "buy"}
    assert (behav["btag"] == "pv").mean() > 0.8


def test_taobao_days_and_behaviour_span(taobao_raw):
    ts = pl.read_csv(taobao_raw["raw_sample"])["time_stamp"].to_numpy()
    dates, counts = np.unique(beijing_date(ts), return_counts=True)
    assert list(dates) == DAYS and counts.min() > 0.8 * len(ts) / 8
    bts = pl.read_csv(taobao_raw["behavior_log"])["time_stamp"].to_numpy()
    start = datetime(2017, 5, 6, tzinfo=BEIJING).timestamp()
    assert (bts < start).sum() > 0.5 * len(bts)          # history before the first impression day
    assert (bts >= start).sum() > 0                      # and during the 8 days
    assert bts.min() < ts.min()


def test_taobao_ctr_and_truth_sidecar(taobao_raw):
    samples = pl.read_csv(taobao_raw["raw_sample"])
    ctr = samples["clk"].mean()
    assert 0.04 < ctr < 0.065, ctr
    truth = pl.read_parquet(taobao_raw["ground_truth"])
    assert len(truth) == len(samples) and truth["row"].to_list() == list(range(len(samples)))
    assert abs(truth["true_prob"].mean() - 0.051) < 0.002
    # the world recomputes the sidecar from the file's own columns
    world = make_world("taobaoad", "tiny", seed=0)
    np.testing.assert_allclose(world.true_prob(samples), truth["true_prob"].to_numpy(), rtol=1e-9)


def test_taobao_sequence_signal_in_truth(taobao_raw):
    """The true click prob is higher when the ad's category is in the user's last 3 days of behaviour."""
    imps = (pl.read_csv(taobao_raw["raw_sample"]).with_row_index("row")
            .join(pl.read_csv(taobao_raw["ad_feature"], infer_schema=False)
                  .select(pl.col("adgroup_id").cast(pl.Int64), pl.col("cate_id").cast(pl.Int64)),
                  on="adgroup_id"))
    behav = pl.read_csv(taobao_raw["behavior_log"]).select("user", pl.col("cate").alias("cate_id"),
                                                           pl.col("time_stamp").alias("bts"))
    hits = (imps.join(behav, on=["user", "cate_id"])
            .filter((pl.col("bts") < pl.col("time_stamp")) & (pl.col("bts") >= pl.col("time_stamp") - 3 * 86400))
            .select("row").unique())
    truth = pl.read_parquet(taobao_raw["ground_truth"]).with_columns(
        pl.col("row").is_in(hits["row"].implode()).alias("in_hist"))
    p_in = truth.filter(pl.col("in_hist"))["true_prob"].mean()
    p_out = truth.filter(~pl.col("in_hist"))["true_prob"].mean()
    assert truth["in_hist"].mean() > 0.2
    assert p_in > 1.5 * p_out, (p_in, p_out)


# ---------------------------------------------------------------- determinism and drift
@pytest.mark.parametrize("dataset", ["taobaoad", "amazon", "kuaivideo"])
def test_same_seed_same_bytes(tmp_path, dataset):
    a = file_hashes(generate_raw(dataset, str(tmp_path / "a"), size="tiny", seed=3))
    b = file_hashes(generate_raw(dataset, str(tmp_path / "b"), size="tiny", seed=3))
    c = file_hashes(generate_raw(dataset, str(tmp_path / "c"), size="tiny", seed=4))
    assert a == b
    assert all(a[k] != c[k] for k in a)
    if dataset != "kuaivideo":
        d = file_hashes(generate_bars(dataset, str(tmp_path / "d"), size="tiny", seed=3))
        e = file_hashes(generate_bars(dataset, str(tmp_path / "e"), size="tiny", seed=3))
        assert d == e


def test_drift_changes_days():
    """drift=0 keeps the ad set and the click model fixed over the 8 days; drift>0 does not."""
    stats = {}
    for drift in (0.0, 1.0):
        world = make_world("taobaoad", 40_000, seed=1, drift=drift)
        im = world.simulate()["imps"]
        early = set(im["a"][im["day"] <= 1])
        late = im["a"][im["day"] == 7]
        new_share = np.mean([a not in early for a in late])
        # same (user, ad, pid) rows, scored on day 1 and on day 8
        rows = pl.DataFrame({"user": world.user_ext[im["u"][:3000]], "adgroup_id": world.ad_ext[im["a"][:3000]],
                             "pid": np.where(im["pid"][:3000] == 1, "430539_1007", "430548_1007")})
        day1 = world.true_prob(rows.with_columns(time_stamp=pl.lit(1_494_000_000 + 3600)))
        day8 = world.true_prob(rows.with_columns(time_stamp=pl.lit(1_494_000_000 + 7 * 86400 + 3600)))
        logit = lambda p: np.log(p / (1 - p))  # noqa: E731
        stats[drift] = (new_share, np.mean(np.abs(logit(day8) - logit(day1))))
    assert stats[1.0][0] > stats[0.0][0] + 0.1, stats
    assert stats[1.0][1] > 1.5 * stats[0.0][1], stats


# ---------------------------------------------------------------- learnability
def _one_hot_lr(X: np.ndarray, y: np.ndarray, dim: int, steps: int = 300, lr: float = 0.5) -> np.ndarray:
    """Logistic regression on one-hot ids by full-batch gradient steps scaled per feature count."""
    w = np.zeros(dim + 1)
    w[dim] = np.log(y.mean() / (1 - y.mean()))
    cnt = np.bincount(X.ravel(), minlength=dim) + 1.0
    flat = X.ravel()
    for _ in range(steps):
        g = 1 / (1 + np.exp(-(w[dim] + w[X].sum(1)))) - y
        w[:dim] -= lr * (np.bincount(flat, weights=np.repeat(g, X.shape[1]), minlength=dim) / cnt + 1e-4 * w[:dim])
        w[dim] -= lr * g.mean()
    return w


def test_four_days_beat_one_day():
    """A one-hot LR fit on days 1-4 beats the same fit on day 5 when tested on day 6."""
    world = make_world("taobaoad", "small", seed=0, drift=1.0)
    im = world.simulate()["imps"]
    u, a = im["u"], im["a"]
    cols = [u, a, world.ad_cate[a], world.ad_brand_obs[a] + 1, world.age[u], world.gender[u], world.pvalue[u],
            world.level[u], im["pid"], world.ad_price_bucket[a], world.ad_customer[a]]
    offs = np.cumsum([0] + [int(c.max()) + 1 for c in cols])
    X = np.stack([c + o for c, o in zip(cols, offs)], 1)
    y = im["clk"].astype(np.float64)
    day = im["day"]
    test = day == 5

    def score(train: np.ndarray) -> float:
        w = _one_hot_lr(X[train], y[train], int(offs[-1]))
        return auc(y[test], w[-1] + w[X[test]].sum(1))

    four, one = score(day <= 3), score(day == 4)
    oracle = auc(y[test], im["p"][test])
    assert four > one + 0.01, (four, one)
    assert oracle > four + 0.05, (oracle, four)      # room left for crosses and sequences


# ---------------------------------------------------------------- BARS TaobaoAd
def test_taobao_bars(tmp_path):
    paths = generate_bars("taobaoad", str(tmp_path), size="tiny", seed=0, with_truth=True)
    cols = ("clk,btag_his,cate_his,brand_his,userid,cms_segid,cms_group_id,final_gender_code,age_level,"
            "pvalue_level,shopping_level,occupation,new_user_class_level,adgroup_id,cate_id,campaign_id,"
            "customer,brand,price,pid,btag\n")
    assert first_line(paths["train"]) == cols and first_line(paths["test"]) == cols
    train = pl.read_csv(paths["train"], infer_schema=False)
    test = pl.read_csv(paths["test"], infer_schema=False)
    assert 5 * len(test) < len(train) < 9 * len(test)
    for seq in ("btag_his", "cate_his", "brand_his"):
        n_tok = train[seq].drop_nulls().str.split("^").list.len()
        assert n_tok.max() == 50 and n_tok.min() >= 1
    assert set(train["btag_his"].drop_nulls().str.split("^").explode().unique()) <= {"1", "2", "3", "4"}
    truth = pl.read_parquet(paths["ground_truth"])
    assert (truth.filter(pl.col("split") == "test")["day"] == 8).all()
    assert len(truth) == len(train) + len(test)


# ---------------------------------------------------------------- Amazon
def test_amazon_raw(tmp_path):
    paths = generate_raw("amazon", str(tmp_path), size="tiny", seed=0)
    with gzip.open(paths["reviews"], "rt") as f:
        reviews = [json.loads(line) for line in f]
    keys = ["reviewerID", "asin", "reviewerName", "helpful", "reviewText", "overall", "summary",
            "unixReviewTime", "reviewTime"]
    assert all(list(r) == keys for r in reviews[:50])
    r0 = reviews[0]
    assert re.fullmatch(r"\d{2} \d{1,2}, \d{4}", r0["reviewTime"])
    assert datetime.fromtimestamp(r0["unixReviewTime"], timezone.utc).strftime("%m %-d, %Y") == r0["reviewTime"]
    assert isinstance(r0["overall"], float) and len(r0["helpful"]) == 2
    df = pl.DataFrame({"u": [r["reviewerID"] for r in reviews], "i": [r["asin"] for r in reviews]})
    assert df["u"].value_counts()["count"].min() >= 5 and df["i"].value_counts()["count"].min() >= 5  # 5-core
    assert not df.is_duplicated().any()
    line = first_line(paths["meta"])
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)
    meta = ast.literal_eval(line)
    assert isinstance(meta["asin"], str) and meta["categories"][0][0] == "Electronics"
    with gzip.open(paths["meta"], "rt") as f:
        asins = {ast.literal_eval(x)["asin"] for x in f}
    assert set(df["i"]) <= asins


def test_amazon_true_prob_from_ids():
    """true_prob on (reviewerID, asin, time, earlier asins) equals the world's own sequence truth."""
    world = make_world("amazon", "tiny", seed=0)
    sim = world.simulate()
    user, item, t = sim["user"][:400], sim["item"][:400], sim["t"][:400]
    hist = [[str(world.asin[j]) for j in item[:k][user[:k] == user[k]]] for k in range(len(user))]
    frame = pl.DataFrame({"reviewerID": world.reviewer[user], "asin": world.asin[item], "unixReviewTime": t,
                          "hist_asins": pl.Series(hist, dtype=pl.List(pl.String))})
    expected = world.pair_prob(world._sequence_q(sim))[:400]
    np.testing.assert_allclose(world.true_prob(frame), expected, rtol=1e-9)
    assert 0.0 < expected.min() and expected.max() < 1.0


def test_amazon_bars(tmp_path):
    paths = generate_bars("amazon", str(tmp_path), size="tiny", seed=0, with_truth=True)
    assert first_line(paths["train"]) == "label,user_id,item_id,cate_id,item_history,cate_history\n"
    train = pl.read_csv(paths["train"], infer_schema=False)
    test = pl.read_csv(paths["test"], infer_schema=False)
    assert train["label"].cast(pl.Int64).mean() == 0.5 and test["label"].cast(pl.Int64).mean() == 0.5
    assert test["user_id"].n_unique() * 2 == len(test)              # one last review per user
    assert train["item_history"].str.split("^").list.len().max() <= 100
    assert 0.5 * 10_000 < len(train) + len(test) < 1.3 * 10_000
    truth = pl.read_parquet(paths["ground_truth"]).filter(pl.col("split") == "train")
    assert auc(train["label"].cast(pl.Int64).to_numpy(), truth["true_prob"].to_numpy()) > 0.75


# ---------------------------------------------------------------- KuaiVideo
def test_kuaivideo(tmp_path):
    paths = generate_raw("kuaivideo", str(tmp_path), size="tiny", seed=0, with_truth=True)
    header = "timestamp,user_id,item_id,is_click,is_like,is_follow,pos_items,neg_items\n"
    assert first_line(paths["train"]) == header and first_line(paths["test"]) == header
    train, test = pl.read_csv(paths["train"]), pl.read_csv(paths["test"])
    assert 3.5 < len(train) / len(test) < 4.5
    ts = pl.concat([train["timestamp"], test["timestamp"]]).to_numpy()
    assert (np.diff(ts) >= 0).all() and 7e11 < ts.min() < 8e11
    both = pl.concat([train, test])
    assert 0.01 <= both["is_like"].mean() <= 0.03 and 0.004 <= both["is_follow"].mean() <= 0.012
    assert ((both["is_like"] <= both["is_click"]) & (both["is_follow"] <= both["is_click"])).all()
    for seq in ("pos_items", "neg_items"):
        assert both[seq].cast(pl.String).drop_nulls().str.split("^").list.len().max() == 100
    with h5py.File(paths["item_emb"], "r") as f:
        keys, values = f["key"][:], f["value"][:]
    assert keys.ndim == 1 and values.shape == (len(keys), 64) and values.dtype == np.float32
    assert set(both["item_id"].unique()) <= set(keys.tolist())
    world = make_world("kuaivideo", "tiny", seed=0)
    truth = pl.read_parquet(paths["ground_truth"])
    np.testing.assert_allclose(world.true_prob(both)["is_like"], truth["p_like"].to_numpy(), rtol=1e-9)
    # the three tasks are correlated but not the same
    c = np.corrcoef(truth["p_click"], truth["p_follow"])[0, 1]
    assert 0.05 < c < 0.9, c


# ---------------------------------------------------------------- API edges
def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown synthetic dataset"):
        generate_raw("criteo", str(tmp_path))
    with pytest.raises(ValueError, match="unknown size"):
        make_world("taobaoad", "huge")
    with pytest.raises(ValueError, match="drift"):
        make_world("taobaoad", "tiny", drift=-1)


def test_cli(tmp_path):
    out = tmp_path / "cli"
    subprocess.run([sys.executable, "-m", "data_prep.synthetic", "taobaoad", str(out), "--size", "3000"],
                   check=True, capture_output=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert sorted(os.listdir(out)) == ["ad_feature.csv", "behavior_log.csv", "raw_sample.csv", "user_profile.csv"]
