"""Shared pieces of the synthetic generators: sizes, seeded sampling, sequences, writers.

Everything here is vectorized over rows (numpy / polars); the generators loop at most
over days, steps of a user's history, or row chunks.
"""
from __future__ import annotations

import gzip
import io
import os
from typing import Iterable

import numpy as np
import polars as pl

from exfm_plugin.contracts import DATASETS

#: Number of labelled impressions a synthetic dataset of each size preset (``contracts.SIZES``)
#: has (Amazon: DIN-style samples, one negative per positive).
IMPRESSIONS_PER_SIZE: dict[str, dict[str, int]] = {
    "taobaoad": {"tiny": 10_000, "small": 200_000, "medium": 2_000_000, "full": 26_557_961},
    "amazon": {"tiny": 10_000, "small": 200_000, "medium": 2_000_000, "full": 2_993_570},
    "kuaivideo": {"tiny": 10_000, "small": 200_000, "medium": 2_000_000, "full": 13_661_383},
}


def check_dataset(dataset: str) -> str:
    """Normalise a dataset name, naming the accepted ones on error."""
    name = dataset.lower().replace("_", "")
    aliases = {"taobao": "taobaoad", "taobaoadx1": "taobaoad", "amazonelectronics": "amazon",
               "amazonelectronicsx1": "amazon", "kuaivideox1": "kuaivideo", "kuai": "kuaivideo"}
    name = aliases.get(name, name)
    if name not in DATASETS:
        raise ValueError(f"unknown synthetic dataset {dataset!r}; expected one of {DATASETS}")
    return name


def resolve_size(dataset: str, size: str | int) -> int:
    """Turn a preset name or an int into a number of impressions (at least 1000)."""
    dataset = check_dataset(dataset)
    if isinstance(size, str):
        if size not in IMPRESSIONS_PER_SIZE[dataset]:
            raise ValueError(f"unknown size {size!r} for {dataset}; expected an int or one of "
                             f"{sorted(IMPRESSIONS_PER_SIZE[dataset])}")
        return IMPRESSIONS_PER_SIZE[dataset][size]
    if int(size) < 1000:
        raise ValueError(f"size={size} is too small: the world needs at least 1000 impressions")
    return int(size)


def child_rngs(seed: int, names: Iterable[str]) -> dict[str, np.random.Generator]:
    """Independent named streams, so that e.g. the drift knob does not reshuffle the base world."""
    names = list(names)
    seqs = np.random.SeedSequence(seed).spawn(len(names))
    return {n: np.random.default_rng(s) for n, s in zip(names, seqs)}


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def calibrate_bias(z: np.ndarray, target: float, iters: int = 50) -> float:
    """Intercept c with mean(sigmoid(z + c)) == target (Newton on a monotone function)."""
    c = float(np.log(target / (1 - target)) - np.mean(z))
    for _ in range(iters):
        p = sigmoid(z + c)
        f = p.mean() - target
        g = (p * (1 - p)).mean()
        step = f / max(g, 1e-12)
        c -= step
        if abs(step) < 1e-10:
            break
    return c


def zipf_weights(n: int, rng: np.random.Generator, a: float = 0.9) -> np.ndarray:
    """Popularity weights 1/rank^a in a random order (long tail, like real catalogues)."""
    w = 1.0 / np.arange(1, n + 1) ** a
    return w[rng.permutation(n)]


def random_ids(n: int, high: int, rng: np.random.Generator) -> np.ndarray:
    """n distinct external integer ids in [1, max(high, 2n)], in random order."""
    high = max(high, 2 * n)
    return (rng.choice(high, size=n, replace=False) + 1).astype(np.int64)


def index_of(ext_ids: np.ndarray, query: np.ndarray, what: str) -> np.ndarray:
    """Map external ids back to internal indices; unknown ids raise with the column name."""
    order = np.argsort(ext_ids, kind="stable")
    sorted_ids = ext_ids[order]
    pos = np.searchsorted(sorted_ids, query)
    pos = np.clip(pos, 0, len(sorted_ids) - 1)
    bad = sorted_ids[pos] != query
    if bad.any():
        raise KeyError(f"{what}: {int(bad.sum())} ids unknown to this world, e.g. {query[bad][:3]}")
    return order[pos]


