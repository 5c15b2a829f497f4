"""FmFM: Field-matrixed Factorization Machines (Sun et al., WWW 2021) as an ExFM VM.

Each field pair (i, j) gets a transform ``r_ij``: a D-vector ("vectorized") or a DxD matrix
("matrixed"), and the pairwise term is ``(v_i r_ij) . v_j``. The backbone output is
``x = [sum_{i<j} (v_i r_ij) * v_j  (a D-vector), first-order LR term (1)]``; the serving head
is the parameter-free sum of ``x``, so it is exactly the FmFM logit.
"""
from __future__ import annotations

import torch
from torch import nn
from fuxictr.pytorch.layers import FeatureEmbeddingDict, LogisticRegression

from .base import ExFMModel
from .kernels.embedding import field_embeddings

FIELD_INTERACTION_TYPES = ("vectorized", "matrixed")


class FieldPairInteraction(nn.Module):
    """Sum over field pairs of ``(v_i r_ij) * v_j``, kept as a D-vector (B, D).

    ``r_ij`` starts at the identity (all ones / identity matrix), so an untrained FmFM is an
    FM: the FmFM paper's FM special case, and a safe start for the distillation heads.
    """

    def __init__(self, num_fields: int, embedding_dim: int, field_interaction_type: str = "matrixed"):
        super().__init__()
        if field_interaction_type not in FIELD_INTERACTION_TYPES:
            raise ValueError(f"field_interaction_type={field_interaction_type!r} is not supported; "
                             f"expected one of {FIELD_INTERACTION_TYPES}")
        self.field_interaction_type = field_interaction_type
        self.embedding_dim = embedding_dim
        pairs = torch.triu_indices(num_fields, num_fields, offset=1)
        self.register_buffer("left_index", pairs[0], persistent=False)
        self.register_buffer("right_index", pairs[1], persistent=False)
        num_pairs = pairs.size(1)
        if field_interaction_type == "vectorized":
            self.interaction_weight = nn.Parameter(torch.empty(num_pairs, embedding_dim))
        else:
            self.interaction_weight = nn.Parameter(torch.empty(num_pairs, embedding_dim, embedding_dim))
        self.init_weights()

    def init_weights(self) -> None:
        with torch.no_grad():
            if self.field_interaction_type == "vectorized":
                self.interaction_weight.fill_(1.0)
            else:
                self.interaction_weight.copy_(
                    torch.eye(self.embedding_dim).expand_as(self.interaction_weight))

    def forward(self, feature_emb: torch.Tensor) -> torch.Tensor:
        left = feature_emb.index_select(1, self.left_index)    # B x P x D
        right = feature_emb.index_select(1, self.right_index)  # B x P x D
        if self.field_interaction_type == "vectorized":
            transformed = left * self.interaction_weight
        else:
            transformed = torch.einsum("bpd,pde->bpe", left, self.interaction_weight)
        return (transformed * right).sum(dim=1)


class FmFM(ExFMModel):
    """Field-matrixed Factorization Machine (Sun et al., WWW 2021), as FuxiCTR's model_zoo FmFM:
    the pairwise term of fields i < j is ``(v_i r_ij) . v_j`` with one transform ``r_ij`` per
    field pair, a D x D matrix (``matrixed``) or a D-vector (``vectorized``), plus a bias and
    first-order weights. ``r_ij`` starts at the identity, so an untrained FmFM is an FM.
    ``backbone`` returns ``[sum_{i<j} (v_i r_ij) * v_j (D), first-order term (1)]`` and
    ``serving_head`` their parameter-free sum.

    Args:
        feature_map (FeatureMap): the dataset's feature specs (fuxictr's ``FeatureMap``).
        model_id (str): model identifier, the checkpoint's name. Default: ``"FmFM"``.
        gpu (int): GPU device index, ``-1`` for CPU. Default: ``-1``.
        learning_rate (float): the optimizer's learning rate. Default: ``1e-3``.
        embedding_dim (int): embedding width D of every field. Default: ``10``.
        regularizer (str, float or None): one regularizer for the embeddings and the weights
            alike (fuxictr's FmFM). Default: ``None``.
        field_interaction_type (str): ``"matrixed"`` (D x D transforms) or ``"vectorized"``
            (D-vector transforms). Default: ``"matrixed"``.
        **kwargs: FuxiCTR's ``BaseModel`` arguments (``optimizer`` and ``loss``, both required,
            ``model_root``, ``metrics``, ``verbose``, ``monitor``, ``early_stop_patience``, ...)
            and the training options ``embedding_update``, ``precision``, ``torch_compile``
            (docs/models.md, Training options).
    """
    def __init__(self,
                 feature_map,
                 model_id: str = "FmFM",
                 gpu: int = -1,
                 learning_rate: float = 1e-3,
                 embedding_dim: int = 10,
                 regularizer=None,
                 field_interaction_type: str = "matrixed",
                 **kwargs):
        super().__init__(feature_map, model_id=model_id, gpu=gpu,
                         embedding_regularizer=regularizer, net_regularizer=regularizer, **kwargs)
        self.embedding_layer = FeatureEmbeddingDict(feature_map, embedding_dim)
        self.lr_layer = LogisticRegression(feature_map, use_bias=True)
        self.field_interaction = FieldPairInteraction(feature_map.get_num_fields(), embedding_dim,
                                                      field_interaction_type)
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self.reset_parameters()
        self.model_to_device()

    def backbone(self, X: dict[str, torch.Tensor]) -> torch.Tensor:
        feature_emb = field_embeddings(self.embedding_layer, X)
        return torch.cat([self.field_interaction(feature_emb), self.lr_layer(X)], dim=-1)

    def serving_head(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=-1, keepdim=True)
