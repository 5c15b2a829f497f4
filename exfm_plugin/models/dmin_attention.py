"""DMIN's attention layers (Xiao et al., CIKM 2020): the behaviour refiner and the multi-interest
extractor with its per-head target attention, composed by :class:`~.dmin_layers.DMINEncoder`.

Semantics follow the reference, FuxiCTR model_zoo/DMIN (src/DMIN.py, 2024 version; the
pairs, sum pooling, DNN, auxiliary loss, defaults and initialisation are listed in
:mod:`.dmin_layers`). ``model_dim`` = the pair's concatenated embedding width. Point by point:

* Masks (``get_mask``): valid = id != 0 (here: != the field's ``padding_idx``, 0 in fuxictr);
  query i may attend key j iff j <= i (causal) and (key j valid or j == i). The diagonal is never
  masked, so no row is all-masked.
* Behaviour refiner (optional, one per pair): ``nn.MultiheadAttention(model_dim, num_heads,
  dropout=attention_dropout)`` (in-projection with bias, output projection with bias), dropout
  ``net_dropout``, residual, LayerNorm (if ``layer_norm``), FFN Linear(d, 2d)-ReLU-Linear(2d, d),
  residual; no LayerNorm after the FFN. The reference hands the mask to nn.MultiheadAttention as
  the float ``1 - allowed``, which torch ADDS to the logits: masked keys get +1, nothing is
  masked. Default here: the mask the reference builds, applied (causal + padding);
  ``refiner_additive_mask=True`` reproduces the reference's additive +1 exactly.
* Multi-interest extractor (one per pair): ``W_qkv`` Linear(d, 3d, no bias), scaled dot-product
  attention over heads of ``d / num_heads`` (scale sqrt(head_dim), the mask above, dropout
  ``attention_dropout`` on the weights); then per head h: ``W_o[h]`` Linear(d/H, d, no bias),
  dropout ``net_dropout`` (only when > 0), residual with the extractor's input sequence,
  LayerNorm[h] (if ``layer_norm``), FFN[h] Linear(d, 2d)-ReLU-Linear(2d, d) + residual, then a
  target attention[h].
* Target attention (per head): with ``use_pos_emb`` a position table (max_len, pos_emb_dim),
  initialised to ZEROS, is concatenated to the target and projected back to d by
  ``W_proj`` Linear(d + pos_emb_dim, d, bias); the sequence is not projected. Score =
  MLP_Block(4d -> attention_hidden_units -> 1, ``attention_activation``, dropout
  ``attention_dropout``, no batch norm) of ``[t, z, t - z, t * z]`` over EVERY position (so a
  Dice activation's batch statistics see padded positions, in the reference and here); padded
  scores are set to -1e9 and softmax-normalised over the sequence; interest = sum of
  weight * z. Valid positions only get weight; an all-padding row gets the uniform mean.

Speed: every per-head module above is stored as one grouped tensor (heads first) and applied
with batched matmuls; attention is ``masked_attention`` (``F.scaled_dot_product_attention``'s
values and dropout draws; torch's own fused kernel, except on CPU with dropout, where it is
written in place), masked by :func:`attention_bias`, built once per pair. The first attention-MLP
layer is split algebraically, ``[t, z, t-z, t*z] W = t (W1 + W3) + z (W2 - W3) + (t*z) W4``, so
the per-position work is over 2d inputs instead of 4d (same function, same parameters). On CPU,
when the attention MLP keeps no batch statistics (no Dice), the extractor's per-position layers
run only where their output can reach the result -- valid positions, and every position of an
all-padding row -- since every other position gets softmax weight exactly 0 (exp(-1e9) == 0):
the same output, about half the work at BARS-like fill. With Dice every position is computed,
as the reference's batch statistics need them (on CUDA always, to avoid a host sync).
The grouped layers (``grouped_layers``) write the large per-(head, position) tensors in place:
the target terms into the first layer's pre-activation, ReLU and dropout (same draws as
``nn.Dropout``) into each layer's output, t * z without the broadcast t (``target_product``),
the (t * z) W4 product accumulated into z (W2 - W3)'s output, and each backward into a buffer
its forward saved, so each large block is allocated about once -- on CPU every fresh block of
this size costs page faults. Dice over (heads, positions) uses a hand-written backward (same
gradient) that never materialises its normalised input.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .kernels.grouped_layers import (GroupedDice, GroupedMLP, add_target_terms_, dropout_, relu_dropout_,
                             target_product, xavier_normal_in_out_)
from .kernels.masked_attention import masked_attention

NEG_INF = -1.0e9  # the reference's fill value for masked attention scores


def allowed_keys(valid: torch.Tensor) -> torch.Tensor:
    """(B, L) validity -> (B, L, L) bool: query i may attend key j iff j <= i and (j is valid
    or j == i) -- the mask the reference's ``get_mask`` builds."""
    L = valid.shape[1]
    eye = torch.eye(L, dtype=torch.bool, device=valid.device)
    causal = torch.ones(L, L, dtype=torch.bool, device=valid.device).tril()
    return causal & (valid[:, None, :] | eye)


