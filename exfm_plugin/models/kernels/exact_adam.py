"""Exact sparse Adam (``embedding_update: exact``): dense Adam's trajectory at sparse cost per
step, by replaying the steps a row skipped when it is next looked up.

Dense ``torch.optim.Adam`` moves a row that has no gradient at step t too: its moments decay
(``m <- b1 m``, ``v <- b2 v``) and it keeps stepping by ``lr m_hat / (sqrt(v_hat) + eps)`` with
step t's bias corrections. Those skipped steps depend only on the row's moments at its last
touch ``t0`` and the step counts, so :class:`ExactAdam` keeps one last-touched step per row
(``state["row_step"]``) and, before the update of a row touched again at step ``T + 1``, applies
the ``k = T - t0`` skipped steps at once::

    w -= m0 * sum_{j=1..k} lr b1^j / (1 - b1^(t0+j)) / (b2^(j/2) sqrt(v0) / sqrt(1 - b2^(t0+j)) + eps)
    m  = b1^k m0,   v = b2^k v0

The sum has no closed form (``eps`` and the varying bias corrections), so it is evaluated term
by term, vectorised over (rows, j, dim) in chunks of rows with similar gaps.

What is exact, and what is not:

- The trajectory is dense Adam's on the same gradients, up to float rounding: the sum is formed
  in a different order than dense Adam's step-by-step additions, and ``b^k`` replaces k
  multiplications (both within a few units of roundoff per step).
- The sum stops after ``H`` terms (:func:`catch_up_horizon`, 211 in float32 and 402 in float64 at
  the default betas): its terms fall at least as fast as ``r^j`` with ``r = b1 / sqrt(b2)``, and
  ``H`` is chosen so that the dropped tail is below half a unit of roundoff of the sum (a proven
  bound, not a heuristic). The moments use the full gap.
- A row never touched keeps zero moments, so dense Adam never moves it either.
- Every row is brought up to date (:meth:`ExactAdam.catch_up_all`) before the model is evaluated,
  exported, copied or saved: the model's ``train(False)``, ``state_dict()`` and ``__getstate__``
  and the optimizer's own ``state_dict()`` call it (:func:`catch_up_parameters`). The optimizer
  state also carries ``row_step``, so a state saved without a flush still resumes exactly.
- Not exact: an *embedding regulariser*. Its gradient on an untouched row (``lambda * w`` for L2)
  is not zero, so dense Adam with it moves every row by a non-linear recurrence in (w, m, v) that
  only a step-by-step replay (dense cost) reproduces. ``exact`` applies the regulariser to the
  rows a batch touched, as ``sparse`` does; the optimizer is still dense Adam on the gradients it
  is given. Dense parameters (and their ``net_regularizer``) get torch's own Adam step.
- Torch's Adam has no weight decay here (``LazyAdam`` refuses it), nor amsgrad or maximize.
"""
from __future__ import annotations

import logging
import math
import weakref
from typing import Iterable

import torch
from torch import nn

from .sparse_optim import LazyAdam, coalesce_rows

logger = logging.getLogger(__name__)

_LIVE: "weakref.WeakSet[ExactAdam]" = weakref.WeakSet()
CHUNK_ELEMENTS = 1 << 21  # (rows x j x dim) elements evaluated at once in a catch-up


def catch_up_horizon(dtype: torch.dtype, beta1: float, beta2: float) -> int | None:
    """The number of skipped-step terms after which the rest of the catch-up sum is below half
    a unit of roundoff of ``dtype`` relative to the sum (None: no such bound, sum them all).

    Term j over term 1 is at most ``c * r^(j-1)`` with ``r = b1 / sqrt(b2)`` and
    ``c = 1 / sqrt(1 - b2^2)`` (the largest second bias correction of a row touched at step >= 1;
    the first bias correction only shrinks with j), and every term has the sign of ``m0``, so the
    tail after H terms is at most ``sum * c r^H / (1 - r)``."""
    if beta1 <= 0:
        return 1  # b1^j m0 = 0 from the first skipped step on
    if beta2 <= 0:
        return None
    r = beta1 / math.sqrt(beta2)
    if r >= 1:
        return None
    unit = torch.finfo(dtype).eps / 2
    c = 1 / math.sqrt(1 - beta2 ** 2)
    return max(1, math.ceil(math.log(unit * (1 - r) / c) / math.log(r)))


def skipped_steps_delta(m0: torch.Tensor, v0: torch.Tensor, last: torch.Tensor, gap: torch.Tensor, terms: int,
                        lr: float, beta1: float, beta2: float, eps: float) -> torch.Tensor:
    """What dense Adam adds to rows with moments ``(m0, v0)`` (n, D) after their last touch at
    step ``last`` (n,) over ``gap`` (n,) steps without gradient, summing the first ``terms`` (>= every
    ``min(gap, horizon)``) skipped steps. Coefficients in float64, the (n, terms, D) sum in the
    parameter's dtype."""
    j = torch.arange(1, terms + 1, dtype=torch.float64, device=m0.device)
    s = last.to(torch.float64).unsqueeze(1) + j  # the absolute step of each skipped step
    a = lr * torch.pow(beta1, j) / (1 - torch.pow(beta1, s))
    a = a.masked_fill_(j > gap.to(torch.float64).unsqueeze(1), 0.0)  # rows with a shorter gap
    b = torch.pow(beta2, j / 2) / torch.sqrt(1 - torch.pow(beta2, s))
    inv_denom = (b.to(m0.dtype).unsqueeze(2) * v0.sqrt().unsqueeze(1)).add_(eps).reciprocal_()  # (n, terms, D)
    return torch.bmm(a.to(m0.dtype).unsqueeze(1), inv_denom).squeeze(1).mul_(m0).neg_()


