"""One vocabulary per feature, fitted once per dataset, written in FuxiCTR's own formats.

Output: ``feature_map.json`` and ``feature_vocab.json`` exactly as
``fuxictr.preprocess.FeatureProcessor`` writes them, so that
``fuxictr.features.FeatureMap(dataset_id, data_dir).load(path, params)`` and fuxictr's
embedding layers (shared and pretrained embeddings included) work on them unchanged.

Policy (the choices, and why):

- **Fitted on the FM's first training window, days 1..4** (``DEFAULT_VOCAB_DAYS``). Every
  model of the streaming protocol is evaluated on day 6 or later and trained on days >= 1,
  so a vocabulary from days 1..4 never uses a test day: no leakage through which ids exist
  or pass ``min_categr_count``. The cost is coverage: ids first seen on days 5..8 map to
  ``__OOV__``, one shared, trainable "new id" row, which is also how a production model
  meets a fresh id. ``vocab_days="all"`` fits on all 8 days for a BARS-style comparison.
- Tokens are strings (ids ``123`` and ``"123.0"`` are the same token ``"123"``); index 0 is
  ``__PAD__``, 1..n the tokens by decreasing count (ties by token), ``__OOV__`` = n + 1.
  Missing values (null, ``NULL``, blank) map to ``__OOV__``, as in fuxictr.
- ``min_categr_count`` comes from the BARS settings of the dataset (TaobaoAd 10, Amazon 1,
  KuaiVideo 10, ``item_emb`` 1). A sequence shares the vocabulary of its target feature
  (``share_embedding``); a token's count is its count in the target column plus in every
  sequence sharing it.
- A pretrained feature (KuaiVideo ``item_emb``) gets, after ``__OOV__``, every key of the
  embedding file not seen in the fitting days, as fuxictr does: an unseen item with a
  visual vector keeps its (frozen) vector; the file is copied next to the feature map as
  ``pretrained_<name>.h5`` because fuxictr resolves it relative to the data directory.
- Sequences are encoded most recent last, truncated to the last ``max_len`` items, left
  aligned with ``__PAD__`` (0) after them.
- Numeric ``price`` (``normalizer: log1p_standard``): ``(log1p(max(x, 0)) - mean) / std`` with
  mean and std from the fitting days; prices span 0.01 .. 1e8 so a raw value would swamp
  the linear layer. Missing prices become 0 (the mean).
- ``group_id`` (meta, for gAUC) is remapped with a vocabulary over all days (as fuxictr's
  meta vocabulary), since it is never an input of a model.
"""
from __future__ import annotations

import json
import logging
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import h5py
import numpy as np
import polars as pl

from exfm_plugin.fsutil import atomic_file

logger = logging.getLogger(__name__)

DEFAULT_VOCAB_DAYS = (1, 2, 3, 4)
#: Integer ids below this use an id -> index array for the lookup (at most 64 MB).
DENSE_LIMIT = 1 << 24
PAD, OOV = "__PAD__", "__OOV__"


def _source(spec: Mapping[str, Any]) -> str:
    return spec.get("copy_from", spec["name"])


def _tokens(s: pl.Series) -> pl.Series:
    """Canonical string tokens of a categorical column (or of a sequence's flat values)."""
    if s.dtype == pl.String:
        return s
    if s.dtype.is_float():
        return s.cast(pl.Int64, strict=False).cast(pl.String)
    return s.cast(pl.String)


def _flat(s: pl.Series) -> pl.Series:
    return s.explode(empty_as_null=False, keep_nulls=False)


