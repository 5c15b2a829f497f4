"""The fast paths of the DMIN teacher compute what the paths they replace compute: the additive
attention mask is ``allowed_keys`` as 0 / -inf, dropping trailing all-padding positions changes
no output, gradient or dropout draw, and the fused Adam takes the steps of torch's
per-parameter loop to float rounding. Each expectation is computed the other way (the bool mask,
the model with the fast path switched off, ``foreach=False``)."""
from __future__ import annotations

import copy

import pytest
import torch

from exfm_plugin.models.dmin_attention import allowed_keys, attention_bias
from exfm_plugin.models.kernels.sparse_optim import LazyAdam, prefer_fused
from tiny_data import SEQ_LEN, build_tiny_model as build, first_batch

TINY_DMIN = dict(target_field="cate_id", sequence_field="cate_his", num_heads=2, dnn_hidden_units=[16, 8],
                 attention_hidden_units=[8], pos_emb_dim=4)
pytestmark = pytest.mark.usefixtures("one_thread")


def test_attention_bias_is_allowed_keys_as_an_additive_mask():
    torch.manual_seed(0)
    L = 9
    valid = torch.rand(12, L) < 0.5  # non-prefix patterns too
    valid[0] = False  # empty
    valid[1] = True  # full
    valid[2] = torch.arange(L) < 4  # post-padded
    bias = attention_bias(valid)
    expected = torch.where(allowed_keys(valid), 0.0, float("-inf"))
    assert bias.dtype == torch.float32 and torch.equal(bias, expected)
    assert attention_bias(valid, torch.float64).dtype == torch.float64


def short_histories(batch: dict, lengths: list[int]) -> dict:
    """``batch`` with cate histories of the given lengths (post-padded, ids 1..6), cycling."""
    hist = torch.zeros_like(batch["cate_his"])
    gen = torch.Generator().manual_seed(3)
    for row in range(hist.shape[0]):
        n = lengths[row % len(lengths)]
        hist[row, :n] = torch.randint(1, 7, (n,), generator=gen)
    return {**batch, "cate_his": hist}


def outputs_and_grads(model, batch: dict, seed: int):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(batch)
    model.compute_loss(out, model.get_labels(batch)).backward()
    return out["logit"].detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("refiner,net_dropout", [(True, 0.0), (False, 0.0), (False, 0.3)])
def test_dropping_trailing_padding_changes_no_output_gradient_or_draw(refiner, net_dropout, data, tmp_path):
    """Histories of at most 3 of 6 positions: the fast model runs on 3 positions, the reference
    (``truncate_padding = False``) on 6; the same logits and gradients, in training (with the
    extractor's dropout: the same draws) and in eval."""
    kw = dict(TINY_DMIN, use_behavior_refiner=refiner, net_dropout=net_dropout)
    fast = build("DMIN", data.feature_map, tmp_path, **kw)
    reference = build("DMIN", data.feature_map, tmp_path, **kw)
    reference.load_state_dict(fast.state_dict())
    reference.encoder.truncate_padding = False
    with torch.no_grad():  # off the init, so every position term counts
        for model in (fast, reference):
            model.encoder.extractors[0].pos_emb.copy_(torch.linspace(-1, 1, model.encoder.extractors[0].pos_emb.numel())
                                                       .view_as(model.encoder.extractors[0].pos_emb))
    batch = short_histories(first_batch(data), [1, 3, 2])
    valid = batch["cate_his"] != 0
    assert fast.encoder.kept_length(0, valid) == 3 and reference.encoder.kept_length(0, valid) == SEQ_LEN
    for mode in (True, False):
        fast.train(mode), reference.train(mode)
        logit, grads = outputs_and_grads(fast, batch, seed=5)
        ref_logit, ref_grads = outputs_and_grads(reference, batch, seed=5)
        torch.testing.assert_close(logit, ref_logit, rtol=1e-5, atol=1e-6)
        assert grads.keys() == ref_grads.keys()
        for name in grads:
            torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    if net_dropout:  # the draws mattered: another seed gives another training output
        fast.train()
        other, _ = outputs_and_grads(fast, batch, seed=6)
        assert not torch.allclose(other, logit)


def test_trailing_padding_is_kept_where_it_would_change_something(data, tmp_path):
    batch = short_histories(first_batch(data), [1, 3, 2])
    valid = batch["cate_his"] != 0
    empty_row = valid.clone()
    empty_row[0] = False  # an all-padding row averages all of its positions
    model = build("DMIN", data.feature_map, tmp_path, **TINY_DMIN)
    assert model.encoder.kept_length(0, valid) == 3
    assert model.encoder.kept_length(0, empty_row) == SEQ_LEN
    dice = build("DMIN", data.feature_map, tmp_path, **{**TINY_DMIN, "attention_activation": "Dice"})
    assert dice.encoder.kept_length(0, valid) == SEQ_LEN  # its batch statistics see padded positions
    leaky = build("DMIN", data.feature_map, tmp_path, **TINY_DMIN, refiner_additive_mask=True)
    assert leaky.eval().encoder.kept_length(0, valid) == SEQ_LEN  # its refiner lets later keys in
    dropped = build("DMIN", data.feature_map, tmp_path, **TINY_DMIN, attention_dropout=0.2)
    assert dropped.train().encoder.kept_length(0, valid) == SEQ_LEN  # (B, L, L) draws
    assert dropped.eval().encoder.kept_length(0, valid) == 3


