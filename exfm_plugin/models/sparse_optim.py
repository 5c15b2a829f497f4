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
from typing import Iterable

import torch
from fuxictr.pytorch.layers import FeatureEmbeddingDict
from torch import nn

EMBEDDING_UPDATES = ("dense", "sparse")


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


def enable_sparse_embeddings(model: nn.Module) -> list[nn.Embedding]:
    """Make every feature embedding table of ``model`` produce row-sparse gradients."""
    tables = feature_embedding_tables(model)
    for table in tables:
        table.sparse = True
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
        grad = grad.coalesce()
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


def build_optimizer(optimizer: str | type, params: Iterable[nn.Parameter], lr: float,
                    embedding_update: str) -> torch.optim.Optimizer:
    """fuxictr's ``get_optimizer`` for ``dense``; :class:`LazyAdam` for ``sparse``, which
    only has an Adam form, so any other optimizer name is an error."""
    if embedding_update not in EMBEDDING_UPDATES:
        raise ValueError(f"embedding_update={embedding_update!r} is not one of {list(EMBEDDING_UPDATES)}")
    if embedding_update == "dense":
        from fuxictr.pytorch.torch_utils import get_optimizer
        return get_optimizer(optimizer, params, lr)
    name = optimizer if isinstance(optimizer, str) else getattr(optimizer, "__name__", str(optimizer))
    if name.lower() not in ("adam", "lazyadam"):
        raise ValueError(f"embedding_update='sparse' updates embeddings with lazy Adam and needs "
                         f"optimizer 'adam', got optimizer={optimizer!r}")
    return LazyAdam(params, lr=lr)


def clip_grad_norm_(params: Iterable[nn.Parameter], max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` that also takes row-sparse gradients (torch's raises
    on them): sparse gradients are coalesced in place so each row counts once, their values
    enter the total norm, and everything is scaled by the same factor. No host sync."""
    params = [p for p in params if p.grad is not None]
    dense, sparse = [], []
    for p in params:
        if p.grad.is_sparse:
            if not p.grad.is_coalesced():
                p.grad = p.grad.coalesce()
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
