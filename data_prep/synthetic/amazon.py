"""Synthetic Amazon Electronics: the 5-core review dump, the item metadata, and BARS AmazonElectronics_x1.

Hidden model: each user writes a time-ordered sequence of reviews. For the next review at
time bucket b, the category is drawn from

    softmax_c( cat_pop[c] + cat_walk[c, b] + 0.8 <theta_u, phi_c>
               + 1.5 [c == category of the previous review] + 0.3 * #(c in the last 5) )

and the item inside the category by its (drifting) popularity among items released by b.
DIN-style samples pair each next item with one item drawn uniformly from those the user never
reviewed, so the true P(label=1 | user, item, history) is q / (q + 1/n_items), with q the
probability above: the low-rank and the sequence terms are what a model must learn.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from .common import (GroupSampler, base36_strings, child_rngs, distinct_ints, ensure_dir, gzip_bytes,
                     join_sequences, ndjson_bytes, weighted_choice, write_csv, zipf_weights)

T_START = 1_199_145_600        # 2008-01-01 UTC
T_END = 1_406_073_600          # 2014-07-23 UTC (the last review day of the real dump)
DAY = 86_400
N_BUCKETS = 16
K = 8
HIST_LEN = 100
BARS_COLS = ["label", "user_id", "item_id", "cate_id", "item_history", "cate_history"]
LEVEL2 = ["Computers & Accessories", "Camera & Photo", "Accessories & Supplies", "Portable Audio & Video",
          "Car & Vehicle Electronics", "Home Audio", "Television & Video", "GPS & Navigation",
          "Headphones", "Cell Phones & Accessories", "Video Games", "Security & Surveillance"]
WORDS = ["great", "cheap", "solid", "works", "cable", "sound", "battery", "quality", "price", "fast",
         "easy", "setup", "screen", "case", "charger", "adapter", "signal", "bright", "light", "small"]
SENTENCES = ["Works exactly as described.", "The build quality is better than expected.",
             "Battery life could be longer.", "Setup took five minutes.", "Great value for the price.",
             "Stopped working after a month.", "The cable is a bit short.", "Sound is clear and loud.",
             "I would buy this again.", "Shipping was fast.", "Fits my laptop perfectly.",
             "The instructions were confusing.", "Does the job.", "Much better than the old one."]
SUMMARIES = ["Great product", "Works well", "Five Stars", "Good value", "Not bad", "Disappointed",
             "As expected", "Excellent", "Does the job", "Could be better"]
NAMES = ["John", "Mary", "David", "Linda", "Mike", "Susan", "Chris", "Karen", "J. Smith", "Amazon Customer",
         "Bob", "Tech Guy", "Sarah", "Paul", "Nancy", "Kevin"]


@dataclass
class AmazonWorld:
    """Hidden state of a synthetic Amazon Electronics world; simulate() writes the review history."""

    n_samples: int
    seed: int = 0
    drift: float = 1.0
    _sim: dict | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        rng = child_rngs(self.seed, ["ents", "drift", "times", "choice", "neg", "text", "ids"])
        self._rng = rng
        # reviews such that 2 * (reviews - users) ~ n_samples after the 5-core filter (~5% loss)
        self.n_reviews = int(round(1.05 * self.n_samples / 2 / (1 - 1 / 8.8)))
        self.n_users = max(50, round(self.n_reviews / 8.8))
        self.n_items = max(60, self.n_reviews // 27)
        self.n_cate = int(np.clip(self.n_items // 80, 10, 801))
        r = rng["ents"]
        s = 1 / np.sqrt(K)
        self.cate_pop = np.log(zipf_weights(self.n_cate, r, 0.7))
        self.cate_level2 = r.integers(0, len(LEVEL2), self.n_cate)
        self.phi = r.normal(0, s, (self.n_cate, K))
        self.theta = r.normal(0, 1.0, (self.n_users, K))
        self.item_cate = weighted_choice(np.exp(self.cate_pop) + 0.5 * np.exp(self.cate_pop).mean(), self.n_items, r)
        self.item_pop = r.normal(0, 0.8, self.n_items)
        r = rng["drift"]
        d = float(self.drift)
        self.cate_walk = np.cumsum(r.normal(0, 0.25 * d, (self.n_cate, N_BUCKETS)), axis=1)
        self.item_walk = np.cumsum(r.normal(0, 0.3 * d, (self.n_items, N_BUCKETS)), axis=1)
        new = r.random(self.n_items) < min(0.6, 0.4 * d)
        self.item_release = np.where(new, r.integers(1, N_BUCKETS - 3, self.n_items), 0)
        # per (bucket, item) weights of the within-category draw; bucket-major virtual items
        released = self.item_release[None, :] <= np.arange(N_BUCKETS)[:, None]
        w = np.exp(self.item_pop[None, :] + self.item_walk.T) * released
        self.item_w = w                                            # (N_BUCKETS, n_items)
        group = np.arange(N_BUCKETS)[:, None] * self.n_cate + self.item_cate[None, :]
        self._sampler = GroupSampler(group.ravel(), w.ravel(), N_BUCKETS * self.n_cate)
        self.cate_tot = self._sampler.tot.reshape(N_BUCKETS, self.n_cate)
        r = rng["ids"]
        n_meta = self.n_items + self.n_items // 2                  # meta also lists never-reviewed items
        numeric = r.random(n_meta) < 0.15
        b_ids = base36_strings(distinct_ints(n_meta, 36 ** 7, r), 7, "B00")
        n_ids = np.char.zfill(distinct_ints(n_meta, 10 ** 9, r).astype(str), 10)
        self.asin = np.where(numeric, n_ids, b_ids)
        self.reviewer = base36_strings(distinct_ints(self.n_users, 36 ** 12, r), 12, "A")

    # ------------------------------------------------------------------ the choice model
    def bucket_of(self, t: np.ndarray) -> np.ndarray:
        return np.clip((t - T_START) * N_BUCKETS // (T_END + DAY - T_START), 0, N_BUCKETS - 1)

    def _cate_logits(self, u: np.ndarray, b: np.ndarray, last: np.ndarray) -> np.ndarray:
        """(n, n_cate) category logits; last (n, 5) holds the last 5 categories, -1 padded, newest last."""
        z = self.cate_pop[None, :] + self.cate_walk.T[b] + 0.8 * (self.theta[u] @ self.phi.T)
        rows = np.arange(len(u))
        prev = last[:, -1]
        z[rows[prev >= 0], prev[prev >= 0]] += 1.5
        for j in range(last.shape[1]):
            c = last[:, j]
            np.add.at(z, (rows[c >= 0], c[c >= 0]), 0.3)
        return np.where(self.cate_tot[b] > 0, z, -np.inf)

    def item_prob(self, u: np.ndarray, i: np.ndarray, t: np.ndarray, last: np.ndarray,
                  chunk: int = 50_000) -> np.ndarray:
        """q: the probability that the user's next review (at time t) is item i."""
        out = np.empty(len(u))
        for s in range(0, len(u), chunk):
            sl = slice(s, s + chunk)
            b = self.bucket_of(t[sl])
            z = self._cate_logits(u[sl], b, last[sl])
            z = z - z.max(1, keepdims=True)
            pz = np.exp(z)
            c = self.item_cate[i[sl]]
            pc = pz[np.arange(len(c)), c] / pz.sum(1)
            out[sl] = pc * self.item_w[b, i[sl]] / np.maximum(self.cate_tot[b, c], 1e-300)
        return out

    def pair_prob(self, q: np.ndarray) -> np.ndarray:
        """P(label = 1) of a DIN pair whose item has next-item probability q, the negative being
        uniform over the items of the dump."""
        return q / (q + 1.0 / len(self.simulate()["items"]))

    # ------------------------------------------------------------------ simulation
    def simulate(self) -> dict:
        """Draw every user's review sequence (5-core, one review per user and item); cached."""
        if self._sim is not None:
            return self._sim
        nu = self.n_users
        r = self._rng["times"]
        counts = np.minimum(4 + r.geometric(1 / 4.8, nu), 200)
        gaps = r.exponential(45.0, counts.sum())
        user = np.repeat(np.arange(nu), counts)
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        step = np.arange(len(user)) - offsets[user]
        csum = np.cumsum(gaps)
        rel = csum - csum[offsets][user]                      # days since the user's first review
        span = rel[offsets + counts - 1]
        total_days = (T_END - T_START) // DAY
        scale = np.minimum(1.0, total_days / np.maximum(span, 1e-9))
        start = r.random(nu) * np.maximum(total_days - span * scale, 0)
        days = np.floor(start[user] + rel * scale[user]).astype(np.int64)
        t = T_START + days * DAY
        # sequential choices, vectorized over users at each step
        rc = self._rng["choice"]
        item = np.empty(len(user), dtype=np.int64)
        last = np.full((nu, 5), -1, dtype=np.int64)
        for k in range(int(counts.max())):                     # a loop over history steps
            act = np.flatnonzero(counts > k)
            rows = offsets[act] + k
            b = self.bucket_of(t[rows])
            for s in range(0, len(act), 50_000):
                a_, r_, b_ = act[s:s + 50_000], rows[s:s + 50_000], b[s:s + 50_000]
                z = self._cate_logits(a_, b_, last[a_])
                c = np.argmax(z + rc.gumbel(size=z.shape), axis=1)
                item[r_] = self._sampler.sample(b_ * self.n_cate + c, rc) % self.n_items
                last[a_] = np.concatenate([last[a_, 1:], c[:, None]], axis=1)
        # one review per (user, item), then the 5-core filter of the public dump
        key = user * self.n_items + item
        _, first = np.unique(key, return_index=True)
        keep = np.zeros(len(user), bool)
        keep[first] = True
        while True:
            uc = np.bincount(user[keep], minlength=nu)
            ic = np.bincount(item[keep], minlength=self.n_items)
            bad = keep & ((uc[user] < 5) | (ic[item] < 5))
            if not bad.any():
                break
            keep &= ~bad
        rows = np.flatnonzero(keep)
        rows = rows[np.lexsort((step[rows], t[rows], user[rows]))]
        self._sim = {"user": user[rows], "item": item[rows], "t": t[rows], "items": np.unique(item[rows])}
        return self._sim

    # ------------------------------------------------------------------ raw files
    def write_raw(self, out_dir: str, with_truth: bool = False) -> dict[str, str]:
        """reviews_Electronics_5.json.gz (JSON lines) and meta_Electronics.json.gz (Python literals)."""
        ensure_dir(out_dir)
        sim = self.simulate()
        n = len(sim["user"])
        r = self._rng["text"]
        paths = {"reviews": os.path.join(out_dir, "reviews_Electronics_5.json.gz"),
                 "meta": os.path.join(out_dir, "meta_Electronics.json.gz")}
        total = r.geometric(0.4, n) - 1
        helpful_yes = r.binomial(total, 0.7)
        sent = pl.Series(SENTENCES)
        user_name = pl.Series(NAMES)[r.integers(0, len(NAMES), self.n_users)]
        df = pl.DataFrame({
            "reviewerID": self.reviewer[sim["user"]], "asin": self.asin[sim["item"]],
            "reviewerName": user_name.gather(sim["user"]),
            "helpful": pl.Series(np.stack([helpful_yes, total], 1)).arr.to_list(),
            "s1": sent.gather(r.integers(0, len(SENTENCES), n)), "s2": sent.gather(r.integers(0, len(SENTENCES), n)),
            "overall": (1 + weighted_choice(np.array([0.06, 0.05, 0.09, 0.2, 0.6]), n, r)).astype(np.float64),
            "summary": pl.Series(SUMMARIES).gather(r.integers(0, len(SUMMARIES), n)),
            "unixReviewTime": sim["t"]})
        df = df.with_columns(pl.concat_str(["s1", "s2"], separator=" ").alias("reviewText"),
                             pl.from_epoch("unixReviewTime", "s").dt.strftime("%m %-d, %Y").alias("reviewTime"))
        df = df.select(["reviewerID", "asin", "reviewerName", "helpful", "reviewText", "overall", "summary",
                        "unixReviewTime", "reviewTime"])
        order = np.lexsort((sim["t"], self.asin[sim["item"]]))    # the dump is grouped by product
        gzip_bytes(ndjson_bytes(df[order]), paths["reviews"])
        gzip_bytes(self._meta_text(r), paths["meta"])
        if with_truth:
            paths["ground_truth"] = os.path.join(out_dir, "ground_truth.parquet")
            q = self._sequence_q(sim)
            pl.DataFrame({"row": np.arange(n), "reviewerID": self.reviewer[sim["user"]][order],
                          "asin": self.asin[sim["item"]][order], "next_item_prob": q[order],
                          "pair_prob": self.pair_prob(q)[order]}).write_parquet(paths["ground_truth"])
        return paths

    def _meta_text(self, r: np.random.Generator) -> bytes:
        """Old-dump style lines: repr() of a dict per item, not JSON. A loop per item, not per review."""
        n_meta = len(self.asin)
        cate = np.concatenate([self.item_cate, weighted_choice(np.exp(self.cate_pop), n_meta - self.n_items, r)])
        price = np.round(np.exp(r.normal(3.0, 1.0, n_meta)), 2)
        has_price = r.random(n_meta) < 0.7
        has_title = r.random(n_meta) < 0.97
        extra_path = r.random(n_meta) < 0.15
        rank = r.integers(1, 500_000, n_meta)
        w1 = r.integers(0, len(WORDS), n_meta)
        w2 = r.integers(0, len(WORDS), n_meta)
        lines = []
        for j in r.permutation(n_meta):
            c = int(cate[j])
            l2 = LEVEL2[self.cate_level2[c]]
            rec: dict = {"asin": str(self.asin[j])}
            if has_price[j]:
                rec["price"] = float(price[j])
            rec["imUrl"] = f"http://ecx.images-amazon.com/images/I/{self.asin[j]}.jpg"
            rec["salesRank"] = {"Electronics": int(rank[j])}
            paths = [["Electronics", l2, f"{l2} Type {c + 1}"]]
            if extra_path[j]:
                paths.append(["Electronics", "Accessories & Supplies"])
            rec["categories"] = paths
            if has_title[j]:
                rec["title"] = f"{WORDS[w1[j]].title()} {WORDS[w2[j]].title()} {l2.split()[0]} {self.asin[j][-4:]}"
            lines.append(repr(rec))
        return ("\n".join(lines) + "\n").encode()

    def _sequence_q(self, sim: dict) -> np.ndarray:
        """Next-item probability of every review given the user's previous (kept) reviews."""
        user, item = sim["user"], sim["item"]
        n = len(user)
        starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
        first = np.repeat(starts, np.diff(np.r_[starts, n]))
        pos = np.arange(n)[:, None] - 5 + np.arange(5)[None, :]
        valid = pos >= first[:, None]
        last = np.where(valid, self.item_cate[item[np.where(valid, pos, 0)]], -1)
        return self.item_prob(user, item, sim["t"], last)

    # ------------------------------------------------------------------ BARS
    def write_bars(self, out_dir: str, with_truth: bool = False) -> dict[str, str]:
        """AmazonElectronics_x1: every review after a user's first is a positive with one uniform
        never-reviewed negative; test = each user's last review; rows in time order."""
        ensure_dir(out_dir)
        sim = self.simulate()
        user, item, t = sim["user"], sim["item"], sim["t"]
        n = len(user)
        starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
        ends = np.r_[starts[1:], n]
        first = np.repeat(starts, ends - starts)
        is_last = np.zeros(n, bool)
        is_last[ends - 1] = True
        pos_rows = np.flatnonzero(np.arange(n) > first)
        # negatives: uniform over items the user never reviewed (rejection, vectorized)
        rn = self._rng["neg"]
        seen = np.sort(user * self.n_items + item)
        pool = sim["items"]
        neg = pool[rn.integers(0, len(pool), len(pos_rows))]
        for _ in range(50):
            k = user[pos_rows] * self.n_items + neg
            hit = seen[np.minimum(np.searchsorted(seen, k), len(seen) - 1)] == k
            if not hit.any():
                break
            neg[hit] = pool[rn.integers(0, len(pool), int(hit.sum()))]
        q_all = self._sequence_q(sim)
        last5 = self._last_cats(user, item, first, pos_rows)
        q_neg = self.item_prob(user[pos_rows], neg, t[pos_rows], last5)
        hist_pos = pos_rows[:, None] - HIST_LEN + np.arange(HIST_LEN)[None, :]
        hmask = hist_pos >= first[pos_rows][:, None]
        hitems = item[np.where(hmask, hist_pos, 0)]
        item_hist = join_sequences(hitems + 1, hmask)
        cate_hist = join_sequences(self.item_cate[hitems] + 1, hmask)
        m = len(pos_rows)
        both = np.concatenate([np.arange(m), np.arange(m)])
        label = np.r_[np.ones(m, np.int64), np.zeros(m, np.int64)]
        items = np.r_[item[pos_rows], neg]
        df = pl.DataFrame({"label": label, "user_id": user[pos_rows][both] + 1, "item_id": items + 1,
                           "cate_id": self.item_cate[items] + 1, "item_history": item_hist.gather(both),
                           "cate_history": cate_hist.gather(both)})
        prob = self.pair_prob(np.r_[q_all[pos_rows], q_neg])
        # time order, each positive followed by its negative
        order = np.lexsort((1 - label, both, t[pos_rows][both]))
        test = is_last[pos_rows][both][order]
        df, prob = df[order], prob[order]
        paths = {"train": os.path.join(out_dir, "train.csv"), "test": os.path.join(out_dir, "test.csv")}
        write_csv(df.filter(pl.Series(~test)), paths["train"])
        write_csv(df.filter(pl.Series(test)), paths["test"])
        if with_truth:
            paths["ground_truth"] = os.path.join(out_dir, "ground_truth.parquet")
            row = np.where(test, np.cumsum(test) - 1, np.cumsum(~test) - 1)
            pl.DataFrame({"split": np.where(test, "test", "train"), "row": row,
                          "true_prob": prob}).write_parquet(paths["ground_truth"])
        return paths

    def _last_cats(self, user: np.ndarray, item: np.ndarray, first: np.ndarray, rows: np.ndarray) -> np.ndarray:
        pos = rows[:, None] - 5 + np.arange(5)[None, :]
        valid = pos >= first[rows][:, None]
        return np.where(valid, self.item_cate[item[np.where(valid, pos, 0)]], -1)

    def true_prob(self, frame: pl.DataFrame) -> np.ndarray:
        """P(label=1) of DIN pairs: columns reviewerID, asin, unixReviewTime, and hist_asins
        (list of the user's earlier asins, oldest first)."""
        u = _lookup(self.reviewer, frame["reviewerID"], "reviewerID")
        i = _lookup(self.asin[: self.n_items], frame["asin"], "asin")
        hist = frame.select(pl.col("hist_asins").list.tail(5)).with_row_index("k").explode("hist_asins")
        hist = hist.filter(pl.col("hist_asins").is_not_null())
        hk = hist["k"].to_numpy().astype(np.int64)
        hc = _lookup(self.asin[: self.n_items], hist["hist_asins"], "hist_asins")
        cnt = np.bincount(hk, minlength=len(frame))
        slot = 5 - cnt[hk] + (np.arange(len(hk)) - np.searchsorted(hk, hk))
        last = np.full((len(frame), 5), -1, dtype=np.int64)
        last[hk, slot] = self.item_cate[hc]
        q = self.item_prob(u, i, frame["unixReviewTime"].to_numpy().astype(np.int64), last)
        return self.pair_prob(q)


def _lookup(keys: np.ndarray, values: pl.Series, what: str) -> np.ndarray:
    """Index of each value in keys (strings); unknown values raise, naming the column."""
    table = pl.DataFrame({"v": keys, "code": np.arange(len(keys))})
    code = (pl.DataFrame({"v": values}).join(table, on="v", how="left", maintain_order="left")["code"]
            .fill_null(-1).to_numpy())
    if (code < 0).any():
        raise KeyError(f"{what}: {(code < 0).sum()} values unknown to this world (or never reviewed)")
    return code.astype(np.int64)