def test_fused_adam_takes_the_steps_of_the_per_parameter_loop(data, tmp_path):
    """A model's own optimizer (fused) against the same model with torch's per-parameter loop:
    after 4 steps the same training-mode predictions to float rounding, while the steps move them
    ~1e-3. Compared through the predictions, with batch statistics: a bias just before a batch norm
    (or the attention score's bias) has gradient 0 in exact arithmetic, and Adam turns its rounding
    noise into full-size steps of either sign, in either implementation. In training mode such a
    bias has no effect; in eval mode the running mean, averaged over earlier batches, lets it show
    (up to 1e-3 here): the two implementations then differ as two float-rounding orders do."""
    model = build("DMIN", data.feature_map, tmp_path, **TINY_DMIN)
    assert all(group["fused"] is True for group in model.optimizer.param_groups)
    start = copy.deepcopy(model)
    loop = copy.deepcopy(model)
    for group in loop.optimizer.param_groups:
        group["fused"], group["foreach"] = False, False
    held = first_batch(data, 128)
    for i, batch in zip(range(4), data.batches(64)):
        for m in (model, loop):
            m.train_step(batch)
    with torch.no_grad():
        fast, slow, before = (m.train()(held)["y_pred"] for m in (model, loop, start))
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    assert (fast - before).abs().max().item() > 1e-3


@pytest.mark.parametrize("cls,kw", [(torch.optim.Adam, {}), (torch.optim.Adam, {"weight_decay": 0.01}),
                                    (torch.optim.AdamW, {"weight_decay": 0.1}), (torch.optim.Adam, {"amsgrad": True})])
def test_prefer_fused_equals_the_loop_over_many_steps(cls, kw):
    """200 steps of random gradients (some tensors without a gradient on some steps, as a frozen
    head's): the preferred optimizer against the loop, to float rounding."""
    torch.manual_seed(0)
    shapes = [(50, 8), (8,), (8, 4), (1,)]
    fast = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    slow = [torch.nn.Parameter(p.detach().clone()) for p in fast]
    start = [p.detach().clone() for p in fast]
    fast_opt = prefer_fused(cls(fast, lr=1e-2, **kw))
    slow_opt = cls(slow, lr=1e-2, foreach=False, **kw)
    assert fast_opt.param_groups[0]["fused"] is True
    for step in range(200):
        for i, (p, q) in enumerate(zip(fast, slow)):
            grad = None if (step + i) % 7 == 0 else torch.randn(p.shape)
            p.grad, q.grad = grad, None if grad is None else grad.clone()
        fast_opt.step()
        slow_opt.step()
    for p, q in zip(fast, slow):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert min((p - p0).abs().max().item() for p, p0 in zip(fast, start)) > 0.1  # 200 steps of lr 1e-2


def test_prefer_fused_only_touches_plain_adam_left_unset():
    w = [torch.nn.Parameter(torch.zeros(3))]
    group = prefer_fused(torch.optim.Adam(w)).param_groups[0]
    assert group["fused"] is True and group["foreach"] is None
    assert prefer_fused(torch.optim.Adam(w, foreach=False)).param_groups[0]["fused"] in (None, False)
    assert prefer_fused(torch.optim.Adam(w, foreach=True)).param_groups[0]["fused"] in (None, False)
    assert prefer_fused(torch.optim.SGD(w, lr=0.1)).param_groups[0]["foreach"] is None
    lazy = prefer_fused(LazyAdam(w)).param_groups[0]
    assert lazy.get("foreach") in (None, False) and not lazy.get("fused")
    meta = prefer_fused(torch.optim.Adam([torch.nn.Parameter(torch.zeros(3, device="meta"))])).param_groups[0]
    assert meta["foreach"] is True and not meta["fused"]  # a device the fused kernel does not take


@pytest.mark.parametrize("model_name,emb_reg,net_reg", [("DeepFM", 1e-3, 0), ("DMIN", "l2(0.01)", "l1_l2(1e-3,1e-2)"),
                                                        ("DeepFM", 0, "l1(0.01)")])
def test_dense_regularization_equals_fuxictrs(model_name, emb_reg, net_reg, data, tmp_path):
    """The one-``_foreach_norm`` regulariser against fuxictr's per-tensor loop: value and gradient."""
    from fuxictr.pytorch.models import BaseModel

    kw = TINY_DMIN if model_name == "DMIN" else dict(hidden_units=[8])
    model = build(model_name, data.feature_map, tmp_path, embedding_regularizer=emb_reg,
                  net_regularizer=net_reg, **kw)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.1)  # off the init (zero biases: l1's gradient there is 0 anyway)
    params = [p for p in model.parameters() if p.requires_grad]
    got = model.regularization_loss()
    want = BaseModel.regularization_loss(model)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    for g, w in zip(torch.autograd.grad(got, params, allow_unused=True),
                    torch.autograd.grad(want, params, allow_unused=True)):
        assert (g is None) == (w is None)
        if g is not None:
            torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-12)
    assert float(want.detach()) > 0
    off = build(model_name, data.feature_map, tmp_path, embedding_regularizer=0, net_regularizer=0, **kw)
    assert off.regularization_loss() == 0 == BaseModel.regularization_loss(off)


def test_multitask_regularization_keeps_fuxictrs_multitask_definition(mt_data, tmp_path):
    """fuxictr's MultiTaskModel regularises other tensors than BaseModel (nn.Embedding weights;
    every other module's own weight / bias): MultiTaskDMIN keeps that definition."""
    from fuxictr.pytorch.models import BaseModel, MultiTaskModel

    model = build("MultiTaskDMIN", mt_data.feature_map, tmp_path, embedding_regularizer=1e-2,
                  net_regularizer=1e-3, **TINY_DMIN)
    got, want = model.regularization_loss(), MultiTaskModel.regularization_loss(model)
    assert float(got.detach()) == float(want.detach())
    assert abs(float(BaseModel.regularization_loss(model).detach()) - float(want.detach())) > 1e-6
