"""Row-sparse embedding updates: sparse embedding gradients, lazy Adam, and a gradient clip
that understands them.

With ``embedding_update="sparse"`` every ``nn.Embedding`` inside a fuxictr
``FeatureEmbeddingDict`` returns a row-sparse gradient (``sparse=True``: only the rows the
batch looked up, padding rows left out by torch). :class:`LazyAdam` updates those rows with
Adam's formula and leaves every other row, and its moments, untouched: TensorFlow's
``LazyAdam`` semantics. Dense parameters get torch's own ``Adam`` step.

Why not ``torch.optim.SparseAdam``: it folds the bias correction into the step size and so
adds ``eps`` to ``sqrt(v)`` before the ``sqrt(1 - beta2^t)`` correction; with the tiny
gradients of rare embedding rows that makes its update differ from dense Adam's by far more
than float noise. ``LazyAdam`` applies exactly the arithmetic of torch's ``Adam`` to the
touched rows, so when every row is touched at every step the two are the same optimizer.
"""
from __future__ import annotations

import math
import types
from typing import Iterable

import torch
import torch.nn.functional as F
from fuxictr.pytorch.layers import FeatureEmbeddingDict
from torch import nn

from ...errors import InputError, check_choice

EMBEDDING_UPDATES = ("dense", "sparse", "exact")
# where torch's fused Adam kernel runs (torch.optim.Adam(fused=True) refuses other tensors)
FUSED_DEVICES = ("cpu", "cuda")
FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def feature_embedding_tables(model: nn.Module) -> list[nn.Embedding]:
    """The distinct trainable ``nn.Embedding`` tables of every ``FeatureEmbeddingDict`` in
    ``model`` (a table shared by several features is listed once)."""
    tables: dict[int, nn.Embedding] = {}
    for module in model.modules():
        if isinstance(module, FeatureEmbeddingDict):
            for sub in module.modules():
                if isinstance(sub, nn.Embedding) and sub.weight.requires_grad:
                    tables.setdefault(id(sub), sub)
    return list(tables.values())


