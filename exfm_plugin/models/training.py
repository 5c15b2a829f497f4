"""Training options every model takes as plain constructor kwargs (so YAML / grid model params
reach them): ``embedding_update``, ``precision``, ``torch_compile``.

- ``embedding_update: dense | sparse`` (default ``dense``): ``sparse`` gives the feature
  embedding tables row-sparse gradients and updates them with :class:`LazyAdam` (only the rows
  a batch looked up move; dense parameters keep torch's Adam). The embedding regulariser is
  then applied to the rows the batch touched, each touched row once per step (the padding row
  excluded): ``sum_p lambda_p / p * ||W[rows]||_p^p``, where the dense mode sums over the whole
  table. When a batch touches every row the two are the same loss.
- ``embedding_update: exact``: the same row-sparse gradients, updated by :class:`ExactAdam`, which
  replays the steps dense Adam gives a row without gradient when the row is next touched, so the
  weights are dense Adam's (:mod:`exfm_plugin.models.kernels.exact_adam`); the model brings every row up
  to date on ``eval()`` / ``train(False)``, ``state_dict()`` and copies. The embedding regulariser
  covers the touched rows, as with ``sparse`` (the one part that is not dense Adam's).
- ``precision: fp32 | bf16`` (default ``fp32``): ``bf16`` runs the training forward and loss
  under ``torch.autocast(dtype=bfloat16)``; parameters, gradients and the optimizer stay fp32.
- ``torch_compile: bool`` (default ``False``): the training forward goes through
  ``torch.compile`` (prediction and evaluation stay eager).

:class:`TrainingOptionsMixin` gives any fuxictr ``BaseModel`` / ``MultiTaskModel`` subclass
these options: put it first among the bases, e.g. ``class M(TrainingOptionsMixin, MultiTaskModel)``.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import weakref
from typing import Callable

import torch
from fuxictr.pytorch.layers import FeatureEmbeddingDict
from fuxictr.pytorch.models import BaseModel
from fuxictr.pytorch.torch_utils import get_regularizer
from torch import nn

from ..errors import check_choice
from .kernels.exact_adam import catch_up_parameters, catch_up_rows
from .kernels.sparse_optim import (EMBEDDING_UPDATES, build_optimizer, check_learning_rate, clip_grad_norm_,
                           enable_sparse_embeddings, prefer_fused, touched_rows_penalty, union_rows)

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
TRAINING_OPTIONS = ("embedding_update", "precision", "torch_compile")

_COMPILED: "weakref.WeakKeyDictionary[nn.Module, dict[str, Callable]]" = weakref.WeakKeyDictionary()


def validate_training_options(embedding_update: str, precision: str, torch_compile: bool) -> None:
    """Raise a ValueError naming the option and its allowed values."""
    check_choice("embedding_update", embedding_update, EMBEDDING_UPDATES)
    check_choice("precision", precision, PRECISIONS)
    if not isinstance(torch_compile, bool):
        raise ValueError(f"torch_compile={torch_compile!r} must be true or false")
    if torch_compile and embedding_update != "dense":
        raise ValueError(f"torch_compile=True does not support embedding_update={embedding_update!r} "
                         "(torch.compile cannot trace row-sparse embedding gradients)")


def autocast(device: torch.device, precision: str):
    """The autocast context of ``precision`` on ``device`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def compiled(owner: nn.Module, name: str, fn: Callable) -> Callable:
    """``torch.compile(fn)``, built once per ``owner`` and kept off the module so that
    ``deepcopy`` / ``state_dict`` of the model never see it."""
    cache = _COMPILED.setdefault(owner, {})
    if name not in cache:
        cache[name] = torch.compile(fn)
    return cache[name]


def dense_regularization_loss(model: nn.Module):
    """fuxictr's ``BaseModel.regularization_loss``: ``sum lambda / p * ||W||_p^p`` over the
    trainable parameters of every ``FeatureEmbeddingDict`` (embedding regularizer; a table
    counted once per module that holds it, as there) and over every other trainable parameter
    (net regularizer); 0 when both are off. Why not fuxictr's own: it builds four autograd
    nodes per tensor (norm, pow, scale, add), about 200 a step for a TaobaoAd DeepFM student;
    here one ``_foreach_norm`` per group. Value and gradient equal fuxictr's (bitwise in
    ``tests/models/test_speed_paths.py``; in general to float rounding: the sum is in another order)."""
    if not (model._embedding_regularizer or model._net_regularizer):
        return 0
    emb_params, emb_names = [], set()
    for m_name, module in model.named_modules():
        if type(module) is FeatureEmbeddingDict:
            for p_name, param in module.named_parameters():
                if param.requires_grad:
                    emb_names.add(".".join([m_name, p_name]))
                    emb_params.append(param)
    net_params = [p for name, p in model.named_parameters() if p.requires_grad and name not in emb_names]
    reg_term = 0
    for params, regularizer in ((emb_params, model._embedding_regularizer), (net_params, model._net_regularizer)):
        for norm_p, lam in (get_regularizer(regularizer) if params else []):
            norms = torch.stack(torch._foreach_norm(params, norm_p))
            reg_term = reg_term + (lam / norm_p) * norms.pow(norm_p).sum()
    return reg_term


class TrainStepMixin:
    """The one training step of every model here, a bare VM's and an ``ExFMStudent``'s: zero
    the gradients, :meth:`step_loss`, backward, clip :meth:`step_parameters` at fuxictr's
    ``max_gradient_norm``, one optimizer step. Subclasses say what the loss is and which
    parameters it trains; the order of the step is fuxictr's ``BaseModel.train_step``."""

    def step_loss(self, batch_data) -> torch.Tensor:
        """The scalar loss of one batch, built under the model's precision."""
        raise NotImplementedError

    def step_parameters(self):
        """The parameters the step's gradient clip covers (those ``self.optimizer`` updates)."""
        return self.parameters()

    def train_step(self, batch_data):
        """fuxictr's step, with the training options and a clip that takes sparse gradients."""
        self.optimizer.zero_grad()
        loss = self.step_loss(batch_data)
        loss.backward()
        clip_grad_norm_(self.step_parameters(), self._max_gradient_norm)
        self.optimizer.step()
        return loss


class TrainingOptionsMixin(TrainStepMixin):
    """``embedding_update`` / ``precision`` / ``torch_compile`` for a fuxictr model."""

    embedding_update: str = "dense"
    precision: str = "fp32"
    torch_compile: bool = False

    def __init__(self, feature_map, *args, embedding_update: str = "dense", precision: str = "fp32",
                 torch_compile: bool = False, **kwargs):
        validate_training_options(embedding_update, precision, torch_compile)
        # set before the model's own __init__ runs: a subclass further down the MRO (e.g.
        # MultiTaskDMIN) calls compile() from inside it
        for name, value in (("embedding_update", embedding_update), ("precision", precision),
                            ("torch_compile", torch_compile), ("_sparse_tables", [])):
            object.__setattr__(self, name, value)
        super().__init__(feature_map, *args, **kwargs)

    # ---- optimizer ----------------------------------------------------------------------
    def compile(self, optimizer, loss, lr):
        """fuxictr's compile; with ``sparse`` the embedding tables turn row-sparse and the
        optimizer is :class:`LazyAdam`. Call it once every layer exists (as fuxictr models do)."""
        check_learning_rate(lr)
        super().compile(optimizer, loss, lr)
        prefer_fused(self.optimizer)  # the same update to float rounding, about 2.5x faster on CPU
        if self.embedding_update != "dense":
            self._sparse_tables = enable_sparse_embeddings(self, record_rows=bool(self._embedding_regularizer))
            self.optimizer = build_optimizer(optimizer, self.parameters(), lr, self.embedding_update)
        if self.embedding_update == "exact":
            for table in self._sparse_tables:  # the rows a lookup reads are caught up first
                table.catch_up_rows = functools.partial(catch_up_rows, table.weight)
            if self._embedding_regularizer:
                logger.info("embedding_update='exact' applies embedding_regularizer=%r to the rows each "
                            "batch touches: the one part that is not dense Adam's", self._embedding_regularizer)

    # ---- exact mode: every row up to date before the weights are read -----------------------
    def catch_up(self) -> None:
        """With ``exact``, apply every embedding row's skipped Adam steps (a no-op otherwise)."""
        if self.embedding_update == "exact":
            catch_up_parameters(self.parameters())

    def train(self, mode: bool = True):
        if not mode:
            self.catch_up()
        return super().train(mode)

    def state_dict(self, *args, **kwargs):
        self.catch_up()
        return super().state_dict(*args, **kwargs)

    def __getstate__(self):
        self.catch_up()  # deepcopy / pickle (export_serving_model copies the VM)
        return super().__getstate__()

    # ---- regularisation -----------------------------------------------------------------
    def regularization_loss(self):
        """fuxictr's regularisation; with ``sparse`` the embedding term covers the rows the
        batch touched (each once) instead of the whole table, so its gradient stays row-sparse."""
        if self.embedding_update == "dense":
            inherited = super().regularization_loss
            if getattr(inherited, "__func__", None) is BaseModel.regularization_loss:
                return dense_regularization_loss(self)
            return inherited()  # another definition (fuxictr's MultiTaskModel regularises other tensors)
        touched = {}
        for table in self._sparse_tables:  # the distinct ids of this step's lookups (row_sparse_forward)
            touched[id(table)], table.touched_rows = table.touched_rows, []
        reg_term = 0
        if not (self._embedding_regularizer or self._net_regularizer):
            return reg_term
        emb_reg = get_regularizer(self._embedding_regularizer)
        net_reg = get_regularizer(self._net_regularizer)
        tables = {id(t.weight): t for t in self._sparse_tables}
        emb_params = set()
        for m_name, module in self.named_modules():
            if type(module) is not FeatureEmbeddingDict:
                continue
            for p_name, param in module.named_parameters():
                if not param.requires_grad:
                    continue
                emb_params.add(f"{m_name}.{p_name}")
                values = param
                table = tables.get(id(param))
                if table is not None:
                    ids = touched.get(id(table))
                    if ids:  # else no row of this table was looked up in the batch
                        reg_term = reg_term + touched_rows_penalty(param, union_rows(ids, table.num_embeddings),
                                                                   emb_reg)
                    continue
                for emb_p, emb_lambda in emb_reg:
                    reg_term += (emb_lambda / emb_p) * torch.norm(values, emb_p) ** emb_p
        for name, param in self.named_parameters():
            if param.requires_grad and name not in emb_params:
                for net_p, net_lambda in net_reg:
                    reg_term += (net_lambda / net_p) * torch.norm(param, net_p) ** net_p
        return reg_term

    # ---- the step -----------------------------------------------------------------------
    def training_forward(self, batch_data):
        """``forward`` under the model's precision, through ``torch.compile`` if asked."""
        forward = compiled(self, "forward", self.forward) if self.torch_compile else self.forward
        with autocast(self.device, self.precision):
            return forward(batch_data)

    def step_loss(self, batch_data) -> torch.Tensor:
        """fuxictr's loss (``compute_loss``: the loss plus the regularizers) of the training forward."""
        return_dict = self.training_forward(batch_data)
        y_true = self.get_labels(batch_data)
        with autocast(self.device, self.precision):
            return self.compute_loss(return_dict, y_true)

    def fit_settings(self) -> dict:
        """The fuxictr ``BaseModel`` constructor arguments that govern ``fit`` and ``evaluate``
        (monitor, early stopping, evaluation steps, checkpoint root, metrics, verbosity), read
        back so a model that wraps this one (``ExFMStudent``) is built with the same ones."""
        return {"monitor": dict(self._monitor.kv_pairs), "monitor_mode": self._monitor_mode,
                "early_stop_patience": self._early_stop_patience, "eval_steps": self._eval_steps,
                "save_best_only": self._save_best_only, "reduce_lr_on_plateau": self._reduce_lr_on_plateau,
                "verbose": self._verbose, "model_root": os.path.dirname(self.model_dir),
                "metrics": self.validation_metrics}
