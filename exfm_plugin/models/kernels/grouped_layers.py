"""Per-head (grouped) layers of DMIN: several independent fuxictr MLP_Blocks, Dice and PReLU
applied to (heads, rows, units) tensors with batched matmuls, and the in-place activation +
dropout they use.

Why in place: the attention MLP runs over every (head, position) of a batch, so each of its
activations is hundreds of MB at BARS sizes. glibc serves such blocks with a fresh ``mmap``
each time, and on a CPU host the page faults of a new block cost about as much as the
arithmetic on it; fusing ReLU and dropout into the matmul's output (same values, same
random draws as ``nn.ReLU`` then ``nn.Dropout``, same gradient) removes three of the five
blocks per layer that the unfused ops allocate. For the same reason each backward here writes
its result into a buffer it saved (the dropout noise, the ReLU output, Dice's sigmoid), which
nothing needs after it, unless the graph is kept for another backward (``retain_graph``): then
it allocates as autograd would. Their backwards are once-differentiable (a gradient of their
gradient raises torch's error; nothing in exfm asks for one).
"""
from __future__ import annotations

import math

import torch
from fuxictr.pytorch.torch_utils import get_activation
from torch import nn
from torch.autograd.function import once_differentiable


def xavier_normal_in_out_(weight: torch.Tensor, fan_in: int, fan_out: int) -> None:
    """nn.init.xavier_normal_ for a Linear(fan_in, fan_out), on a slice stored (in, out)."""
    with torch.no_grad():
        weight.normal_(0.0, math.sqrt(2.0 / (fan_in + fan_out)))


def backward_may_reuse_saved() -> bool:
    """True inside a backward after which the graph is freed (no ``retain_graph`` /
    ``create_graph``), so a Function may write into its saved buffers. False when torch does not
    say (a private query; an older or newer torch without it just allocates)."""
    keep_graph = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return keep_graph is not None and not keep_graph()