class FeatureEncoder:
    """Fit the vocabularies on some rows, then turn any day's rows into day-file columns."""

    def __init__(self, dataset_id: str, features: Sequence[Mapping[str, Any]], labels: Sequence[str], *,
                 min_categr_count: int = 1) -> None:
        self.dataset_id = dataset_id
        self.features = [dict(f) for f in features]
        self.labels = list(labels)
        self.min_categr_count = min_categr_count
        self.by_name = {f["name"]: f for f in self.features}
        # embedding group = a root feature and the features sharing its embedding
        self.root = {f["name"]: f.get("share_embedding", f["name"])
                     for f in self.features if f["type"] in ("categorical", "sequence")}
        self.vocab: dict[str, dict[str, int]] = {}
        self.oov: dict[str, int] = {}
        self.stats: dict[str, dict[str, float]] = {}
        self._maps: dict[tuple[str, str], tuple[pl.Series, pl.Series]] = {}

    # ------------------------------------------------------------------------------ fit
    def fit(self, fit_rows: pl.DataFrame, all_meta: pl.DataFrame | None = None) -> "FeatureEncoder":
        """Build every vocabulary from ``fit_rows``; meta vocabularies from ``all_meta``."""
        groups: dict[str, list[dict[str, Any]]] = OrderedDict()
        for f in self.features:
            if f["name"] in self.root:
                groups.setdefault(self.root[f["name"]], []).append(f)
        for root, members in groups.items():
            counts = [self._counts(fit_rows, m) for m in members]
            total = (pl.concat(counts).group_by("token").agg(pl.col("count").sum())
                     if counts else pl.DataFrame(schema={"token": pl.String, "count": pl.UInt32}))
            min_count = self.by_name[root].get("min_categr_count", self.min_categr_count)
            kept = (total.filter(pl.col("count") >= min_count)
                    .sort(["count", "token"], descending=[True, False])["token"].to_list())
            vocab = {PAD: 0, **{t: i for i, t in enumerate(kept, start=1)}}
            vocab[OOV] = len(vocab)
            self.oov[root] = vocab[OOV]
            pretrained = self.by_name[root].get("pretrained_emb")
            if pretrained:
                self._extend_pretrained(vocab, pretrained)
            self.vocab[root] = vocab
            logger.info("vocab %s: %d tokens (min count %d; %d members)", root, len(kept), min_count, len(members))
        for f in self.features:
            if f["type"] == "numeric" and f.get("normalizer") == "log1p_standard":
                x = np.log1p(np.maximum(fit_rows[_source(f)].drop_nulls().to_numpy().astype(np.float64), 0.0))
                mean = float(x.mean()) if len(x) else 0.0
                std = float(x.std()) if len(x) else 1.0
                self.stats[f["name"]] = {"mean": mean, "std": std if std > 0 else 1.0}
            if f["type"] == "meta":
                meta_rows = all_meta if all_meta is not None else fit_rows
                tokens = _tokens(meta_rows[_source(f)].drop_nulls().unique()).sort().to_list()
                self.vocab[f["name"]] = {t: i for i, t in enumerate(tokens, start=1)}
                self.oov[f["name"]] = 0
        return self

    def _counts(self, df: pl.DataFrame, spec: Mapping[str, Any]) -> pl.DataFrame:
        s = df[_source(spec)]
        if spec["type"] == "sequence":
            s = _flat(s)
        counts = s.drop_nulls().alias("token").value_counts(name="count")  # count on the native dtype,
        return counts.with_columns(_tokens(counts["token"]),                  # then stringify the uniques
                                   pl.col("count").cast(pl.UInt32))

    @staticmethod
    def _extend_pretrained(vocab: dict[str, int], path: str) -> None:
        with h5py.File(path, "r") as f:
            keys = np.asarray(f["key"][:])
        tokens = keys.astype(str) if keys.dtype.kind in "SUO" else keys.astype(np.int64).astype(str)
        nxt = len(vocab)
        for t in sorted(set(tokens.tolist()) - set(vocab)):
            vocab[t] = nxt
            nxt += 1

    # ------------------------------------------------------------------------ transform
    def _lookup(self, root: str, values: pl.Series) -> np.ndarray:
        """Vocabulary index of every value (nulls and unknown tokens -> OOV), by a polars join."""
        int_keys = values.dtype.is_integer()
        key = (root, "int" if int_keys else "str")
        if key not in self._maps:
            vocab = self.vocab[root]
            toks = pl.Series([t for t in vocab if t not in (PAD, OOV)], dtype=pl.String)
            idx = pl.Series([vocab[t] for t in vocab if t not in (PAD, OOV)], dtype=pl.Int32)
            if int_keys:
                as_int = toks.cast(pl.Int64, strict=False)
                ok = as_int.is_not_null() & (as_int.cast(pl.String) == toks)
                toks, idx = as_int.filter(ok), idx.filter(ok)
            self._maps[key] = (toks, idx)
        toks, idx = self._maps[key]
        oov = self.oov[root]
        if int_keys:
            table = self._dense_table(root, toks, idx)
            if table is not None:
                return self._dense_lookup(table, values, oov)
        src = values if int_keys else _tokens(values)
        out = src.replace_strict(toks, idx, default=oov, return_dtype=pl.Int32).fill_null(oov)
        return out.to_numpy()

    def _dense_table(self, root: str, toks: pl.Series, idx: pl.Series) -> np.ndarray | None:
        """For small non-negative integer ids, an array id -> index: the lookup becomes one
        numpy gather instead of a hash join (same result; ids beyond the table are OOV)."""
        key = (root, "dense")
        if key not in self._maps:
            table = None
            if len(toks) and toks.min() >= 0 and toks.max() < DENSE_LIMIT:
                table = np.full(int(toks.max()) + 1, self.oov[root], dtype=np.int32)
                table[toks.to_numpy()] = idx.to_numpy()
            self._maps[key] = table
        return self._maps[key]

    @staticmethod
    def _dense_lookup(table: np.ndarray, values: pl.Series, oov: int) -> np.ndarray:
        v = values.fill_null(-1).to_numpy()
        inside = (v >= 0) & (v < len(table))
        out = np.full(len(v), oov, dtype=np.int32)
        out[inside] = table[v[inside]]
        return out

    def transform(self, df: pl.DataFrame) -> dict[str, np.ndarray]:
        """Day-file columns of ``df``: one array per feature and label (sequences 2-D)."""
        out: dict[str, np.ndarray] = {}
        for f in self.features:
            name, col = f["name"], df[_source(f)]
            if f["type"] == "categorical":
                out[name] = self._lookup(self.root[name], col)
            elif f["type"] == "sequence":
                out[name] = self._encode_sequence(self.root[name], col, int(f["max_len"]))
            elif f["type"] == "numeric":
                x = col.cast(pl.Float64).to_numpy().astype(np.float64)
                st = self.stats.get(name)
                if st is not None:
                    x = (np.log1p(np.maximum(x, 0.0)) - st["mean"]) / st["std"]
                out[name] = np.nan_to_num(x, nan=0.0).astype(np.float32)
            elif f["type"] == "meta":
                out[name] = self._lookup(name, col).astype(np.int64)
        for label in self.labels:
            out[label] = df[label].cast(pl.Int8).to_numpy()
        return out

    def _encode_sequence(self, root: str, col: pl.Series, max_len: int) -> np.ndarray:
        n = len(col)
        lens = col.list.len().fill_null(0).to_numpy().astype(np.int64)
        out = np.zeros((n, max_len), dtype=np.int32)
        if not lens.sum():
            return out
        flat = self._lookup(root, _flat(col))
        kept = np.minimum(lens, max_len)
        if (lens > max_len).any():  # drop the oldest items of long rows: keep the last max_len
            offsets = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(lens, out=offsets[1:])
            row = np.repeat(np.arange(n), lens)
            pos_from_end = offsets[1:][row] - np.arange(offsets[-1])  # 1 = the most recent item
            flat = flat[pos_from_end <= max_len]
        # row-major boolean assignment fills each row's first kept[i] slots in list order
        out[np.arange(max_len)[None, :] < kept[:, None]] = flat
        return out

    # ---------------------------------------------------------------------------- save
    def feature_map_json(self, pretrained_files: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The ``feature_map.json`` content, fields as fuxictr's FeatureProcessor.fit writes them."""
        pretrained_files = pretrained_files or {}
        features, total, num_fields, idx = [], 0, 0, 0
        for f in self.features:
            name, t = f["name"], f["type"]
            spec: dict[str, Any] = {"type": t} if t == "meta" else {"source": f.get("source", ""), "type": t}
            if t in ("categorical", "sequence"):
                root = self.root[name]
                vocab = self.vocab[root]
                spec.update({"padding_idx": 0, "oov_idx": self.oov[root], "vocab_size": max(vocab.values()) + 1})
                if "share_embedding" in f:
                    spec["share_embedding"] = f["share_embedding"]
                else:
                    total += spec["vocab_size"]
                if t == "sequence":
                    spec["max_len"] = int(f["max_len"])
                    spec["padding"] = "post"
                if "pretrained_emb" in f:
                    spec.update({"pretrained_emb": pretrained_files.get(name, f"pretrained_{name}.h5"),
                                 "freeze_emb": bool(f.get("freeze_emb", True)),
                                 "pretrain_dim": int(f["pretrain_dim"]), "pretrain_usage": "init"})
            elif t == "numeric":
                total += 1
                if name in self.stats:
                    spec["exfm_normalizer"] = {"kind": "log1p_standard", **self.stats[name]}
            if "embedding_dim" in f:
                spec["embedding_dim"] = int(f["embedding_dim"])
            if t != "meta":
                num_fields += 1
            idx += int(f["max_len"]) if t == "sequence" else 1
            features.append({name: spec})
        return {"dataset_id": self.dataset_id, "num_fields": num_fields, "total_features": total,
                "input_length": idx, "labels": self.labels, "features": features}

    def vocab_json(self) -> dict[str, dict[str, int]]:
        """The ``feature_vocab.json`` content: token -> index for every categorical/sequence feature
        (and, beyond fuxictr, the meta ``group_id`` mapping; unknown group ids are 0)."""
        out: dict[str, dict[str, int]] = {}
        for f in self.features:
            if f["type"] in ("categorical", "sequence"):
                vocab = self.vocab[self.root[f["name"]]]
                out[f["name"]] = dict(sorted(vocab.items(), key=lambda kv: kv[1]))
            elif f["type"] == "meta":  # not written by fuxictr; kept so group ids can be decoded
                out[f["name"]] = dict(self.vocab[f["name"]])
        return out

    def save(self, data_dir: str | Path) -> dict[str, str]:
        """Write feature_map.json, feature_vocab.json and copy pretrained files into ``data_dir``."""
        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        copied = {}
        for f in self.features:
            if "pretrained_emb" in f:
                target = f"pretrained_{f['name']}{Path(f['pretrained_emb']).suffix}"
                shutil.copyfile(f["pretrained_emb"], data_dir / target)
                copied[f["name"]] = target
        _write_json(data_dir / "feature_map.json", self.feature_map_json(copied))
        _write_json(data_dir / "feature_vocab.json", self.vocab_json())
        return copied

    def describe(self) -> dict[str, Any]:
        """Vocabulary sizes and fitted statistics, for prep_summary.json."""
        return {"vocab_sizes": {r: max(v.values()) + 1 for r, v in self.vocab.items()},
                "numeric_stats": self.stats}


def _write_json(path: Path, obj: Any) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as fd:
        json.dump(obj, fd, separators=(",", ":"))  # compact: the vocab of 1M user ids is large


def vocab_days(policy: str | Iterable[int] | None) -> tuple[int, ...]:
    """Days the vocabulary is fitted on: ``None`` -> days 1..4, ``"all"`` -> 1..8, or a list."""
    if policy is None:
        return DEFAULT_VOCAB_DAYS
    if policy == "all":
        return tuple(range(1, 9))
    return tuple(int(d) for d in policy)
