"""DeepFM (Guo et al., IJCAI 2017) as an ExFM VM.

Backbone output ``x = [bi-interaction (D), first-order LR term (1), last DNN hidden layer (H)]``.
The serving head sums the first D+1 entries (the FM logit) and adds ``Linear(H -> 1)`` (the DNN
output layer), so ``serving_head(backbone(X))`` equals the standard DeepFM logit
``FM(X) + DNN(X)``. The distillation heads see both the FM and the deep representation.
"""
from __future__ import annotations

import torch
from torch import nn
from fuxictr.pytorch.layers import (FeatureEmbeddingDict, InnerProductInteraction,
                                    LogisticRegression, MLP_Block)

from .base import ExFMModel
from .kernels.embedding import field_embeddings


class DeepFM(ExFMModel):
    """DeepFM (Guo et al., IJCAI 2017), as FuxiCTR's model_zoo DeepFM: the FM logit (bias,
    first-order weights, pairwise inner products) plus a DNN's logit over the flattened field
    embeddings, both sharing one embedding table. ``backbone`` returns ``[bi-interaction (D),
    first-order term (1), last DNN hidden layer (H)]``; ``serving_head`` sums the first D+1
    entries and adds the DNN's output layer ``Linear(H -> 1)``, so it equals the DeepFM logit
    ``FM(X) + DNN(X)`` and the distillation heads see both representations.

    Args:
        feature_map (FeatureMap): the dataset's feature specs (fuxictr's ``FeatureMap``).
        model_id (str): model identifier, the checkpoint's name. Default: ``"DeepFM"``.
        gpu (int): GPU device index, ``-1`` for CPU. Default: ``-1``.
        learning_rate (float): the optimizer's learning rate. Default: ``1e-3``.
        embedding_dim (int): embedding width D of every field. Default: ``10``.
        hidden_units (list[int]): the DNN's hidden layers; empty feeds the flattened embeddings
            to the output layer. Default: ``[64, 64, 64]``.
        hidden_activations (str or list): the DNN's activation(s). Default: ``"ReLU"``.
        net_dropout (float): dropout rate of the DNN. Default: ``0``.
        batch_norm (bool): batch normalisation in the DNN. Default: ``False``.
        embedding_regularizer (str, float or None): regularizer of the embeddings. Default: ``None``.
        net_regularizer (str, float or None): regularizer of the other weights. Default: ``None``.
        **kwargs: FuxiCTR's ``BaseModel`` arguments (``optimizer`` and ``loss``, both required,
            ``model_root``, ``metrics``, ``verbose``, ``monitor``, ``early_stop_patience``, ...)
            and the training options ``embedding_update``, ``precision``, ``torch_compile``
            (docs/models.md, Training options).
    """
    def __init__(self,
                 feature_map,
                 model_id: str = "DeepFM",
                 gpu: int = -1,
                 learning_rate: float = 1e-3,
                 embedding_dim: int = 10,
                 hidden_units: list[int] = [64, 64, 64],
                 hidden_activations="ReLU",
                 net_dropout: float = 0,
                 batch_norm: bool = False,
                 embedding_regularizer=None,
                 net_regularizer=None,
                 **kwargs):
        super().__init__(feature_map, model_id=model_id, gpu=gpu,
                         embedding_regularizer=embedding_regularizer,
                         net_regularizer=net_regularizer, **kwargs)
        self.embedding_dim = embedding_dim
        self.embedding_layer = FeatureEmbeddingDict(feature_map, embedding_dim)
        self.lr_layer = LogisticRegression(feature_map, use_bias=True)
        self.bi_interaction = InnerProductInteraction(feature_map.get_num_fields(), output="bi_interaction")
        dnn_input_dim = feature_map.get_num_fields() * embedding_dim
        self.dnn = MLP_Block(input_dim=dnn_input_dim,
                             hidden_units=list(hidden_units),
                             hidden_activations=hidden_activations,
                             output_dim=None,
                             dropout_rates=net_dropout,
                             batch_norm=batch_norm)
        self.dnn_out = nn.Linear(hidden_units[-1] if hidden_units else dnn_input_dim, 1)
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()

    def backbone(self, X: dict[str, torch.Tensor]) -> torch.Tensor:
        feature_emb = field_embeddings(self.embedding_layer, X)
        return torch.cat([self.bi_interaction(feature_emb),
                          self.lr_layer(X),
                          self.dnn(feature_emb.flatten(start_dim=1))], dim=-1)

    def serving_head(self, x: torch.Tensor) -> torch.Tensor:
        fm_part = x[:, :self.embedding_dim + 1].sum(dim=-1, keepdim=True)
        return fm_part + self.dnn_out(x[:, self.embedding_dim + 1:])
