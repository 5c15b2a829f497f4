"""Field embeddings for models that need one vector per field (FM family, DCN family)."""
from __future__ import annotations

import torch
from fuxictr.pytorch.layers import FeatureEmbeddingDict
from torch import nn

from .sparse_optim import bag_sum


def masked_sequence_mean(seq_emb: torch.Tensor, ids: torch.Tensor, padding_idx: int) -> torch.Tensor:
    """Mean of a sequence's embeddings over its non-padding positions (0 for an empty one)."""
    mask = (ids != padding_idx).unsqueeze(-1).to(seq_emb.dtype)
    return (seq_emb * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def pooled_sequence_fields(embedding_layer: FeatureEmbeddingDict, X: dict[str, torch.Tensor]) -> list[str]:
    """The sequence features whose field vector is the masked mean of a plain embedding table
    (no ``feature_encoder``), which :func:`field_embeddings` pools in one fused step."""
    features = embedding_layer._feature_map.features
    return [name for name in X
            if features[name]["type"] == "sequence" and name not in embedding_layer.feature_encoders
            and type(embedding_layer.embedding_layers[name]) is nn.Embedding]


def field_embeddings(embedding_layer: FeatureEmbeddingDict, X: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, num_fields, D): fuxictr's embeddings, with any sequence that has no
    ``feature_encoder`` mean-pooled over its real items so every field is one vector.

    Such a sequence is pooled with ``embedding_bag`` (sum over non-padding positions, divided
    by their count): the value :func:`masked_sequence_mean` gives on the (B, L, D) lookup,
    without materialising it, and with a row-sparse gradient under ``embedding_update: sparse``."""
    features = embedding_layer._feature_map.features
    # X's order, not a set's: sequences sharing one table (pos_items, neg_items -> item_id) add
    # their gradients into it in this order, and a set's order changes with PYTHONHASHSEED, so
    # the float sum (and every metric after it) would differ from process to process
    pooled = pooled_sequence_fields(embedding_layer, X)
    emb_dict = embedding_layer({k: v for k, v in X.items() if k not in pooled})
    for name in pooled:
        ids = X[name].long()
        padding_idx = features[name].get("padding_idx", 0)
        padding_idx = 0 if padding_idx is None else padding_idx
        table = embedding_layer.embedding_layers[name]
        count = (ids != padding_idx).sum(dim=1, keepdim=True).clamp(min=1)
        if table.padding_idx != padding_idx:  # the table does not know the feature's padding id
            emb_dict[name] = masked_sequence_mean(table(ids), ids, padding_idx)
        else:
            emb_dict[name] = bag_sum(table, ids) / count.to(table.weight.dtype)
    for name, emb in emb_dict.items():
        if emb.dim() == 3:
            padding_idx = features[name].get("padding_idx", 0)
            emb_dict[name] = masked_sequence_mean(emb, X[name], 0 if padding_idx is None else padding_idx)
    return embedding_layer.dict2tensor(emb_dict)
