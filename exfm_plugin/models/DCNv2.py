"""DCNv2 (Wang et al., WWW 2021) as an ExFM model.

``model_structure``:
- ``crossnet_only``: x = CrossNetV2(e)
- ``stacked``: x = DNN(CrossNetV2(e))
- ``parallel``: x = concat(CrossNetV2(e), DNN(e))
- ``stacked_parallel``: x = concat(DNN_stacked(CrossNetV2(e)), DNN_parallel(e))

where ``e`` is the flattened field embeddings. The serving head is ``Linear(x -> 1)``.
``use_low_rank_mixture`` swaps CrossNetV2 for fuxictr's ``CrossNetMix`` (low-rank experts).
"""
from __future__ import annotations

import torch
from torch import nn
from fuxictr.pytorch.layers import CrossNetMix, CrossNetV2, FeatureEmbeddingDict, MLP_Block

from .base import ExFMModel
from .kernels.embedding import field_embeddings

MODEL_STRUCTURES = ("crossnet_only", "stacked", "parallel", "stacked_parallel")


class DCNv2(ExFMModel):
    """DCN-V2 (Wang et al., WWW 2021), as FuxiCTR's model_zoo DCNv2: a full-rank cross network
    (``x_{l+1} = x_0 * (W_l x_l + b_l) + x_l``, fuxictr's ``CrossNetV2``) or its low-rank
    mixture of experts (``CrossNetMix``), combined with DNNs by ``model_structure`` (see the
    module docstring). ``backbone`` returns the representation before the reference's output
    layer and ``serving_head`` is that layer, ``Linear(x -> 1)``.

    Args:
        feature_map (FeatureMap): the dataset's feature specs (fuxictr's ``FeatureMap``).
        model_id (str): model identifier, the checkpoint's name. Default: ``"DCNv2"``.
        gpu (int): GPU device index, ``-1`` for CPU. Default: ``-1``.
        model_structure (str): ``"crossnet_only"``, ``"stacked"``, ``"parallel"`` or
            ``"stacked_parallel"``. Default: ``"parallel"``.
        use_low_rank_mixture (bool): use ``CrossNetMix`` instead of ``CrossNetV2``. Default: ``False``.
        low_rank (int): rank of each ``CrossNetMix`` expert. Default: ``32``.
        num_experts (int): number of ``CrossNetMix`` experts. Default: ``4``.
        learning_rate (float): the optimizer's learning rate. Default: ``1e-3``.
        embedding_dim (int): embedding width of every field. Default: ``10``.
        stacked_dnn_hidden_units (list[int]): hidden layers of the DNN on top of the cross
            network (``stacked``, ``stacked_parallel``). Default: ``[]``.
        parallel_dnn_hidden_units (list[int]): hidden layers of the DNN beside it (``parallel``,
            ``stacked_parallel``). Default: ``[]``.
        dnn_activations (str or list): the DNNs' activation(s). Default: ``"ReLU"``.
        num_cross_layers (int): number of cross layers. Default: ``3``.
        net_dropout (float): dropout rate of the DNNs. Default: ``0``.
        batch_norm (bool): batch normalisation in the DNNs. Default: ``False``.
        embedding_regularizer (str, float or None): regularizer of the embeddings. Default: ``None``.
        net_regularizer (str, float or None): regularizer of the other weights. Default: ``None``.
        **kwargs: FuxiCTR's ``BaseModel`` arguments (``optimizer`` and ``loss``, both required,
            ``model_root``, ``metrics``, ``verbose``, ``monitor``, ``early_stop_patience``, ...)
            and the training options ``embedding_update``, ``precision``, ``torch_compile``
            (docs/models.md, Training options).
    """
    def __init__(self,
                 feature_map,
                 model_id: str = "DCNv2",
                 gpu: int = -1,
                 model_structure: str = "parallel",
                 use_low_rank_mixture: bool = False,
                 low_rank: int = 32,
                 num_experts: int = 4,
                 learning_rate: float = 1e-3,
                 embedding_dim: int = 10,
                 stacked_dnn_hidden_units: list[int] = [],
                 parallel_dnn_hidden_units: list[int] = [],
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
        if model_structure not in MODEL_STRUCTURES:
            raise ValueError(f"model_structure={model_structure!r} is not supported; "
                             f"expected one of {MODEL_STRUCTURES}")
        self.model_structure = model_structure
        self.embedding_layer = FeatureEmbeddingDict(feature_map, embedding_dim)
        input_dim = feature_map.get_num_fields() * embedding_dim
        if use_low_rank_mixture:
            self.crossnet = CrossNetMix(input_dim, num_cross_layers, low_rank=low_rank,
                                        num_experts=num_experts)
        else:
            self.crossnet = CrossNetV2(input_dim, num_cross_layers)

        def dnn(name: str, units: list[int]) -> MLP_Block:
            if not units:
                raise ValueError(f"model_structure={model_structure!r} needs a non-empty {name}")
            return MLP_Block(input_dim=input_dim, hidden_units=list(units),
                             hidden_activations=dnn_activations, output_dim=None,
                             dropout_rates=net_dropout, batch_norm=batch_norm)

        self.stacked_dnn = self.parallel_dnn = None
        if model_structure == "crossnet_only":
            output_dim = input_dim
        elif model_structure == "stacked":
            self.stacked_dnn = dnn("stacked_dnn_hidden_units", stacked_dnn_hidden_units)
            output_dim = stacked_dnn_hidden_units[-1]
        elif model_structure == "parallel":
            self.parallel_dnn = dnn("parallel_dnn_hidden_units", parallel_dnn_hidden_units)
            output_dim = input_dim + parallel_dnn_hidden_units[-1]
        else:
            self.stacked_dnn = dnn("stacked_dnn_hidden_units", stacked_dnn_hidden_units)
            self.parallel_dnn = dnn("parallel_dnn_hidden_units", parallel_dnn_hidden_units)
            output_dim = stacked_dnn_hidden_units[-1] + parallel_dnn_hidden_units[-1]
        self.fc = nn.Linear(output_dim, 1)
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()

    def backbone(self, X: dict[str, torch.Tensor]) -> torch.Tensor:
        flat_emb = field_embeddings(self.embedding_layer, X).flatten(start_dim=1)
        # CrossNetMix squeezes its output, which drops the batch axis for a batch of one
        cross_out = self.crossnet(flat_emb).reshape(flat_emb.size(0), -1)
        if self.model_structure == "crossnet_only":
            return cross_out
        if self.model_structure == "stacked":
            return self.stacked_dnn(cross_out)
        if self.model_structure == "parallel":
            return torch.cat([cross_out, self.parallel_dnn(flat_emb)], dim=-1)
        return torch.cat([self.stacked_dnn(cross_out), self.parallel_dnn(flat_emb)], dim=-1)

    def serving_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)
