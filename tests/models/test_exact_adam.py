"""``embedding_update: exact``: ExactAdam on row-sparse gradients is torch's dense Adam run on
the same gradients (rows touched often, rarely, once and never; gaps beyond the catch-up
horizon; eps-dominated rows), its state included, and an exact-mode model trains to the same
weights as a dense one and is flushed before anything reads them (eval, state_dict, copies,
the pipeline's named optimizer state, the student's export)."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from exfm_plugin.distill import DistillConfig, ExFMStudent, export_serving_model
from exfm_plugin.models import MODEL_REGISTRY
from exfm_plugin.models.kernels.exact_adam import ExactAdam, catch_up_horizon, catch_up_rows, skipped_steps_delta
from exfm_plugin.models.kernels.sparse_optim import feature_embedding_tables
from exfm_plugin.pipeline.vm_steps import named_optimizer_state
from test_sparse_embedding import VOCAB, fmap, full_cover_batch, with_random_embeddings  # noqa: F401
from tiny_data import model_kwargs

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:Sparse invariant checks")]

V, D = 16, 4
OFTEN, RARE, ONCE = range(1, 6), range(6, 11), {11: 2, 12: 37}  # ONCE: row -> its only step
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-6)}


def rows_of_step(step: int, gen: torch.Generator) -> torch.Tensor:
    """Rows 1..5 touched with p 0.8, 6..10 with p 0.1, 11 and 12 once, 0 and 13..15 never."""
    u = torch.rand(V, generator=gen)
    touched = [r for r in OFTEN if u[r] < 0.8] + [r for r in RARE if u[r] < 0.1]
    touched += [r for r, s in ONCE.items() if s == step]
    return torch.tensor(sorted(touched), dtype=torch.long)


def run_both(dtype: torch.dtype, steps: int, regularizer: float = 0.0, lr: float = 0.01, seed: int = 0,
             schedule=rows_of_step):
    """Dense torch Adam and ExactAdam fed the same gradients: a table (dense zeros for the rows
    a step does not touch, row-sparse and uncoalesced for ExactAdam) and a dense bias. With a
    regulariser, each touched row's gradient also gets ``regularizer * w_row`` from the current
    weights (the touched-rows L2 penalty of exact mode), which needs the rows caught up."""
    gen = torch.Generator().manual_seed(seed)
    w_init = torch.randn(V, D, generator=gen, dtype=dtype)
    b_init = torch.randn(3, generator=gen, dtype=dtype)
    wd, bd = nn.Parameter(w_init.clone()), nn.Parameter(b_init.clone())
    we, be = nn.Parameter(w_init.clone()), nn.Parameter(b_init.clone())
    dense, exact = torch.optim.Adam([wd, bd], lr=lr), ExactAdam([we, be], lr=lr)
    for step in range(1, steps + 1):
        rows = schedule(step, gen)
        # gradients from 1e-9 (eps dominates sqrt(v)) to 1: every regime of the step
        scale = 10.0 ** -torch.randint(0, 10, (len(rows), 1), generator=gen).to(dtype)
        values = torch.randn(len(rows), D, generator=gen, dtype=dtype) * scale
        gbias = torch.randn(3, generator=gen, dtype=dtype)
        if regularizer:
            catch_up_rows(we, rows)  # what an exact table's lookup does before the forward
            values_d = values + regularizer * wd.detach()[rows]
            values_e = values + regularizer * we.detach()[rows]
        else:
            values_d = values_e = values
        grad = torch.zeros(V, D, dtype=dtype)
        grad[rows] = values_d
        wd.grad, bd.grad = grad, gbias.clone()
        half = len(rows) // 2  # split in two pieces: the optimizer must coalesce
        pieces = [torch.sparse_coo_tensor(r.unsqueeze(0), v, (V, D))
                  for r, v in ((rows[:half], values_e[:half]), (rows[half:], values_e[half:]))]
        we.grad, be.grad = pieces[0] + pieces[1], gbias.clone()
        dense.step()
        exact.step()
        # a row that this step touched is up to date right after it, without any flush
        torch.testing.assert_close(we.detach()[rows], wd.detach()[rows], **TOL[dtype])
    return (wd, bd, dense), (we, be, exact)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("regularizer", [0.0, 0.05])
def test_exact_adam_is_dense_adam_on_the_same_gradients(dtype, regularizer):
    (wd, bd, dense), (we, be, exact) = run_both(dtype, steps=60, regularizer=regularizer)
    stale = ~torch.isclose(we.detach(), wd.detach(), rtol=1e-3, atol=0).all(1)
    assert stale[list(RARE) + list(ONCE)].any()  # before the flush the skipped steps are missing
    assert torch.equal(we.detach()[[0, 13, 14, 15]], wd.detach()[[0, 13, 14, 15]])  # never touched
    assert exact.state[we]["row_step"][[0, 13, 14, 15]].eq(0).all()  # and never caught up (no work)
    assert exact.state[we]["row_step"][list(ONCE)].tolist() == list(ONCE.values())
    state = exact.state_dict()  # flushes
    torch.testing.assert_close(we.detach(), wd.detach(), **TOL[dtype])
    torch.testing.assert_close(be.detach(), bd.detach(), **TOL[dtype])
    expected = dense.state_dict()
    for index in (0, 1):
        got, want = state["state"][index], expected["state"][index]
        assert float(got["step"]) == float(want["step"]) == 60
        torch.testing.assert_close(got["exp_avg"], want["exp_avg"], **TOL[dtype])
        # second moments down to ~1e-20: compare relative to their own size
        torch.testing.assert_close(got["exp_avg_sq"], want["exp_avg_sq"], rtol=TOL[dtype]["rtol"], atol=0)
    assert torch.equal(state["state"][0]["row_step"], torch.full((V,), 60))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gaps_longer_than_the_catch_up_horizon(dtype):
    """Rows left alone for 700 steps (longer than the 402 / 211 terms the catch-up sums) and
    touched again, then flushed after another 500: still dense Adam's trajectory."""
    def schedule(step, gen):
        rows = [1, 2] if step in (1, 2, 3, 700) else []
        return torch.tensor(rows + ([3] if step % 50 == 0 else []) + [4], dtype=torch.long)

    (wd, _, dense), (we, _, exact) = run_both(dtype, steps=1200, schedule=schedule)
    exact.catch_up_all()
    torch.testing.assert_close(we.detach(), wd.detach(), **TOL[dtype])
    moved = (we.detach()[[1, 2]] - run_both(dtype, steps=3, schedule=schedule)[1][0].detach()[[1, 2]]).abs()
    assert float(moved.max()) > 1e-3  # the skipped steps moved those rows: the test is not vacuous