def row_blocks(total: int, per_row: int, block_elements: int):
    """Slices of ``range(total)`` (rows of ``per_row`` elements each) holding about
    ``block_elements`` elements apiece, at least one row: the unit of work of the block-wise
    loops here, whose temporaries stay small enough for glibc to reuse their memory."""
    step = max(1, block_elements // max(1, per_row))
    for start in range(0, total, step):
        yield slice(start, min(start + step, total))


def dropout_noise(like: torch.Tensor, p: float) -> torch.Tensor:
    """The mask ``F.dropout`` multiplies by on CPU: Bernoulli(1 - p) / (1 - p), drawn with the
    same call, so a seeded run draws the same mask as ``nn.Dropout``."""
    return torch.empty_like(like).bernoulli_(1 - p).div_(1 - p)


class _ReLUDropout(torch.autograd.Function):
    """relu(x) then dropout, written into x: y = max(x, 0) * noise. The gradient is
    grad / (1 - p) where y > 0 and 0 elsewhere, so only y is kept for backward."""

    @staticmethod
    def forward(ctx, x, p: float):
        ctx.mark_dirty(x)
        x.clamp_min_(0)
        if p > 0:
            x.mul_(dropout_noise(x, p))
        ctx.p = p
        ctx.save_for_backward(x)
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        if backward_may_reuse_saved():  # every consumer of y has run its backward
            grad_in = y.sign_().mul_(grad)  # y >= 0, so sign is the 0/1 mask of y > 0
        else:
            grad_in = torch.ops.aten.threshold_backward(grad, y, 0)
        if ctx.p > 0:  # the float32 value the mask holds, so the gradient matches autograd's bitwise
            grad_in.mul_(y.new_ones(()).div_(1 - ctx.p))
        return grad_in, None


class _InplaceDropout(torch.autograd.Function):
    """Dropout written into x (whose producer must not need it for its own backward)."""

    @staticmethod
    def forward(ctx, x, p: float):
        ctx.mark_dirty(x)
        noise = dropout_noise(x, p)
        ctx.save_for_backward(noise)
        return x.mul_(noise)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (noise,) = ctx.saved_tensors
        return (noise.mul_(grad) if backward_may_reuse_saved() else grad * noise), None


def relu_dropout_(x: torch.Tensor, p: float = 0.0) -> torch.Tensor:
    """ReLU then dropout(p), written into ``x``: a fresh tensor whose producer does not need
    it for its backward (a matmul's output)."""
    return _ReLUDropout.apply(x, p)


def dropout_(x: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout(p) written into ``x`` (same condition as :func:`relu_dropout_`)."""
    return _InplaceDropout.apply(x, p) if p > 0 else x


class _AddTargetTerms(torch.autograd.Function):
    """pre[h, m] += row_term[h, rows[m]] + pos_term[h, pos[m]], written into ``pre`` (H, M, U).

    ``rows`` None: every position of a (B, L) batch in order (M = B * L), added by broadcasting
    over a 4-D view. Otherwise the gathered rows are added a block of ``block`` positions at a
    time, so no (H, M, U) copy is ever allocated. Backward: ``pre``'s gradient passes through
    unchanged; the terms' gradients are its sums over the positions of each row / position."""

    @staticmethod
    def forward(ctx, pre, row_term, pos_term, rows, pos, seq_len: int, block: int):
        ctx.mark_dirty(pre)
        H, M, U = pre.shape
        ctx.save_for_backward(rows, pos)
        ctx.shapes = (row_term.shape, None if pos_term is None else pos_term.shape, seq_len)
        if rows is None:
            view = pre.view(H, M // seq_len, seq_len, U)
            view.add_(row_term.unsqueeze(2))
            if pos_term is not None:
                view.add_(pos_term[:, :seq_len].unsqueeze(1))
            return pre
        for span in row_blocks(M, 1, block):
            part = pre[:, span]
            part.add_(row_term.index_select(1, rows[span]))
            if pos_term is not None:
                part.add_(pos_term.index_select(1, pos[span]))
        return pre

    @staticmethod
    def backward(ctx, grad):
        rows, pos = ctx.saved_tensors
        row_shape, pos_shape, seq_len = ctx.shapes
        H, M, U = grad.shape
        if rows is None:
            view = grad.view(H, M // seq_len, seq_len, U)
            grad_row = view.sum(dim=2)
            grad_pos = None
            if pos_shape is not None:
                grad_pos = grad.new_zeros(pos_shape)
                grad_pos[:, :seq_len] = view.sum(dim=1)
        else:
            grad_row = grad.new_zeros(row_shape).index_add_(1, rows, grad)
            grad_pos = None if pos_shape is None else grad.new_zeros(pos_shape).index_add_(1, pos, grad)
        return grad, grad_row, grad_pos, None, None, None, None


class _TargetProduct(torch.autograd.Function):
    """z * t for every position of a (B, L) batch, with t[h, b, l] = t_row[h, b] + t_pos[h, l]:
    z (H, B * L, d), t_row (H, B, d), t_pos (H, >= L, d) or None. Neither the broadcast t nor,
    in backward, the product grad * z is ever a full tensor: the terms' gradients (sums of
    grad * z over positions / rows) are reduced a block of rows at a time."""

    @staticmethod
    def forward(ctx, z, t_row, t_pos, seq_len: int, block_elements: int):
        H, M, d = z.shape
        zv = z.view(H, M // seq_len, seq_len, d)
        out = zv * t_row.unsqueeze(2)
        if t_pos is not None:
            out.addcmul_(zv, t_pos[:, :seq_len].unsqueeze(1))
        ctx.save_for_backward(z, t_row, t_pos)
        ctx.sizes = (seq_len, block_elements)
        return out.view(H, M, d)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        z, t_row, t_pos = ctx.saved_tensors
        seq_len, block_elements = ctx.sizes
        H, M, d = z.shape
        B = M // seq_len
        gv, zv = grad.view(H, B, seq_len, d), z.view(H, B, seq_len, d)
        grad_z = grad_row = grad_pos = None
        if ctx.needs_input_grad[0]:
            grad_z = gv * t_row.unsqueeze(2)
            if t_pos is not None:
                grad_z.addcmul_(gv, t_pos[:, :seq_len].unsqueeze(1))
            grad_z = grad_z.view(H, M, d)
        want_pos = t_pos is not None and ctx.needs_input_grad[2]
        if ctx.needs_input_grad[1] or want_pos:
            grad_row = t_row.new_empty(t_row.shape)
            if want_pos:
                grad_pos = t_pos.new_zeros(t_pos.shape)
            for block in row_blocks(B, H * seq_len * d, block_elements):
                part = gv[:, block] * zv[:, block]
                grad_row[:, block] = part.sum(dim=2)
                if want_pos:
                    grad_pos[:, :seq_len] += part.sum(dim=1)
        return grad_z, grad_row, grad_pos, None, None


def target_product(z: torch.Tensor, t_row: torch.Tensor, t_pos: torch.Tensor | None, seq_len: int,
                   block_elements: int = 1 << 22) -> torch.Tensor:
    """``z * (t_row[:, b] + t_pos[:, l])`` at every position (b, l), as (H, B * L, d)
    (:class:`_TargetProduct`)."""
    return _TargetProduct.apply(z, t_row, t_pos, seq_len, block_elements)


def add_target_terms_(pre: torch.Tensor, row_term: torch.Tensor, pos_term: torch.Tensor | None,
                      seq_len: int, rows: torch.Tensor | None = None, pos: torch.Tensor | None = None,
                      block: int = 4096) -> torch.Tensor:
    """Add a per-row and a per-position term to a fresh (H, M, U) pre-activation in place
    (:class:`_AddTargetTerms`); ``rows`` / ``pos`` give each packed position's row and
    position, None when every position of the batch is present."""
    if pos_term is not None and pos_term.shape[1] < seq_len:
        raise ValueError(f"pos_term has {pos_term.shape[1]} positions for sequences of length {seq_len}")
    return _AddTargetTerms.apply(pre, row_term, pos_term, rows, pos, seq_len, block)


def mean_of_product(a: torch.Tensor, b: torch.Tensor, block_elements: int = 1 << 22) -> torch.Tensor:
    """(a * b).mean(dim=1, keepdim=True) for (H, N, U) tensors, a block of rows at a time, so the
    product is never a full (H, N, U) tensor (each block stays under glibc's 32 MiB mmap limit
    and its memory is reused)."""
    H, N, U = a.shape
    total = a.new_zeros(H, 1, U)
    for block in row_blocks(N, H * U, block_elements):
        total.add_((a[:, block] * b[:, block]).sum(dim=1, keepdim=True))
    return total.div_(N)


class _DiceFunction(torch.autograd.Function):
    """Dice on (H, N, U) with given statistics, its backward written out: the same function and
    gradient as autograd through BatchNorm + sigmoid gate, in about half the memory passes
    (Dice over every (head, position) is the largest elementwise cost of BARS' Amazon DMIN)."""

    @staticmethod
    def forward(ctx, x, alpha, mean, rstd, batch_stats: bool):
        shift = -mean * rstd
        p = torch.addcmul(shift, x, rstd).sigmoid_()
        gate = torch.addcmul(alpha, p, 1 - alpha)
        ctx.save_for_backward(x, alpha, p, shift, rstd)
        ctx.batch_stats = batch_stats
        return gate.mul_(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, alpha, p, shift, rstd = ctx.saved_tensors
        c = 1 - alpha
        u = grad * x
        u.addcmul_(u, p, value=-1)  # u * (1 - p), in place
        grad_alpha = u.sum(dim=1, keepdim=True)
        u.mul_(p)  # d loss / d xhat, divided by (1 - alpha)
        # through the gate's x factor; p is not needed after this
        dx = torch.addcmul(alpha, p, c, out=p if backward_may_reuse_saved() else None).mul_(grad)
        if ctx.batch_stats:  # BatchNorm backward: the statistics depend on x
            # with xhat = x * rstd + shift, never materialised: mean(u * xhat) and
            # u - xhat * m2 - m1 written in terms of x
            m1 = u.mean(dim=1, keepdim=True)
            m2 = mean_of_product(u, x).mul_(rstd).add_(m1 * shift)
            u.addcmul_(x, rstd * m2, value=-1).sub_(shift * m2 + m1)
        dx.addcmul_(u, rstd * c)
        return dx, grad_alpha, None, None, None


class GroupedDice(nn.Module):
    """fuxictr's Dice for each head at once: input (H, N, U), batch statistics over N per
    (head, unit), exactly ``BatchNorm1d(U, affine=False, eps=1e-9, momentum=0.01)`` per head."""

    def __init__(self, num_groups: int, units: int, eps: float = 1e-9, momentum: float = 0.01):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.alpha = nn.Parameter(torch.zeros(num_groups, 1, units))
        self.register_buffer("running_mean", torch.zeros(num_groups, 1, units))
        self.register_buffer("running_var", torch.ones(num_groups, 1, units))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                var, mean = torch.var_mean(x, dim=1, keepdim=True, correction=0)
                n = x.shape[1]
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var * (n / max(n - 1, 1)), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        rstd = torch.rsqrt(var + self.eps)
        return _DiceFunction.apply(x, self.alpha.to(x.dtype), mean.to(x.dtype), rstd.to(x.dtype),
                                   self.training)


class GroupedPReLU(nn.Module):
    """fuxictr's ``nn.PReLU(units, init=0.1)`` for each head at once (input (H, N, U))."""

    def __init__(self, num_groups: int, units: int):
        super().__init__()
        self.weight = nn.Parameter(torch.full((num_groups, 1, units), 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x >= 0, x, self.weight * x)


def grouped_activation(name, num_groups: int, units: int) -> nn.Module | None:
    """The activation fuxictr's ``get_activation(name, units)`` gives, for all heads at once."""
    if name is None:
        return None
    if isinstance(name, str) and name.lower() == "dice":
        return GroupedDice(num_groups, units)
    if isinstance(name, str) and name.lower() == "prelu":
        return GroupedPReLU(num_groups, units)
    act = get_activation(name, units)
    if any(True for _ in act.parameters()):
        raise ValueError(f"attention_activation={name!r} has parameters; only parameter-free "
                         f"activations, Dice and PReLU are supported for the grouped heads")
    return act


class GroupedMLP(nn.Module):
    """``num_groups`` independent fuxictr MLP_Blocks (Linear, activation, dropout per hidden
    layer; a Linear output) applied to (G, N, in) with batched matmuls.

    The first layer's weight is stored whole, (G, in, units[0]); callers may feed its
    pre-activation themselves (``forward(x, first_pre=...)``), a fresh tensor that the
    activation then overwrites.
    """

    def __init__(self, num_groups: int, input_dim: int, hidden_units: list[int], activations,
                 output_dim: int, dropout_rate: float = 0.0):
        super().__init__()
        units = [input_dim] + list(hidden_units) + [output_dim]
        acts = activations if isinstance(activations, list) else [activations] * len(hidden_units)
        if len(acts) != len(hidden_units):
            raise ValueError(f"activations={activations!r}: expected one per hidden layer {hidden_units}")
        self.dims = list(zip(units[:-1], units[1:]))
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(num_groups, i, o)) for i, o in self.dims)
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(num_groups, 1, o)) for _, o in self.dims)
        self.activations = nn.ModuleList(grouped_activation(a, num_groups, u) or nn.Identity()
                                         for a, u in zip(acts, hidden_units))
        self.dropout = nn.Dropout(dropout_rate) if dropout_rate > 0 else None
        self.init_weights()

    def init_weights(self) -> None:
        for w, b, (i, o) in zip(self.weights, self.biases, self.dims):
            xavier_normal_in_out_(w, i, o)
            nn.init.zeros_(b)

    def forward(self, x: torch.Tensor | None, first_pre: torch.Tensor | None = None) -> torch.Tensor:
        last = len(self.weights) - 1
        for idx, (w, b) in enumerate(zip(self.weights, self.biases)):
            if idx == 0 and first_pre is not None:
                x = first_pre
            else:
                x = torch.baddbmm(b, x, w)
            if idx < last:
                x = self.activate(idx, x)
        return x

    def activate(self, idx: int, x: torch.Tensor) -> torch.Tensor:
        """Hidden layer ``idx``'s activation and dropout on its fresh pre-activation ``x``,
        in place where the activation's backward does not need its output (module docstring)."""
        act = self.activations[idx]
        p = self.dropout.p if self.dropout is not None and self.training else 0.0
        if isinstance(act, nn.ReLU):
            return relu_dropout_(x, p)
        x = act(x)
        if p == 0:
            return x
        if isinstance(act, (GroupedDice, GroupedPReLU, nn.Identity)):  # their backward keeps no output
            return dropout_(x, p)
        return self.dropout(x)