class GroupSampler:
    """Draw one item of a given group with prob. proportional to its weight; sorted once."""

    def __init__(self, item_group: np.ndarray, item_weight: np.ndarray, n_groups: int | None = None) -> None:
        n_groups = int(item_group.max(initial=-1)) + 1 if n_groups is None else n_groups
        self.order = np.argsort(item_group, kind="stable")
        self.cum = np.cumsum(item_weight[self.order].astype(np.float64))
        self.tot = np.bincount(item_group, weights=item_weight, minlength=n_groups)
        cnt = np.bincount(item_group, minlength=n_groups)
        self.end_idx = np.cumsum(cnt)
        self.start_idx = self.end_idx - cnt
        self.start_cum = np.concatenate([[0.0], self.cum])[self.start_idx]

    def sample(self, g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Item index per query group; -1 where the group is empty or unknown."""
        known = (g >= 0) & (g < len(self.tot))
        g = np.where(known, g, 0)
        target = self.start_cum[g] + rng.random(len(g)) * self.tot[g]
        pos = np.searchsorted(self.cum, target, side="right")
        pos = np.clip(pos, self.start_idx[g], np.maximum(self.end_idx[g] - 1, self.start_idx[g]))
        out = self.order[np.clip(pos, 0, max(len(self.order) - 1, 0))] if len(self.order) else pos
        return np.where(known & (self.tot[g] > 0), out, -1)


def sample_within_groups(item_group: np.ndarray, item_weight: np.ndarray, query_group: np.ndarray,
                         rng: np.random.Generator) -> np.ndarray:
    """For each query group, draw one item of that group with prob. proportional to its weight.

    Returns -1 where the group has no item of positive weight. One searchsorted, no loop.
    """
    n_groups = int(max(item_group.max(initial=-1), query_group.max(initial=-1))) + 1
    return GroupSampler(item_group, item_weight, n_groups).sample(query_group, rng)


def weighted_choice(weights: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n draws with replacement, prob. proportional to weights."""
    cum = np.cumsum(weights, dtype=np.float64)
    return np.minimum(np.searchsorted(cum, rng.random(n) * cum[-1], side="right"), len(cum) - 1)


def diurnal_seconds(n: int, rng: np.random.Generator) -> np.ndarray:
    """Seconds within a day, busier in the evening than at night (real traffic shape)."""
    hours = np.arange(24)
    w = 0.25 + np.exp(-0.5 * ((hours - 21) / 4.0) ** 2) + 0.6 * np.exp(-0.5 * ((hours - 12) / 3.0) ** 2)
    h = weighted_choice(w, n, rng)
    return h * 3600 + rng.integers(0, 3600, n)


class EventIndex:
    """Events sorted once by (user, time), to fetch each query's last k earlier events fast."""

    def __init__(self, ev_user: np.ndarray, ev_time: np.ndarray) -> None:
        self.t0 = int(ev_time.min(initial=0))
        key = (ev_user.astype(np.int64) << 34) + (ev_time.astype(np.int64) - self.t0)
        self.order = np.argsort(key, kind="stable")
        self.sorted_key = key[self.order]

    def last_k(self, q_user: np.ndarray, q_time: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(idx, mask): idx (n, k) indexes the original event arrays, oldest first, newest
        last, only events strictly before q_time (as BARS sequences are); mask marks valid slots."""
        q_user = q_user.astype(np.int64)
        rel = np.maximum(q_time.astype(np.int64) - self.t0, 0)
        end = np.searchsorted(self.sorted_key, (q_user << 34) + rel, side="left")
        start = np.searchsorted(self.sorted_key, q_user << 34, side="left")
        pos = end[:, None] - k + np.arange(k)[None, :]
        mask = pos >= start[:, None]
        idx = self.order[np.where(mask, pos, 0)] if len(self.order) else np.zeros_like(pos)
        return idx, mask


def join_sequences(values: np.ndarray, mask: np.ndarray, chunk: int = 500_000) -> pl.Series:
    """`^`-join each row's valid values (BARS sequence text); empty rows become null."""
    parts = []
    for s in range(0, len(values), chunk):
        v = np.where(mask[s:s + chunk], values[s:s + chunk], -1).astype(np.int64)
        col = pl.Series("s", v) if v.shape[1] else pl.Series("s", [[]] * len(v), dtype=pl.List(pl.Int64))
        if v.shape[1]:
            col = col.arr.to_list()
        out = pl.DataFrame({"s": col}).select(
            pl.col("s").list.eval(pl.element().filter(pl.element() >= 0).cast(pl.String)).list.join("^"))
        parts.append(out["s"])
    s = pl.concat(parts) if parts else pl.Series("s", [], dtype=pl.String)
    return s.replace("", None)


def write_csv(df: pl.DataFrame, path: str, *, header: bool = True, append: bool = False,
              null: str = "") -> None:
    """CSV as the real dumps are: comma separated, header line, no quoting of plain fields."""
    with open(path, "ab" if append else "wb") as f:
        df.write_csv(f, include_header=header, null_value=null, line_terminator="\n")


def gzip_bytes(data: bytes, path: str) -> None:
    """Gzip with a fixed header (no file name, mtime 0) so equal seeds give equal bytes."""
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                                compresslevel=6) as gz:
        gz.write(data)


def ndjson_bytes(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_ndjson(buf)
    return buf.getvalue()


def ensure_dir(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path


def base36_strings(values: np.ndarray, width: int, prefix: str = "") -> np.ndarray:
    """Fixed-width upper-case base-36 text of non-negative ints (ids like Amazon's), vectorized."""
    alphabet = np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", dtype=np.uint8)
    v = values.astype(np.int64).copy()
    chars = np.empty((len(v), width), dtype=np.uint8)
    for j in range(width - 1, -1, -1):
        chars[:, j] = alphabet[v % 36]
        v //= 36
    body = chars.view(f"S{width}").ravel().astype(str)
    return np.char.add(prefix, body) if prefix else body


def distinct_ints(n: int, high: int, rng: np.random.Generator) -> np.ndarray:
    """n distinct ints in [0, high) (high may be huge), in random order."""
    out = np.unique(rng.integers(0, high, int(n * 1.2) + 16))
    while len(out) < n:
        out = np.unique(np.concatenate([out, rng.integers(0, high, n)]))
    return rng.permutation(out)[:n]