def test_the_horizon_bounds_the_dropped_tail():
    """For a row in the worst place (touched at step 1, v far above eps^2) the terms after the
    horizon are below half a unit of roundoff of the whole sum, and one term fewer is not."""
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, 1.0
    m0, v0 = torch.tensor([[1.0]], dtype=torch.float64), torch.tensor([[1.0]], dtype=torch.float64)
    last, gap = torch.tensor([1]), torch.tensor([5000])
    full = skipped_steps_delta(m0, v0, last, gap, 5000, lr, b1, b2, eps).item()
    for dtype in (torch.float32, torch.float64):
        h = catch_up_horizon(dtype, b1, b2)
        unit = torch.finfo(dtype).eps / 2
        tail = full - skipped_steps_delta(m0, v0, last, gap, h, lr, b1, b2, eps).item()
        assert abs(tail) <= unit * abs(full)
        tail_before = full - skipped_steps_delta(m0, v0, last, gap, h // 2, lr, b1, b2, eps).item()
        assert abs(tail_before) > unit * abs(full)  # the horizon is not needlessly generous
    assert catch_up_horizon(torch.float32, 0.0, 0.999) == 1 and catch_up_horizon(torch.float32, 0.9, 0.5) is None


def test_a_state_saved_without_a_flush_resumes_exactly():
    """The pipeline copies ``opt.state`` by parameter name (no state_dict()): the per-row steps
    travel with it, so a resumed optimizer still catches the stale rows up."""
    (wd, _, dense), (we, be, exact) = run_both(torch.float64, steps=30)
    saved = copy.deepcopy({0: exact.state[we], 1: exact.state[be]})
    assert (saved[0]["row_step"] < 30).any()  # stale rows in the saved state
    w2, b2 = nn.Parameter(we.detach().clone()), nn.Parameter(be.detach().clone())
    resumed = ExactAdam([w2, b2], lr=0.01)
    resumed.state[w2], resumed.state[b2] = saved[0], saved[1]
    resumed.catch_up_all()
    exact.catch_up_all()
    torch.testing.assert_close(w2.detach(), wd.detach(), rtol=1e-10, atol=1e-10)
    # and through torch's load_state_dict (which casts row_step to the parameter dtype)
    again = ExactAdam([nn.Parameter(we.detach().clone()), nn.Parameter(be.detach().clone())], lr=0.01)
    again.load_state_dict(exact.state_dict())
    assert again.state[again.param_groups[0]["params"][0]]["row_step"].dtype == torch.long


# ------------------------------------------------------------------------------ models

def zoo_model(name: str, fmap, tmp_path, mode: str, **extra):
    """A small zoo model without an embedding regulariser (exact mode's one non-exact part)."""
    kw = dict(FM=dict(regularizer=0), DeepFM=dict(hidden_units=[16, 8], net_regularizer=1e-3))[name]
    torch.manual_seed(0)
    model = MODEL_REGISTRY[name](fmap, **model_kwargs(tmp_path, embedding_update=mode, **kw, **extra))
    model._max_gradient_norm = 10.0
    return with_random_embeddings(model)


def skewed_batch(seed: int, rows: int = 24) -> dict[str, torch.Tensor]:
    """Ids drawn from a skewed law: low ids often, high ids rarely (long gaps), some never."""
    batch = full_cover_batch(seed, max(rows, 16))
    rng = np.random.default_rng(seed)
    for name, v in VOCAB.items():
        ids = np.minimum(1 + rng.geometric(0.45, rows) - 1, v - 2)  # the last id never appears
        batch[name] = torch.from_numpy(np.maximum(ids, 1))
    his = np.minimum(rng.geometric(0.5, (rows, 4)), VOCAB["cate_id"] - 2)
    his[rng.random((rows, 4)) < 0.3] = 0
    batch["cate_his"] = torch.from_numpy(his)
    for k in ("price", "clk", "fm_pred"):
        batch[k] = batch[k][:rows]
    return batch


@pytest.mark.parametrize("name", ["FM", "DeepFM"])
def test_an_exact_model_trains_to_the_dense_models_weights(name, fmap, tmp_path):
    dense, exact = (zoo_model(name, fmap, tmp_path, m) for m in ("dense", "exact"))
    assert isinstance(exact.optimizer, ExactAdam)
    for step in range(25):
        batch = skewed_batch(step)
        loss_d, loss_e = dense.train_step(batch), exact.train_step(batch)
        # the forward read caught-up rows: the same loss at every step
        torch.testing.assert_close(loss_e, loss_d, rtol=1e-5, atol=1e-6)
    raw = {n: p.detach().clone() for n, p in exact.named_parameters()}
    dense_params = dict(dense.named_parameters())
    assert any(not torch.allclose(raw[n], dense_params[n], rtol=1e-4, atol=1e-6) for n in raw)  # stale rows
    copied = copy.deepcopy(exact)  # a copy (export_serving_model) is taken after a flush
    exact.eval()
    for n, p in exact.named_parameters():
        torch.testing.assert_close(p, dense_params[n], rtol=1e-4, atol=1e-6, msg=f"{name}: {n}")
        torch.testing.assert_close(dict(copied.named_parameters())[n], p, rtol=0, atol=0)
    init = zoo_model(name, fmap, tmp_path, "dense")
    assert sum(not torch.equal(p, q) for p, q in zip(exact.parameters(), init.parameters())) >= 2


def test_the_student_saves_and_exports_flushed_state(fmap, tmp_path):
    """The pipeline's link artifact: student.state_dict(), the optimizers by parameter name and
    the exported serving VM are dense Adam's, with every row's step current."""
    students = {m: ExFMStudent(zoo_model("DeepFM", fmap, tmp_path, m), DistillConfig(method="ah"))
                for m in ("dense", "exact")}
    assert isinstance(students["exact"].optimizer, ExactAdam)
    for step in range(12):
        batch = skewed_batch(100 + step)
        for s in students.values():
            s.train_step(batch)
    exact_state = students["exact"].state_dict()
    named = named_optimizer_state(students["exact"])["vm"]
    named_dense = named_optimizer_state(students["dense"])["vm"]
    for n, p in students["dense"].state_dict().items():
        torch.testing.assert_close(exact_state[n], p, rtol=1e-4, atol=1e-6, msg=n)
    tables = {n for n, s in named.items() if "row_step" in s}
    assert tables  # the embedding tables went through the catch-up
    for n in tables:
        assert bool((named[n]["row_step"] == int(named[n]["step"])).all()), n
        torch.testing.assert_close(named[n]["exp_avg"], named_dense[n]["exp_avg"], rtol=1e-4, atol=1e-7)
    served = {m: export_serving_model(s).state_dict() for m, s in students.items()}
    for n, p in served["dense"].items():
        torch.testing.assert_close(served["exact"][n], p, rtol=1e-4, atol=1e-6, msg=n)


def test_exact_mode_refuses_what_it_cannot_do(fmap, tmp_path):
    with pytest.raises(ValueError, match="needs optimizer 'adam'"):
        MODEL_REGISTRY["FM"](fmap, **model_kwargs(tmp_path, embedding_update="exact", optimizer="SGD"))
    with pytest.raises(ValueError, match="torch_compile=True does not support embedding_update='exact'"):
        MODEL_REGISTRY["FM"](fmap, **model_kwargs(tmp_path, embedding_update="exact", torch_compile=True))
    assert math.isfinite(catch_up_horizon(torch.float32, 0.9, 0.999))
