"""Scaled dot-product attention with a mask and dropout on the weights, for CPU training: the
values of ``F.scaled_dot_product_attention`` (same scale, same mask semantics, the same
dropout draws as its math path), in a third of the (batch, heads, L, L) blocks.

Why: on CPU, torch runs a masked attention with dropout on its math path, which allocates
about nine (B, H, L, L) tensors per call (logits, mask added, softmax, dropout mask and
product, and as many in backward). DMIN calls it twice per sequence pair on (B, 8, 100, 100),
and on a CPU host every fresh block costs page faults on the order of the arithmetic on it
(``grouped_layers``). Here the mask enters as an additive bias of the logits' matmul
(``baddbmm``), the softmax and its backward are torch's fused kernels written in place, the
dropped weights are only ever formed a block at a time, and backward allocates one
(B, H, L, L) tensor. A bool mask is turned into that bias (0 / -inf) first; callers that
mask several calls alike pass the bias itself (:func:`~exfm_plugin.models.dmin_attention.attention_bias`).
Why the fused softmax: ``exp_`` of a tensor holding masked (-inf) logits takes a slow path on
this CPU (about 3x a plain exp); torch's softmax kernel does not. Without dropout,
:func:`masked_attention` uses torch's own fused (flash) kernel instead, which is faster still.
Every query row must have at least one allowed key (DMIN's masks always allow the diagonal);
such a row would give NaN here where torch's math path gives zeros.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .grouped_layers import dropout_noise, row_blocks


def logits_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive bias of a mask: a bool mask (True = may attend) as 0 / -inf, a float mask
    as it is (torch adds it to the logits)."""
    if mask.dtype == torch.bool:
        return torch.where(mask, 0.0, float("-inf")).to(dtype)
    return mask.to(dtype)


class _MaskedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, p: float, block_elements: int):
        B, H, L, hd = q.shape
        q3, k3, v3 = (t.reshape(B * H, L, hd) for t in (q, k, v))
        scale = 1.0 / math.sqrt(hd)
        bias = logits_bias(mask, q.dtype)
        if bias.dim() == 4:
            bias = bias.expand(B, H, L, L).reshape(B * H, L, L)  # no copy when the mask has H heads or H == 1
        probs = torch.baddbmm(bias, q3, k3.transpose(1, 2), alpha=scale)  # (B * H, L, L), then in place
        torch._softmax(probs, -1, False, out=probs)
        noise = dropout_noise(probs, p) if p > 0 else None
        if noise is None:
            out = torch.bmm(probs, v3)
        else:
            out = q3.new_empty(B * H, L, hd)
            for part in row_blocks(B * H, L * L, block_elements):
                torch.bmm(probs[part] * noise[part], v3[part], out=out[part])
        ctx.save_for_backward(q3, k3, v3, probs, noise)
        ctx.scale, ctx.block_elements = scale, block_elements
        return out.view(B, H, L, hd)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        q3, k3, v3, probs, noise = ctx.saved_tensors
        B_H, L, hd = q3.shape
        g3 = grad.reshape(B_H, L, hd)
        d_probs = torch.bmm(g3, v3.transpose(1, 2))  # d loss / d dropped weights
        if noise is None:
            grad_v = torch.bmm(probs.transpose(1, 2), g3)
        else:
            d_probs.mul_(noise)  # d loss / d weights before dropout
            grad_v = torch.empty_like(v3)
            for part in row_blocks(B_H, L * L, ctx.block_elements):
                torch.bmm((probs[part] * noise[part]).transpose(1, 2), g3[part], out=grad_v[part])
        # softmax backward, in place: probs * (d_probs - sum(probs * d_probs))
        d_logits = torch._softmax_backward_data(d_probs, probs, -1, probs.dtype, grad_input=d_probs)
        grad_q = torch.bmm(d_logits, k3).mul_(ctx.scale)
        grad_k = torch.bmm(d_logits.transpose(1, 2), q3).mul_(ctx.scale)
        shape = grad.shape  # (B, H, L, hd)
        return grad_q.view(shape), grad_k.view(shape), grad_v.view(shape), None, None, None


IMPLS = ("auto", "torch", "inplace")


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                     dropout_p: float = 0.0, block_elements: int = 1 << 22, impl: str = "auto") -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)`` for
    (B, H, L, head_dim) inputs and a (B, 1 or H, L, L) mask (bool: True = may attend; float:
    added to the logits, -inf where a key is masked).

    ``impl="auto"``: torch's own where it is fused -- off CPU, and on CPU without dropout (its
    flash kernel never forms the (L, L) weights: about 1.5-2x faster than the in-place version
    at DMIN's sizes, the same values to float rounding); the in-place version above on CPU with
    dropout, where torch would take its unfused math path. ``"torch"`` / ``"inplace"`` force one."""
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r}: expected one of {IMPLS}")
    if impl == "torch" or (impl == "auto" and (q.device.type != "cpu" or dropout_p == 0)):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    return _MaskedAttention.apply(q, k, v, mask, float(dropout_p), block_elements)
