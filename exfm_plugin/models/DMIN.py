"""DMIN: Deep Multi-Interest Network (Xiao et al., CIKM 2020) as an ExFM model (a teacher FM
in the paper's public experiments).

The backbone output ``x`` is the last DNN hidden layer of ``DMINEncoder`` (see
``dmin_layers``); the serving head is ``Linear(x -> 1)``. The auxiliary loss of the paper's
behaviour refiner (``aux_loss_lambda``) is not implemented: BARS' tuned runs set it to 0.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import ExFMModel
from .dmin_layers import DMINEncoder


class DMIN(ExFMModel):
    def __init__(self,
                 feature_map,
                 model_id: str = "DMIN",
                 gpu: int = -1,
                 learning_rate: float = 1e-3,
                 embedding_dim: int = 10,
                 dnn_hidden_units: list[int] = [512, 128, 64],
                 dnn_activations="ReLU",
                 attention_hidden_units: list[int] = [64],
                 attention_activation="Dice",
                 attention_dropout: float = 0,
                 net_dropout: float = 0,
                 batch_norm: bool = False,
                 bn_only_once: bool = False,
                 layer_norm: bool = True,
                 num_heads: int = 4,
                 enable_sum_pooling: bool = False,
                 target_field=[("item_id", "cate_id")],
                 sequence_field=[("click_history", "cate_history")],
                 use_pos_emb: bool = True,
                 pos_emb_dim: int = 8,
                 use_behavior_refiner: bool = True,
                 aux_loss_lambda: float = 0,
                 embedding_regularizer=None,
                 net_regularizer=None,
                 **kwargs):
        if aux_loss_lambda:
            raise ValueError(f"aux_loss_lambda={aux_loss_lambda}: DMIN's auxiliary refiner loss is "
                             f"not implemented; set it to 0")
        super().__init__(feature_map, model_id=model_id, gpu=gpu,
                         embedding_regularizer=embedding_regularizer,
                         net_regularizer=net_regularizer, **kwargs)
        self.encoder = DMINEncoder(feature_map, embedding_dim, target_field, sequence_field,
                                   num_heads=num_heads, use_behavior_refiner=use_behavior_refiner,
                                   layer_norm=layer_norm, attention_hidden_units=attention_hidden_units,
                                   attention_activation=attention_activation,
                                   attention_dropout=attention_dropout, use_pos_emb=use_pos_emb,
                                   pos_emb_dim=pos_emb_dim, enable_sum_pooling=enable_sum_pooling,
                                   dnn_hidden_units=dnn_hidden_units, dnn_activations=dnn_activations,
                                   net_dropout=net_dropout, batch_norm=batch_norm,
                                   bn_only_once=bn_only_once)
        self.fc = nn.Linear(self.encoder.output_dim, 1)
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()

    def backbone(self, X: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.encoder(X)

    def serving_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)
