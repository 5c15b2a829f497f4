"""ExFMStudent: puts the paper's auxiliary heads and Student Adapter on any ExFM VM.

The wrapper is itself a fuxictr ``BaseModel`` so ``fit`` / ``evaluate`` / ``predict`` work
unchanged; ``forward`` is the VM's serving path alone, and :func:`export_serving_model`
returns the bare VM, so serving pays nothing for the method.
"""
from __future__ import annotations

import copy
import logging
import os

import torch
from fuxictr.features import FeatureMap
from fuxictr.pytorch.models import BaseModel
from torch import nn

from ..metrics import ExFMMetricsMixin
from ..models.base import check_protocol
from ..models.kernels.sparse_optim import build_optimizer, prefer_fused
from ..models.training import TrainStepMixin, autocast, compiled
from .config import DistillConfig
from .grad_scale import grad_scale
from .heads import DistillationHead, StudentAdapter
from .losses import TeacherProbCheck, h, scale_labels

logger = logging.getLogger(__name__)


def dummy_batch(feature_map, rows: int = 2) -> dict[str, torch.Tensor]:
    """All-padding inputs for every feature, used to read the backbone's output width."""
    batch = {}
    for name, spec in feature_map.features.items():
        kind = spec["type"]
        if kind == "meta":
            continue
        if kind == "numeric":
            batch[name] = torch.zeros(rows)
        elif kind == "sequence":
            batch[name] = torch.zeros(rows, spec["max_len"], dtype=torch.long)
        elif kind == "embedding":
            batch[name] = torch.zeros(rows, spec["pretrain_dim"])
        else:
            batch[name] = torch.zeros(rows, dtype=torch.long)
    return batch