def attention_bias(valid: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, L) validity -> (B, L, L) additive mask of :func:`allowed_keys`: 0 where query i may
    attend key j, -inf elsewhere -- what attention adds to its logits (torch's attention turns a
    bool mask into this itself). Built with float ops: a causal table plus a per-key row, then
    the diagonal. Built once per pair, it serves the refiner and the extractor."""
    B, L = valid.shape
    causal = torch.full((L, L), float("-inf"), dtype=dtype, device=valid.device).triu_(1)
    keys = torch.zeros(B, 1, L, dtype=dtype, device=valid.device).masked_fill_(~valid.unsqueeze(1), float("-inf"))
    bias = causal + keys
    bias.diagonal(dim1=1, dim2=2).zero_()
    return bias


# --------------------------------------------------------------------------- behaviour refiner
class BehaviorRefiner(nn.Module):
    """The reference's BehaviorRefinerLayer (see the module docstring), on torch's fused
    attention. Holds an ``nn.MultiheadAttention`` for its parameters and their torch init."""

    def __init__(self, model_dim: int, num_heads: int, attention_dropout: float = 0.0,
                 net_dropout: float = 0.0, layer_norm: bool = True, additive_mask: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.attention_dropout = attention_dropout
        self.additive_mask = additive_mask
        self.attention = nn.MultiheadAttention(model_dim, num_heads=num_heads,
                                               dropout=attention_dropout, batch_first=True)
        self.dropout = nn.Dropout(net_dropout)
        self.layer_norm = nn.LayerNorm(model_dim) if layer_norm else None
        self.ffn = nn.Sequential(nn.Linear(model_dim, 2 * model_dim), nn.ReLU(),
                                 nn.Linear(2 * model_dim, model_dim))

    def forward(self, seq: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """(B, L, d) -> (B, L, d); ``allowed``: :func:`allowed_keys` (bool) or :func:`attention_bias`."""
        B, L, d = seq.shape
        H = self.num_heads
        q, k, v = F.linear(seq, self.attention.in_proj_weight, self.attention.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.view(B, L, H, d // H).transpose(1, 2) for t in (q, k, v))
        if self.additive_mask:  # the reference: float 1 - allowed, added to the logits
            disallowed = ~allowed if allowed.dtype == torch.bool else torch.isinf(allowed)
            mask = disallowed.to(seq.dtype)[:, None]
        else:
            mask = allowed[:, None]
        attn = masked_attention(q, k, v, mask, self.attention_dropout if self.training else 0.0)
        attn = self.attention.out_proj(attn.transpose(1, 2).reshape(B, L, d))
        s = self.dropout(attn) + seq
        if self.layer_norm is not None:
            s = self.layer_norm(s)
        return self.ffn(s) + s


# --------------------------------------------------------------------------- interest extractor
class MultiInterestExtractor(nn.Module):
    """The reference's MultiInterestExtractorLayer + TargetAttention for every head at once.

    ``forward(seq, target, allowed, valid)`` -> (B, num_heads * d): the interests of heads
    0..H-1, concatenated. ``allowed`` is :func:`allowed_keys` (bool) or its additive
    :func:`attention_bias` (as for :class:`BehaviorRefiner`).
    """

    def __init__(self, model_dim: int, num_heads: int, max_len: int, attention_hidden_units: list[int],
                 attention_activation="ReLU", attention_dropout: float = 0.0, net_dropout: float = 0.0,
                 layer_norm: bool = True, use_pos_emb: bool = True, pos_emb_dim: int = 8):
        super().__init__()
        if num_heads < 1 or model_dim % num_heads:
            raise ValueError(f"model_dim={model_dim} is not divisible by num_heads={num_heads} "
                             f"(each head has model_dim / num_heads dimensions)")
        if not attention_hidden_units:
            raise ValueError("attention_hidden_units must name at least one hidden layer")
        d, H = model_dim, num_heads
        self.model_dim, self.num_heads, self.head_dim, self.max_len = d, H, d // H, max_len
        self.attention_dropout = attention_dropout
        self.W_qkv = nn.Linear(d, 3 * d, bias=False)
        self.W_o = nn.Parameter(torch.empty(H, d // H, d))
        self.net_dropout = nn.Dropout(net_dropout) if net_dropout > 0 else None
        self.ln_weight = nn.Parameter(torch.ones(H, 1, d)) if layer_norm else None
        self.ln_bias = nn.Parameter(torch.zeros(H, 1, d)) if layer_norm else None
        self.ffn_w1 = nn.Parameter(torch.empty(H, d, 2 * d))
        self.ffn_b1 = nn.Parameter(torch.zeros(H, 1, 2 * d))
        self.ffn_w2 = nn.Parameter(torch.empty(H, 2 * d, d))
        self.ffn_b2 = nn.Parameter(torch.zeros(H, 1, d))
        self.use_pos_emb = use_pos_emb
        if use_pos_emb:
            self.pos_emb = nn.Parameter(torch.zeros(H, max_len, pos_emb_dim))
            self.W_proj = nn.Parameter(torch.empty(H, d + pos_emb_dim, d))
            self.b_proj = nn.Parameter(torch.zeros(H, 1, d))
        self.attn_mlp = GroupedMLP(H, 4 * d, attention_hidden_units, attention_activation, 1,
                                   attention_dropout)
        self.pack_positions: bool | None = None  # None: decide per device (packs_positions)
        self.init_weights()

    def init_weights(self) -> None:
        d, hd = self.model_dim, self.head_dim
        xavier_normal_in_out_(self.W_o, hd, d)
        xavier_normal_in_out_(self.ffn_w1, d, 2 * d)
        xavier_normal_in_out_(self.ffn_w2, 2 * d, d)
        for b in (self.ffn_b1, self.ffn_b2):
            nn.init.zeros_(b)
        if self.ln_weight is not None:
            nn.init.ones_(self.ln_weight)
            nn.init.zeros_(self.ln_bias)
        if self.use_pos_emb:
            nn.init.zeros_(self.pos_emb)  # the reference's nn.Parameter(torch.zeros(...)), never re-initialised
            xavier_normal_in_out_(self.W_proj, self.W_proj.shape[1], d)
            nn.init.zeros_(self.b_proj)

    def packs_positions(self, device: torch.device) -> bool:
        """Whether to run the per-position layers on the needed positions only (module
        docstring): on CPU, when no attention-MLP layer keeps batch statistics (Dice)."""
        if self.pack_positions is not None:
            return self.pack_positions
        return device.type == "cpu" and not any(isinstance(a, GroupedDice) for a in self.attn_mlp.activations)

    def head_outputs(self, attn: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        """Per-head output projection, residual, LayerNorm and FFN of (H, M, head_dim)
        attention outputs at M positions whose inputs are ``seq`` (M, d): (H, M, d)."""
        d = seq.shape[-1]
        s = torch.bmm(attn, self.W_o)  # fresh (H, M, d) blocks below are written in place
        if self.net_dropout is not None and self.training:
            s = dropout_(s, self.net_dropout.p)
        s += seq.unsqueeze(0)
        if self.ln_weight is not None:
            s = torch.addcmul(self.ln_bias, F.layer_norm(s, (d,)), self.ln_weight)
        hidden = relu_dropout_(torch.baddbmm(self.ffn_b1, s, self.ffn_w1))
        return torch.baddbmm(self.ffn_b2, hidden, self.ffn_w2).add_(s)

    def forward(self, seq: torch.Tensor, target: torch.Tensor, allowed: torch.Tensor,
                valid: torch.Tensor) -> torch.Tensor:
        B, L, d = seq.shape
        H, hd = self.num_heads, self.head_dim
        q, k, v = self.W_qkv(seq).chunk(3, dim=-1)
        q, k, v = (t.view(B, L, H, hd).transpose(1, 2) for t in (q, k, v))
        attn = masked_attention(q, k, v, allowed[:, None],
                                self.attention_dropout if self.training else 0.0)  # (B, H, L, hd)
        attn = attn.permute(1, 0, 2, 3).reshape(H, B * L, hd)
        flat_seq = seq.reshape(B * L, d)
        idx = None
        if self.packs_positions(seq.device):
            # positions whose z can reach the output: the valid ones, and every position of an
            # all-padding row (its interest is the uniform mean of its z); when that is every
            # position (full histories), the unpacked path below computes the same, in the same
            # order (the same dropout draws), without the gathers
            need = valid | ~valid.any(dim=1, keepdim=True)
            if not bool(need.all()):
                idx = need.reshape(-1).nonzero().squeeze(1)
                rows, pos = idx // L, idx % L
                attn, flat_seq = attn.index_select(1, idx), flat_seq.index_select(0, idx)
        z = self.head_outputs(attn, flat_seq)  # (H, M, d)
        # t = the (projected) target per head and position, kept as a per-(head, row) part plus
        # a per-(head, position) part: t[h, b, l] = t_row[h, b] + t_pos[h, l]
        if self.use_pos_emb:
            if L > self.max_len:
                raise ValueError(f"sequence length {L} exceeds max_len={self.max_len} of the position embedding")
            t_row = torch.baddbmm(self.b_proj, target.unsqueeze(0).expand(H, B, d), self.W_proj[:, :d])
            t_pos = torch.bmm(self.pos_emb[:, :L], self.W_proj[:, d:])  # (H, L, d)
        else:
            t_row, t_pos = target.unsqueeze(0).expand(H, B, d), None
        W_t, W_z, W_diff, W_prod = self.attn_mlp.weights[0].split(d, dim=1)  # [t, z, t - z, t * z]
        W_t = W_t + W_diff
        row_term = torch.baddbmm(self.attn_mlp.biases[0], t_row, W_t)  # (H, B, U)
        pos_term = torch.bmm(t_pos, W_t) if t_pos is not None else None  # (H, L, U)
        # the first layer's pre-activation gets its target terms in place and is handed to the
        # MLP, which overwrites it with its activation: each large block is allocated once
        # (grouped_layers docstring)
        # z @ (W_z - W_diff) + (t * z) @ W_prod, the second accumulated into the first's output
        pre = torch.bmm(z, W_z - W_diff)
        if idx is None:  # every position: the target terms broadcast over rows / positions
            pre = pre.baddbmm_(target_product(z, t_row, t_pos, L), W_prod)
            pre = add_target_terms_(pre, row_term, pos_term, L)
            scores = self.attn_mlp(None, first_pre=pre).view(H, B, L)
        else:  # packed positions: the same terms gathered (index_select: its backward is index_add)
            t_full = t_row.index_select(1, rows)
            if t_pos is not None:
                t_full = t_full + t_pos.index_select(1, pos)
            pre = pre.baddbmm_(z * t_full, W_prod)
            pre = add_target_terms_(pre, row_term, pos_term, L, rows, pos)
            packed = self.attn_mlp(None, first_pre=pre).squeeze(-1)  # (H, M)
            scores = packed.new_full((H, B * L), NEG_INF).index_copy(1, idx, packed).view(H, B, L)
        weights = scores.masked_fill(~valid.unsqueeze(0), NEG_INF).softmax(dim=-1)
        if idx is None:
            interests = torch.bmm(weights.view(H * B, 1, L), z.view(H * B, L, d)).view(H, B, d)
        else:
            picked = weights.view(H, B * L).index_select(1, idx).unsqueeze(-1) * z
            interests = z.new_zeros(H, B, d).index_add(1, rows, picked)
        return interests.transpose(0, 1).reshape(B, H * d)
