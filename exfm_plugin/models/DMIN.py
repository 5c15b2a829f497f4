"""DMIN: Deep Multi-Interest Network (Xiao et al., CIKM 2020) as an ExFM model (a teacher FM
in the paper's public experiments), computing what FuxiCTR's model_zoo/DMIN computes
(``dmin_layers`` and ``dmin_attention`` list every point and the one deliberate difference,
the refiner mask).

The backbone output ``x`` is the last DNN hidden layer of ``DMINEncoder``; the serving head is
the reference DNN's output layer ``Linear(x -> 1)``. The auxiliary loss (``aux_loss_lambda`` > 0,
with ``neg_seq_field``) is computed in the same pass as ``x``: ``forward`` returns it as
``aux_loss`` and ``add_loss`` adds it (fuxictr's ``fit``/``train_step``); code that drives
``backbone``/``serving_head`` itself adds :meth:`auxiliary_loss` after each ``backbone`` call.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import ExFMModel
from .dmin_layers import DMINEncoder


class DMIN(ExFMModel):
    """Deep Multi-Interest Network (Xiao et al., CIKM 2020), computing what FuxiCTR's model_zoo
    DMIN computes (``dmin_layers`` and ``dmin_attention`` list every point and the one
    deliberate difference, the refiner mask): per (target, sequence) pair a behaviour refiner
    (self-attention), a multi-head interest extractor and one target attention per head; the
    interests and the other field embeddings feed a DNN. ``backbone`` returns the DNN's last
    hidden layer and ``serving_head`` is its output layer ``Linear(x -> 1)``. A teacher FM of
    the paper's public experiments.

    Args:
        feature_map (FeatureMap): the dataset's feature specs (fuxictr's ``FeatureMap``).
        model_id (str): model identifier, the checkpoint's name. Default: ``"DMIN"``.
        gpu (int): GPU device index, ``-1`` for CPU. Default: ``-1``.
        learning_rate (float): the optimizer's learning rate. Default: ``1e-3``.
        embedding_dim (int): embedding width of every field. Default: ``10``.
        dnn_hidden_units (list[int]): hidden layers of the DNN over the interests and the other
            field embeddings; its last layer is the backbone vector x. Default: ``[512, 128, 64]``.
        dnn_activations (str or list): the DNN's activation(s). Default: ``"Dice"``.
        aux_hidden_units (list[int]): hidden layers of the auxiliary-loss network. Default: ``[100, 50]``.
        aux_activation (str): its activation. Default: ``"ReLU"``.
        net_dropout (float): dropout of the DNN, the refiner and the extractor. Default: ``0``.
        target_field (tuple or list): the target field(s), one per pair; a tuple is fields
            concatenated. Default: ``("item_id", "cate_id")``.
        sequence_field (tuple or list): the behaviour sequence field(s) paired with them.
            Default: ``("click_history", "cate_history")``.
        neg_seq_field (tuple or list): negative sequences for the auxiliary loss (ignored while
            absent and the loss is off). Default: ``("neg_click_history", "neg_cate_history")``.
        num_heads (int): interests (attention heads) per pair; must divide the pair's width.
            Default: ``4``.
        enable_sum_pooling (bool): add ``[sum(seq), target * sum(seq)]`` per pair. Default: ``False``.
        attention_hidden_units (list[int]): hidden layers of the target-attention MLP.
            Default: ``[80, 40]``.
        attention_activation (str): its activation. Default: ``"ReLU"``.
        attention_dropout (float): dropout of the attention weights and that MLP. Default: ``0``.
        use_pos_emb (bool): concatenate a position embedding to the target. Default: ``True``.
        pos_emb_dim (int): its width. Default: ``8``.
        use_behavior_refiner (bool): self-attention refiner before the extractor. Default: ``True``.
        refiner_additive_mask (bool): reproduce the reference refiner's additive ``+1`` mask
            instead of applying the causal and padding mask. Default: ``False``.
        aux_loss_lambda (float): weight of the auxiliary next-behaviour loss; 0 turns it off.
            Default: ``0``.
        batch_norm (bool): batch normalisation in the DNNs. Default: ``True``.
        bn_only_once (bool): batch normalisation on the first DNN layer only. Default: ``False``.
        layer_norm (bool): LayerNorm in the refiner and the extractor. Default: ``True``.
        embedding_regularizer (str, float or None): regularizer of the embeddings. Default: ``None``.
        net_regularizer (str, float or None): regularizer of the other weights. Default: ``None``.
        **kwargs: FuxiCTR's ``BaseModel`` arguments (``optimizer`` and ``loss``, both required,
            ``model_root``, ``metrics``, ``verbose``, ``monitor``, ``early_stop_patience``, ...)
            and the training options ``embedding_update``, ``precision``, ``torch_compile``
            (docs/models.md, Training options).
    """
    def __init__(self,
                 feature_map,
                 model_id: str = "DMIN",
                 gpu: int = -1,
                 learning_rate: float = 1e-3,
                 embedding_dim: int = 10,
                 dnn_hidden_units: list[int] = [512, 128, 64],
                 dnn_activations="Dice",
                 aux_hidden_units: list[int] = [100, 50],
                 aux_activation="ReLU",
                 net_dropout: float = 0,
                 target_field=("item_id", "cate_id"),
                 sequence_field=("click_history", "cate_history"),
                 neg_seq_field=("neg_click_history", "neg_cate_history"),
                 num_heads: int = 4,
                 enable_sum_pooling: bool = False,
                 attention_hidden_units: list[int] = [80, 40],
                 attention_activation="ReLU",
                 attention_dropout: float = 0,
                 use_pos_emb: bool = True,
                 pos_emb_dim: int = 8,
                 use_behavior_refiner: bool = True,
                 refiner_additive_mask: bool = False,
                 aux_loss_lambda: float = 0,
                 batch_norm: bool = True,
                 bn_only_once: bool = False,
                 layer_norm: bool = True,
                 embedding_regularizer=None,
                 net_regularizer=None,
                 **kwargs):
        super().__init__(feature_map, model_id=model_id, gpu=gpu,
                         embedding_regularizer=embedding_regularizer,
                         net_regularizer=net_regularizer, **kwargs)
        self.encoder = DMINEncoder.from_model_args(feature_map, locals())
        self.fc = nn.Linear(self.encoder.output_dim, 1)
        self._aux_loss: torch.Tensor | None = None
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()

    def backbone(self, X: dict[str, torch.Tensor]) -> torch.Tensor:
        x, self._aux_loss = self.encoder(X)
        return x

    def serving_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)

    def auxiliary_loss(self) -> torch.Tensor:
        """The lambda-weighted auxiliary loss of the last ``backbone`` call (0 when off), to be
        added to the training loss of that batch."""
        if self._aux_loss is None:
            return torch.zeros((), device=self.device)
        return self._aux_loss

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = super().forward(inputs)
        if self._aux_loss is not None:
            out["aux_loss"] = self._aux_loss
        return out

    def add_loss(self, return_dict, y_true):
        """The serving loss plus the auxiliary loss of the same forward pass (the reference's
        ``add_loss``)."""
        loss = super().add_loss(return_dict, y_true)
        if "aux_loss" in return_dict:
            loss = loss + return_dict["aux_loss"]
        return loss
