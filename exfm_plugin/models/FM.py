"""Factorization Machine (Rendle, 2010) as an ExFM VM.

Backbone output ``x = [bi-interaction vector (D), first-order term (1)]``; the serving head
is the parameter-free sum, so ``serving_head(backbone(X))`` is exactly FuxiCTR's FM logit.
"""
from __future__ import annotations

import torch
from fuxictr.pytorch.layers import FeatureEmbeddingDict, InnerProductInteraction, LogisticRegression

from .base import ExFMModel
from .embedding import field_embeddings


class FM(ExFMModel):
    def __init__(self,
                 feature_map,
                 model_id: str = "FM",
                 gpu: int = -1,
                 learning_rate: float = 1e-3,
                 embedding_dim: int = 10,
                 regularizer=None,
                 **kwargs):
        super().__init__(feature_map, model_id=model_id, gpu=gpu,
                         embedding_regularizer=regularizer, net_regularizer=regularizer, **kwargs)
        self.embedding_layer = FeatureEmbeddingDict(feature_map, embedding_dim)
        self.lr_layer = LogisticRegression(feature_map, use_bias=True)
        self.bi_interaction = InnerProductInteraction(feature_map.num_fields, output="bi_interaction")
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()

    def backbone(self, X):
        feature_emb = field_embeddings(self.embedding_layer, X)
        return torch.cat([self.bi_interaction(feature_emb), self.lr_layer(X)], dim=-1)

    def serving_head(self, x):
        return x.sum(dim=-1, keepdim=True)
