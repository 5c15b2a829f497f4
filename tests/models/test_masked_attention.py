"""masked_attention computes what F.scaled_dot_product_attention computes (its math path on
CPU): the same output and gradients for bool and additive float masks, and with dropout the
same random draws, checked against torch's own function seeded alike."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from exfm_plugin.models.dmin_layers import allowed_keys
from exfm_plugin.models.kernels.masked_attention import masked_attention

B, H, L, HD = 3, 2, 7, 4


def inputs(dtype):
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, L, HD, dtype=dtype, requires_grad=True) for _ in range(3))
    valid = torch.rand(B, L) < 0.6
    valid[0] = False  # an all-padding row: only the diagonal is allowed
    return q, k, v, allowed_keys(valid)[:, None]


def outputs_and_grads(fn, q, k, v, mask, p, seed):
    torch.manual_seed(seed)
    out = fn(q, k, v, mask, p)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    return out.detach(), torch.autograd.grad((out * weights).sum(), (q, k, v))


def torch_sdpa(q, k, v, mask, p):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)


@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("mask_kind", ["bool", "additive", "bias"])
@pytest.mark.parametrize("block_elements", [1, 60, 1 << 22])
@pytest.mark.parametrize("impl", ["auto", "inplace"])
def test_matches_torch_scaled_dot_product_attention(p, mask_kind, block_elements, impl):
    """``auto`` on CPU is torch's own without dropout and the in-place kernel with it;
    ``inplace`` forces the kernel. Masks: bool, the refiner's +1 variant, DMIN's 0 / -inf bias."""
    q, k, v, allowed = inputs(torch.float64)
    mask = {"bool": allowed, "additive": (~allowed).to(torch.float64),  # the refiner's +1 variant
            "bias": torch.where(allowed, 0.0, float("-inf")).to(torch.float64)}[mask_kind]
    got, got_grads = outputs_and_grads(
        lambda *a: masked_attention(*a, block_elements=block_elements, impl=impl), q, k, v, mask, p, seed=3)
    want, want_grads = outputs_and_grads(torch_sdpa, q, k, v, mask, p, seed=3)
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)
    if p > 0:  # the draws happened: the output differs from attention without dropout
        assert not torch.allclose(got, masked_attention(q, k, v, mask, 0.0).detach())


def test_float32_and_a_mask_per_head():
    q, k, v, allowed = inputs(torch.float32)
    mask = allowed.expand(B, H, L, L) & (torch.rand(B, H, L, L) < 0.7) | torch.eye(L, dtype=torch.bool)
    got, got_grads = outputs_and_grads(masked_attention, q, k, v, mask, 0.0, seed=1)
    want, want_grads = outputs_and_grads(torch_sdpa, q, k, v, mask, 0.0, seed=1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_rejects_an_unknown_implementation():
    q, k, v, allowed = inputs(torch.float32)
    with pytest.raises(ValueError, match="impl='flash'"):
        masked_attention(q, k, v, allowed, impl="flash")
