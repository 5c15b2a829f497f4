"""Row-sparse embedding updates (``embedding_update="sparse"``): lazy Adam on the touched rows,
the same optimizer as dense Adam when every row is touched, untouched rows bit-identical,
regularisation of the touched rows, sparse-aware gradient clipping, fuxictr's ``fit`` and the
ExFM student on top."""
from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch
from fuxictr.features import FeatureMap
import torch.nn.functional as F
from torch import nn

from exfm_plugin.distill import DistillConfig, ExFMStudent
from exfm_plugin.models import MODEL_REGISTRY
from exfm_plugin.models.kernels.sparse_optim import LazyAdam, clip_grad_norm_, feature_embedding_tables
from tiny_data import make_tiny_data, model_kwargs

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:Sparse invariant checks")]

VOCAB = {"user_id": 9, "item_id": 13, "cate_id": 5}  # ids 1..V-1, 0 is padding
SEQ_LEN = 4
CASES = {
    "FM": ("FM", dict(regularizer=1e-3)),
    "FmFM": ("FmFM", dict(regularizer=1e-3, field_interaction_type="matrixed")),
    "DeepFM": ("DeepFM", dict(hidden_units=[16, 8], embedding_regularizer="l1_l2(1e-4,1e-3)",
                              net_regularizer=1e-3)),
    "DCN": ("DCN", dict(dnn_hidden_units=[16], num_cross_layers=2, embedding_regularizer=1e-3)),
    "DCNv2": ("DCNv2", dict(model_structure="parallel", parallel_dnn_hidden_units=[16],
                            num_cross_layers=2)),
}


@pytest.fixture(scope="module")
def fmap(tmp_path_factory) -> FeatureMap:
    """Three categorical fields, a price, and a cate history sharing the cate table."""
    data_dir = str(tmp_path_factory.mktemp("fmap"))
    features = [{name: {"source": "", "type": "categorical", "vocab_size": v, "padding_idx": 0}}
                for name, v in VOCAB.items()]
    features.append({"price": {"source": "", "type": "numeric"}})
    features.append({"cate_his": {"source": "", "type": "sequence", "vocab_size": VOCAB["cate_id"],
                                  "padding_idx": 0, "max_len": SEQ_LEN, "share_embedding": "cate_id"}})
    path = os.path.join(data_dir, "feature_map.json")
    with open(path, "w") as f:
        json.dump({"dataset_id": "rows", "labels": ["clk"], "features": features}, f)
    feature_map = FeatureMap("rows", data_dir)
    feature_map.load(path, {})
    return feature_map


def full_cover_batch(seed: int, rows: int = 48) -> dict[str, torch.Tensor]:
    """A batch in which every non-padding id of every table appears (shuffled, repeated)."""
    rng = np.random.default_rng(seed)
    batch = {}
    for name, v in VOCAB.items():
        ids = np.concatenate([np.arange(1, v), rng.integers(1, v, rows - (v - 1))])
        batch[name] = torch.from_numpy(rng.permutation(ids))
    batch["price"] = torch.from_numpy(rng.random(rows).astype(np.float32))
    hist = rng.integers(1, VOCAB["cate_id"], (rows, SEQ_LEN))
    hist[rng.random((rows, SEQ_LEN)) < 0.3] = 0  # padding positions
    batch["cate_his"] = torch.from_numpy(hist)
    batch["clk"] = torch.from_numpy((rng.random(rows) < 0.3).astype(np.float32))
    batch["fm_pred"] = torch.from_numpy(rng.beta(2, 5, rows).astype(np.float32))
    return batch


