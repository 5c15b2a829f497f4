"""The grouped MLP's in-place activation + dropout computes what the unfused layers compute:
per group, fuxictr's Linear -> activation -> nn.Dropout, with the same random draws, the same
output and the same gradients (checked against the plain torch ops, seeded alike)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from exfm_plugin.models.kernels.grouped_layers import GroupedMLP

G, N, IN, UNITS = 3, 257, 6, [16, 8]


def unfused(mlp: GroupedMLP, x: torch.Tensor, p: float) -> torch.Tensor:
    """The same layers with out-of-place ops: activation module, then F.dropout."""
    for idx, (w, b) in enumerate(zip(mlp.weights, mlp.biases)):
        x = torch.baddbmm(b, x, w)
        if idx < len(mlp.weights) - 1:
            x = mlp.activations[idx](x)
            x = F.dropout(x, p, training=mlp.training)
    return x


def run(fn, mlp, x, seed: int):
    """Output and every gradient (input, weights, biases, activation parameters) of fn."""
    mlp.zero_grad()
    x = x.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)
    out = fn(mlp, x)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = [x.grad] + [p.grad.clone() for p in mlp.parameters()]
    return out.detach(), grads


@pytest.mark.parametrize("activation", ["ReLU", "Dice", "PReLU", None, "Sigmoid", "Tanh"])
@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("training", [True, False])
def test_inplace_activation_dropout_matches_the_unfused_layers(activation, p, training):
    torch.manual_seed(0)
    mlp = GroupedMLP(G, IN, UNITS, activation, 1, dropout_rate=p)
    mlp.train(training)
    x = torch.randn(G, N, IN)
    if activation == "Dice":  # its batch statistics move on every training call: same start for both
        state = {k: v.clone() for k, v in mlp.state_dict().items()}
    fused_out, fused_grads = run(lambda m, v: m(v), mlp, x, seed=7)
    if activation == "Dice":
        mlp.load_state_dict(state)
    ref_out, ref_grads = run(lambda m, v: unfused(m, v, p), mlp, x, seed=7)
    torch.testing.assert_close(fused_out, ref_out, rtol=0, atol=0)
    for got, want in zip(fused_grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    if training and p > 0:  # the masks were drawn: some units dropped, the survivors scaled
        assert (fused_out != unfused(mlp.eval(), x, 0.0)).any()


def test_first_pre_is_consumed_in_place_and_gradients_reach_its_producer():
    """A caller's first-layer pre-activation (a fresh tensor) is overwritten by the activation,
    and the gradient still flows to what produced it."""
    torch.manual_seed(1)
    mlp = GroupedMLP(G, IN, UNITS, "ReLU", 1, dropout_rate=0.5).train()
    a = torch.randn(G, N, UNITS[0], requires_grad=True)
    pre = a * 2.0
    torch.manual_seed(3)
    out = mlp(None, first_pre=pre)
    assert (pre >= 0).all()  # overwritten with relu(pre) * mask
    out.sum().backward()
    torch.manual_seed(3)
    a2 = a.detach().clone().requires_grad_(True)
    h = F.dropout(F.relu(a2 * 2.0), 0.5, training=True)
    ref = torch.baddbmm(mlp.biases[1], h, mlp.weights[1])
    ref = torch.baddbmm(mlp.biases[2], F.dropout(F.relu(ref), 0.5, training=True), mlp.weights[2])
    ref.sum().backward()
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(a.grad, a2.grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("with_pos", [True, False])
@pytest.mark.parametrize("block", [1, 3, 4096])
def test_target_terms_are_added_in_place_with_the_gathered_formula(packed, with_pos, block):
    """pre[h, m] + row_term[h, row(m)] + pos_term[h, pos(m)], in value and in every gradient,
    for every position of a (B, L) batch or a packed subset, whatever the block size."""
    from exfm_plugin.models.kernels.grouped_layers import add_target_terms_

    torch.manual_seed(2)
    H, B, L, U = 2, 5, 4, 3
    keep = torch.rand(B * L) < 0.6 if packed else torch.ones(B * L, dtype=torch.bool)
    idx = keep.nonzero().squeeze(1)
    rows, pos = idx // L, idx % L
    base = torch.randn(H, len(idx), U, requires_grad=True)
    row_term = torch.randn(H, B, U, requires_grad=True)
    pos_term = torch.randn(H, L + 2, U, requires_grad=True) if with_pos else None  # max_len > L
    weights = torch.randn(H, len(idx), U)

    got = add_target_terms_(base * 1.0, row_term, pos_term, L, *((rows, pos) if packed else ()), block=block)
    want = base + row_term[:, rows] + (pos_term[:, pos] if with_pos else 0)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    params = [t for t in (base, row_term, pos_term) if t is not None]
    got_grads = torch.autograd.grad((got * weights).sum(), params)
    want_grads = torch.autograd.grad((want * weights).sum(), params)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("activation", ["ReLU", "Dice", "PReLU"])
def test_backward_twice_with_retain_graph_gives_the_same_gradients(activation):
    """The backwards write into their saved buffers only when the graph is freed after them: with
    ``retain_graph`` each of two backwards gives the gradients of one plain backward."""
    torch.manual_seed(4)
    mlp = GroupedMLP(G, IN, UNITS, activation, 1, dropout_rate=0.3).train()
    state = {k: v.clone() for k, v in mlp.state_dict().items()}
    x = torch.randn(G, N, IN)
    _, once = run(lambda m, v: m(v), mlp, x, seed=5)
    mlp.load_state_dict(state)
    mlp.zero_grad()
    xr = x.clone().requires_grad_(True)
    torch.manual_seed(5)
    out = mlp(xr)
    loss = (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum()
    params = [xr, *mlp.parameters()]
    first = torch.autograd.grad(loss, params, retain_graph=True)
    second = torch.autograd.grad(loss, params)
    for a, b, want in zip(first, second, once):
        torch.testing.assert_close(a, want, rtol=0, atol=0)
        torch.testing.assert_close(b, want, rtol=0, atol=0)


@pytest.mark.parametrize("block_elements", [1, 7, 1 << 22])
def test_mean_of_product_in_blocks_is_the_mean_of_the_product(block_elements):
    from exfm_plugin.models.kernels.grouped_layers import mean_of_product

    torch.manual_seed(6)
    a, b = torch.randn(3, 101, 5, dtype=torch.float64), torch.randn(3, 101, 5, dtype=torch.float64)
    torch.testing.assert_close(mean_of_product(a, b, block_elements), (a * b).mean(dim=1, keepdim=True))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("shape", [(5,), (3, 257, 16), (2, 3, 4, 5)])
def test_dropout_noise_is_the_mask_f_dropout_draws(p, shape):
    """Same seed, same mask: x * dropout_noise(x, p) equals F.dropout(x, p) bit for bit."""
    from exfm_plugin.models.kernels.grouped_layers import dropout_noise

    x = torch.randn(shape)
    for seed in range(3):
        torch.manual_seed(seed)
        noise = dropout_noise(x, p)
        torch.manual_seed(seed)
        want = F.dropout(x, p, training=True)
        assert noise.dtype == x.dtype and noise.shape == x.shape
        torch.testing.assert_close(x * noise, want, rtol=0, atol=0)
        assert set(noise.unique().tolist()) <= {0.0, float(torch.tensor(1.0).div_(1 - p))}


@pytest.mark.parametrize("with_pos", [True, False])
@pytest.mark.parametrize("block_elements", [1, 50, 1 << 22])
def test_target_product_is_z_times_the_broadcast_terms(with_pos, block_elements):
    """z * (t_row[b] + t_pos[l]) at every (b, l), in value and in all three gradients, whatever
    the block size of the backward's reductions."""
    from exfm_plugin.models.kernels.grouped_layers import target_product

    torch.manual_seed(8)
    H, B, L, d = 2, 5, 4, 3
    z = torch.randn(H, B * L, d, dtype=torch.float64, requires_grad=True)
    t_row = torch.randn(H, B, d, dtype=torch.float64, requires_grad=True)
    t_pos = torch.randn(H, L + 2, d, dtype=torch.float64, requires_grad=True) if with_pos else None
    weights = torch.randn(H, B * L, d, dtype=torch.float64)
    got = target_product(z, t_row, t_pos, L, block_elements)
    t = t_row.unsqueeze(2) + (t_pos[:, :L].unsqueeze(1) if with_pos else 0)
    want = (z.view(H, B, L, d) * t).view(H, B * L, d)
    torch.testing.assert_close(got, want)
    params = [p for p in (z, t_row, t_pos) if p is not None]
    for g, w in zip(torch.autograd.grad((got * weights).sum(), params),
                    torch.autograd.grad((want * weights).sum(), params)):
        torch.testing.assert_close(g, w)
