"""A student's and a bare VM's training steps against Algorithm 1 written out in plain torch.

The reference below re-implements each step from the paper's method (docs/method.md, The
methods): the adapter's own Adam step on h(SA(p_F), y) first, then one Adam step of the VM and
its heads on the sum of the loss terms plus the VM's regularizer, with gradient scaling written
as ``x.detach() + beta * (x - x.detach())`` and the gradient clipped at norm 10 by torch's own
``clip_grad_norm_``. Several steps on fixed batches must leave every weight where the reference
leaves it, so any change to the shared ``train_step`` that alters training fails here.
"""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from exfm_plugin.distill import DistillConfig, ExFMStudent
from exfm_plugin.distill.config import DISTILL_FIELDS
from exfm_plugin.models import FM
from exfm_plugin.pipeline.grid import CELL_KEYS, DISTILL_KEYS
from tiny_data import model_kwargs

STEPS = 4
LR, ADAPTER_LR, MAX_NORM = 1e-2, 5e-2, 10.0
REG = dict(regularizer=1e-3)  # FM applies it to embeddings and the rest alike


def batches(data, n=STEPS, size=128):
    p = np.clip(data.true_prob * 2.5, 0.0, 1.0).astype(np.float32)  # a biased teacher: LS clips
    return [b for _, b in zip(range(n), data.batches(size, {"fm_pred": p}))]


def reference_steps(student: ExFMStudent, data_batches: list[dict]) -> dict[str, torch.Tensor]:
    """The weights after Algorithm 1's steps, from a copy of the untrained student's modules."""
    cfg = student.config
    vm = copy.deepcopy(student.vm)
    heads = {n: copy.deepcopy(getattr(student, n)) for n in ("distill_head", "adapter_head", "adapter")}
    trained = list(vm.parameters()) + [p for n in ("distill_head", "adapter_head") if heads[n] is not None
                                       for p in heads[n].parameters()]
    opt = torch.optim.Adam(trained, lr=LR)
    opt_sa = torch.optim.Adam(heads["adapter"].parameters(), lr=ADAPTER_LR) if cfg.trains_adapter else None
    for batch in data_batches:
        y = batch["click"].float().view(-1, 1)
        p = batch["fm_pred"].float().view(-1, 1)
        if opt_sa is not None:  # step 1: SA alone, on its own loss
            opt_sa.zero_grad()
            F.binary_cross_entropy_with_logits(heads["adapter"](p), y).backward()
            opt_sa.step()
        opt.zero_grad()
        x = vm.backbone(vm.get_inputs(batch))
        z = vm.serving_head(x)
        loss = F.binary_cross_entropy_with_logits(z, y)
        if cfg.method == "kd":
            loss = loss + F.binary_cross_entropy_with_logits(z, p)
        if cfg.uses_aux_head:
            x_d = x.detach() + cfg.grad_scale * (x - x.detach())  # identity forward, beta backward
            target = torch.clamp(cfg.label_scale * p, max=1.0)
            loss = loss + cfg.loss_weight * F.binary_cross_entropy_with_logits(heads["distill_head"](x_d), target)
            if cfg.uses_adapter:
                with torch.no_grad():
                    t = torch.sigmoid(heads["adapter"](p))
                loss = loss + F.binary_cross_entropy_with_logits(heads["adapter_head"](x_d), t)
        loss = loss + vm.regularization_loss()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, MAX_NORM)
        opt.step()
    out = {f"vm.{k}": v for k, v in vm.state_dict().items()}
    for n, module in heads.items():
        if module is not None:
            out.update({f"{n}.{k}": v for k, v in module.state_dict().items()})
    return out


@pytest.mark.parametrize("method", ["none", "kd", "ah", "ah_sa", "ah_sa_frozen"])
def test_student_steps_follow_algorithm_1(tmp_path, tiny, method):
    torch.manual_seed(5)
    vm = FM(tiny.feature_map, **model_kwargs(tmp_path, learning_rate=LR, **REG))
    student = ExFMStudent(vm, DistillConfig(method=method, label_scale=2.0, grad_scale=0.5, loss_weight=0.7,
                                            adapter_lr=ADAPTER_LR))
    data_batches = batches(tiny)
    expected = reference_steps(student, data_batches)
    initial = {k: v.clone() for k, v in student.state_dict().items()}
    for batch in data_batches:
        student.train_step(batch)
    got = student.state_dict()
    assert set(got) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6, msg=name)
    moved = {k.split(".")[0] for k, v in got.items() if not torch.equal(v, initial[k])}
    assert "vm" in moved and ("adapter" in moved) == (method == "ah_sa")
    if method == "ah_sa_frozen":  # the control's adapter never moves from its identity start
        p = torch.tensor([[0.1], [0.5], [0.9]])
        torch.testing.assert_close(student.adapter(p), torch.logit(p, eps=1e-6))


def test_bare_vm_step_is_fuxictr_step(tmp_path, tiny):
    """The VM alone: BCE of its logit plus its regularizer, one clipped Adam step a batch."""
    torch.manual_seed(6)
    vm = FM(tiny.feature_map, **model_kwargs(tmp_path, learning_rate=LR, **REG))
    vm._max_gradient_norm = MAX_NORM  # fuxictr's fit sets it before its first step
    ref = copy.deepcopy(vm)
    opt = torch.optim.Adam(ref.parameters(), lr=LR)
    before = {k: v.clone() for k, v in vm.state_dict().items()}
    for batch in batches(tiny):
        vm.train_step(batch)
        opt.zero_grad()
        y = batch["click"].float().view(-1, 1)
        loss = F.binary_cross_entropy_with_logits(ref.serving_head(ref.backbone(ref.get_inputs(batch))), y)
        (loss + ref.regularization_loss()).backward()
        torch.nn.utils.clip_grad_norm_(list(ref.parameters()), MAX_NORM)
        opt.step()
    for name, value in ref.state_dict().items():
        torch.testing.assert_close(vm.state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert any(not torch.equal(before[k], v) for k, v in vm.state_dict().items()), "training must move weights"


def test_grid_distill_keys_partition_distill_config():
    """Every DistillConfig field is a grid cell key, a distillation key or the pipeline's FM column."""
    assert DISTILL_KEYS | (CELL_KEYS & DISTILL_FIELDS) | {"fm_pred_column"} == set(DISTILL_FIELDS)
    assert not DISTILL_KEYS & CELL_KEYS
    assert {"method", "label_scale", "grad_scale", "loss_weight"} <= CELL_KEYS
