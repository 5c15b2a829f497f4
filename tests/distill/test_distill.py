"""The ExFM student against the paper's equations, computed independently in float64."""
import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from exfm_plugin.distill import DistillConfig, ExFMStudent, export_serving_model, scale_labels
from exfm_plugin.models import FM
from tiny_data import make_tiny_data, model_kwargs


def bce_logits_ref(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """log(1 + e^z) - t z, the BCE of a logit written without sigmoid or log-sigmoid."""
    return (torch.nn.functional.softplus(z) - t * z).mean()


def build(tmp_path, data, method, seed=0, **cfg):
    torch.manual_seed(seed)
    vm = FM(data.feature_map, **model_kwargs(tmp_path))
    return ExFMStudent(vm, DistillConfig(method=method, **cfg))


def teacher_column(data, scale=1.0):
    return np.clip(data.true_prob * scale, 0.0, 1.0).astype(np.float32)


def first_batch(data, p, size=128):
    return next(data.batches(size, {"fm_pred": p}))


@pytest.mark.parametrize("method", ["none", "kd", "ah", "ah_sa"])
def test_serving_output_equals_bare_vm_at_init(tmp_path, tiny, method):
    torch.manual_seed(3)
    bare = FM(tiny.feature_map, **model_kwargs(tmp_path))
    student = build(tmp_path, tiny, method, seed=3)
    batch = first_batch(tiny, teacher_column(tiny))
    assert torch.equal(bare(batch)["y_pred"], student(batch)["y_pred"])


@pytest.mark.parametrize("method", ["kd", "ah", "ah_sa"])
def test_loss_matches_paper_equations_in_float64(tmp_path, tiny, method):
    """The model runs in float32 (fuxictr casts inputs); the equation is evaluated in
    float64 on the model's own logits and compared to the loss it trained on."""
    alpha, beta, w = 3.0, 2.0, 0.7
    student = build(tmp_path, tiny, method, label_scale=alpha, grad_scale=beta, loss_weight=w,
                    adapter_lr=5e-2)
    batch = first_batch(tiny, teacher_column(tiny))
    before = copy.deepcopy(student)  # parameters the VM loss is evaluated with

    loss = student.train_step(batch)

    with torch.no_grad():
        x = before.vm.backbone(before.vm.get_inputs(batch))
        z_s = before.vm.serving_head(x).double()
        p32 = batch["fm_pred"].view(-1, 1)
        p = p32.double()
        y = batch["click"].double().view(-1, 1)
        expected = bce_logits_ref(z_s, y)
        if method == "kd":
            expected = expected + bce_logits_ref(z_s, p)
        else:
            target = torch.minimum(alpha * p, torch.ones_like(p))
            assert bool((alpha * p > 1).any()), "the batch must exercise the clip"
            expected = expected + w * bce_logits_ref(before.distill_head(x).double(), target)
        if method == "ah_sa":
            # Algorithm 1: SA is updated first, then its *updated* output supervises psi2.
            expected_sta = bce_logits_ref(before.adapter(p32).double(), y)
            t_sa = torch.sigmoid(student.adapter(p32).double())
            assert not torch.allclose(t_sa, torch.sigmoid(before.adapter(p32).double())), "SA must move"
            expected = expected + bce_logits_ref(before.adapter_head(x).double(), t_sa)
            assert student.last_loss_terms["adapter"] == pytest.approx(float(expected_sta), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5)


def test_label_scaling_clips_at_one():
    p = torch.tensor([0.0, 0.1, 0.3, 0.6, 1.0])
    assert torch.equal(scale_labels(p, 2.0), torch.tensor([0.0, 0.2, 0.6, 1.0, 1.0]))
    assert float(scale_labels(p, 100.0).max()) == 1.0


@pytest.mark.parametrize("beta", [0.25, 4.0])
def test_gradient_scaling_scales_backbone_not_head(tmp_path, tiny, beta):
    base = build(tmp_path, tiny, "ah", grad_scale=1.0)
    scaled = copy.deepcopy(base)
    scaled.config = replace(base.config, grad_scale=beta)
    p = torch.from_numpy(teacher_column(tiny))
    batch = first_batch(tiny, p.numpy())
    grads = []
    for model in (base, scaled):
        model.zero_grad()
        model.loss_terms(batch, p[:128].view(-1, 1))["aux"].backward()
        grads.append(model)
    vm_pairs = list(zip(base.vm.parameters(), scaled.vm.parameters()))
    touched = [(a.grad, b.grad) for a, b in vm_pairs if a.grad is not None and a.grad.abs().sum() > 0]
    assert touched, "the distillation loss must reach the backbone"
    for g1, g_beta in touched:  # a power-of-two beta makes the product exact
        assert torch.equal(g_beta, beta * g1)
    for a, b in zip(base.distill_head.parameters(), scaled.distill_head.parameters()):
        assert torch.equal(a.grad, b.grad)


def test_adapter_and_vm_gradients_are_isolated(tmp_path, tiny):
    student = build(tmp_path, tiny, "ah_sa", adapter_lr=5e-2)
    batch = first_batch(tiny, teacher_column(tiny))
    p = batch["fm_pred"].view(-1, 1)
    y = batch["click"].view(-1, 1)

    adapter_only = copy.deepcopy(student)
    adapter_only.zero_grad(set_to_none=True)
    adapter_only.adapter_step(p, y)
    # the adapter loss gives the VM and its heads no gradient
    assert all(prm.grad is None for prm in adapter_only.student_parameters())

    full = copy.deepcopy(student)
    full.train_step(batch)
    # the VM loss leaves SA exactly where its own step put it
    for a, b in zip(adapter_only.adapter.parameters(), full.adapter.parameters()):
        assert torch.equal(a, b)
    # and the VM did train
    moved = [not torch.equal(a, b) for a, b in zip(student.vm.parameters(), full.vm.parameters())]
    assert any(moved)


@pytest.mark.parametrize("method", ["none", "ah", "ah_sa"])
def test_export_has_baseline_cost_and_same_predictions(tmp_path, tiny, method):
    student = build(tmp_path, tiny, method)
    p = teacher_column(tiny)
    for batch in tiny.batches(256, {"fm_pred": p}):
        student.train_step(batch)
    served = export_serving_model(student)
    baseline = FM(tiny.feature_map, **model_kwargs(tmp_path))
    assert type(served) is type(baseline)
    assert served.serving_parameter_count() == baseline.serving_parameter_count()
    assert [k for k in served.state_dict()] == [k for k in baseline.state_dict()]
    assert np.array_equal(served.predict(tiny.batches(512)), student.predict(tiny.batches(512)))
    assert served.train_label_mean == pytest.approx(float(tiny.columns["click"].mean()), rel=1e-6)
    if method != "none":
        assert sum(p.numel() for p in student.parameters()) > baseline.serving_parameter_count()


def test_bad_inputs_are_named(tmp_path, tiny):
    with pytest.raises(ValueError, match="method='kdd'"):
        DistillConfig(method="kdd")
    for name in ("label_scale", "grad_scale", "loss_weight"):
        for bad in (0, -1.0, float("nan")):
            with pytest.raises(ValueError, match=name):
                DistillConfig(method="ah", **{name: bad})
    with pytest.raises(TypeError, match="backbone"):
        ExFMStudent(torch.nn.Linear(2, 1), DistillConfig(method="ah"))
    with pytest.raises(ValueError, match="unknown distillation option"):
        DistillConfig.from_dict({"method": "ah", "alpha": 2})

    student = build(tmp_path, tiny, "kd")
    with pytest.raises(KeyError, match="fm_pred"):
        student.train_step(next(tiny.batches(64)))
    for bad_value in (float("nan"), 1.5, -0.1):
        p = teacher_column(tiny)
        p[5] = bad_value
        with pytest.raises(ValueError, match="row 5"):
            student.train_step(first_batch(tiny, p))


def test_auxiliary_head_keeps_serving_calibrated_under_biased_teacher(tmp_path):
    """Theorem 3.1: a teacher whose probabilities are doubled biases a one-head (kd)
    student's serving output; with an auxiliary head the serving head stays calibrated."""
    data = make_tiny_data(str(tmp_path / "thm"), num_rows=24000, seed=7)
    train, held = slice(0, 16000), slice(16000, None)
    biased = teacher_column(data, scale=2.0)
    cal = {}
    for method in ("kd", "ah"):
        torch.manual_seed(11)
        vm = FM(data.feature_map, **model_kwargs(tmp_path, learning_rate=2e-2))
        student = ExFMStudent(vm, DistillConfig(method=method))
        cols = {k: v[train] for k, v in data.columns.items()}
        cols["fm_pred"] = biased[train]
        for _ in range(4):
            for start in range(0, 16000, 256):
                student.train_step({k: torch.from_numpy(v[start:start + 256]) for k, v in cols.items()})
        held_batch = {k: torch.from_numpy(v[held]) for k, v in data.columns.items()}
        pred = student.predict([held_batch])
        cal[method] = pred.sum() / data.columns["click"][held].sum()
    # sampling noise of a calibration ratio is about 1/sqrt(#positives) (Poisson count)
    noise = 1.0 / np.sqrt(data.columns["click"][held].sum())
    print("calibration", cal, "noise", noise)
    assert abs(cal["ah"] - 1.0) < 4 * noise, cal
    assert cal["kd"] - 1.0 > 8 * noise, cal
