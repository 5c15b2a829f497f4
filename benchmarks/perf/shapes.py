"""TaobaoAd-shaped feature maps and random batches for performance benchmarks.

Vocabulary sizes follow the real TaobaoAd_x1 data (orders of magnitude), so embedding
tables and lookups cost what they cost on the real dataset.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch
from fuxictr.features import FeatureMap

SEQ_LEN = 50
TAOBAO_CATEGORICAL = {  # name -> vocab size
    "userid": 1_141_730, "cms_segid": 99, "cms_group_id": 15, "final_gender_code": 4,
    "age_level": 9, "pvalue_level": 5, "shopping_level": 5, "occupation": 4,
    "new_user_class_level": 7, "adgroup_id": 846_813, "cate_id": 6_771, "campaign_id": 423_438,
    "customer": 255_877, "brand": 99_816, "pid": 4, "btag": 6,
}
TAOBAO_SEQUENCES = {"cate_his": "cate_id", "brand_his": "brand", "btag_his": "btag"}


def taobao_feature_map(data_dir: str, dataset_id: str = "taobao_shape") -> FeatureMap:
    """A FuxiCTR FeatureMap with TaobaoAd_x1's fields: 16 categorical, price, 3 sequences."""
    features = [{name: {"source": "", "type": "categorical", "vocab_size": size, "padding_idx": 0}}
                for name, size in TAOBAO_CATEGORICAL.items()]
    features.append({"price": {"source": "", "type": "numeric"}})
    for seq, target in TAOBAO_SEQUENCES.items():
        features.append({seq: {"source": "", "type": "sequence", "max_len": SEQ_LEN, "padding_idx": 0,
                               "vocab_size": TAOBAO_CATEGORICAL[target], "share_embedding": target}})
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, "feature_map.json")
    with open(path, "w") as f:
        json.dump({"dataset_id": dataset_id, "labels": ["clk"], "features": features}, f)
    fmap = FeatureMap(dataset_id, data_dir)
    fmap.load(path, {})
    return fmap


def taobao_batches(num_batches: int, batch_size: int, seed: int = 0,
                   with_teacher: bool = True) -> list[dict[str, torch.Tensor]]:
    """Random TaobaoAd-shaped batches (5% CTR, sequences half-filled on average)."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(num_batches):
        batch = {name: torch.from_numpy(rng.integers(1, size, batch_size))
                 for name, size in TAOBAO_CATEGORICAL.items()}
        batch["price"] = torch.from_numpy(rng.random(batch_size).astype(np.float32))
        lengths = rng.integers(0, SEQ_LEN + 1, batch_size)
        filled = np.arange(SEQ_LEN)[None, :] < lengths[:, None]
        for seq, target in TAOBAO_SEQUENCES.items():
            ids = rng.integers(1, TAOBAO_CATEGORICAL[target], (batch_size, SEQ_LEN))
            batch[seq] = torch.from_numpy(np.where(filled, ids, 0))
        batch["clk"] = torch.from_numpy((rng.random(batch_size) < 0.05).astype(np.float32))
        if with_teacher:
            batch["fm_pred"] = torch.from_numpy(rng.beta(1, 19, batch_size).astype(np.float32))
        batches.append(batch)
    return batches