class ExactAdam(LazyAdam):
    """Dense ``torch.optim.Adam`` for every parameter, computed sparsely for row-sparse
    gradients: a row's skipped steps are replayed when it is next touched and by
    :meth:`catch_up_all` (see the module docstring for what is exact)."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, lr=lr, betas=betas, eps=eps)
        _LIVE.add(self)

    # ---- the step -----------------------------------------------------------------------
    def _lazy_step(self, group: dict, p: nn.Parameter, grad: torch.Tensor) -> None:
        grad = coalesce_rows(grad)
        rows = grad.indices()[0]
        state = self.state[p]
        fresh = not state
        if not fresh and rows.numel():
            self._catch_up(group, p, state, rows)
        super()._lazy_step(group, p, grad)
        if fresh:  # no row touched before this step
            self.state[p]["row_step"] = torch.zeros(p.shape[0], dtype=torch.long, device=p.device)
        row_step = self._row_step(p, self.state[p])
        if rows.numel():
            row_step.index_fill_(0, rows, int(self.state[p]["step"]))

    @staticmethod
    def _row_step(p: nn.Parameter, state: dict) -> torch.Tensor:
        """Each row's last-touched step; a state from elsewhere (dense Adam) is current."""
        if "row_step" not in state:
            state["row_step"] = torch.full((p.shape[0],), int(state["step"]), dtype=torch.long, device=p.device)
        return state["row_step"]

    @torch.no_grad()
    def _catch_up(self, group: dict, p: nn.Parameter, state: dict, rows: torch.Tensor | None = None) -> None:
        """Bring ``rows`` (all rows if None) up to the parameter's step count."""
        target = int(state["step"])
        row_step = self._row_step(p, state)
        if rows is None:
            cand = (row_step < target).nonzero().squeeze(1)
        else:
            cand = rows[row_step.index_select(0, rows) < target]
        if cand.numel() == 0:
            return
        last = row_step.index_select(0, cand)
        row_step.index_fill_(0, cand, target)
        moving = last > 0  # last == 0: never touched, zero moments, dense Adam never moved it
        cand, last = cand[moving], last[moving]
        if cand.numel() == 0:
            return
        gap, order = torch.sort(target - last)
        cand, last = cand.index_select(0, order), last.index_select(0, order)
        beta1, beta2 = group["betas"]
        lr, eps = group["lr"], group["eps"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        m0, v0 = exp_avg.index_select(0, cand), exp_avg_sq.index_select(0, cand)
        horizon = catch_up_horizon(p.dtype, beta1, beta2)
        dim = max(1, p[0].numel())
        gaps = gap.tolist()
        n, start = len(gaps), 0
        while start < n:  # chunks of rows with gaps within 2x (sorted), capped in size
            cap = 2 * gaps[start] if horizon is None else min(horizon, 2 * gaps[start])
            end = int(torch.searchsorted(gap, cap, right=True)) if horizon is None or cap < horizon else n
            end = max(start + 1, min(end, start + CHUNK_ELEMENTS // (cap * dim)))
            terms = gaps[end - 1] if horizon is None else min(gaps[end - 1], horizon)
            sl = slice(start, end)
            delta = skipped_steps_delta(m0[sl].reshape(end - start, dim), v0[sl].reshape(end - start, dim),
                                        last[sl], gap[sl], terms, lr, beta1, beta2, eps)
            rows = cand[sl]  # index_add_ is several times slower than select + copy on CPU
            p.index_copy_(0, rows, p.index_select(0, rows).add_(delta.view((end - start,) + p.shape[1:])))
            start = end
        shape = (-1,) + (1,) * (p.dim() - 1)
        exp_avg.index_copy_(0, cand, m0 * torch.pow(beta1, gap.to(torch.float64)).to(p.dtype).view(shape))
        exp_avg_sq.index_copy_(0, cand, v0 * torch.pow(beta2, gap.to(torch.float64)).to(p.dtype).view(shape))

    # ---- bringing every row up to date ----------------------------------------------------
    @torch.no_grad()
    def catch_up_all(self, params: Iterable[nn.Parameter] | None = None) -> None:
        """Apply every row's skipped steps (of ``params`` only, if given): afterwards the
        parameters and the state are dense Adam's. Idempotent; training continues as before."""
        only = None if params is None else {id(p) for p in params}
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if state and "row_step" in state and (only is None or id(p) in only):
                    self._catch_up(group, p, state)

    flush = catch_up_all

    def state_dict(self) -> dict:
        """Torch's state dict, taken after :meth:`catch_up_all` (so it is dense Adam's state)."""
        self.catch_up_all()
        return super().state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for state in self.state.values():  # torch casts every non-step tensor to the param dtype
            if "row_step" in state:
                state["row_step"] = state["row_step"].round().long()


def catch_up_parameters(params: Iterable[nn.Parameter]) -> None:
    """Bring the rows of ``params`` up to date in every live :class:`ExactAdam` that holds them
    (a model's hook: the optimizer may be its own or a wrapper's, e.g. the ExFM student's)."""
    params = list(params)
    for opt in list(_LIVE):
        opt.catch_up_all(params)


def catch_up_rows(weight: nn.Parameter, rows: torch.Tensor | None) -> None:
    """Bring ``rows`` of ``weight`` (all rows if None) up to date before a lookup reads them:
    dense Adam's forward at step t + 1 sees every row after t steps. Called by the lookups of an
    ``exact`` table (``table.catch_up_rows``)."""
    for opt in list(_LIVE):
        state = opt.state.get(weight)
        if state and "row_step" in state:
            group = next(g for g in opt.param_groups if any(q is weight for q in g["params"]))
            opt._catch_up(group, weight, state, rows)
