"""Synthetic KuaiVideo in the BARS KuaiVideo_x1 layout (train.csv, test.csv, visual embeddings).

Hidden model of an impression (user u, video i of author w and topic k, time bucket d):

    click        = sigmoid(b_c + user_bias[u] + item_bias[i] + item_walk[i, d]
                           + 0.6 <P_u(d), V_i> + 0.9 [k in intents(u, d)])
    like|click   = sigmoid(b_l + 0.4 <P_u(d), V_i> + like_user[u] + like_item[i] + <L_u, L_i>)
    follow|click = sigmoid(b_f + follow_user[u] + author_quality[w] + <A_u, A_w> + 0.5 [k in intents])

so like and follow are rare (about 2% and 0.7% of impressions), correlated with click (they
need one) but carry their own factors: the tasks of Table 5. ``V_i`` (topic + noise) is what the
64-d visual embedding file encodes, so the frozen pretrained table carries signal; the
intents are visible only in ``pos_items`` (the user's previous clicked videos).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import h5py
import numpy as np
import polars as pl

from exfm_plugin.contracts import N_DAYS

from .common import (EventIndex, calibrate_bias, child_rngs, ensure_dir, index_of, join_sequences, random_ids,
                     sample_within_groups, sigmoid, weighted_choice, write_csv, zipf_weights)

TS0 = 761_000_000_000        # relative timestamps of KuaiVideo_x1 are about 7.6e11
BUCKET = 86_400_000          # one synthetic "day" of the 8 time buckets, in the same unit
K = 16
SEQ_LEN = 100
COLS = ["timestamp", "user_id", "item_id", "is_click", "is_like", "is_follow", "pos_items", "neg_items"]
TARGET = {"is_click": 0.25, "is_like": 0.02, "is_follow": 0.007}


@dataclass
class KuaiVideoWorld:
    """Hidden state of a synthetic KuaiVideo world; simulate() draws the impressions."""

    n_impressions: int
    seed: int = 0
    drift: float = 1.0
    _sim: dict | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        rng = child_rngs(self.seed, ["ents", "drift", "intent", "imps", "labels", "ids"])
        self._rng = rng
        n = self.n_impressions
        self.n_users = int(np.clip(n / 400, 50, 10_000))
        self.n_items = max(200, n // 8)
        self.n_topics = int(np.clip(np.sqrt(self.n_items) / 2, 16, 500))
        self.n_authors = max(20, self.n_items // 8)
        self._build_entities(rng["ents"])
        self._build_drift(rng["drift"])
        self._build_intents(rng["intent"])
        r = rng["ids"]
        self.user_ext = random_ids(self.n_users, 10_000, r)
        self.item_ext = random_ids(self.n_items, 3_239_534, r)

    def _build_entities(self, r: np.random.Generator) -> None:
        nu, ni, nt, na = self.n_users, self.n_items, self.n_topics, self.n_authors
        s = 1 / np.sqrt(K)
        self.topic_w = zipf_weights(nt, r, 0.8)
        self.author_topic = weighted_choice(self.topic_w, na, r)
        self.item_author = weighted_choice(r.lognormal(0, 1.0, na), ni, r)
        self.item_topic = np.where(r.random(ni) < 0.8, self.author_topic[self.item_author],
                                   weighted_choice(self.topic_w, ni, r))
        T = r.normal(0, s, (nt, K))
        self.V = T[self.item_topic] + r.normal(0, 0.5 * s, (ni, K))
        self.item_pop = r.normal(0, 1.0, ni)
        self.item_bias = r.normal(0, 0.5, ni)
        self.like_item = r.normal(0, 0.8, ni)
        self.L_item = r.normal(0, s, (ni, K))
        self.author_quality = r.normal(0, 0.8, na)
        self.A_author = r.normal(0, s, (na, K))
        self.favs = weighted_choice(self.topic_w, nu * 4, r).reshape(nu, 4)
        self.P0 = (1.5 * T[self.favs].mean(1) + r.normal(0, 0.6 * s, (nu, K))) * np.sqrt(K)
        self.user_bias = r.normal(0, 0.5, nu)
        self.like_user = r.normal(0, 0.8, nu)
        self.L_user = r.normal(0, 1.0, (nu, K))
        self.follow_user = r.normal(0, 0.8, nu)
        self.A_user = r.normal(0, 1.0, (nu, K))
        self.activity = r.lognormal(0, 0.6, nu)
        # pretrained visual embedding: a fixed projection of V plus noise
        self.visual = (self.V @ r.normal(0, 1.0, (K, 64)) + r.normal(0, 0.3, (ni, 64))).astype(np.float32)

    def _build_drift(self, r: np.random.Generator) -> None:
        d = float(self.drift)
        self.item_walk = np.cumsum(r.normal(0, 0.25 * d, (self.n_items, N_DAYS)), axis=1)
        self.P_walk = np.cumsum(r.normal(0, 0.15 * d, (self.n_users, N_DAYS, K)), axis=1)
        new = r.random(self.n_items) < min(0.7, 0.4 * d)      # videos uploaded during the 8 buckets
        self.item_start = np.where(new, r.integers(1, N_DAYS, self.n_items), 0)

    def _build_intents(self, r: np.random.Generator) -> None:
        nu = self.n_users
        self.intent = np.empty((nu, N_DAYS, 2), dtype=np.int32)
        for d in range(N_DAYS):                              # a loop over days
            fresh = np.where(r.random((nu, 2)) < 0.7, self.favs[np.arange(nu)[:, None], r.integers(0, 4, (nu, 2))],
                             weighted_choice(self.topic_w, nu * 2, r).reshape(nu, 2))
            keep = r.random((nu, 2)) < 0.5 if d else np.zeros((nu, 2), bool)
            self.intent[:, d] = np.where(keep, self.intent[:, d - 1] if d else fresh, fresh)

    def _logits(self, u: np.ndarray, i: np.ndarray, day: np.ndarray) -> tuple[np.ndarray, ...]:
        P = self.P0[u] + self.P_walk[u, day]
        pv = np.einsum("ij,ij->i", P, self.V[i])
        hit = (self.intent[u, day] == self.item_topic[i][:, None]).any(1)
        w = self.item_author[i]
        zc = self.user_bias[u] + self.item_bias[i] + self.item_walk[i, day] + 0.6 * pv + 0.9 * hit
        zl = 0.4 * pv + self.like_user[u] + self.like_item[i] + np.einsum("ij,ij->i", self.L_user[u], self.L_item[i])
        zf = (self.follow_user[u] + self.author_quality[w]
              + np.einsum("ij,ij->i", self.A_user[u], self.A_author[w]) + 0.5 * hit)
        return zc, zl, zf, hit

    def true_prob(self, frame: pl.DataFrame) -> dict[str, np.ndarray]:
        """True P(click), P(like), P(follow) (unconditional) of rows with timestamp, user_id, item_id."""
        sim = self.simulate()
        u = index_of(self.user_ext, frame["user_id"].to_numpy(), "user_id")
        i = index_of(self.item_ext, frame["item_id"].to_numpy(), "item_id")
        day = np.clip((frame["timestamp"].to_numpy().astype(np.int64) - TS0) // BUCKET, 0, N_DAYS - 1)
        zc, zl, zf, _ = self._logits(u, i, day)
        b = sim["bias"]
        pc = sigmoid(zc + b["is_click"])
        return {"is_click": pc, "is_like": pc * sigmoid(zl + b["is_like"]),
                "is_follow": pc * sigmoid(zf + b["is_follow"])}

    def simulate(self) -> dict:
        """Draw impressions, labels of the three tasks and true probabilities; cached."""
        if self._sim is not None:
            return self._sim
        r = self._rng["imps"]
        n = self.n_impressions
        per_day = np.full(N_DAYS, n // N_DAYS)
        per_day[: n - per_day.sum()] += 1
        us, items, days = [], [], []
        for d in range(N_DAYS):                              # a loop over days
            m = int(per_day[d])
            u = weighted_choice(self.activity, m, r)
            w = np.exp(self.item_pop + 0.5 * self.item_walk[:, d]) * (self.item_start <= d)
            i = weighted_choice(w, m, r)
            ti = sample_within_groups(self.item_topic, w, self.intent[u, d, r.integers(0, 2, m)], r)
            i = np.where((r.random(m) < 0.4) & (ti >= 0), ti, i)
            us.append(u); items.append(i); days.append(np.full(m, d))
        u, i, day = (np.concatenate(x) for x in (us, items, days))
        ts = TS0 + day * BUCKET + r.integers(0, BUCKET, n)
        order = np.lexsort((u, ts))
        u, i, day, ts = u[order], i[order], day[order], ts[order]
        zc, zl, zf, hit = self._logits(u, i, day)
        bc = calibrate_bias(zc, TARGET["is_click"])
        pc = sigmoid(zc + bc)
        # like/follow intercepts: unconditional rates on target, given a click
        bl = _calibrate_conditional(pc, zl, TARGET["is_like"])
        bf = _calibrate_conditional(pc, zf, TARGET["is_follow"])
        pl_c, pf_c = sigmoid(zl + bl), sigmoid(zf + bf)
        rl = self._rng["labels"]
        click = rl.random(n) < pc
        like = click & (rl.random(n) < pl_c)
        follow = click & (rl.random(n) < pf_c)
        self._sim = {"bias": {"is_click": bc, "is_like": bl, "is_follow": bf},
                     "rows": {"u": u, "i": i, "day": day, "ts": ts, "hit": hit,
                              "is_click": click.astype(np.int64), "is_like": like.astype(np.int64),
                              "is_follow": follow.astype(np.int64),
                              "p_click": pc, "p_like": pc * pl_c, "p_follow": pc * pf_c}}
        return self._sim

    def write(self, out_dir: str, with_truth: bool = False, chunk: int = 300_000) -> dict[str, str]:
        """train.csv (first 80% in time), test.csv (last 20%), item_visual_emb_dim64.h5."""
        ensure_dir(out_dir)
        rows = self.simulate()["rows"]
        n = len(rows["u"])
        paths = {"train": os.path.join(out_dir, "train.csv"), "test": os.path.join(out_dir, "test.csv"),
                 "item_emb": os.path.join(out_dir, "item_visual_emb_dim64.h5")}
        split_at = int(round(0.8 * n))
        clicked = rows["is_click"] == 1
        pos_ev = EventIndex(rows["u"][clicked], rows["ts"][clicked])
        neg_ev = EventIndex(rows["u"][~clicked], rows["ts"][~clicked])
        pos_items, neg_items = rows["i"][clicked], rows["i"][~clicked]
        for s in range(0, n, chunk):
            sl = slice(s, min(s + chunk, n))
            u, ts = rows["u"][sl], rows["ts"][sl]
            pidx, pmask = pos_ev.last_k(u, ts, SEQ_LEN)
            nidx, nmask = neg_ev.last_k(u, ts, SEQ_LEN)
            df = pl.DataFrame({"timestamp": ts, "user_id": self.user_ext[u], "item_id": self.item_ext[rows["i"][sl]],
                               "is_click": rows["is_click"][sl], "is_like": rows["is_like"][sl],
                               "is_follow": rows["is_follow"][sl],
                               "pos_items": join_sequences(_ids(self.item_ext, pos_items, pidx), pmask),
                               "neg_items": join_sequences(_ids(self.item_ext, neg_items, nidx), nmask)})
            row_id = np.arange(sl.start, sl.stop)
            for name, m in (("train", row_id < split_at), ("test", row_id >= split_at)):
                if m.any():
                    first = row_id[m][0] in (0, split_at)
                    write_csv(df.filter(pl.Series(m)), paths[name], header=first, append=not first)
        order = np.argsort(self.item_ext)
        with h5py.File(paths["item_emb"], "w", track_order=False) as f:
            f.create_dataset("key", data=self.item_ext[order], track_times=False)
            f.create_dataset("value", data=self.visual[order], track_times=False)
        if with_truth:
            paths["ground_truth"] = os.path.join(out_dir, "ground_truth.parquet")
            idx = np.arange(n)
            pl.DataFrame({"split": np.where(idx < split_at, "train", "test"),
                          "row": np.where(idx < split_at, idx, idx - split_at), "day": rows["day"] + 1,
                          "p_click": rows["p_click"], "p_like": rows["p_like"], "p_follow": rows["p_follow"],
                          "intent_hit": rows["hit"]}).write_parquet(paths["ground_truth"])
        return paths


def _ids(ext: np.ndarray, items: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """External ids of items[idx]; zeros (all masked) when there is no such event at all."""
    return ext[items[idx]] if len(items) else np.zeros_like(idx)


def _calibrate_conditional(p_click: np.ndarray, z: np.ndarray, target: float) -> float:
    """Intercept b with mean(p_click * sigmoid(z + b)) == target (bisection)."""
    lo, hi = -30.0, 30.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if np.mean(p_click * sigmoid(z + mid)) > target:
            hi = mid
        else:
            lo = mid
    return 0.5 * (lo + hi)
