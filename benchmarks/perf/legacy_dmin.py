"""Frozen copy of the DMIN of commit fe69c6a (before the BARS-faithful port), kept only so that
benchmarks/perf/dmin_throughput.py can measure the new DMIN beside it. Not used by the package."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from fuxictr.pytorch.layers import FeatureEmbeddingDict, MLP_Block

from exfm_plugin.models.base import ExFMModel
from exfm_plugin.models.kernels.embedding import masked_sequence_mean

FieldGroup = tuple[str, ...]


def normalize_field_pairs(target_field, sequence_field) -> list[tuple[FieldGroup, FieldGroup]]:
    """Pair target fields with sequence fields, FuxiCTR/BARS style.

    A string is one pair of single fields; a tuple is one pair whose fields are concatenated
    (BARS TaobaoAd: ``("cate_id", "brand", "btag")`` vs ``("cate_his", "brand_his", "btag_his")``);
    a list holds one entry per pair, each a string or a tuple/list of fields.
    """
    def groups(value, name: str) -> list[FieldGroup]:
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

    targets = groups(target_field, "target_field")
    sequences = groups(sequence_field, "sequence_field")
    if len(targets) != len(sequences):
        raise ValueError(f"target_field has {len(targets)} entries but sequence_field has "
                         f"{len(sequences)}: {targets} vs {sequences}")
    for t, s in zip(targets, sequences):
        if len(t) != len(s):
            raise ValueError(f"target_field {t} and sequence_field {s} must have as many fields")
    return list(zip(targets, sequences))


class MultiHeadSelfAttention(nn.Module):
    """Self-attention over a padded sequence; returns every head separately (B, H, L, head_dim).

    Keys at padded positions get zero weight. Uses torch's fused scaled-dot-product attention
    with a (B, 1, 1, L) mask rather than fuxictr's ``ScaledDotProductAttention``, which needs
    the mask expanded to (B, H, L, L) floats: at BARS sizes (batch 1024, 8 heads, length 100)
    that is hundreds of MB per layer for nothing.
    """

    def __init__(self, input_dim: int, head_dim: int, num_heads: int, dropout_rate: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.dropout_rate = dropout_rate
        self.W_q = nn.Linear(input_dim, head_dim * num_heads, bias=False)
        self.W_k = nn.Linear(input_dim, head_dim * num_heads, bias=False)
        self.W_v = nn.Linear(input_dim, head_dim * num_heads, bias=False)

    def forward(self, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, L, _ = seq.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, L, self.num_heads, self.head_dim).transpose(1, 2)

        # an all-padding sequence would softmax over nothing (NaN): let it attend to its first
        # position; every position of such a sequence is masked out downstream anyway
        key_mask = mask.clone()
        key_mask[:, 0] |= ~mask.any(dim=1)
        return F.scaled_dot_product_attention(
            split(self.W_q(seq)), split(self.W_k(seq)), split(self.W_v(seq)),
            attn_mask=key_mask[:, None, None, :],
            dropout_p=self.dropout_rate if self.training else 0.0)


class BehaviorRefiner(nn.Module):
    """Multi-head self-attention + output projection + residual (+ layer norm)."""

    def __init__(self, model_dim: int, num_heads: int, attention_dropout: float = 0.0,
                 net_dropout: float = 0.0, layer_norm: bool = True):
        super().__init__()
        self.self_attention = MultiHeadSelfAttention(model_dim, model_dim, num_heads, attention_dropout)
        self.W_o = nn.Linear(model_dim * num_heads, model_dim, bias=False)
        self.dropout = nn.Dropout(net_dropout)
        self.layer_norm = nn.LayerNorm(model_dim) if layer_norm else None

    def forward(self, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        heads = self.self_attention(seq, mask)
        B, H, L, d = heads.shape
        out = seq + self.dropout(self.W_o(heads.transpose(1, 2).reshape(B, L, H * d)))
        return self.layer_norm(out) if self.layer_norm is not None else out


class MultiInterestExtractor(nn.Module):
    """One interest vector per head: (B, num_heads * model_dim)."""

    def __init__(self, model_dim: int, num_heads: int, max_len: int,
                 attention_hidden_units: list[int], attention_activation="Dice",
                 attention_dropout: float = 0.0, use_pos_emb: bool = True, pos_emb_dim: int = 8):
        super().__init__()
        self.max_len = max_len
        self.self_attention = MultiHeadSelfAttention(model_dim, model_dim, num_heads, attention_dropout)
        self.pos_embedding = nn.Embedding(max_len, pos_emb_dim) if use_pos_emb else None
        unit_input_dim = 4 * model_dim + (pos_emb_dim if use_pos_emb else 0)
        self.attention_units = nn.ModuleList(
            MLP_Block(input_dim=unit_input_dim, hidden_units=list(attention_hidden_units),
                      hidden_activations=attention_activation, output_dim=1,
                      dropout_rates=attention_dropout)
            for _ in range(num_heads))

    def forward(self, target: torch.Tensor, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        heads = self.self_attention(seq, mask)  # B x H x L x d
        B, H, L, d = heads.shape
        target = target.unsqueeze(1).expand(B, L, d)
        extra = []
        if self.pos_embedding is not None:
            if L > self.max_len:
                raise ValueError(f"sequence length {L} exceeds max_len={self.max_len} of the position embedding")
            extra.append(self.pos_embedding.weight[:L].unsqueeze(0).expand(B, L, -1))
        valid = mask.reshape(-1).nonzero().squeeze(1)
        interests = []
        for h in range(H):
            z = heads[:, h]
            unit_input = torch.cat([target, z, target - z, target * z] + extra, dim=-1).reshape(B * L, -1)
            scores = unit_input.new_zeros(B * L)
            if valid.numel() > 0:
                scores = scores.index_put((valid,), self.attention_units[h](unit_input[valid]).squeeze(-1))
            interests.append((scores.view(B, L, 1) * z).sum(dim=1))
        return torch.cat(interests, dim=-1)


class DMINEncoder(nn.Module):
    """Embeddings -> refiners -> interest extractors -> DNN; returns the last DNN hidden layer."""

    def __init__(self,
                 feature_map,
                 embedding_dim: int,
                 target_field,
                 sequence_field,
                 num_heads: int = 4,
                 use_behavior_refiner: bool = True,
                 layer_norm: bool = True,
                 attention_hidden_units: list[int] = [64],
                 attention_activation="Dice",
                 attention_dropout: float = 0.0,
                 use_pos_emb: bool = True,
                 pos_emb_dim: int = 8,
                 enable_sum_pooling: bool = False,
                 dnn_hidden_units: list[int] = [512, 128, 64],
                 dnn_activations="ReLU",
                 net_dropout: float = 0.0,
                 batch_norm: bool = False,
                 bn_only_once: bool = False):
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads={num_heads} must be >= 1")
        features = feature_map.features
        self.pairs = normalize_field_pairs(target_field, sequence_field)
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
            spec = features[name]
            return spec.get("emb_output_dim", spec.get("embedding_dim", embedding_dim))

        self.enable_sum_pooling = enable_sum_pooling
        self.embedding_layer = FeatureEmbeddingDict(feature_map, embedding_dim)
        pair_sequences = {name for _, sequences in self.pairs for name in sequences}
        self.context_fields = [name for name, spec in features.items()
                               if spec["type"] != "meta" and name not in pair_sequences]
        self.padding_idx = {name: (spec.get("padding_idx") or 0) for name, spec in features.items()}
        input_dim = sum(emb_dim(name) for name in self.context_fields)
        self.refiners = nn.ModuleList()
        self.extractors = nn.ModuleList()
        for targets, sequences in self.pairs:
            model_dim = sum(emb_dim(name) for name in targets)
            max_len = features[sequences[0]].get("max_len")
            if not max_len:
                raise ValueError(f"sequence_field {sequences[0]!r} has no max_len in the feature map")
            self.refiners.append(BehaviorRefiner(model_dim, num_heads, attention_dropout, net_dropout,
                                                 layer_norm) if use_behavior_refiner else nn.Identity())
            self.extractors.append(MultiInterestExtractor(model_dim, num_heads, max_len,
                                                          attention_hidden_units, attention_activation,
                                                          attention_dropout, use_pos_emb, pos_emb_dim))
            input_dim += num_heads * model_dim + (model_dim if enable_sum_pooling else 0)
        self.use_behavior_refiner = use_behavior_refiner
        self.dnn = MLP_Block(input_dim=input_dim, hidden_units=list(dnn_hidden_units),
                             hidden_activations=dnn_activations, output_dim=None,
                             dropout_rates=net_dropout, batch_norm=batch_norm, bn_only_once=bn_only_once)
        self.output_dim = dnn_hidden_units[-1] if dnn_hidden_units else input_dim

    def forward(self, X: dict[str, torch.Tensor]) -> torch.Tensor:
        emb = self.embedding_layer(X)
        parts = []
        for name in self.context_fields:
            e = emb[name]
            if e.dim() == 3:  # a sequence outside every pair and without a pooling encoder
                e = masked_sequence_mean(e, X[name], self.padding_idx[name])
            parts.append(e)
        for (targets, sequences), refiner, extractor in zip(self.pairs, self.refiners, self.extractors):
            for name in sequences:
                if emb[name].dim() != 3:
                    raise ValueError(f"sequence_field {name!r} arrives pooled by its feature_encoder; "
                                     f"DMIN needs the full sequence: set feature_encoder: null for it "
                                     f"(feature_specs)")
            target = torch.cat([emb[name] for name in targets], dim=-1)
            seq = torch.cat([emb[name] for name in sequences], dim=-1)
            mask = X[sequences[0]].long() != self.padding_idx[sequences[0]]
            refined = refiner(seq, mask) if self.use_behavior_refiner else seq
            parts.append(extractor(target, refined, mask))
            if self.enable_sum_pooling:
                parts.append((seq * mask.unsqueeze(-1).to(seq.dtype)).sum(dim=1))
        return self.dnn(torch.cat(parts, dim=-1))


class LegacyDMIN(ExFMModel):
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
