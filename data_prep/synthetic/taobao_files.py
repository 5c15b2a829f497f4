"""The files of a synthetic TaobaoAd world: the four raw Tianchi files and the BARS TaobaoAd_x1 split.

:class:`TaobaoFilesMixin` writes what a :class:`~data_prep.synthetic.taobao.TaobaoWorld` draws
(its ``simulate()`` logs, entity tables and external ids) in the real files' spellings: column
names (the user profile's ``"new_user_class_level "`` with its trailing space), pid strings,
behaviour tags, NULL brands, and the calendar (Beijing days from 2017-05-06, a behaviour log that
starts ``PRE_DAYS`` earlier). The world keeps the hidden state and the click model; this module
only turns them into bytes, so the same seed gives byte-identical files.
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import polars as pl

from exfm_plugin.contracts import N_DAYS

from .common import EventIndex, ensure_dir, join_sequences, write_csv

DAY0 = 1_494_000_000          # 2017-05-06 00:00:00 Beijing time (UTC+8)
DAY = 86_400
PRE_DAYS = 14                 # the behaviour log covers 22 days, like the real one
PIDS = np.array(["430548_1007", "430539_1007"])
BTAGS = np.array(["pv", "cart", "fav", "buy"])   # as written in the real behavior_log.csv
BTAG_CODE = {"pv": 1, "cart": 2, "fav": 3, "buy": 4}  # integer codes of the BARS file

RAW_SAMPLE_COLS = ["user", "time_stamp", "adgroup_id", "pid", "nonclk", "clk"]
AD_FEATURE_COLS = ["adgroup_id", "cate_id", "campaign_id", "customer", "brand", "price"]
USER_PROFILE_COLS = ["userid", "cms_segid", "cms_group_id", "final_gender_code", "age_level",
                     "pvalue_level", "shopping_level", "occupation", "new_user_class_level "]
BEHAVIOR_COLS = ["user", "time_stamp", "btag", "cate", "brand"]
BARS_COLS = ["clk", "btag_his", "cate_his", "brand_his", "userid", "cms_segid", "cms_group_id",
             "final_gender_code", "age_level", "pvalue_level", "shopping_level", "occupation",
             "new_user_class_level", "adgroup_id", "cate_id", "campaign_id", "customer", "brand",
             "price", "pid", "btag"]
BARS_SEQ_LEN = 50


class TaobaoFilesMixin:
    """The file writers of :class:`~data_prep.synthetic.taobao.TaobaoWorld`.

    Uses the world's ``seed``, ``simulate()``, entity arrays (``ad_cate``, ``ad_brand_obs``,
    ``pvalue``, ``level``, ``has_profile``, ...) and external ids (``user_ext``, ``ad_ext``, ...).
    """

    def _ad_frame(self) -> pl.DataFrame:
        brand = pl.Series(self.brand_ext[np.maximum(self.ad_brand_obs, 0)]).cast(pl.String)
        brand = pl.select(pl.when(pl.lit(pl.Series(self.ad_brand_obs < 0))).then(pl.lit("NULL"))
                          .otherwise(brand)).to_series()
        order = np.argsort(self.ad_ext)
        return pl.DataFrame({"adgroup_id": self.ad_ext, "cate_id": self.cate_ext[self.ad_cate],
                             "campaign_id": self.campaign_ext[self.ad_campaign],
                             "customer": self.customer_ext[self.ad_customer], "brand": brand,
                             "price": self.ad_price}).select(AD_FEATURE_COLS)[order]

    def _user_frame(self) -> pl.DataFrame:
        pv = pl.Series(self.pvalue).replace(0, None)
        lv = pl.Series(self.level).replace(0, None)
        df = pl.DataFrame({"userid": self.user_ext, "cms_segid": self.cms_segid, "cms_group_id": self.cms_group,
                           "final_gender_code": self.gender, "age_level": self.age, "pvalue_level": pv,
                           "shopping_level": self.shopping, "occupation": self.occupation,
                           "new_user_class_level ": lv}).select(USER_PROFILE_COLS)
        keep = np.flatnonzero(self.has_profile)
        return df[keep[np.argsort(self.user_ext[keep])]]

    def write_raw(self, out_dir: str, with_truth: bool = False) -> dict[str, str]:
        """The four Tianchi files, written day by day (rows shuffled within a day)."""
        ensure_dir(out_dir)
        sim = self.simulate()
        im, bh = sim["imps"], sim["behav"]
        r = np.random.default_rng(np.random.SeedSequence([self.seed, 7]))
        paths = {name: os.path.join(out_dir, f"{name}.csv")
                 for name in ("raw_sample", "ad_feature", "user_profile", "behavior_log")}
        order_all = []
        for d in range(N_DAYS):
            rows = np.flatnonzero(im["day"] == d)
            rows = rows[r.permutation(len(rows))]
            order_all.append(rows)
            clk = im["clk"][rows]
            df = pl.DataFrame({"user": self.user_ext[im["u"][rows]], "time_stamp": im["ts"][rows],
                               "adgroup_id": self.ad_ext[im["a"][rows]], "pid": PIDS[im["pid"][rows]],
                               "nonclk": 1 - clk, "clk": clk}).select(RAW_SAMPLE_COLS)
            write_csv(df, paths["raw_sample"], header=d == 0, append=d > 0)
        write_csv(self._ad_frame(), paths["ad_feature"])
        write_csv(self._user_frame(), paths["user_profile"])
        bday = (bh["ts"] - DAY0) // DAY + PRE_DAYS
        for t in range(PRE_DAYS + N_DAYS):
            rows = np.flatnonzero(bday == t)
            rows = rows[r.permutation(len(rows))]
            df = pl.DataFrame({"user": self.user_ext[bh["u"][rows]], "time_stamp": bh["ts"][rows],
                               "btag": BTAGS[bh["btag"][rows]], "cate": self.cate_ext[bh["cate"][rows]],
                               "brand": self.brand_ext[bh["brand"][rows]]}).select(BEHAVIOR_COLS)
            write_csv(df, paths["behavior_log"], header=t == 0, append=t > 0)
        if with_truth:
            order = np.concatenate(order_all)
            paths["ground_truth"] = os.path.join(out_dir, "ground_truth.parquet")
            pl.DataFrame({"row": np.arange(len(order)), "day": im["day"][order] + 1,
                          "true_prob": im["p"][order], "intent_cate_hit": im["cate_hit"][order]}
                         ).write_parquet(paths["ground_truth"])
        return paths

    def bars_chunks(self, chunk: int = 400_000) -> Iterator[tuple[pl.DataFrame, np.ndarray, np.ndarray]]:
        """Yield (frame, day 1..8, true prob) chunks of BARS TaobaoAd_x1 rows in time order.

        Users without a profile are dropped (as BARS did); histories are the user's last 50
        behaviours strictly before the impression, oldest first; btag is coded 1..4
        (pv, cart, fav, buy) and the impression's own btag is 1; a NULL brand is left blank.
        """
        sim = self.simulate()
        im, bh = sim["imps"], sim["behav"]
        keep = np.flatnonzero(self.has_profile[im["u"]])
        keep = keep[np.lexsort((im["u"][keep], im["ts"][keep]))]
        events = EventIndex(bh["u"], bh["ts"])
        btag_code = np.array([BTAG_CODE[b] for b in BTAGS])
        users = self._user_frame().rename({"new_user_class_level ": "new_user_class_level"})
        ads = self._ad_frame().with_columns(pl.col("brand").replace("NULL", None))
        for s in range(0, len(keep), chunk):
            rows = keep[s:s + chunk]
            u, a = im["u"][rows], im["a"][rows]
            ev, mask = events.last_k(u, im["ts"][rows], BARS_SEQ_LEN)
            df = pl.DataFrame({"clk": im["clk"][rows],
                               "btag_his": join_sequences(btag_code[bh["btag"][ev]], mask),
                               "cate_his": join_sequences(self.cate_ext[bh["cate"][ev]], mask),
                               "brand_his": join_sequences(self.brand_ext[bh["brand"][ev]], mask),
                               "userid": self.user_ext[u], "adgroup_id": self.ad_ext[a],
                               "pid": PIDS[im["pid"][rows]], "btag": np.full(len(rows), BTAG_CODE["pv"])})
            df = (df.join(users, on="userid", how="left", maintain_order="left")
                    .join(ads, on="adgroup_id", how="left", maintain_order="left").select(BARS_COLS))
            yield df, im["day"][rows] + 1, im["p"][rows]

    def write_bars(self, out_dir: str, with_truth: bool = False) -> dict[str, str]:
        """BARS TaobaoAd_x1: train.csv = days 1..7 (05-06..05-12), test.csv = day 8, in time order."""
        ensure_dir(out_dir)
        paths = {"train": os.path.join(out_dir, "train.csv"), "test": os.path.join(out_dir, "test.csv")}
        started = {"train": False, "test": False}
        truth = []
        for df, day, p in self.bars_chunks():
            test = day == N_DAYS
            for split, m in (("train", ~test), ("test", test)):
                if m.any():
                    write_csv(df.filter(pl.Series(m)), paths[split], header=not started[split],
                              append=started[split])
                    started[split] = True
            truth.append((day, p))
        for split in ("train", "test"):
            if not started[split]:
                write_csv(pl.DataFrame(schema={c: pl.String for c in BARS_COLS}), paths[split])
        if with_truth:
            day = np.concatenate([t[0] for t in truth])
            p = np.concatenate([t[1] for t in truth])
            train = day < N_DAYS
            paths["ground_truth"] = os.path.join(out_dir, "ground_truth.parquet")
            row = np.where(train, np.cumsum(train) - 1, np.cumsum(~train) - 1)
            pl.DataFrame({"split": np.where(train, "train", "test"), "row": row, "day": day,
                          "true_prob": p}).write_parquet(paths["ground_truth"])
        return paths