def backbone_dim(vm) -> int:
    """Width of the VM's backbone vector x, read from one forward pass on padding inputs."""
    was_training = vm.training
    vm.eval()
    with torch.no_grad():
        x = vm.backbone(vm.get_inputs(dummy_batch(vm.feature_map)))
    vm.train(was_training)
    if x.dim() != 2:
        raise TypeError(f"vm={type(vm).__name__}.backbone must return a (batch, dim) tensor, "
                        f"got shape {tuple(x.shape)}")
    return int(x.shape[1])


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):  # fuxictr's default init for dense layers
        nn.init.xavier_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class ExFMStudent(TrainStepMixin, ExFMMetricsMixin, BaseModel):
    """A VM trained with ``none | kd | ah | ah_sa | ah_sa_frozen`` (the paper's Algorithm 1).

    The wrapper composes the VM: ``forward`` is the VM's serving path, and training adds the
    distillation head psi (and, with the adapter, the Student Adapter SA and the second head
    psi2) on the VM's backbone vector x. Each training step (the shared
    :class:`~exfm_plugin.models.training.TrainStepMixin` step) first updates SA alone on
    ``h(SA(p_F), y)`` (``ah_sa`` only), then the VM and its heads together on
    ``h(z_s, y) [+ h(z_s, p_F) for kd] + LW * h(psi(GS(x)), LS(p_F)) + h(psi2(GS(x)), sigmoid(SA(p_F)))``
    plus the VM's own regularizers and auxiliary loss (docs/method.md, The methods). ``fit``,
    ``evaluate`` and checkpointing are fuxictr's, with the VM's monitor, early stopping and
    metrics.

    Args:
        vm (ExFMModel or FeatureMap): the ExFM VM (an :class:`~exfm_plugin.models.ExFMModel`) to train, or a
            ``FeatureMap`` to build one from ``params`` as a FuxiCTR config does
            (``vm_model``: a ``MODEL_REGISTRY`` name, ``distill``: the DistillConfig fields).
        config (DistillConfig or None): the method and its knobs (:class:`DistillConfig`); ``None`` is method ``none``.
        model_id (str or None): the checkpoint name; default ``<vm model_id>_<method>``.
        optimizer (str or None): the optimizer of the VM and its heads; default the VM's own (Adam when the
            VM's embeddings are row-sparse). The adapter has its own Adam (``adapter_lr``).
        learning_rate (float or None): that optimizer's learning rate; default the VM optimizer's.
        **params: only with a ``FeatureMap``: the VM's constructor arguments.
    """

    def __init__(self, vm, config: DistillConfig | None = None, model_id: str | None = None,
                 optimizer: str | None = None, learning_rate: float | None = None, **params):
        if isinstance(vm, FeatureMap):  # FuxiCTR's way: ExFMStudent(feature_map, **params) from a config
            named = {"model_id": model_id, "optimizer": optimizer, "learning_rate": learning_rate}
            vm, config = vm_from_params(vm, {**{k: v for k, v in named.items() if v is not None}, **params})
        elif params:
            raise TypeError(f"ExFMStudent(vm, ...) got unexpected argument(s) {sorted(params)}; config params "
                            f"go with ExFMStudent(feature_map, **params)")
        check_protocol(vm)
        if config is not None and not isinstance(config, DistillConfig):
            raise TypeError(f"config must be a DistillConfig, got {type(config).__name__}")
        config = config or DistillConfig()
        gpu = vm.device.index if vm.device.type == "cuda" else -1
        if not callable(getattr(vm, "fit_settings", None)):
            raise TypeError(f"vm={type(vm).__name__} has no fit_settings(); subclass exfm_plugin.models.ExFMModel")
        super().__init__(vm.feature_map,
                         model_id=model_id or params.get("model_id") or f"{vm.model_id}_{config.method}",
                         gpu=gpu, **vm.fit_settings())
        self.output_activation = vm.output_activation
        self.config = config
        self.vm = vm
        self.distill_head = self.adapter_head = self.adapter = None
        if config.uses_aux_head:
            dim = backbone_dim(vm)
            self.distill_head = DistillationHead(dim, config.head_hidden_units, config.head_activation)
            if config.uses_adapter:
                self.adapter_head = DistillationHead(dim, config.head_hidden_units, config.head_activation)
            for head in (self.distill_head, self.adapter_head):
                if head is not None:
                    head.apply(_init_linear)
        if config.uses_adapter:
            self.adapter = StudentAdapter(config.adapter_hidden_units, config.adapter_input,
                                          config.adapter_residual, config.adapter_eps)
        self._last_terms: dict[str, torch.Tensor] = {}
        # invalid FM probabilities are counted on the device and read every N steps (see losses)
        self._teacher_check = TeacherProbCheck(config.fm_pred_column,
                                               every=1 if self.device.type == "cpu" else 100)
        self._max_gradient_norm = 10.0  # fuxictr sets it in fit(); train_step may run without
        vm_opt = getattr(vm, "optimizer", None)
        default_opt = "Adam" if vm_opt is None or self.embedding_update != "dense" else type(vm_opt).__name__
        self.compile(optimizer or default_opt,
                     learning_rate or (vm_opt.param_groups[0]["lr"] if vm_opt else 1e-3))
        self.to(self.device)

    # the VM's training options (exfm_plugin.models.training) govern the student's step too
    @property
    def embedding_update(self) -> str:
        return getattr(self.vm, "embedding_update", "dense")

    @property
    def precision(self) -> str:
        return getattr(self.vm, "precision", "fp32")

    @property
    def torch_compile(self) -> bool:
        return getattr(self.vm, "torch_compile", False)

    # ---- set-up -------------------------------------------------------------------------
    def compile(self, optimizer, lr, loss=None):
        """One optimizer for the VM and its heads (lazy Adam when the VM's embeddings are
        row-sparse), a separate Adam for the adapter: the adapter is trained only by its own
        loss (Algorithm 1, step 1)."""
        self._student_params = self.student_parameters()
        self.optimizer = build_optimizer(optimizer, self._student_params, lr, self.embedding_update)
        self.adapter_optimizer = (prefer_fused(torch.optim.Adam(self.adapter.parameters(), lr=self.config.adapter_lr))
                                  if self.config.trains_adapter else None)

    def student_parameters(self) -> list[nn.Parameter]:
        """Parameters updated by the VM loss: the VM's and the distillation heads'."""
        params = list(self.vm.parameters())
        for head in (self.distill_head, self.adapter_head):
            if head is not None:
                params += list(head.parameters())
        return params

    # ---- serving path -------------------------------------------------------------------
    def forward(self, inputs):
        """Serving prediction only: the VM's own output; the heads never touch it."""
        return self.vm(inputs)

    def get_inputs(self, inputs, feature_source=None):
        return self.vm.get_inputs(inputs, feature_source)

    def get_labels(self, inputs):
        return self.vm.get_labels(inputs)

    def regularization_loss(self):
        """The VM's own regularizers; heads and adapter are not regularized."""
        return self.vm.regularization_loss()

    # ---- training -----------------------------------------------------------------------
    def teacher_probs(self, inputs) -> torch.Tensor:
        column = self.config.fm_pred_column
        if column not in inputs:
            raise KeyError(f"method={self.config.method!r} needs the FM supervision column "
                           f"{column!r} in every training batch; the batch has {sorted(inputs)}")
        p = inputs[column]
        label = next((l for l in getattr(self.vm.feature_map, "labels", []) if l in inputs), None)
        rows = int(inputs[label].shape[0]) if label is not None else int(p.shape[0]) if hasattr(p, "shape") and p.dim() else -1
        if not torch.is_tensor(p) or p.dim() not in (1, 2) or p.shape[0] != rows or p[0].numel() != 1:
            from ..errors import InputError
            shape = tuple(p.shape) if hasattr(p, "shape") else type(p).__name__
            raise InputError(f"FM supervision of shape {shape} for a batch of {rows} rows",
                             where=f"batch column {column!r}",
                             expected=f"a float tensor of shape ({rows},) or ({rows}, 1): one FM probability a row")
        p = p.to(self.device).float().view(-1, 1)
        self._teacher_check.observe(p)
        return p

    def check_teacher_supervision(self) -> None:
        """Raise if any FM probability trained on so far was NaN or outside [0, 1]."""
        self._teacher_check.check()

    def adapter_step(self, p_teacher: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Algorithm 1 step 1: update SA alone on L_sta = h(SA(p_F), y)."""
        self.adapter_optimizer.zero_grad()
        loss = h(self.adapter(p_teacher), y)
        loss.backward()
        self.adapter_optimizer.step()
        self.adapter_optimizer.zero_grad()
        return loss.detach()

    def loss_terms(self, inputs, p_teacher: torch.Tensor | None = None,
                   t_adapter: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The VM loss pieces for one batch (no parameter update)."""
        cfg = self.config
        X = self.vm.get_inputs(inputs)
        y = self.get_labels(inputs)
        x = self.vm.backbone(X)
        z_s = self.vm.serving_head(x)
        terms = {"serving": h(z_s, y)}
        if hasattr(self.vm, "auxiliary_loss"):  # a VM's own training-only loss (DMIN's refiner aux loss)
            terms["model_aux"] = self.vm.auxiliary_loss()
        if cfg.method == "kd":
            terms["kd"] = h(z_s, p_teacher)
        if cfg.uses_aux_head:
            x_d = grad_scale(x, cfg.grad_scale)
            terms["aux"] = cfg.loss_weight * h(self.distill_head(x_d), scale_labels(p_teacher, cfg.label_scale))
            if cfg.uses_adapter:
                terms["adapter_head"] = h(self.adapter_head(x_d), t_adapter)
        return terms

    def step_parameters(self) -> list[nn.Parameter]:
        """The VM's and the heads' parameters; the adapter's are clipped by nothing (its own step)."""
        return self._student_params

    def step_loss(self, batch_data) -> torch.Tensor:
        """Algorithm 1 for one batch: the adapter's own update first (``ah_sa``), then the VM
        loss whose gradient the shared ``train_step`` applies; the terms are kept for logging."""
        cfg = self.config
        y = self.get_labels(batch_data)
        self.observe_training_labels(y)
        p_teacher = self.teacher_probs(batch_data) if cfg.uses_teacher else None
        t_adapter = None
        logged = {}
        if cfg.uses_adapter:
            if cfg.trains_adapter:
                logged["adapter"] = self.adapter_step(p_teacher, y)
            with torch.no_grad():  # stop-gradient: the VM loss never reaches SA
                t_adapter = torch.sigmoid(self.adapter(p_teacher))
        loss_terms = compiled(self, "loss_terms", self.loss_terms) if self.torch_compile else self.loss_terms
        with autocast(self.device, self.precision):
            terms = loss_terms(batch_data, p_teacher, t_adapter)
            loss = sum(terms.values()) + self.regularization_loss()
        logged.update({k: v.detach() for k, v in terms.items()})
        logged["total"] = loss.detach()
        self._last_terms = logged  # tensors: reading them (a device sync) is left to the caller
        return loss

    @property
    def last_loss_terms(self) -> dict[str, float]:
        """The loss pieces of the last training step (``serving``, ``kd``, ``aux``, ``adapter``,
        ``adapter_head``, ``total``) as floats."""
        return {k: float(v) for k, v in self._last_terms.items()}

    def fit(self, data_generator, epochs=1, validation_data=None, max_gradient_norm=10., **kwargs):
        os.makedirs(self.model_dir, exist_ok=True)
        result = super().fit(data_generator, epochs, validation_data, max_gradient_norm, **kwargs)
        self.check_teacher_supervision()
        return result


STUDENT_KEYS = ("vm_model", "distill")  # what a config's ExFMStudent expid adds to its VM's params


def vm_from_params(feature_map, params: dict) -> tuple:
    """The VM and DistillConfig an ``ExFMStudent`` expid names: ``vm_model`` (a MODEL_REGISTRY
    name, built with the expid's other params, as fuxictr's run_expid builds any model) and the
    ``distill`` block (DistillConfig's fields; unknown keys refused)."""
    from ..models import MODEL_REGISTRY

    name = params.get("vm_model")
    if name not in MODEL_REGISTRY:
        raise ValueError(f"model: ExFMStudent needs vm_model, one of {sorted(MODEL_REGISTRY)}; got {name!r}")
    distill = params.get("distill") or {}
    if not isinstance(distill, dict):
        raise ValueError(f"distill={distill!r}: expected a mapping of DistillConfig fields")
    vm_params = {k: v for k, v in params.items() if k not in STUDENT_KEYS + ("model",)}
    vm_params["model_id"] = f"{params.get('model_id', 'ExFMStudent')}_vm"
    return MODEL_REGISTRY[name](feature_map, **vm_params), DistillConfig.from_dict(distill)


def export_serving_model(student: ExFMStudent):
    """The plain VM for serving: same class and parameters as the wrapped VM, no heads,
    no adapter, so its cost equals the same VM trained with ``none``."""
    if not isinstance(student, ExFMStudent):
        raise TypeError(f"expected an ExFMStudent, got {type(student).__name__}")
    student.check_teacher_supervision()  # never serve a model trained on invalid supervision
    vm = copy.deepcopy(student.vm)
    vm.train_label_mean = student.train_label_mean  # NE of the served model keeps its base rate
    vm.eval()
    return vm
