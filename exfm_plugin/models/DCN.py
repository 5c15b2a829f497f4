"""DCN: Deep & Cross Network (Wang et al., ADKDD 2017) as an ExFM model.

A CrossNet and a DNN run in parallel on the flattened field embeddings. The backbone output is
``x = concat(cross_out, dnn_out)`` (the DNN part is left out when ``dnn_hidden_units`` is
empty); the serving head is ``Linear(x -> 1)``, as in the original model.
"""
from __future__ import annotations

import torch
from torch import nn
from fuxictr.pytorch.layers import CrossNet, FeatureEmbeddingDict, MLP_Block

from .base import ExFMModel
from .kernels.embedding import field_embeddings


class DCN(ExFMModel):
    """Deep & Cross Network (Wang et al., ADKDD 2017), as FuxiCTR's model_zoo DCN: a CrossNet
    (``x_{l+1} = x_0 (w_l . x_l) + b_l + x_l``) and an optional DNN run in parallel on the
    flattened field embeddings. ``backbone`` returns ``concat(cross_out, dnn_out)`` (the cross
    output alone when ``dnn_hidden_units`` is empty) and ``serving_head`` is ``Linear(x -> 1)``,
    the reference's output layer.

    Args:
        feature_map (FeatureMap): the dataset's feature specs (fuxictr's ``FeatureMap``).
        model_id (str): model identifier, the checkpoint's name. Default: ``"DCN"``.
        gpu (int): GPU device index, ``-1`` for CPU. Default: ``-1``.
        learning_rate (float): the optimizer's learning rate. Default: ``1e-3``.
        embedding_dim (int): embedding width of every field. Default: ``10``.
        dnn_hidden_units (list[int]): the parallel DNN's hidden layers; empty for none.
            Default: ``[]``.
        dnn_activations (str or list): the DNN's activation(s). Default: ``"ReLU"``.
        num_cross_layers (int): number of cross layers (>= 0). Default: ``3``.
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
                 model_id: str = "DCN",
                 gpu: int = -1,
                 learning_rate: float = 1e-3,
                 embedding_dim: int = 10,
                 dnn_hidden_units: list[int] = [],
                 dnn_activations="ReLU",
                 num_cross_layers: int = 3,
                 net_dropout: float = 0,
                 batch_norm: bool = False,
                 embedding_regularizer=None,
                 net_regularizer=None,
                 **kwargs):
        super().__init__(feature_map, model_id=model_id, gpu=gpu,
                         embedding_regularizer=embedding_regularizer,
                         net_regularizer=net_regularizer, **kwargs)
        if num_cross_layers < 0:
            raise ValueError(f"num_cross_layers={num_cross_layers} must be >= 0")
        self.embedding_layer = FeatureEmbeddingDict(feature_map, embedding_dim)
        input_dim = feature_map.get_num_fields() * embedding_dim
        self.crossnet = CrossNet(input_dim, num_cross_layers)
        self.dnn = None
        output_dim = input_dim
        if dnn_hidden_units:
            self.dnn = MLP_Block(input_dim=input_dim,
                                 hidden_units=list(dnn_hidden_units),
                                 hidden_activations=dnn_activations,
                                 output_dim=None,
                                 dropout_rates=net_dropout,
                                 batch_norm=batch_norm)
            output_dim += dnn_hidden_units[-1]
        self.fc = nn.Linear(output_dim, 1)
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()

    def backbone(self, X: dict[str, torch.Tensor]) -> torch.Tensor:
        flat_emb = field_embeddings(self.embedding_layer, X).flatten(start_dim=1)
        cross_out = self.crossnet(flat_emb)
        if self.dnn is None:
            return cross_out
        return torch.cat([cross_out, self.dnn(flat_emb)], dim=-1)

    def serving_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)
