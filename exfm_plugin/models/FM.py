"""Factorization Machine (Rendle, 2010) as an ExFM VM.

Backbone output ``x = [bi-interaction vector (D), first-order term (1)]``; the serving head
is the parameter-free sum, so ``serving_head(backbone(X))`` is exactly FuxiCTR's FM logit.
"""
from __future__ import annotations

import torch
from fuxictr.pytorch.layers import FeatureEmbeddingDict, InnerProductInteraction, LogisticRegression

from .base import ExFMModel
from .kernels.embedding import field_embeddings


class FM(ExFMModel):
    """Factorization Machine (Rendle, ICDM 2010): the logit is a bias, first-order weights and
    the sum over field pairs of <v_i, v_j>, as FuxiCTR's model_zoo FM computes it (the
    ``LogisticRegression`` layer plus the ``bi_interaction`` of ``InnerProductInteraction``).
    ``backbone`` returns ``[bi-interaction vector (D), first-order term (1)]`` and
    ``serving_head`` their parameter-free sum, so the two compose to exactly the FM logit.

    Args:
        feature_map (FeatureMap): the dataset's feature specs (fuxictr's ``FeatureMap``).
        model_id (str): model identifier, the checkpoint's name. Default: ``"FM"``.
        gpu (int): GPU device index, ``-1`` for CPU. Default: ``-1``.
        learning_rate (float): the optimizer's learning rate. Default: ``1e-3``.
        embedding_dim (int): embedding width D of every field. Default: ``10``.
        regularizer (str, float or None): one regularizer for the embeddings and the weights
            alike (fuxictr's FM: ``"l2(1e-4)"`` or a number). Default: ``None``.
        **kwargs: FuxiCTR's ``BaseModel`` arguments (``optimizer`` and ``loss``, both required,
            ``model_root``, ``metrics``, ``verbose``, ``monitor``, ``early_stop_patience``, ...)
            and the training options ``embedding_update``, ``precision``, ``torch_compile``
            (docs/models.md, Training options).
    """
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
