"""Building blocks of DMIN (Xiao et al., CIKM 2020), shared by ``DMIN`` and ``MultiTaskDMIN``: the
field pairs, the auxiliary net and the encoder that composes them with the attention layers.

Semantics follow the reference, FuxiCTR model_zoo/DMIN (src/DMIN.py, 2024 version: the one with
``use_behavior_refiner`` / ``layer_norm`` / ``enable_sum_pooling`` / ``bn_only_once``, which the
BARS configs use). Point by point:

* Pairs: ``target_field[i]`` vs ``sequence_field[i]`` (a tuple/list = fields concatenated);
  ``model_dim`` = the pair's concatenated embedding width; ``num_heads`` must divide it and each
  head has ``model_dim / num_heads`` dimensions. ``max_len`` comes from the first sequence field.
* Masks, behaviour refiner, multi-interest extractor and target attention: see
  :mod:`.dmin_attention`, which holds them (and their speed notes).
* Sum pooling (``enable_sum_pooling``): ``[sum(seq), target * sum(seq)]`` of the raw sequence
  (2 * d per pair). The reference sums every position (fuxictr keeps padding rows at zero);
  here padded positions are masked, which is the same number.
* DNN input: for each pair the num_heads interests (+ sum pooling), then every 2-d field
  embedding not in ``neg_seq_field``, in feature-map order; ``MLP_Block(dnn_hidden_units,
  dnn_activations, dropout net_dropout, batch_norm, bn_only_once)``. Its output layer
  Linear(last, 1) is the ExFM serving head, so ``x`` = the last hidden layer.
* Auxiliary loss (``aux_loss_lambda > 0``, needs ``neg_seq_field``): per pair an
  ``aux_net`` MLP_Block(2d -> aux_hidden_units -> 1, ``aux_activation``, dropout net_dropout,
  batch_norm, bn_only_once) scores ``[refined[t], seq[t+1]]`` as 1 and ``[refined[t],
  neg_seq[t+1]]`` as 0 (two separate calls), BCE masked by the validity of position t+1.
  The reference's own code cannot run (``self.model_dim`` is undefined; its (2M, 1) loss times an
  (M, 1) mask does not broadcast; its "mean" divides element-wise); this implements its evident
  intent: sum(mask * BCE) / (sum(mask) + 1e-9) over positive and negative entries, times lambda,
  summed over pairs, added to the training loss. BCE is taken from logits (the reference uses
  sigmoid + BCE, the same value without fuxictr's log clamp at -100).
* Defaults (reference): embedding_dim 10, dnn [512, 128, 64] Dice, aux [100, 50] ReLU,
  net_dropout 0, num_heads 4, enable_sum_pooling False, attention [80, 40] ReLU, attention
  dropout 0, use_pos_emb True, pos_emb_dim 8, use_behavior_refiner True, aux_loss_lambda 0,
  batch_norm True, bn_only_once False, layer_norm True, neg_seq_field
  (neg_click_history, neg_cate_history) (ignored while absent from the feature map and the aux
  loss is off; the reference would fail there).
* Trailing padding (speed, same result): on CPU, with an attention MLP without Dice, no
  auxiliary loss, no ``refiner_additive_mask``, every row of the batch holding at least one
  valid position and, in training, no attention dropout and no refiner dropout, the positions
  after the last one that is valid in some row are dropped before the refiner (``kept_length``).
  Nothing valid reads them: the attention is causal, their interest weights are exactly 0
  (exp(-1e9) underflows), their gradients exactly 0, and the extractor's packed per-position
  work (and its dropout draws) covers the same valid positions in the same order. A long
  history with a handful of valid items per row then costs attention over the handful.
* Initialisation: fuxictr's (xavier-normal weights, zero biases for Linear layers, per head for
  the grouped ones of ``dmin_attention``; nn.MultiheadAttention keeps torch's own; LayerNorm 1/0;
  Dice alpha 0).
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from fuxictr.pytorch.layers import FeatureEmbeddingDict, MLP_Block

# the attention layers were defined here; re-exported so ``from .dmin_layers import`` keeps working
from .dmin_attention import NEG_INF, BehaviorRefiner, MultiInterestExtractor, allowed_keys, attention_bias  # noqa: F401

FieldGroup = tuple[str, ...]


def normalize_field_pairs(target_field, sequence_field) -> list[tuple[FieldGroup, FieldGroup]]:
    """Pair target fields with sequence fields, FuxiCTR/BARS style.

    A string is one pair of single fields; a tuple is one pair whose fields are concatenated
    (BARS TaobaoAd: ``("cate_id", "brand", "btag")`` vs ``("cate_his", "brand_his", "btag_his")``);
    a list holds one entry per pair, each a string or a tuple/list of fields.
    """
    targets = field_groups(target_field, "target_field")
    sequences = field_groups(sequence_field, "sequence_field")
    if len(targets) != len(sequences):
        raise ValueError(f"target_field has {len(targets)} entries but sequence_field has "
                         f"{len(sequences)}: {targets} vs {sequences}")
    for t, s in zip(targets, sequences):
        if len(t) != len(s):
            raise ValueError(f"target_field {t} and sequence_field {s} must have as many fields")
    return list(zip(targets, sequences))


def field_groups(value, name: str) -> list[FieldGroup]:
    """``"a"`` -> [("a",)]; ``("a", "b")`` -> [("a", "b")]; a list -> one group per entry."""
    if isinstance(value, str):
        return [(value,)]
    if isinstance(value, tuple):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ValueError(f"{name}={value!r}: expected a field name, a tuple of field names "
                         f"or a non-empty list of those")
    out = []
    for item in value:
        group = (item,) if isinstance(item, str) else tuple(item) if isinstance(item, (list, tuple)) else None
        if not group or not all(isinstance(f, str) for f in group):
            raise ValueError(f"{name}={value!r}: entry {item!r} is not a field name or a "
                             f"non-empty tuple of field names")
        out.append(group)
    return out




# --------------------------------------------------------------------------- auxiliary loss
class AuxiliaryNet(nn.Module):
    """The reference's aux_net for one pair and its masked BCE (module docstring)."""

    def __init__(self, model_dim: int, hidden_units: list[int], activation, dropout: float,
                 batch_norm: bool, bn_only_once: bool):
        super().__init__()
        self.mlp = MLP_Block(input_dim=2 * model_dim, output_dim=1, hidden_units=list(hidden_units),
                             hidden_activations=activation, output_activation=None,
                             dropout_rates=dropout, batch_norm=batch_norm, bn_only_once=bn_only_once)

    def forward(self, refined: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                valid: torch.Tensor) -> torch.Tensor:
        head = refined[:, :-1]
        d2 = 2 * refined.shape[-1]
        pos_logit = self.mlp(torch.cat([head, pos[:, 1:]], dim=-1).reshape(-1, d2))
        neg_logit = self.mlp(torch.cat([head, neg[:, 1:]], dim=-1).reshape(-1, d2))
        mask = valid[:, 1:].reshape(-1, 1).to(refined.dtype)
        bce = (F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit), reduction="none")
               + F.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit), reduction="none"))
        return (bce * mask).sum() / (2 * mask.sum() + 1e-9)


