"""The GPU path: one training step on CPU and on the accelerator agree for every model and
method (dense and sparse embedding updates), bf16 / torch.compile steps run and stay close,
the loader's device mode yields batches on the device, and ``exfm run --device`` runs a smoke
grid end to end.

Marked ``cuda``; skipped without CUDA. ``EXFM_TEST_DEVICE`` (default ``cuda:0``) names the
device; ``EXFM_TEST_DEVICE=cpu pytest -m cuda`` runs the same code on the CPU (CPU against
CPU), which is how a machine without a GPU checks these tests themselves.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from exfm_plugin.data import H5DataLoader, write_day_file
from exfm_plugin.distill import DistillConfig, ExFMStudent
from exfm_plugin.models import MODEL_REGISTRY
from tiny_data import make_tiny_data, model_kwargs

DEVICE = os.environ.get("EXFM_TEST_DEVICE", "cuda:0")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_needs_cuda = DEVICE.startswith("cuda") and not torch.cuda.is_available()
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(_needs_cuda, reason=f"EXFM_TEST_DEVICE={DEVICE} but CUDA is not available")]

TINY_DMIN = dict(target_field="cate_id", sequence_field="cate_his")
MODELS = {  # no dropout: the two devices must compute the same function
    "FM": {"regularizer": 1e-4},
    "FmFM": {"field_interaction_type": "matrixed"},
    "DeepFM": {"hidden_units": [16, 8], "embedding_regularizer": 1e-4},
    "DCN": {"dnn_hidden_units": [16], "num_cross_layers": 2},
    "DCNv2": {"model_structure": "parallel", "parallel_dnn_hidden_units": [16], "num_cross_layers": 2},
    "DMIN": dict(TINY_DMIN, dnn_hidden_units=[16], attention_hidden_units=[8], num_heads=2, pos_emb_dim=4,
                 attention_dropout=0, net_dropout=0),
}
METHODS = ["none", "kd", "ah", "ah_sa", "ah_sa_frozen"]


def gpu_index(device: str) -> int:
    return int(device.split(":")[1]) if device.startswith("cuda") else -1


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_data(str(tmp_path_factory.mktemp("tiny_cuda")), num_rows=512)


@pytest.fixture(autouse=True)
def exact_matmul():
    """TF32 would make CPU-vs-GPU differences a matter of TF32, not of the code."""
    if not torch.cuda.is_available():
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def teacher_batch(data, rows: int = 128) -> dict[str, torch.Tensor]:
    batch = next(data.batches(rows))
    rng = np.random.default_rng(0)
    batch["fm_pred"] = torch.from_numpy(rng.beta(2, 5, len(batch["click"])).astype(np.float32))
    return batch


def student_on(name: str, device: str, data, tmp_path, method: str, state: dict | None = None,
               **overrides) -> ExFMStudent:
    torch.manual_seed(0)
    vm = MODEL_REGISTRY[name](data.feature_map, **model_kwargs(tmp_path, gpu=gpu_index(device),
                                                               **{**MODELS[name], **overrides}))
    torch.manual_seed(1)
    student = ExFMStudent(vm, DistillConfig(method=method))
    if state is not None:
        student.load_state_dict(state)
    return student


def cpu_params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.named_parameters()}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_one_training_step_agrees_on_cpu_and_device(name, method, data, tmp_path):
    modes = ["dense", "sparse"] if name in ("FM", "DeepFM") else ["dense"]
    batch = teacher_batch(data)
    for mode in modes:
        cpu = student_on(name, "cpu", data, tmp_path, method, embedding_update=mode)
        dev = student_on(name, DEVICE, data, tmp_path, method, state=copy.deepcopy(cpu.state_dict()),
                         embedding_update=mode)
        torch.testing.assert_close(cpu_params(dev), cpu_params(cpu), rtol=0, atol=0)
        loss_cpu = cpu.train_step(batch)
        loss_dev = dev.train_step(batch)
        torch.testing.assert_close(loss_dev.detach().cpu(), loss_cpu.detach(), rtol=1e-4, atol=1e-6)
        after_cpu, after_dev = cpu_params(cpu), cpu_params(dev)
        for key in after_cpu:
            torch.testing.assert_close(after_dev[key], after_cpu[key], rtol=1e-4, atol=1e-5,
                                       msg=f"{name}/{method}/{mode}: {key}")
        assert any(not torch.equal(after_cpu[k], v) for k, v in cpu_params(
            student_on(name, "cpu", data, tmp_path, method, embedding_update=mode)).items())


@pytest.mark.parametrize("name", ["FM", "DeepFM", "DCNv2", "DMIN"])
def test_bf16_step_runs_and_stays_near_fp32(name, data, tmp_path):
    batch = teacher_batch(data)
    fp32 = student_on(name, DEVICE, data, tmp_path, "ah_sa")
    bf16 = student_on(name, DEVICE, data, tmp_path, "ah_sa", state=copy.deepcopy(fp32.state_dict()),
                      precision="bf16")
    loss32, loss16 = float(fp32.train_step(batch).detach()), float(bf16.train_step(batch).detach())
    assert np.isfinite(loss16)
    assert loss16 == pytest.approx(loss32, rel=5e-2)
    assert all(p.dtype == torch.float32 for p in bf16.parameters())  # autocast only: fp32 master weights


@pytest.mark.slow
@pytest.mark.parametrize("name", ["FM", "DCNv2"])
def test_compiled_step_equals_the_eager_step(name, data, tmp_path):
    batch = teacher_batch(data)
    eager = student_on(name, DEVICE, data, tmp_path, "ah")
    comp = student_on(name, DEVICE, data, tmp_path, "ah", state=copy.deepcopy(eager.state_dict()),
                      torch_compile=True)
    for _ in range(2):
        torch.testing.assert_close(comp.train_step(batch).detach(), eager.train_step(batch).detach(),
                                   rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(cpu_params(comp), cpu_params(eager), rtol=1e-4, atol=1e-5)


def test_loader_device_mode_yields_batches_on_the_device(data, tmp_path):
    path = tmp_path / "day_1.h5"
    cols = dict(data.columns)
    cols["fm_pred"] = np.random.default_rng(0).random(data.num_rows).astype(np.float32)
    write_day_file(path, cols, dataset_id="tiny", day=1)
    loader = H5DataLoader(data.feature_map, str(path), batch_size=100, shuffle=True, seed=0,
                          extra_columns=["fm_pred"], device=DEVICE)
    rows, labels = 0, []
    for batch in loader:
        for name, tensor in batch.items():
            spec = data.feature_map.features.get(name, {})
            if spec.get("type") != "meta":
                assert tensor.device == torch.device(DEVICE), name
        rows += len(batch["click"])
        labels.append(batch["click"].cpu())
    assert rows == data.num_rows
    assert sorted(torch.cat(labels).tolist()) == sorted(data.columns["click"].tolist())


@pytest.mark.slow
def test_exfm_run_on_the_device_runs_a_smoke_grid(tmp_path):
    work, results = tmp_path / "work", tmp_path / "results"
    cmd = [sys.executable, "-m", "exfm_plugin.cli", "run", "--grid",
           os.path.join(REPO, "yaml_configs", "grids", "smoke_table2.yaml"), "--device", DEVICE,
           "--work", str(work), "--results", str(results), "--no-progress"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in open(results / "records" / "smoke_table2.jsonl")]
    assert len(records) == 3 * 3 * 4  # teachers x students x methods