def distinct_rows(ids: torch.Tensor, num_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, inverse)``: the sorted distinct ids of a flat id tensor and each id's position
    in ``rows`` (``torch.unique``'s answer). A table small next to the lookup count (a
    history's table) is answered with a presence mask and a cumulative sum, O(table + lookups),
    instead of sorting the lookups."""
    if num_rows <= 4 * ids.numel():
        present = torch.zeros(num_rows, dtype=torch.bool, device=ids.device).index_fill_(0, ids, True)
        rows = present.nonzero().squeeze(1)
        position = torch.cumsum(present, 0) - 1
        return rows, position.index_select(0, ids)
    return torch.unique(ids, sorted=True, return_inverse=True)


def union_rows(row_sets: list[torch.Tensor], num_rows: int) -> torch.Tensor:
    """The sorted union of sorted distinct id tensors (a table looked up by several features)."""
    if len(row_sets) == 1:
        return row_sets[0]
    ids = torch.cat(row_sets)
    if num_rows <= 4 * ids.numel():
        present = torch.zeros(num_rows, dtype=torch.bool, device=ids.device).index_fill_(0, ids, True)
        return present.nonzero().squeeze(1)
    return torch.unique(ids, sorted=True)


def touched_rows_penalty(weight: torch.Tensor, rows: torch.Tensor,
                         regularizers: list[tuple[int, float]]) -> torch.Tensor:
    """``sum_p lambda_p / p * ||weight[rows]||_p^p`` for sorted distinct ``rows`` (fuxictr's
    embedding regulariser on the rows a batch touched), whose gradient is the coalesced
    row-sparse ``lambda_p |w|^(p-1) sign(w)`` written directly, not through a lookup's
    scatter and a norm's backward."""
    return _TouchedRowsPenalty.apply(weight, rows, tuple(regularizers))


class _TouchedRowsPenalty(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, rows, regularizers):
        values = weight.index_select(0, rows)
        ctx.save_for_backward(rows, values)
        ctx.weight_shape, ctx.regularizers = weight.shape, regularizers
        total = values.new_zeros(())
        for p, lam in regularizers:
            total = total + (lam / p) * (values.square().sum() if p == 2 else values.abs().pow(p).sum())
        return total

    @staticmethod
    def backward(ctx, grad_out):
        rows, values = ctx.saved_tensors
        grad = torch.zeros_like(values)
        for p, lam in ctx.regularizers:
            if p == 2:
                grad.add_(values, alpha=lam)
            elif p == 1:
                grad.add_(values.sign(), alpha=lam)
            else:
                grad.add_(values.abs().pow(p - 1).mul_(values.sign()), alpha=lam)
        grad.mul_(grad_out)
        return _row_sparse_grad(rows, grad, None, ctx.weight_shape), None, None


def _row_sparse_grad(rows: torch.Tensor, values: torch.Tensor, padding_idx: int | None,
                     shape: torch.Size) -> torch.Tensor:
    """The coalesced row-sparse gradient of a table from one value row per distinct id (sorted
    ``rows``), without the padding row, which never learns."""
    if padding_idx is not None:
        keep = rows != padding_idx
        rows, values = rows[keep], values[keep]
    return torch.sparse_coo_tensor(rows.unsqueeze(0), values, shape, is_coalesced=True, check_invariants=False)


class _RowSparseLookup(torch.autograd.Function):
    """``weight[ids]`` whose gradient is row-sparse and already coalesced: one row per
    distinct id (the padding row left out), summed with ``index_add_`` into a compact buffer
    instead of the per-position rows that ``nn.Embedding(sparse=True)`` emits and the optimizer
    would then have to sort."""

    @staticmethod
    def forward(ctx, weight, ids, rows, inverse, padding_idx):
        ctx.save_for_backward(rows, inverse)
        ctx.weight_shape = weight.shape
        ctx.padding_idx = padding_idx
        return weight.index_select(0, ids)

    @staticmethod
    def backward(ctx, grad_out):
        rows, inverse = ctx.saved_tensors
        # a field's gradient is usually a strided slice of the stacked fields' gradient;
        # index_add_ from a contiguous copy is about 3x faster on CPU
        values = grad_out.new_zeros(rows.numel(), grad_out.size(-1)).index_add_(0, inverse, grad_out.contiguous())
        return _row_sparse_grad(rows, values, ctx.padding_idx, ctx.weight_shape), None, None, None, None


class _RowSparseBagSum(torch.autograd.Function):
    """Per-bag sums of ``weight[items]`` (bags given by ``offsets``, as ``embedding_bag``), with
    the same coalesced row-sparse gradient as :class:`_RowSparseLookup`.

    Backward is the transposed product: the gradient of distinct row ``r`` is the sum of the
    output gradients of the bags holding ``r``. Grouping the items by row (one stable sort of
    their row numbers) turns it into another ``embedding_bag``, over the output gradient, which
    is several times faster on CPU than scattering one row per item with ``index_add_``."""

    @staticmethod
    def forward(ctx, weight, items, offsets, positions, length, rows, inverse):
        ctx.save_for_backward(positions, rows, inverse)
        ctx.weight_shape, ctx.length = weight.shape, length
        return F.embedding_bag(items, weight, offsets, mode="sum")

    @staticmethod
    def backward(ctx, grad_out):
        positions, rows, inverse = ctx.saved_tensors
        bag_of_item = torch.div(positions, ctx.length, rounding_mode="floor")
        order = torch.sort(inverse.to(torch.int32), stable=True)[1]
        per_row = torch.bincount(inverse, minlength=rows.numel())
        row_offsets = torch.cumsum(per_row, 0) - per_row
        values = F.embedding_bag(bag_of_item.index_select(0, order), grad_out, row_offsets, mode="sum")
        return _row_sparse_grad(rows, values, None, ctx.weight_shape), None, None, None, None, None, None


def bag_items(ids: torch.Tensor, padding_idx: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, L) ids -> ``(items, offsets, positions)``: the non-padding ids in row order, where
    each row's bag starts, and each item's flat position (its row is ``position // L``).
    ``embedding_bag`` on this 1-D form runs its fast kernel; given the 2-D ids with
    ``padding_idx`` it takes a slow path (about 25x on CPU)."""
    batch, length = ids.shape
    flat = ids.reshape(-1)
    if padding_idx is None:
        positions = torch.arange(flat.numel(), device=ids.device)
        counts = torch.full((batch,), length, dtype=torch.long, device=ids.device)
    else:
        positions = (flat != padding_idx).nonzero().squeeze(1)
        counts = (ids != padding_idx).sum(dim=1)
    offsets = torch.cumsum(counts, 0) - counts
    return flat.index_select(0, positions), offsets, positions


def _note_rows(table: nn.Embedding, rows: torch.Tensor | None) -> None:
    """Keep a training lookup's rows (regulariser) and, in ``exact`` mode, bring the rows about
    to be read up to date first (``rows`` None: every row, for a lookup outside training)."""
    hook = getattr(table, "catch_up_rows", None)
    if hook is not None:
        hook(rows)
    if rows is not None and table.record_rows:
        table.touched_rows.append(rows if table.padding_idx is None else rows[rows != table.padding_idx])


def bag_sum(table: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """(B, L) ids -> (B, D): the sum of each row's embeddings over its non-padding positions,
    without materialising the (B, L, D) lookup; row-sparse gradient when the table is. The
    padding positions are left out (not added as the padding row), so they cost nothing and
    the padding row gets no gradient in either mode. Off the CPU the dense lookup keeps the 2-D
    form: finding the non-padding ids (``nonzero``) would cost a host sync there."""
    sparse = getattr(table, "sparse", False) and torch.is_grad_enabled() and hasattr(table, "touched_rows")
    if not sparse and hasattr(table, "touched_rows"):
        _note_rows(table, None)
    if not sparse and ids.device.type != "cpu":
        return F.embedding_bag(ids, table.weight, mode="sum", padding_idx=table.padding_idx)
    items, offsets, positions = bag_items(ids, table.padding_idx)
    if sparse:
        rows, inverse = distinct_rows(items, table.num_embeddings)
        _note_rows(table, rows)
        return _RowSparseBagSum.apply(table.weight, items, offsets, positions, ids.shape[1], rows, inverse)
    return F.embedding_bag(items, table.weight, offsets, mode="sum")


def row_sparse_forward(table: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """The lookup of a row-sparse table: the same output as ``nn.Embedding``; in training its
    gradient holds one row per distinct id of the batch (see :class:`_RowSparseLookup`), and
    those rows are kept in ``table.touched_rows`` (when ``table.record_rows``) for the
    regulariser of the touched rows."""
    if not torch.is_grad_enabled():
        _note_rows(table, None)
        return F.embedding(ids, table.weight, table.padding_idx)
    flat = ids.reshape(-1)
    rows, inverse = distinct_rows(flat, table.num_embeddings)
    _note_rows(table, rows)
    out = _RowSparseLookup.apply(table.weight, flat, rows, inverse, table.padding_idx)
    return out.view(*ids.shape, table.embedding_dim)


def enable_sparse_embeddings(model: nn.Module, record_rows: bool = False) -> list[nn.Embedding]:
    """Make every feature embedding table of ``model`` produce row-sparse gradients;
    ``record_rows`` keeps each training lookup's distinct ids (for the regulariser)."""
    tables = feature_embedding_tables(model)
    for table in tables:
        if table.max_norm is not None or table.scale_grad_by_freq:
            raise ValueError(f"embedding_update='sparse' does not support max_norm / scale_grad_by_freq "
                             f"(table {table})")
        table.sparse = True
        table.touched_rows = []
        table.record_rows = record_rows
        # an instance attribute: fuxictr's `type(v) == nn.Embedding` checks (init_weights) still hold
        table.forward = types.MethodType(row_sparse_forward, table)
    return tables


class LazyAdam(torch.optim.Adam):
    """Adam for dense gradients (torch's step, unchanged) and lazy Adam for row-sparse ones.

    For a row-sparse gradient only the rows present in it are read and written: their first
    and second moments, bias corrections and update are those of torch's ``Adam`` (same
    operations in the same order); all other rows keep their values and moments bit for bit.
    The step count, and so the bias correction, is per parameter tensor as in ``Adam``.
    Options that have no lazy form (weight decay, amsgrad, maximize) are refused.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, lr=lr, betas=betas, eps=eps, foreach=None)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        sparse: list[tuple[dict, nn.Parameter, torch.Tensor]] = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    sparse.append((group, p, p.grad))
                    p.grad = None  # hidden from torch's dense step
        try:
            super().step()
        finally:
            for _, p, grad in sparse:
                p.grad = grad
        for group, p, grad in sparse:
            self._lazy_step(group, p, grad)
        return loss

    def _lazy_step(self, group: dict, p: nn.Parameter, grad: torch.Tensor) -> None:
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        step = float(state["step"])  # a CPU scalar, as in torch's Adam: no device sync
        beta1, beta2 = group["betas"]
        grad = coalesce_rows(grad)
        rows, values = grad.indices()[0], grad.values()
        if rows.numel() == 0:
            return
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        m = exp_avg.index_select(0, rows).lerp_(values, 1 - beta1)
        v = exp_avg_sq.index_select(0, rows).mul_(beta2).addcmul_(values, values, value=1 - beta2)
        exp_avg.index_copy_(0, rows, m)
        exp_avg_sq.index_copy_(0, rows, v)
        bias_correction1 = 1 - beta1 ** step
        bias_correction2_sqrt = math.sqrt(1 - beta2 ** step)
        denom = (v.sqrt() / bias_correction2_sqrt).add_(group["eps"])
        updated = p.index_select(0, rows).addcdiv_(m, denom, value=-group["lr"] / bias_correction1)
        p.index_copy_(0, rows, updated)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for flag in ("amsgrad", "maximize"):
            if group.get(flag):
                raise ValueError(f"LazyAdam does not support {flag}=True")
        if group.get("weight_decay"):
            raise ValueError(f"LazyAdam does not support weight_decay={group['weight_decay']!r} "
                             f"(it has no lazy form); use the model's regularizers")


def check_learning_rate(lr: object) -> None:
    """Refuse a learning rate that is not a number >= 0 by name (fuxictr's get_optimizer would
    report it as "optimizer=... is not supported")."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr >= 0:
        raise InputError(f"learning_rate {lr!r} is not a learning rate", where="the model's learning_rate",
                         expected="a number >= 0, e.g. 1.0e-3")


def prefer_fused(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Switch a plain ``torch.optim.Adam`` / ``AdamW`` whose implementation is unset (``foreach``
    and ``fused`` both unset) to torch's fused kernel, one call per tensor for the whole update.
    Why: on CPU torch picks the per-parameter loop, a dozen small kernel calls per tensor; the
    fused kernel does the update about 2.5x faster than even the multi-tensor ``_foreach`` ops
    (docs/performance.md). Same arithmetic, not the same order: the parameters agree with the
    loop's to float rounding, not bitwise (``tests/models/test_speed_paths.py``). Tensors the
    fused kernel does not take (other devices or dtypes) get the multi-tensor ops instead."""
    if type(optimizer) in (torch.optim.Adam, torch.optim.AdamW):
        for group in optimizer.param_groups:
            if group.get("foreach") is not None or group.get("fused") or group.get("differentiable"):
                continue
            if all(p.device.type in FUSED_DEVICES and p.dtype in FUSED_DTYPES for p in group["params"]):
                group["fused"] = True
            else:
                group["foreach"] = True
    return optimizer


def build_optimizer(optimizer: str | type, params: Iterable[nn.Parameter], lr: float,
                    embedding_update: str) -> torch.optim.Optimizer:
    """fuxictr's ``get_optimizer`` for ``dense``; :class:`LazyAdam` for ``sparse`` and
    :class:`~exfm_plugin.models.kernels.exact_adam.ExactAdam` for ``exact``, which only have an Adam
    form, so any other optimizer name is an error."""
    check_choice("embedding_update", embedding_update, EMBEDDING_UPDATES)
    check_learning_rate(lr)
    if embedding_update == "dense":
        from fuxictr.pytorch.torch_utils import get_optimizer
        return prefer_fused(get_optimizer(optimizer, params, lr))
    name = optimizer if isinstance(optimizer, str) else getattr(optimizer, "__name__", str(optimizer))
    if name.lower() not in ("adam", "lazyadam", "exactadam"):
        raise ValueError(f"embedding_update={embedding_update!r} updates embeddings with a row-sparse "
                         f"Adam and needs optimizer 'adam', got optimizer={optimizer!r}")
    if embedding_update == "exact":
        from .exact_adam import ExactAdam  # it builds on LazyAdam
        return ExactAdam(params, lr=lr)
    return LazyAdam(params, lr=lr)


def coalesce_rows(grad: torch.Tensor) -> torch.Tensor:
    """``grad.coalesce()`` for a row-sparse gradient; the sum of a few row-sparse pieces (a
    table looked up by several features, plus its regulariser) over a table not much larger
    than the pieces is merged through a dense buffer instead of a sort."""
    if grad.is_coalesced():
        return grad
    indices, values = grad._indices()[0], grad._values()
    num_rows = grad.size(0)
    if num_rows > 4 * indices.numel():
        return grad.coalesce()
    buffer = values.new_zeros((num_rows,) + tuple(values.shape[1:])).index_add_(0, indices, values)
    rows = torch.zeros(num_rows, dtype=torch.bool, device=indices.device).index_fill_(0, indices, True)
    rows = rows.nonzero().squeeze(1)
    return torch.sparse_coo_tensor(rows.unsqueeze(0), buffer.index_select(0, rows), grad.shape,
                                   is_coalesced=True, check_invariants=False)


def clip_grad_norm_(params: Iterable[nn.Parameter], max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` that also takes row-sparse gradients (torch's raises
    on them): sparse gradients are coalesced in place so each row counts once, their values
    enter the total norm, and everything is scaled by the same factor. No host sync."""
    params = [p for p in params if p.grad is not None]
    dense, sparse = [], []
    for p in params:
        if p.grad.is_sparse:
            if not p.grad.is_coalesced():
                p.grad = coalesce_rows(p.grad)
            sparse.append(p.grad)
        else:
            dense.append(p.grad)
    if not sparse:
        return nn.utils.clip_grad_norm_(params, max_norm, norm_type)
    norms = [torch.linalg.vector_norm(g.values(), norm_type) for g in sparse]
    if dense:
        norms.append(nn.utils.get_total_norm(dense, norm_type))
    total = torch.linalg.vector_norm(torch.stack(norms), norm_type)
    clip_coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    if dense:
        nn.utils.clip_grads_with_norm_([p for p in params if not p.grad.is_sparse], max_norm, total)
    for g in sparse:
        g.values().mul_(clip_coef)
    return total
