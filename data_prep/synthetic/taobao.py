"""Synthetic TaobaoAd: the hidden world behind the four raw Tianchi files and the BARS TaobaoAd_x1
split (written by :mod:`.taobao_files`).

Hidden click model of an impression (user u, ad a, Beijing day d, placement pid):

    logit = b0 + level_bias[new_user_class_level] + user_bias[u] + customer_bias
          + ad_bias[a] + ad_walk[a, d] + cate_bias[c] + cate_walk[c, d]       (ids, drifting)
          + 0.55 * <P_u(d), Q_a>                                              (low rank, drifting)
          + W_age[age, cate_group] + W_gender[gender, cate_group]             (profile x ad crosses)
          + W_pid[pid, price_bucket] + 0.2 (pvalue-2)(price_bucket-2)
          + gamma[level] * [cate(a) in intents(u, d)] + 0.5 * [brand(a) in intent brands(u, d)]
          + domain_shift * (A_dom[a, dom(u)] + C_dom[cate(a), dom(u)])                (cross-domain bias)

``intents(u, d)`` are two categories (with a brand each) the user is shopping for on day d;
half of them carry over to the next day. They drive 55% of the user's behaviour-log rows and
30% of the ads the user is shown, so only a model that reads the behaviour sequence sees them.
``P_u`` is built from the user's favourite categories, its city level (the domains of Table 4)
and noise; ``Q_a`` from the ad's category, brand and its own noise.

The cross-domain bias dial ``domain_shift`` (0 = off, the world of earlier versions). A domain
``dom(u)`` is a group of ``new_user_class_level`` values: blank / level 2 / levels 1, 3, 4, the
three near-equal segments that ``data_prep.splits.domain_info`` finds (Table 4). Each domain has
its own taste for every ad and category, drawn independently per domain: ``A_dom[a, k] ~ N(0, 0.6)``
and ``C_dom[c, k] ~ N(0, 0.4)``. One model shared by the domains fits an ad's or a category's
effect with one parameter; the three domains pull it three independent ways, so a shared table
learns their average and is off by the domain's own part in every domain, unless it learns a
level x ad cross from data (which a sparse ad's few rows do not support). A domain-only model
fits its own domain's effect directly. The draws come from their own random stream, so every
other part of the world (users, ads, intents, labels' uniforms) is the same at every dial value.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from exfm_plugin.contracts import N_DAYS

from .common import (calibrate_bias, child_rngs, diurnal_seconds, index_of, random_ids, sample_within_groups,
                     sigmoid, weighted_choice, zipf_weights)
# the calendar and the files' spellings live with the writers (those the world does not use: re-exported)
from .taobao_files import (AD_FEATURE_COLS, BARS_COLS, BARS_SEQ_LEN, BEHAVIOR_COLS,  # noqa: F401
                           BTAG_CODE, BTAGS, DAY, DAY0, PIDS, PRE_DAYS, RAW_SAMPLE_COLS,
                           USER_PROFILE_COLS, TaobaoFilesMixin)

TARGET_CTR = 0.051
K = 8
N_DOMAINS = 3


@dataclass
class TaobaoWorld(TaobaoFilesMixin):
    """All hidden state of one synthetic TaobaoAd world; simulate() draws the logs from it, and
    the writers of :class:`~.taobao_files.TaobaoFilesMixin` turn them into the files."""

    n_impressions: int
    seed: int = 0
    drift: float = 1.0
    behaviour_ratio: float = 3.0
    domain_shift: float = 0.0
    _sim: dict | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        rng = child_rngs(self.seed, ["ents", "latent", "drift", "intent", "imps", "behav", "labels", "ids",
                                     "domain_shift"])
        self._rng = rng
        n = self.n_impressions
        self.n_users = max(300, round(n / 22))
        self.n_ads = max(200, round(n / 30))
        self.n_cate = int(np.clip(1.2 * np.sqrt(n), 30, 7000))
        self.n_brand = max(self.n_cate * 6, self.n_ads // 8)
        self.n_customer = max(20, self.n_ads // 4)
        self.n_campaign = max(40, self.n_ads // 2)
        self._build_entities(rng["ents"])
        self._build_latent(rng["latent"])
        self._build_drift(rng["drift"])
        self._build_intents(rng["intent"])
        self._build_ids(rng["ids"])
        self._build_domain_shift(rng["domain_shift"])

    # ------------------------------------------------------------------ hidden world
    def _build_entities(self, r: np.random.Generator) -> None:
        nu, na, nc, nb = self.n_users, self.n_ads, self.n_cate, self.n_brand
        self.cate_w = zipf_weights(nc, r, 0.9)
        self.cate_group = r.integers(0, 16, nc)
        # every category has at least one brand, the rest follow category popularity
        self.brand_cate = np.concatenate([np.arange(nc), weighted_choice(self.cate_w, nb - nc, r)])
        self.brand_w = r.lognormal(0, 1.0, nb)
        # ads
        self.ad_cate = weighted_choice(self.cate_w, na, r)
        self.ad_brand = sample_within_groups(self.brand_cate, self.brand_w, self.ad_cate, r)
        null_brand = r.random(na) < 0.25
        self.ad_brand_obs = np.where(null_brand, -1, self.ad_brand)   # -1 is written as NULL
        self.camp_customer = r.integers(0, self.n_customer, self.n_campaign)
        self.ad_campaign = r.integers(0, self.n_campaign, na)
        self.ad_customer = self.camp_customer[self.ad_campaign]
        cate_price = r.normal(4.0, 1.0, nc)
        self.ad_price = np.round(np.exp(cate_price[self.ad_cate] + r.normal(0, 0.6, na)), 2)
        self.ad_price = np.maximum(self.ad_price, 0.01)
        qs = np.quantile(np.log(self.ad_price), [0.2, 0.4, 0.6, 0.8])
        self.ad_price_bucket = np.searchsorted(qs, np.log(self.ad_price))
        self.ad_serve = r.normal(0, 1.0, na)
        # users
        self.gender = np.where(r.random(nu) < 0.35, 1, 2)
        self.age = weighted_choice(np.array([0.02, 0.1, 0.25, 0.3, 0.18, 0.1, 0.05]), nu, r)
        self.cms_group = np.where(self.gender == 1, self.age, 7 + np.maximum(self.age - 1, 0))
        self.cms_segid = np.where(r.random(nu) < 0.9, 0, r.integers(1, 97, nu))
        self.pvalue = weighted_choice(np.array([0.45, 0.17, 0.33, 0.05]), nu, r)          # 0 = blank
        self.shopping = 1 + weighted_choice(np.array([0.05, 0.1, 0.85]), nu, r)
        student_p = np.where(self.age <= 2, 0.15, 0.02)
        self.occupation = (r.random(nu) < student_p).astype(np.int64)
        self.level = weighted_choice(np.array([0.32, 0.08, 0.34, 0.16, 0.10]), nu, r)      # 0 = blank
        self.has_profile = r.random(nu) >= 0.02
        self.activity = r.lognormal(0, 0.8, nu)
        self.favs = np.empty((nu, 5), dtype=np.int64)
        group = self.gender * 10 + self.age
        for g in np.unique(group):                       # a loop over 14 profile groups
            m = group == g
            pref = self.cate_w * np.exp(r.normal(0, 1.0, nc))
            self.favs[m] = weighted_choice(pref, int(m.sum()) * 5, r).reshape(-1, 5)
        # domains: blank / level 2 / levels 1,3,4 (the 3 near-equal segments of Table 4)
        self.domain = np.select([self.level == 0, self.level == 2], [0, 1], 2)

    def _build_latent(self, r: np.random.Generator) -> None:
        nu, na, nc, nb = self.n_users, self.n_ads, self.n_cate, self.n_brand
        s = 1 / np.sqrt(K)
        self.Q_cate = r.normal(0, s, (nc, K))
        Q_brand = r.normal(0, 0.5 * s, (nb, K))
        self.Q_ad = 0.8 * self.Q_cate[self.ad_cate] + Q_brand[self.ad_brand] + r.normal(0, 0.4 * s, (na, K))
        D_level = r.normal(0, 0.6 * s, (5, K))
        self.P0 = (1.5 * self.Q_cate[self.favs].mean(1) + D_level[self.level]
                   + r.normal(0, 0.7 * s, (nu, K))) * np.sqrt(K)
        self.user_bias = r.normal(0, 0.5, nu)
        self.ad_bias = r.normal(0, 0.6, na)
        self.cate_bias = r.normal(0, 0.3, nc)
        self.customer_bias = r.normal(0, 0.2, self.n_customer)
        self.level_bias = np.array([0.0, 0.25, 0.1, -0.15, -0.3])
        self.intent_gamma = np.array([0.6, 1.1, 1.0, 0.9, 1.2])
        self.W_age = r.normal(0, 0.3, (7, 16))
        self.W_gender = r.normal(0, 0.2, (3, 16))
        self.W_pid = r.normal(0, 0.2, (2, 5))
        self.pid_bias = np.array([0.0, -0.15])

    def _build_drift(self, r: np.random.Generator) -> None:
        d = float(self.drift)
        nu, na, nc = self.n_users, self.n_ads, self.n_cate
        self.ad_walk = np.cumsum(r.normal(0, 0.2 * d, (na, N_DAYS)), axis=1)
        self.cate_walk = np.cumsum(r.normal(0, 0.1 * d, (nc, N_DAYS)), axis=1)
        self.P_walk = np.cumsum(r.normal(0, 0.15 * d, (nu, N_DAYS, K)), axis=1)
        # new users and ads join each day; some ads stop
        frac_new = min(0.5, 0.25 * d)
        new_u = r.random(nu) < frac_new
        self.user_join = np.where(new_u, r.integers(1, N_DAYS, nu), 0)
        new_a = r.random(na) < min(0.6, 0.35 * d)
        self.ad_start = np.where(new_a, r.integers(1, N_DAYS, na), 0)
        ends = r.random(na) < min(0.4, 0.2 * d)
        self.ad_end = np.where(ends, r.integers(self.ad_start + 1, N_DAYS + 1), N_DAYS)

    def _build_domain_shift(self, r: np.random.Generator) -> None:
        """Each domain's own taste for every ad and category (scaled by ``domain_shift``)."""
        self.A_dom = r.normal(0, 0.6, (self.n_ads, N_DOMAINS))
        self.C_dom = r.normal(0, 0.4, (self.n_cate, N_DOMAINS))

    def _build_intents(self, r: np.random.Generator) -> None:
        """Two shopping intents per user and day over the 22 days of the behaviour log."""
        nu, T = self.n_users, PRE_DAYS + N_DAYS
        self.intent_cate = np.empty((nu, T, 2), dtype=np.int32)
        self.intent_brand = np.empty((nu, T, 2), dtype=np.int32)
        for t in range(T):                                  # a loop over days
            from_fav = self.favs[np.arange(nu)[:, None], r.integers(0, 5, (nu, 2))]
            fresh = np.where(r.random((nu, 2)) < 0.7, from_fav,
                             weighted_choice(self.cate_w, nu * 2, r).reshape(nu, 2))
            fresh_b = sample_within_groups(self.brand_cate, self.brand_w, fresh.ravel(), r).reshape(nu, 2)
            if t == 0:
                self.intent_cate[:, t], self.intent_brand[:, t] = fresh, fresh_b
            else:
                keep = r.random((nu, 2)) < 0.5
                self.intent_cate[:, t] = np.where(keep, self.intent_cate[:, t - 1], fresh)
                self.intent_brand[:, t] = np.where(keep, self.intent_brand[:, t - 1], fresh_b)

    def _build_ids(self, r: np.random.Generator) -> None:
        self.user_ext = random_ids(self.n_users, 1_141_729, r)
        self.ad_ext = random_ids(self.n_ads, 846_811, r)
        self.cate_ext = random_ids(self.n_cate, 12_960, r)
        self.brand_ext = random_ids(self.n_brand, 461_497, r)
        self.campaign_ext = random_ids(self.n_campaign, 423_436, r)
        self.customer_ext = random_ids(self.n_customer, 255_875, r)

    # ------------------------------------------------------------------ the click model
    def _logit(self, u: np.ndarray, a: np.ndarray, day: np.ndarray, pid: np.ndarray) -> np.ndarray:
        """The click logit without the global intercept b0 (internal indices, day 0..7)."""
        c = self.ad_cate[a]
        pb = self.ad_price_bucket[a]
        P = self.P0[u] + self.P_walk[u, day]
        t = day + PRE_DAYS
        ic = self.intent_cate[u, t]
        ib = self.intent_brand[u, t]
        cate_hit = (ic == c[:, None]).any(1)
        brand_hit = ((ib == self.ad_brand_obs[a][:, None]) & (self.ad_brand_obs[a][:, None] >= 0)).any(1)
        pv = self.pvalue[u]
        return (self.level_bias[self.level[u]] + self.user_bias[u] + self.customer_bias[self.ad_customer[a]]
                + self.ad_bias[a] + self.ad_walk[a, day] + self.cate_bias[c] + self.cate_walk[c, day]
                + 0.55 * np.einsum("ij,ij->i", P, self.Q_ad[a])
                + self.W_age[self.age[u], self.cate_group[c]]
                + self.W_gender[self.gender[u], self.cate_group[c]]
                + self.W_pid[pid, pb] + self.pid_bias[pid]
                + np.where(pv > 0, 0.2 * (pv - 2) * (pb - 2), 0.0)
                + self.intent_gamma[self.level[u]] * cate_hit + 0.5 * brand_hit
                + self.domain_shift * (self.A_dom[a, self.domain[u]] + self.C_dom[c, self.domain[u]]))

    def true_prob(self, frame: pl.DataFrame) -> np.ndarray:
        """True click probability of raw_sample rows (columns user, time_stamp, adgroup_id, pid)."""
        sim = self.simulate()
        u = index_of(self.user_ext, frame["user"].to_numpy(), "user")
        a = index_of(self.ad_ext, frame["adgroup_id"].to_numpy(), "adgroup_id")
        day = (frame["time_stamp"].to_numpy().astype(np.int64) - DAY0) // DAY
        if ((day < 0) | (day >= N_DAYS)).any():
            raise ValueError("time_stamp: rows outside 2017-05-06..2017-05-13 (Beijing time)")
        pid = (frame["pid"].to_numpy() == PIDS[1]).astype(np.int64)
        return sigmoid(sim["b0"] + self._logit(u, a, day, pid))

    # ------------------------------------------------------------------ simulation
    def simulate(self) -> dict:
        """Draw impressions (with labels and true probs) and the behaviour log; cached."""
        if self._sim is not None:
            return self._sim
        r = self._rng["imps"]
        n = self.n_impressions
        share = r.uniform(0.92, 1.08, N_DAYS)
        per_day = np.floor(n * share / share.sum()).astype(np.int64)
        per_day[: n - per_day.sum()] += 1
        us, ads, days, pids, secs = [], [], [], [], []
        for d in range(N_DAYS):                             # a loop over days
            m = int(per_day[d])
            uw = self.activity * (self.user_join <= d)
            u = weighted_choice(uw, m, r)
            active = (self.ad_start <= d) & (self.ad_end > d)
            sw = np.exp(self.ad_serve + 0.5 * self.ad_walk[:, d]) * active
            a = weighted_choice(sw, m, r)
            targeted = r.random(m) < 0.3
            slot = r.integers(0, 2, m)
            ta = sample_within_groups(self.ad_cate, sw, self.intent_cate[u, d + PRE_DAYS, slot], r)
            a = np.where(targeted & (ta >= 0), ta, a)
            us.append(u); ads.append(a); days.append(np.full(m, d))
            pids.append((r.random(m) >= 0.62).astype(np.int64)); secs.append(diurnal_seconds(m, r))
        u, a, day, pid, sec = (np.concatenate(x) for x in (us, ads, days, pids, secs))
        z = self._logit(u, a, day, pid)
        b0 = calibrate_bias(z, TARGET_CTR)
        p = sigmoid(z + b0)
        clk = (self._rng["labels"].random(n) < p).astype(np.int64)
        ts = DAY0 + day * DAY + sec
        hit = (self.intent_cate[u, day + PRE_DAYS] == self.ad_cate[a][:, None]).any(1)
        self._sim = {"b0": b0, "imps": {"u": u, "a": a, "day": day, "pid": pid, "ts": ts, "p": p, "clk": clk,
                                        "cate_hit": hit},
                     "behav": self._simulate_behaviour()}
        return self._sim

    def _simulate_behaviour(self) -> dict:
        r = self._rng["behav"]
        T = PRE_DAYS + N_DAYS
        total = int(self.behaviour_ratio * self.n_impressions)
        per_day = np.full(T, total // T)
        per_day[: total - per_day.sum()] += 1
        out = {k: [] for k in ("u", "ts", "btag", "cate", "brand")}
        for t in range(T):                                  # a loop over days
            m = int(per_day[t])
            u = weighted_choice(self.activity * (self.user_join + PRE_DAYS - 3 <= t), m, r)
            kind = r.random(m)
            slot = r.integers(0, 2, m)
            c_int = self.intent_cate[u, t, slot]
            c_fav = self.favs[u, r.integers(0, 5, m)]
            c_pop = weighted_choice(self.cate_w, m, r)
            c = np.select([kind < 0.55, kind < 0.85], [c_int, c_fav], c_pop)
            b_any = sample_within_groups(self.brand_cate, self.brand_w, c, r)
            b = np.where((kind < 0.55) & (r.random(m) < 0.6) & (self.intent_brand[u, t, slot] >= 0),
                         self.intent_brand[u, t, slot], b_any)
            out["u"].append(u)
            out["ts"].append(DAY0 + (t - PRE_DAYS) * DAY + diurnal_seconds(m, r))
            out["btag"].append(weighted_choice(np.array([0.9, 0.04, 0.03, 0.03]), m, r))
            out["cate"].append(c)
            out["brand"].append(b)
        dtypes = {"u": np.int32, "ts": np.int64, "btag": np.int8, "cate": np.int32, "brand": np.int32}
        return {k: np.concatenate(v).astype(dtypes[k]) for k, v in out.items()}
