"""Scaled dot-product attention with a mask and dropout on the weights, for CPU training: the
values of ``F.scaled_dot_product_attention`` (same scale, same mask semantics, the same
dropout draws as its math path), in a third of the (batch, heads, L, L) blocks.

Why: on CPU, torch runs a masked attention with dropout on its math path, which allocates
about nine (B, H, L, L) tensors per call (logits, mask added, softmax, dropout mask and
product, and as many in backward). DMIN calls it twice per sequence pair on (B, 8, 100, 100),
and on a CPU host every fresh block costs page faults on the order of the arithmetic on it
(``grouped_layers``). Here the logits are masked and normalised in place, the dropped weights
are only ever formed a block at a time, and backward allocates one (B, H, L, L) tensor.
Every query row must have at least one allowed key (DMIN's ``allowed_keys`` always allows
the diagonal); such a row would give NaN here where torch's math path gives zeros.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .grouped_layers import dropout_noise, row_blocks


class _MaskedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, p: float, block_elements: int):
        B, H, L, hd = q.shape
        q3, k3, v3 = (t.reshape(B * H, L, hd) for t in (q, k, v))
        scale = 1.0 / math.sqrt(hd)
        probs = torch.bmm(q3, k3.transpose(1, 2)).mul_(scale)  # (B * H, L, L), then in place
        view = probs.view(B, -1, L, L)
        if mask.dtype == torch.bool:
            view.masked_fill_(~mask, float("-inf"))
        else:
            view.add_(mask)
        probs.sub_(probs.amax(dim=-1, keepdim=True)).exp_()
        probs.div_(probs.sum(dim=-1, keepdim=True))
        noise = dropout_noise(probs, p) if p > 0 else None
        out = q3.new_empty(B * H, L, hd)
        for part in row_blocks(B * H, L * L, block_elements):
            weights = probs[part] if noise is None else probs[part] * noise[part]
            torch.bmm(weights, v3[part], out=out[part])
        ctx.save_for_backward(q3, k3, v3, probs, noise)
        ctx.scale, ctx.block_elements = scale, block_elements
        return out.view(B, H, L, hd)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        q3, k3, v3, probs, noise = ctx.saved_tensors
        B_H, L, hd = q3.shape
        g3 = grad.reshape(B_H, L, hd)
        grad_v = torch.empty_like(v3)
        row_dot = probs.new_empty(B_H, L, 1)
        d_probs = torch.bmm(g3, v3.transpose(1, 2))  # d loss / d dropped weights
        if noise is not None:
            d_probs.mul_(noise)  # d loss / d weights before dropout
        for part in row_blocks(B_H, L * L, ctx.block_elements):
            weights = probs[part] if noise is None else probs[part] * noise[part]
            torch.bmm(weights.transpose(1, 2), g3[part], out=grad_v[part])
            torch.sum(probs[part] * d_probs[part], dim=-1, keepdim=True, out=row_dot[part])
        d_logits = d_probs.sub_(row_dot).mul_(probs).mul_(ctx.scale)  # softmax backward, in place
        grad_q = torch.bmm(d_logits, k3)
        grad_k = torch.bmm(d_logits.transpose(1, 2), q3)
        shape = grad.shape  # (B, H, L, hd)
        return grad_q.view(shape), grad_k.view(shape), grad_v.view(shape), None, None, None


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                     dropout_p: float = 0.0, block_elements: int = 1 << 22) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)`` for
    (B, H, L, head_dim) inputs and a (B, 1 or H, L, L) mask (bool: True = may attend; float:
    added to the logits). On CPU the in-place version above; elsewhere torch's own (fused
    kernels that never form the (L, L) weights)."""
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    return _MaskedAttention.apply(q, k, v, mask, float(dropout_p), block_elements)