def partial_batch(seed: int, rows: int = 16) -> dict[str, torch.Tensor]:
    """A batch that uses only the lower half of each table's ids."""
    batch = full_cover_batch(seed, rows)
    for name, v in VOCAB.items():
        batch[name] = batch[name] % (v // 2) + 1
    batch["cate_his"] = torch.where(batch["cate_his"] > 0, batch["cate_his"] % (VOCAB["cate_id"] // 2) + 1, 0)
    return batch


def build(case: str, fmap, tmp_path, embedding_update: str, seed: int = 0):
    name, kw = CASES[case]
    torch.manual_seed(seed)
    model = MODEL_REGISTRY[name](fmap, **model_kwargs(tmp_path, embedding_update=embedding_update, **kw))
    model._max_gradient_norm = 10.0
    return model


def with_random_embeddings(model, seed: int = 3):
    """Larger embeddings than fuxictr's 1e-4 init, so the updates are far above float noise."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for table in feature_embedding_tables(model):
            table.weight.copy_(torch.randn(table.weight.shape, generator=gen) * 0.3)
            if table.padding_idx is not None:
                table.weight[table.padding_idx].zero_()
    return model


# ------------------------------------------------------------------------------ the optimizer

def test_lazy_adam_equals_adam_when_every_row_has_a_gradient():
    torch.manual_seed(0)
    w_dense = nn.Parameter(torch.randn(6, 3))
    w_sparse = nn.Parameter(w_dense.detach().clone())
    bias_dense = nn.Parameter(torch.randn(3))
    bias_sparse = nn.Parameter(bias_dense.detach().clone())
    adam = torch.optim.Adam([w_dense, bias_dense], lr=0.01)
    lazy = LazyAdam([w_sparse, bias_sparse], lr=0.01)
    for step in range(5):
        grad = torch.randn(6, 3) * 10.0 ** -(step + 2)  # shrinking, so eps matters late
        gbias = torch.randn(3)
        w_dense.grad, bias_dense.grad = grad.clone(), gbias.clone()
        # the same gradient as an uncoalesced sparse tensor: every row, split in two pieces
        rows = torch.tensor([5, 0, 1, 2, 3, 4, 0])
        values = torch.cat([grad[[5, 0, 1, 2, 3, 4]], torch.zeros(1, 3)])
        values[1] -= 1.0
        values[6] += 1.0
        w_sparse.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), values, (6, 3))
        bias_sparse.grad = gbias.clone()
        adam.step()
        lazy.step()
        torch.testing.assert_close(w_sparse, w_dense, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(bias_sparse, bias_dense, rtol=0, atol=0)


def test_lazy_adam_leaves_rows_without_gradient_and_their_moments_untouched():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(5, 2))
    opt = LazyAdam([w], lr=0.1)
    before = w.detach().clone()
    w.grad = torch.sparse_coo_tensor(torch.tensor([[1, 3]]), torch.ones(2, 2), (5, 2))
    opt.step()
    assert torch.equal(w[[0, 2, 4]], before[[0, 2, 4]])
    assert not torch.equal(w[[1, 3]], before[[1, 3]])
    state = opt.state[w]
    assert torch.equal(state["exp_avg"][[0, 2, 4]], torch.zeros(3, 2))
    # Adam's first step moves each touched coordinate by lr (m_hat / sqrt(v_hat) = 1)
    torch.testing.assert_close(before[[1, 3]] - w[[1, 3]], torch.full((2, 2), 0.1))


def test_lazy_adam_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    w1 = nn.Parameter(torch.randn(4, 2))
    w2 = nn.Parameter(w1.detach().clone())
    opt1 = LazyAdam([w1], lr=0.05)
    grads = [torch.sparse_coo_tensor(torch.tensor([[i % 4, (i + 1) % 4]]), torch.randn(2, 2), (4, 2))
             for i in range(4)]
    for g in grads[:2]:
        w1.grad = g
        opt1.step()
    with torch.no_grad():
        w2.copy_(w1)
    opt2 = LazyAdam([w2], lr=0.05)
    opt2.load_state_dict(copy.deepcopy(opt1.state_dict()))  # as if saved and loaded
    for g in grads[2:]:
        w1.grad, w2.grad = g, g.clone()
        opt1.step()
        opt2.step()
    assert torch.equal(w1, w2)


def test_lazy_adam_refuses_options_without_a_lazy_form():
    with pytest.raises(ValueError, match="weight_decay"):
        LazyAdam([nn.Parameter(torch.zeros(2))], lr=0.1).add_param_group(
            {"params": [nn.Parameter(torch.zeros(2))], "weight_decay": 0.1})


def test_clip_grad_norm_with_sparse_grads_equals_torch_on_the_dense_equivalent():
    torch.manual_seed(0)
    dense_w, sparse_w = nn.Parameter(torch.zeros(5, 3)), nn.Parameter(torch.zeros(5, 3))
    dense_b, sparse_b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(3))
    rows = torch.tensor([[0, 2, 2, 4]])  # row 2 twice: its pieces add up before the norm
    values = torch.randn(4, 3) * 5
    sparse_w.grad = torch.sparse_coo_tensor(rows, values, (5, 3))
    dense_w.grad = sparse_w.grad.to_dense()
    dense_b.grad = torch.randn(3)
    sparse_b.grad = dense_b.grad.clone()
    expected = nn.utils.clip_grad_norm_([dense_w, dense_b], 1.0)
    total = clip_grad_norm_([sparse_w, sparse_b], 1.0)
    torch.testing.assert_close(total, expected)
    assert sparse_w.grad.is_sparse
    torch.testing.assert_close(sparse_w.grad.to_dense(), dense_w.grad)
    torch.testing.assert_close(sparse_b.grad, dense_b.grad)
    assert float(torch.linalg.vector_norm(torch.cat([dense_w.grad.flatten(), dense_b.grad]))) < 1.0 + 1e-5


# ------------------------------------------------------------------------------ every model

@pytest.mark.parametrize("case", sorted(CASES))
def test_sparse_and_dense_agree_when_every_row_is_in_every_batch(case, fmap, tmp_path):
    dense = with_random_embeddings(build(case, fmap, tmp_path, "dense"))
    sparse = with_random_embeddings(build(case, fmap, tmp_path, "sparse"))
    assert all(t.sparse for t in feature_embedding_tables(sparse))
    assert isinstance(sparse.optimizer, LazyAdam)
    torch.testing.assert_close(dict(sparse.named_parameters()), dict(dense.named_parameters()), rtol=0, atol=0)
    for step in range(4):
        batch = full_cover_batch(step)
        loss_d = dense.train_step(batch)
        loss_s = sparse.train_step(batch)
        torch.testing.assert_close(loss_s, loss_d, rtol=1e-5, atol=1e-6)
    moved = 0
    for (name, p_s), (_, p_d) in zip(sparse.named_parameters(), dense.named_parameters()):
        torch.testing.assert_close(p_s, p_d, rtol=1e-4, atol=1e-6, msg=f"{case}: {name}")
    init = with_random_embeddings(build(case, fmap, tmp_path, "dense"))
    for p_s, p_0 in zip(sparse.parameters(), init.parameters()):
        moved += int(not torch.equal(p_s, p_0))
    assert moved >= 2  # the comparison is not between two untrained models


@pytest.mark.parametrize("case", ["FM", "DeepFM"])
def test_rows_not_in_the_batch_stay_bit_identical(case, fmap, tmp_path):
    sparse = with_random_embeddings(build(case, fmap, tmp_path, "sparse"))
    dense = with_random_embeddings(build(case, fmap, tmp_path, "dense"))
    for model in (sparse, dense):
        model.train_step(full_cover_batch(0))  # every row gets a moment
    tables_s = feature_embedding_tables(sparse)
    tables_d = feature_embedding_tables(dense)
    before_s = [t.weight.detach().clone() for t in tables_s]
    before_d = [t.weight.detach().clone() for t in tables_d]
    sparse.train_step(partial_batch(1))
    dense.train_step(partial_batch(1))
    for t_s, b_s, t_d, b_d in zip(tables_s, before_s, tables_d, before_d):
        v = t_s.num_embeddings
        untouched = torch.arange(v // 2 + 1, v)
        touched = torch.arange(1, v // 2 + 1)
        assert torch.equal(t_s.weight[untouched], b_s[untouched])
        assert not torch.equal(t_s.weight[touched], b_s[touched])
        if t_s.padding_idx is not None:
            assert torch.equal(t_s.weight[t_s.padding_idx], torch.zeros_like(b_s[0]))
        # dense Adam keeps moving the same rows with their old moments: the property is the optimizer's
        assert not torch.equal(t_d.weight[untouched], b_d[untouched])


def test_regularisation_covers_each_touched_row_once(fmap, tmp_path):
    model = with_random_embeddings(build("FM", fmap, tmp_path, "sparse"))  # regularizer 1e-3, l2
    batch = partial_batch(2)
    model.train()
    model.forward(batch)
    reg = model.regularization_loss()
    weights = {n: p.detach() for n, p in model.named_parameters()}
    his = batch["cate_his"].flatten()
    row_ids = {  # table -> the ids the batch looks up in it
        "embedding_layer.embedding_layers.user_id": batch["user_id"],
        "embedding_layer.embedding_layers.item_id": batch["item_id"],
        "embedding_layer.embedding_layers.cate_id": torch.cat([batch["cate_id"], his]),  # shared
        # the first-order term's dict (use_sharing=False): the history has its own table
        "lr_layer.embedding_layer.embedding_layer.embedding_layers.user_id": batch["user_id"],
        "lr_layer.embedding_layer.embedding_layer.embedding_layers.item_id": batch["item_id"],
        "lr_layer.embedding_layer.embedding_layer.embedding_layers.cate_id": batch["cate_id"],
        "lr_layer.embedding_layer.embedding_layer.embedding_layers.cate_his": his,
    }
    expected = 0.0
    for table, ids in row_ids.items():
        rows = sorted(set(ids.tolist()) - {0})
        expected += 1e-3 / 2 * float((weights[f"{table}.weight"][rows] ** 2).sum())
    dense_params = ["embedding_layer.embedding_layers.price.weight",  # numeric projections: whole
                    "lr_layer.embedding_layer.embedding_layer.embedding_layers.price.weight", "lr_layer.bias"]
    expected += sum(1e-3 / 2 * float((weights[n] ** 2).sum()) for n in dense_params)
    assert len(row_ids) + len(dense_params) == len(weights)  # every parameter accounted for
    assert float(reg.detach()) == pytest.approx(expected, rel=1e-5)
    reg.backward()
    grad = model.embedding_layer.embedding_layers["user_id"].weight.grad
    assert grad.is_sparse
    assert set(grad.coalesce().indices()[0].tolist()) == set(batch["user_id"].tolist())


def test_fit_trains_a_sparse_model(tmp_path):
    data = make_tiny_data(str(tmp_path / "tiny"), num_rows=1024)
    torch.manual_seed(0)
    model = MODEL_REGISTRY["DeepFM"](data.feature_map, **model_kwargs(
        tmp_path, embedding_update="sparse", hidden_units=[16], embedding_regularizer=1e-4))
    train = list(data.batches(64))
    before = model.evaluate(train)["logloss"]
    model.fit(train, epochs=2, validation_data=train)
    after = model.evaluate(train)["logloss"]
    assert after < before - 0.01
    assert isinstance(model.optimizer, LazyAdam)


def test_bad_options_are_refused(fmap, tmp_path):
    with pytest.raises(ValueError, match="embedding_update='rows'"):
        build("FM", fmap, tmp_path, "rows")
    with pytest.raises(ValueError, match="needs optimizer 'adam'"):
        MODEL_REGISTRY["FM"](fmap, **model_kwargs(tmp_path, embedding_update="sparse", optimizer="SGD"))
    with pytest.raises(ValueError, match="precision='fp16'"):
        MODEL_REGISTRY["FM"](fmap, **model_kwargs(tmp_path, precision="fp16"))


# ------------------------------------------------------------------------------ the student

@pytest.mark.parametrize("method", ["none", "kd", "ah", "ah_sa", "ah_sa_frozen"])
def test_student_on_a_sparse_vm_matches_the_dense_one_when_every_row_is_touched(method, fmap, tmp_path):
    students = {}
    for mode in ("dense", "sparse"):
        vm = with_random_embeddings(build("DeepFM", fmap, tmp_path, mode))
        torch.manual_seed(5)
        students[mode] = ExFMStudent(vm, DistillConfig(method=method))
    assert isinstance(students["sparse"].optimizer, LazyAdam)
    assert not isinstance(students["dense"].optimizer, LazyAdam)
    for step in range(3):
        batch = full_cover_batch(10 + step)
        for s in students.values():
            s.train_step(batch)
        grads = [t.weight.grad for t in feature_embedding_tables(students["sparse"].vm)]
        assert all(g is not None and g.is_sparse for g in grads)
    for (name, p_s), (_, p_d) in zip(students["sparse"].named_parameters(), students["dense"].named_parameters()):
        torch.testing.assert_close(p_s, p_d, rtol=1e-4, atol=1e-6, msg=f"{method}: {name}")


def test_student_keeps_untouched_rows_of_a_sparse_vm(fmap, tmp_path):
    student = ExFMStudent(with_random_embeddings(build("FM", fmap, tmp_path, "sparse")),
                          DistillConfig(method="ah_sa"))
    student.train_step(full_cover_batch(0))
    table = student.vm.embedding_layer.embedding_layers["item_id"]
    before = table.weight.detach().clone()
    student.train_step(partial_batch(1))
    untouched = torch.arange(VOCAB["item_id"] // 2 + 1, VOCAB["item_id"])
    assert torch.equal(table.weight[untouched], before[untouched])


@pytest.mark.parametrize("mode", ["dense", "sparse"])
def test_pooled_sequence_fields_equal_the_masked_mean_of_the_lookup(mode, fmap, tmp_path):
    """field_embeddings pools a history with embedding_bag; the value and the gradient equal
    the masked mean of fuxictr's (B, L, D) lookup."""
    from exfm_plugin.models.kernels.embedding import field_embeddings, masked_sequence_mean

    model = with_random_embeddings(build("FM", fmap, tmp_path, mode))
    model.train()
    batch = full_cover_batch(4)
    batch["cate_his"][0] = 0  # an empty history pools to 0
    X = model.get_inputs(batch)
    fused = field_embeddings(model.embedding_layer, X)
    table = model.embedding_layer.embedding_layers["cate_id"]
    reference = masked_sequence_mean(F.embedding(X["cate_his"], table.weight), X["cate_his"], 0)
    his_field = list(fmap.features).index("cate_his")
    torch.testing.assert_close(fused[:, his_field], reference, rtol=1e-6, atol=1e-7)
    assert torch.equal(fused[0, his_field], torch.zeros(8))
    (grad_fused,) = torch.autograd.grad(fused[:, his_field].pow(2).sum(), table.weight)
    (grad_ref,) = torch.autograd.grad(reference.pow(2).sum(), table.weight)
    grad_fused = grad_fused.to_dense() if grad_fused.is_sparse else grad_fused
    torch.testing.assert_close(grad_fused, grad_ref, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("num_rows", [12, 400])  # the dense-buffer merge and the sort
def test_coalesce_rows_equals_torch_coalesce(num_rows):
    from exfm_plugin.models.kernels.sparse_optim import coalesce_rows

    gen = torch.Generator().manual_seed(0)
    pieces = []
    for n in (5, 7, 3):
        rows = torch.randperm(num_rows, generator=gen)[:n].sort().values
        pieces.append(torch.sparse_coo_tensor(rows.unsqueeze(0), torch.randn(n, 2, generator=gen), (num_rows, 2)))
    total = pieces[0] + pieces[1] + pieces[2]
    assert not total.is_coalesced()
    merged, expected = coalesce_rows(total), total.coalesce()
    assert merged.is_coalesced()
    assert torch.equal(merged.indices(), expected.indices())
    torch.testing.assert_close(merged.values(), expected.values())


def test_the_multitask_dmin_takes_the_training_options(tmp_path):
    """TrainingOptionsMixin among a fuxictr MultiTaskModel's bases (MultiTaskDMIN compiles
    inside its own __init__) makes its tables row-sparse and its optimizer lazy."""
    from exfm_plugin.models import MultiTaskDMIN as SparseMultiTaskDMIN

    data = make_tiny_data(str(tmp_path / "mt"), num_rows=256, multitask=True)
    torch.manual_seed(0)
    model = SparseMultiTaskDMIN(data.feature_map, **model_kwargs(
        tmp_path, embedding_update="sparse", target_field="cate_id", sequence_field="cate_his",
        dnn_hidden_units=[16], attention_hidden_units=[8], num_heads=2, pos_emb_dim=4,
        embedding_regularizer=1e-4))
    model._max_gradient_norm = 10.0
    assert isinstance(model.optimizer, LazyAdam)
    from fuxictr.pytorch.layers import FeatureEmbeddingDict
    user = next(m.embedding_layers["user_id"] for m in model.modules()
                if isinstance(m, FeatureEmbeddingDict) and "user_id" in m.embedding_layers)
    tables = feature_embedding_tables(model)
    assert tables and all(t.sparse for t in tables)
    batch = next(data.batches(64))
    before = [t.weight.detach().clone() for t in tables]
    model.train_step(batch)
    assert all(t.weight.grad is None or t.weight.grad.is_sparse for t in tables)
    old = before[[id(t) for t in tables].index(id(user))]
    untouched = [i for i in range(user.num_embeddings) if i not in set(batch["user_id"].tolist())]
    assert untouched and torch.equal(user.weight[untouched], old[untouched])
    assert not torch.equal(user.weight, old)


# ------------------------------------------------------------------------------ the fused bag
from hypothesis import given, settings, strategies as st  # noqa: E402

from exfm_plugin.models.kernels.sparse_optim import bag_sum  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), batch=st.integers(1, 7), length=st.integers(1, 6),
       vocab=st.integers(2, 9), padding=st.sampled_from([None, 0]), sparse=st.booleans(),
       pad_share=st.floats(0.0, 1.0))
def test_bag_sum_is_the_masked_sum_of_the_lookup_in_value_and_gradient(seed, batch, length, vocab, padding,
                                                                        sparse, pad_share):
    """bag_sum = sum over the non-padding positions of the (B, L, D) lookup, for any layout of
    padding (empty rows, full rows, repeated ids), with or without a padding id; its gradient
    (row-sparse for a sparse table) equals the masked sum's, and the padding row gets none even
    when its weights are not zero."""
    gen = torch.Generator().manual_seed(seed)
    wrap = nn.Module()
    wrap.table = nn.Embedding(vocab, 3, padding_idx=padding)
    with torch.no_grad():
        wrap.table.weight.copy_(torch.randn(vocab, 3, generator=gen))  # padding row not zero
    if sparse:
        table = wrap.table
        table.sparse, table.touched_rows, table.record_rows = True, [], False
    ids = torch.randint(0, vocab, (batch, length), generator=gen)
    if padding is not None:
        ids = torch.where(torch.rand(batch, length, generator=gen) < pad_share, padding, ids)
    weights = torch.randn(batch, 3, generator=gen)
    out = bag_sum(wrap.table, ids)
    mask = torch.ones_like(ids, dtype=torch.bool) if padding is None else ids != padding
    reference = (F.embedding(ids, wrap.table.weight) * mask.unsqueeze(-1)).sum(1)
    torch.testing.assert_close(out, reference, rtol=1e-6, atol=1e-6)
    (grad,) = torch.autograd.grad((out * weights).sum(), wrap.table.weight)
    (expected,) = torch.autograd.grad((reference * weights).sum(), wrap.table.weight)
    assert grad.is_sparse == sparse
    grad = grad.to_dense() if grad.is_sparse else grad
    torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6)
    if padding is not None:
        assert torch.equal(grad[padding], torch.zeros(3))


def test_dense_bag_sum_off_the_cpu_needs_no_data_dependent_op():
    """Off the CPU a dense bag_sum keeps the 2-D embedding_bag: no nonzero, hence no host sync.
    The meta device stands in for an accelerator: it has no data, so any op whose output
    shape depends on the values (nonzero) fails there."""
    table = nn.Embedding(7, 4, padding_idx=0, device="meta")
    ids = torch.zeros(5, 3, dtype=torch.long, device="meta")
    with pytest.raises((NotImplementedError, RuntimeError)):
        ids.nonzero()
    assert bag_sum(table, ids).shape == (5, 4)