# --------------------------------------------------------------------------- encoder
class DMINEncoder(nn.Module):
    """Embeddings -> refiners -> interest extractors -> DNN hidden layers.

    ``forward(X)`` returns ``(x, aux)``: ``x`` the last DNN hidden layer (B, output_dim) and
    ``aux`` the lambda-weighted auxiliary loss of this batch (None when ``aux_loss_lambda`` is 0).
    """

    @classmethod
    def from_model_args(cls, feature_map, args: Mapping[str, Any]) -> "DMINEncoder":
        """The encoder of a DMIN-family model from that model's constructor arguments
        (its ``locals()``): the encoder's own signature says which of them it takes."""
        names = [n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "feature_map")]
        missing = [n for n in names if n not in args]
        if missing:  # a model that does not expose an encoder argument would silently get its default
            raise TypeError(f"a DMIN-family model must take every encoder argument; missing {missing}")
        return cls(feature_map, **{n: args[n] for n in names})

    def __init__(self,
                 feature_map,
                 embedding_dim: int = 10,
                 target_field=("item_id", "cate_id"),
                 sequence_field=("click_history", "cate_history"),
                 neg_seq_field=("neg_click_history", "neg_cate_history"),
                 num_heads: int = 4,
                 use_behavior_refiner: bool = True,
                 refiner_additive_mask: bool = False,
                 layer_norm: bool = True,
                 attention_hidden_units: list[int] = [80, 40],
                 attention_activation="ReLU",
                 attention_dropout: float = 0.0,
                 use_pos_emb: bool = True,
                 pos_emb_dim: int = 8,
                 enable_sum_pooling: bool = False,
                 dnn_hidden_units: list[int] = [512, 128, 64],
                 dnn_activations="Dice",
                 net_dropout: float = 0.0,
                 batch_norm: bool = True,
                 bn_only_once: bool = False,
                 aux_loss_lambda: float = 0.0,
                 aux_hidden_units: list[int] = [100, 50],
                 aux_activation="ReLU"):
        super().__init__()
        features = feature_map.features
        self.pairs = normalize_field_pairs(target_field, sequence_field)
        self.aux_loss_lambda = float(aux_loss_lambda)
        neg_groups = field_groups(neg_seq_field, "neg_seq_field") if neg_seq_field else []
        if neg_groups and len(neg_groups) != len(self.pairs):
            raise ValueError(f"neg_seq_field={neg_seq_field!r} has {len(neg_groups)} entries but there are "
                             f"{len(self.pairs)} (target, sequence) pairs")
        if self.aux_loss_lambda > 0:
            if not neg_groups:
                raise ValueError(f"aux_loss_lambda={aux_loss_lambda} needs neg_seq_field (one negative "
                                 f"sequence per pair, as the reference)")
            for (targets, _), negs in zip(self.pairs, neg_groups):
                if len(negs) != len(targets):
                    raise ValueError(f"neg_seq_field {negs} must have as many fields as target_field {targets}")
                missing = [n for n in negs if n not in features]
                if missing:
                    raise ValueError(f"aux_loss_lambda={aux_loss_lambda}: neg_seq_field {missing} not in "
                                     f"the feature map (features: {sorted(features)})")
        self.neg_groups = neg_groups
        self.neg_fields = {n for g in neg_groups for n in g if n in features}
        for targets, sequences in self.pairs:
            for name in targets + sequences:
                if name not in features:
                    raise ValueError(f"DMIN field {name!r} is not in the feature map "
                                     f"(features: {sorted(features)})")
            for name in sequences:
                if features[name]["type"] != "sequence":
                    raise ValueError(f"sequence_field {name!r} has type {features[name]['type']!r}, "
                                     f"expected 'sequence'")
            for name in targets:
                if features[name]["type"] == "sequence":
                    raise ValueError(f"target_field {name!r} is a sequence field")

        def emb_dim(name: str) -> int:
            """Width of a field's embedding output: a field that shares another's table and has
            no encoder of its own comes out as wide as that table (its own embedding_dim is unused)."""
            spec = features[name]
            if "emb_output_dim" in spec:
                return spec["emb_output_dim"]
            share = spec.get("share_embedding")
            if share in features and share != name and not spec.get("feature_encoder"):
                return emb_dim(share)
            return spec.get("embedding_dim", embedding_dim)

        self.embedding_layer = FeatureEmbeddingDict(feature_map, embedding_dim)
        self.truncate_padding = True  # kept_length: drop trailing all-padding positions where exact
        self.enable_sum_pooling = enable_sum_pooling
        self.padding_idx = {name: (spec.get("padding_idx") or 0) for name, spec in features.items()}
        self.pair_sequences = {name for _, sequences in self.pairs for name in sequences}
        self.flat_fields = [name for name, spec in features.items()
                            if spec["type"] != "meta" and name not in self.pair_sequences
                            and name not in self.neg_fields]
        self.refiners = nn.ModuleList() if use_behavior_refiner else None
        self.extractors = nn.ModuleList()
        self.aux_nets = nn.ModuleList()
        input_dim = sum(emb_dim(name) for name in self.flat_fields)
        for i, (targets, sequences) in enumerate(self.pairs):
            model_dim = sum(emb_dim(name) for name in targets)
            seq_dim = sum(emb_dim(name) for name in sequences)
            if seq_dim != model_dim:
                raise ValueError(f"target_field {targets} ({model_dim}-d) and sequence_field {sequences} "
                                 f"({seq_dim}-d) must have the same embedding width")
            if num_heads < 1 or model_dim % num_heads:
                raise ValueError(f"model_dim={model_dim} of target_field {targets} is not divisible by "
                                 f"num_heads={num_heads} (each head has model_dim / num_heads dimensions)")
            max_len = features[sequences[0]].get("max_len")
            if not max_len:
                raise ValueError(f"sequence_field {sequences[0]!r} has no max_len in the feature map")
            if use_behavior_refiner:
                self.refiners.append(BehaviorRefiner(model_dim, num_heads, attention_dropout, net_dropout,
                                                     layer_norm, refiner_additive_mask))
            self.extractors.append(MultiInterestExtractor(
                model_dim, num_heads, max_len, attention_hidden_units, attention_activation,
                attention_dropout, net_dropout, layer_norm, use_pos_emb, pos_emb_dim))
            if self.aux_loss_lambda > 0:
                self.aux_nets.append(AuxiliaryNet(model_dim, aux_hidden_units, aux_activation, net_dropout,
                                                  batch_norm, bn_only_once))
            input_dim += num_heads * model_dim + (2 * model_dim if enable_sum_pooling else 0)
        self.input_dim = input_dim
        self.dnn = MLP_Block(input_dim=input_dim, hidden_units=list(dnn_hidden_units),
                             hidden_activations=dnn_activations, output_dim=None,
                             dropout_rates=net_dropout, batch_norm=batch_norm, bn_only_once=bn_only_once)
        self.output_dim = dnn_hidden_units[-1] if dnn_hidden_units else input_dim

    def kept_length(self, i: int, valid: torch.Tensor) -> int:
        """How many leading positions of pair ``i`` this batch needs (``valid``: (B, L)): up to
        its last position that is valid in some row, when dropping the rest changes nothing
        (module docstring, "Trailing padding"); else L. ``truncate_padding = False`` keeps L."""
        L = valid.shape[1]
        extractor = self.extractors[i]
        refiner = self.refiners[i] if self.refiners is not None else None
        if not self.truncate_padding or self.aux_loss_lambda > 0 or not extractor.packs_positions(valid.device):
            return L
        if refiner is not None and refiner.additive_mask:  # the reference's +1 mask lets later keys in
            return L
        if self.training:  # a dropout over (B, L, ...) or (L, L) blocks would draw another mask
            if extractor.attention_dropout > 0 or (refiner is not None and (
                    refiner.attention_dropout > 0 or refiner.dropout.p > 0)):
                return L
        if not bool(valid.any(dim=1).all()):  # an all-padding row's interest averages all L positions
            return L
        return int(valid.any(dim=0).nonzero().max()) + 1

    def forward(self, X: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        emb = self.embedding_layer(X)
        parts = []
        aux = None
        for i, (targets, sequences) in enumerate(self.pairs):
            for name in sequences:
                if emb[name].dim() != 3:
                    raise ValueError(f"sequence_field {name!r} arrives pooled by its feature_encoder; "
                                     f"DMIN needs the full sequence: set feature_encoder: null for it "
                                     f"(feature_specs)")
            target = torch.cat([emb[name] for name in targets], dim=-1)
            seq = torch.cat([emb[name] for name in sequences], dim=-1)
            valid = X[sequences[0]].long() != self.padding_idx[sequences[0]]
            kept = self.kept_length(i, valid)
            if kept < valid.shape[1]:  # trailing positions that are padding in every row
                seq, valid = seq[:, :kept], valid[:, :kept]
            allowed = attention_bias(valid, seq.dtype)  # allowed_keys as an additive mask
            refined = self.refiners[i](seq, allowed) if self.refiners is not None else seq
            parts.append(self.extractors[i](refined, target, allowed, valid))
            if self.enable_sum_pooling:
                pooled = (seq * valid.unsqueeze(-1).to(seq.dtype)).sum(dim=1)
                parts += [pooled, target * pooled]
            if self.aux_loss_lambda > 0:
                neg = torch.cat([emb[name] for name in self.neg_groups[i]], dim=-1)
                term = self.aux_nets[i](refined, seq, neg, valid)
                aux = term if aux is None else aux + term
        for name in self.flat_fields:
            if emb[name].dim() != 2:
                raise ValueError(f"field {name!r} is a sequence outside every (target, sequence) pair "
                                 f"and has no pooling feature_encoder: DMIN (like the reference) only "
                                 f"feeds flat embeddings to its DNN")
            parts.append(emb[name])
        x = self.dnn(torch.cat(parts, dim=-1))
        return x, (None if aux is None else self.aux_loss_lambda * aux)
