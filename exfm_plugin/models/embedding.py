"""Field embeddings for models that need one vector per field (FM family, DCN family)."""
from __future__ import annotations

import torch
from fuxictr.pytorch.layers import FeatureEmbeddingDict


def masked_sequence_mean(seq_emb: torch.Tensor, ids: torch.Tensor, padding_idx: int) -> torch.Tensor:
    """Mean of a sequence's embeddings over its non-padding positions (0 for an empty one)."""
    mask = (ids != padding_idx).unsqueeze(-1).to(seq_emb.dtype)
    return (seq_emb * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def field_embeddings(embedding_layer: FeatureEmbeddingDict, X: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, num_fields, D): fuxictr's embeddings, with any sequence that has no
    ``feature_encoder`` mean-pooled over its real items so every field is one vector."""
    emb_dict = embedding_layer(X)
    features = embedding_layer._feature_map.features
    for name, emb in emb_dict.items():
        if emb.dim() == 3:
            padding_idx = features[name].get("padding_idx", 0)
            emb_dict[name] = masked_sequence_mean(emb, X[name], 0 if padding_idx is None else padding_idx)
    return embedding_layer.dict2tensor(emb_dict)
