"""Tiny in-memory datasets with every FuxiCTR feature type, built from a known click model."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import h5py
import numpy as np
import torch
from fuxictr.features import FeatureMap

SEQ_LEN = 6
PRETRAIN_DIM = 8


@dataclass
class TinyData:
    feature_map: FeatureMap
    columns: dict[str, np.ndarray]
    true_prob: np.ndarray

    @property
    def num_rows(self) -> int:
        return len(self.true_prob)

    def batches(self, batch_size: int, extra: dict[str, np.ndarray] | None = None):
        """Yield fuxictr batch dicts (torch tensors) in row order."""
        cols = dict(self.columns)
        cols.update(extra or {})
        for start in range(0, self.num_rows, batch_size):
            yield {k: torch.from_numpy(v[start:start + batch_size]) for k, v in cols.items()}


def model_kwargs(tmp_path, **overrides) -> dict:
    """The keyword arguments a FuxiCTR config gives every model."""
    kw = dict(optimizer="adam", loss="binary_crossentropy", verbose=0,
              model_root=str(tmp_path / "checkpoints"), metrics=["AUC", "logloss"],
              learning_rate=1e-2, embedding_dim=8)
    kw.update(overrides)
    return kw


def random_dcn(feature_map: FeatureMap, root, seed: int) -> tuple[torch.nn.Module, dict]:
    """A tiny DCN in eval mode with N(0, 0.3) weights, and the params that rebuild it: two seeds
    give clearly different predictions (fuxictr's tiny default init makes every one ~0.5)."""
    from exfm_plugin.models import MODEL_REGISTRY

    torch.manual_seed(seed)
    params = dict(model_kwargs(root, dnn_hidden_units=[8], num_cross_layers=1), model="DCN")
    model = MODEL_REGISTRY["DCN"](feature_map, **params)
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.3)
    model.eval()
    return model, params


def make_tiny_data(data_dir: str, num_rows: int = 2048, seed: int = 0,
                   multitask: bool = False) -> TinyData:
    """Categorical user/item/cate, a numeric price, a cate history sequence that shares
    the cate embedding, and an item feature with a frozen pretrained embedding table."""
    rng = np.random.default_rng(seed)
    n_user, n_item, n_cate = 30, 40, 6
    user = rng.integers(1, n_user + 1, num_rows)
    item = rng.integers(1, n_item + 1, num_rows)
    item_cate = rng.integers(1, n_cate + 1, n_item + 2)
    cate = item_cate[item]
    price = rng.random(num_rows).astype(np.float32)
    user_pref = rng.integers(1, n_cate + 1, n_user + 2)
    hist = np.zeros((num_rows, SEQ_LEN), dtype=np.int64)
    lengths = rng.integers(0, SEQ_LEN + 1, num_rows)
    for i in range(num_rows):
        k = lengths[i]
        if k:
            # history mostly of the user's preferred category
            hist[i, :k] = np.where(rng.random(k) < 0.7, user_pref[user[i]], rng.integers(1, n_cate + 1, k))
    match = (hist == cate[:, None]).sum(1)
    item_bias = rng.normal(0, 1.0, n_item + 2)
    logit = -1.5 + 0.6 * match + item_bias[item] - 1.0 * price
    true_prob = 1.0 / (1.0 + np.exp(-logit))
    label = (rng.random(num_rows) < true_prob).astype(np.float32)

    os.makedirs(data_dir, exist_ok=True)
    pretrain = rng.normal(0, 0.1, (n_item, PRETRAIN_DIM)).astype(np.float32)
    with h5py.File(os.path.join(data_dir, "item_emb.h5"), "w") as f:
        f["key"] = np.array([str(i) for i in range(1, n_item + 1)], dtype="S")
        f["value"] = pretrain
    def ids(n):  # fuxictr's feature_vocab.json layout: token -> index, PAD 0, OOV last
        return {"__PAD__": 0, **{str(i): i for i in range(1, n + 1)}, "__OOV__": n + 1}
    vocab = {"user_id": ids(n_user), "item_id": ids(n_item), "cate_id": ids(n_cate),
             "item_emb": ids(n_item)}
    with open(os.path.join(data_dir, "feature_vocab.json"), "w") as f:
        json.dump(vocab, f)

    labels = ["click", "like"] if multitask else ["click"]
    features = [
        {"user_id": {"source": "user", "type": "categorical", "vocab_size": n_user + 2, "padding_idx": 0}},
        {"item_id": {"source": "item", "type": "categorical", "vocab_size": n_item + 2, "padding_idx": 0}},
        {"cate_id": {"source": "item", "type": "categorical", "vocab_size": n_cate + 2, "padding_idx": 0}},
        {"price": {"source": "item", "type": "numeric"}},
        {"cate_his": {"source": "user", "type": "sequence", "vocab_size": n_cate + 2, "padding_idx": 0,
                      "max_len": SEQ_LEN, "share_embedding": "cate_id"}},
        {"item_emb": {"source": "item", "type": "categorical", "vocab_size": n_item + 2, "padding_idx": 0,
                      "oov_idx": n_item + 1, "pretrained_emb": "item_emb.h5", "freeze_emb": True,
                      "pretrain_dim": PRETRAIN_DIM, "embedding_dim": PRETRAIN_DIM}},
    ]
    fmap_json = {"dataset_id": "tiny", "num_fields": len(features), "total_features": 0,
                 "input_length": 0, "labels": labels, "features": features}
    with open(os.path.join(data_dir, "feature_map.json"), "w") as f:
        json.dump(fmap_json, f)
    feature_map = FeatureMap("tiny", data_dir)
    feature_map.load(os.path.join(data_dir, "feature_map.json"), {"embedding_dim": 8})

    columns = {"user_id": user, "item_id": item, "cate_id": cate, "price": price,
               "cate_his": hist, "item_emb": item.copy(), "click": label}
    if multitask:
        like_prob = 1.0 / (1.0 + np.exp(-(logit - 1.0 + 0.8 * (price < 0.3))))
        columns["like"] = (rng.random(num_rows) < like_prob).astype(np.float32)
    return TinyData(feature_map, columns, true_prob)


def build_tiny_model(name: str, feature_map: FeatureMap, tmp_path, seed: int = 0, **overrides):
    """A model of the registry on tiny data, seeded, with fuxictr's default gradient clip."""
    from exfm_plugin.models import MODEL_REGISTRY

    torch.manual_seed(seed)
    model = MODEL_REGISTRY[name](feature_map, **model_kwargs(tmp_path, **overrides))
    model._max_gradient_norm = 10.0
    return model


def first_batch(data: "TinyData", size: int = 64) -> dict:
    return next(data.batches(size))

def full_data_loss(model, data: "TinyData") -> float:
    """The model's training loss over every row of the tiny data, in eval mode."""
    full = {k: torch.from_numpy(v) for k, v in data.columns.items()}
    model.eval()
    with torch.no_grad():
        return model.add_loss(model(full), model.get_labels(full)).item()
