"""DMIN / MultiTaskDMIN against the semantics of FuxiCTR's reference (model_zoo/DMIN), each
expectation computed another way: torch's own nn.MultiheadAttention for the refiner, a per-head
loop written from the reference's layer list for the extractor, a parameter-count formula from
the reference's layer shapes, and properties (causality, padding, [a] vs [a, a])."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fuxictr.features import FeatureMap
from fuxictr.pytorch.layers import FeatureEmbeddingDict
from torch import nn

from exfm_plugin.config import load_experiment
from exfm_plugin.models import DMIN, MODEL_REGISTRY
from exfm_plugin.models.dmin_layers import (BehaviorRefiner, MultiInterestExtractor, allowed_keys,
                                            attention_bias, normalize_field_pairs)
from exfm_plugin.models.kernels.grouped_layers import GroupedDice
from tiny_data import (SEQ_LEN, build_tiny_model as build, first_batch, full_data_loss, make_tiny_data,
                       model_kwargs)

TINY_DMIN = dict(target_field="cate_id", sequence_field="cate_his")
pytestmark = pytest.mark.usefixtures("one_thread")




def randomize(model: nn.Module, std: float = 0.3, seed: int = 1) -> None:
    """Give every embedding table and position table real values (the inits are 1e-4 and 0,
    under which every position looks alike), keeping padding rows at zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and ("embedding_layer" in name or "pos_emb" in name):
                p.copy_(torch.randn(p.shape, generator=gen) * std)
        for m in model.modules():
            if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                m.weight[m.padding_idx].zero_()




# ----------------------------------------------------------------------------- feature maps

def write_feature_map(path: str, features: list[dict], labels: list[str], params: dict) -> FeatureMap:
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "feature_map.json"), "w") as f:
        json.dump({"dataset_id": "t", "labels": labels, "features": features}, f)
    fmap = FeatureMap("t", path)
    fmap.load(os.path.join(path, "feature_map.json"), params)
    return fmap


def cat(name, vocab, **kw):
    return {name: {"source": "", "type": "categorical", "vocab_size": vocab, "padding_idx": 0, **kw}}


def seq(name, vocab, max_len, share, **kw):
    return {name: {"source": "", "type": "sequence", "vocab_size": vocab, "padding_idx": 0,
                   "max_len": max_len, "share_embedding": share, **kw}}


TAOBAO_CATS = ["userid", "cms_segid", "cms_group_id", "final_gender_code", "age_level", "pvalue_level",
               "shopping_level", "occupation", "new_user_class_level", "adgroup_id", "cate_id",
               "campaign_id", "customer", "brand", "pid", "btag"]


def bars_layout(dataset: str) -> tuple[list[dict], list[str], dict[str, int]]:
    """BARS field layout (reference/DATASETS.md, yaml_configs/datasets) with small vocabularies:
    (features, labels, vocab of every table that is not shared)."""
    if dataset == "taobaoad_x1":
        vocab = {name: 7 + i for i, name in enumerate(TAOBAO_CATS)}
        feats = [{"group_id": {"source": "", "type": "meta"}}] + [cat(n, v) for n, v in vocab.items()]
        feats.append({"price": {"source": "", "type": "numeric"}})
        feats += [seq(s, vocab[t], 50, t) for s, t in
                  (("cate_his", "cate_id"), ("brand_his", "brand"), ("btag_his", "btag"))]
        return feats, ["clk"], vocab
    if dataset == "amazonelectronics_x1":
        vocab = {"item_id": 31, "cate_id": 9}
        feats = [{"user_id": {"source": "", "type": "meta"}}, cat("item_id", 31), cat("cate_id", 9),
                 seq("item_history", 31, 100, "item_id"), seq("cate_history", 9, 100, "cate_id")]
        return feats, ["label"], vocab
    vocab = {"user_id": 11, "item_id": 23, "item_emb": 23}
    pooled = ["layers.MaskedAveragePooling()", "nn.Linear(64, 64, bias=False)"]  # dataset config
    feats = [{"group_id": {"source": "", "type": "meta"}}, cat("user_id", 11), cat("item_id", 23),
             cat("item_emb", 23, embedding_dim=64, feature_encoder="nn.Linear(64, 64, bias=False)"),
             seq("pos_items", 23, 100, "item_id"), seq("neg_items", 23, 100, "item_id"),
             seq("pos_items_emb", 23, 100, "item_emb", embedding_dim=64, feature_encoder=pooled),
             seq("neg_items_emb", 23, 100, "item_emb", embedding_dim=64, feature_encoder=pooled)]
    return feats, ["is_click", "is_like", "is_follow"], vocab


# ----------------------------------------------------------------------------- pairs and fields

def test_field_pairs_follow_bars_conventions():
    taobao = normalize_field_pairs(("cate_id", "brand", "btag"), ("cate_his", "brand_his", "btag_his"))
    assert taobao == [(("cate_id", "brand", "btag"), ("cate_his", "brand_his", "btag_his"))]
    yaml_form = normalize_field_pairs([["cate_id", "brand", "btag"]], [["cate_his", "brand_his", "btag_his"]])
    assert yaml_form == taobao
    kuai = normalize_field_pairs([("item_id", "item_emb")] * 2,
                                 [("pos_items", "pos_items_emb"), ("neg_items", "neg_items_emb")])
    assert [s for _, s in kuai] == [("pos_items", "pos_items_emb"), ("neg_items", "neg_items_emb")]
    assert normalize_field_pairs(["a", "b"], ["a_his", "b_his"]) == [(("a",), ("a_his",)), (("b",), ("b_his",))]
    with pytest.raises(ValueError, match="as many fields"):
        normalize_field_pairs(("a", "b"), ("a_his",))
    with pytest.raises(ValueError, match="2 entries"):
        normalize_field_pairs(["a", "b"], ["a_his"])


def test_rejects_bad_fields_and_head_counts(data, tmp_path):
    with pytest.raises(ValueError, match="'click_history' is not in the feature map"):
        build("DMIN", data.feature_map, tmp_path, target_field="cate_id", sequence_field="click_history")
    with pytest.raises(ValueError, match="sequence_field 'cate_id'"):
        build("DMIN", data.feature_map, tmp_path, target_field="item_id", sequence_field="cate_id")
    with pytest.raises(ValueError, match="model_dim=8 .*not divisible by num_heads=3"):
        build("DMIN", data.feature_map, tmp_path, **TINY_DMIN, num_heads=3)
    with pytest.raises(ValueError, match="aux_loss_lambda=0.5 needs neg_seq_field"):
        build("DMIN", data.feature_map, tmp_path, **TINY_DMIN, aux_loss_lambda=0.5, neg_seq_field=None)
    with pytest.raises(ValueError, match=r"neg_seq_field \['neg_click_history'\] not in the feature map"):
        build("DMIN", data.feature_map, tmp_path, **TINY_DMIN, aux_loss_lambda=0.5,
              neg_seq_field="neg_click_history")


def test_dnn_input_is_interests_then_flat_fields(data, tmp_path):
    """Reference: feature_dim = sum of field widths + model_dim * (heads - 1) per pair
    (+ 2 * model_dim with sum pooling); the pair's sequence fields are not in the DNN input."""
    model = build("DMIN", data.feature_map, tmp_path, **TINY_DMIN, dnn_hidden_units=[8],
                  attention_hidden_units=[8], num_heads=4, enable_sum_pooling=True)
    all_fields = 5 * 8 + 8  # user, item, cate, price, item_emb + cate_his (8 each)
    model_dim = 8
    assert model.encoder.input_dim == all_fields + model_dim * (4 - 1) + 2 * model_dim
    assert model.encoder.dnn.mlp[0].in_features == model.encoder.input_dim
    assert model(first_batch(data))["y_pred"].shape == (64, 1)


def test_shared_sequence_width_is_the_shared_tables(data, tmp_path):
    """A sequence that shares its target's table comes out as wide as that table, whatever its
    own embedding_dim says (fuxictr never builds a table of that width for it)."""
    fmap = data.feature_map
    spec = fmap.features["cate_his"]
    spec["embedding_dim"] = 64
    try:
        model = build("DMIN", fmap, tmp_path, **TINY_DMIN, num_heads=2, dnn_hidden_units=[8],
                      attention_hidden_units=[8])
        assert model.encoder.input_dim == 5 * 8 + 2 * 8
        assert model(first_batch(data))["y_pred"].shape == (64, 1)
    finally:
        del spec["embedding_dim"]


# ----------------------------------------------------------------------------- refiner

@pytest.mark.parametrize("form", ["bool", "bias"])
@pytest.mark.parametrize("additive", [False, True])
def test_refiner_equals_torch_multihead_attention_with_the_reference_mask(additive, form):
    """Boolean mode = MHA with the causal+padding mask the reference builds; additive mode =
    MHA with the reference's float ``1 - mask`` (added to the logits)."""
    torch.manual_seed(0)
    B, L, d, H = 5, 7, 12, 3
    refiner = BehaviorRefiner(d, H, layer_norm=True, additive_mask=additive).eval()
    x = torch.randn(B, L, d)
    valid = torch.rand(B, L) < 0.6
    valid[0] = False  # an all-padding row
    allowed = allowed_keys(valid)
    # the mask, built another way: loops over (row, query, key)
    expected_allowed = torch.zeros(B, L, L, dtype=torch.bool)
    for b in range(B):
        for i in range(L):
            for j in range(i + 1):
                expected_allowed[b, i, j] = bool(valid[b, j]) or i == j
    assert torch.equal(allowed, expected_allowed)
    mha_mask = (1 - allowed.float()) if additive else ~allowed
    with torch.no_grad():
        attn, _ = refiner.attention(x, x, x, attn_mask=mha_mask.repeat_interleave(H, dim=0))
        s = refiner.layer_norm(attn + x)
        expected = refiner.ffn(s) + s
        got = refiner(x, allowed if form == "bool" else attention_bias(valid))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert refiner.attention.head_dim == d // H


def test_refiner_is_causal_and_ignores_padded_keys():
    torch.manual_seed(0)
    B, L, d, H = 4, 8, 16, 4
    refiner = BehaviorRefiner(d, H).eval()
    x = torch.randn(B, L, d)
    valid = torch.ones(B, L, dtype=torch.bool)
    valid[:, 6:] = False
    with torch.no_grad():
        out = refiner(x, allowed_keys(valid))
        later = x.clone()
        later[:, 4] += torch.randn(B, d)  # a later behaviour changes
        out_later = refiner(later, allowed_keys(valid))
        padded = x.clone()
        padded[:, 6:] = torch.randn(B, 2, d)  # padded positions change
        out_padded = refiner(padded, allowed_keys(valid))
    torch.testing.assert_close(out_later[:, :4], out[:, :4], rtol=0, atol=0)
    assert not torch.allclose(out_later[:, 4:6], out[:, 4:6], atol=1e-3)
    torch.testing.assert_close(out_padded[:, :6], out[:, :6], rtol=0, atol=0)

    additive = BehaviorRefiner(d, H, additive_mask=True).eval()
    additive.load_state_dict(refiner.state_dict())
    with torch.no_grad():  # the reference's float mask masks nothing: the future leaks
        leak = (additive(later, allowed_keys(valid)) - additive(x, allowed_keys(valid)))[:, :4]
    assert leak.abs().max() > 1e-3


def test_dmin_refined_positions_ignore_later_behaviours(data, tmp_path):
    """Through the model: changing behaviour k leaves the refined positions before k unchanged."""
    model = build("DMIN", data.feature_map, tmp_path, **TINY_DMIN, num_heads=2, dnn_hidden_units=[8],
                  attention_hidden_units=[8])
    randomize(model)
    model.eval()
    captured = []
    model.encoder.refiners[0].register_forward_hook(lambda m, i, o: captured.append(o))
    batch = first_batch(data, 64)
    full = (batch["cate_his"] != 0).all(dim=1)
    assert full.any()
    changed = {k: v.clone() for k, v in batch.items()}
    changed["cate_his"][:, 3] = changed["cate_his"][:, 3] % 6 + 1  # another real category
    with torch.no_grad():
        model(batch)
        model(changed)
    before, after = captured
    torch.testing.assert_close(after[:, :3], before[:, :3], rtol=0, atol=0)
    assert not torch.allclose(after[full, 3], before[full, 3], atol=1e-4)


# ----------------------------------------------------------------------------- extractor

def loop_extractor(ext: MultiInterestExtractor, seq: torch.Tensor, target: torch.Tensor,
                   valid: torch.Tensor, activation: str) -> torch.Tensor:
    """The reference's MultiInterestExtractorLayer + TargetAttention, one head at a time,
    with the [t, z, t - z, t * z] concatenation, on the grouped module's parameters."""
    B, L, d = seq.shape
    H, hd = ext.num_heads, ext.head_dim
    q, k, v = (seq @ ext.W_qkv.weight.T).chunk(3, dim=-1)
    allowed = allowed_keys(valid)
    interests = []
    for h in range(H):
        sl = slice(h * hd, (h + 1) * hd)
        scores = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(hd)
        attn = scores.masked_fill(~allowed, -1e9).softmax(-1) @ v[..., sl]
        s = attn @ ext.W_o[h] + seq
        s = F.layer_norm(s, (d,), ext.ln_weight[h, 0], ext.ln_bias[h, 0])
        z = F.relu(s @ ext.ffn_w1[h] + ext.ffn_b1[h, 0]) @ ext.ffn_w2[h] + ext.ffn_b2[h, 0] + s
        t = target[:, None, :].expand(B, L, d)
        if ext.use_pos_emb:
            t = torch.cat([t, ext.pos_emb[h, :L].expand(B, L, -1)], dim=-1) @ ext.W_proj[h] + ext.b_proj[h, 0]
        a = torch.cat([t, z, t - z, t * z], dim=-1).reshape(B * L, 4 * d)
        layers = list(zip(ext.attn_mlp.weights, ext.attn_mlp.biases))
        for idx, (w, b) in enumerate(layers):
            a = a @ w[h] + b[h, 0]
            if idx < len(layers) - 1:
                if activation == "Dice":  # BatchNorm1d over every position, padding included
                    mean, var = a.mean(0), a.var(0, unbiased=False)
                    p = torch.sigmoid((a - mean) / torch.sqrt(var + 1e-9))
                    a = p * a + ext.attn_mlp.activations[idx].alpha[h, 0] * (1 - p) * a
                else:
                    a = F.relu(a)
        w = a.view(B, L).masked_fill(~valid, -1e9).softmax(-1)
        interests.append((w.unsqueeze(-1) * z).sum(1))
    return torch.cat(interests, dim=-1)


@pytest.mark.parametrize("activation,use_pos_emb,pack,fill", [
    ("ReLU", True, True, "random"), ("ReLU", True, False, "random"), ("ReLU", False, True, "random"),
    ("ReLU", False, False, "random"), ("Dice", True, None, "random"), ("ReLU", True, True, "full"),
    ("ReLU", True, True, "bias")])
def test_grouped_extractor_equals_per_head_reference_loop(activation, use_pos_emb, pack, fill):
    """Both paths (per-position layers on every position, or only where they reach the output)
    compute the per-head loop's result; Dice (by default) takes every position. ``full``: every
    position valid (packing then takes the unpacked path); ``bias``: the mask given as the
    additive ``attention_bias`` instead of the bool ``allowed_keys``."""
    torch.manual_seed(0)
    B, L, d, H = 6, 5, 12, 3
    ext = MultiInterestExtractor(d, H, max_len=L, attention_hidden_units=[10, 6],
                                 attention_activation=activation, use_pos_emb=use_pos_emb, pos_emb_dim=4)
    ext.pack_positions = pack
    assert ext.packs_positions(torch.device("cpu")) == (activation != "Dice" if pack is None else pack)
    with torch.no_grad():
        for p in ext.parameters():
            p.add_(torch.randn(p.shape) * 0.3)  # off the init (zeros, ones) so every term counts
    ext.train(activation == "Dice")  # Dice: batch statistics (no dropout is configured)
    ext.double()  # float64: Dice's batch-statistics gradient cancels terms, float32 would blur a real error
    seq, target = torch.randn(B, L, d, dtype=torch.double), torch.randn(B, d, dtype=torch.double)
    valid = torch.rand(B, L) < 0.7
    valid[0] = False
    if fill == "full":
        valid[:] = True
    seq.requires_grad_(True)
    target.requires_grad_(True)
    wrt = (seq, target, *ext.parameters())  # the target terms' gradients reach target, W_proj, pos_emb
    mask = attention_bias(valid, torch.double) if fill == "bias" else allowed_keys(valid)
    got = ext(seq, target, mask, valid)
    grads = torch.autograd.grad(got.square().sum(), wrt, allow_unused=True)
    expected = loop_extractor(ext, seq, target, valid, activation)
    expected_grads = torch.autograd.grad(expected.square().sum(), wrt, allow_unused=True)
    assert got.shape == (B, H * d)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)
    for grad, expected_grad in zip(grads, expected_grads):
        assert (grad is None) == (expected_grad is None)
        if grad is not None:
            torch.testing.assert_close(grad, expected_grad, rtol=1e-8, atol=1e-9)
    # an all-padding row gets the uniform mean over its positions (softmax of equal -1e9 scores)
    assert torch.isfinite(got[0]).all()
    if fill == "full":
        assert valid.all()


@pytest.mark.parametrize("training", [True, False])
def test_grouped_dice_equals_fuxictr_dice_per_head(training):
    """Outputs, gradients (input and alpha) and running statistics of fuxictr's own Dice, one
    module per head, against the grouped Dice with its hand-written backward."""
    from fuxictr.pytorch.layers.activations import Dice
    torch.manual_seed(0)
    H, N, U = 3, 50, 7
    grouped = GroupedDice(H, U).double().train(training)
    per_head = [Dice(U).double().train(training) for _ in range(H)]
    with torch.no_grad():
        grouped.alpha.normal_()
        grouped.running_mean.normal_()
        grouped.running_var.uniform_(0.5, 2.0)
        for h, dice in enumerate(per_head):
            dice.alpha.copy_(grouped.alpha[h, 0])
            dice.bn.running_mean.copy_(grouped.running_mean[h, 0])
            dice.bn.running_var.copy_(grouped.running_var[h, 0])
    x = torch.randn(H, N, U, dtype=torch.double, requires_grad=True)
    g = torch.randn(H, N, U, dtype=torch.double)
    out = grouped(x)
    dx, dalpha = torch.autograd.grad(out, (x, grouped.alpha), g)
    for h, dice in enumerate(per_head):
        xh = x.detach()[h].clone().requires_grad_(True)
        ref = dice(xh)
        ref_dx, ref_dalpha = torch.autograd.grad(ref, (xh, dice.alpha), g[h])
        torch.testing.assert_close(out[h], ref, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(dx[h], ref_dx, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(dalpha[h, 0], ref_dalpha, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(grouped.running_mean[h, 0], dice.bn.running_mean)
        torch.testing.assert_close(grouped.running_var[h, 0], dice.bn.running_var)


def test_per_head_dimension_is_model_dim_over_heads(tmp_path):
    feats, labels, _ = bars_layout("amazonelectronics_x1")
    fmap = write_feature_map(str(tmp_path / "amz"), feats, labels, {"embedding_dim": 64})
    model = DMIN(fmap, **model_kwargs(tmp_path, embedding_dim=64, target_field=("item_id", "cate_id"),
                                       sequence_field=("item_history", "cate_history"), num_heads=8,
                                       dnn_hidden_units=[8], attention_hidden_units=[8], neg_seq_field=None))
    d, H = 128, 8
    ext, ref = model.encoder.extractors[0], model.encoder.refiners[0]
    assert ext.head_dim == ref.attention.head_dim == d // H == 16
    assert ext.W_qkv.weight.shape == (3 * d, d)
    assert ext.W_o.shape == (H, d // H, d)
    assert ext.ffn_w1.shape == (H, d, 2 * d) and ext.ffn_w2.shape == (H, 2 * d, d)
    assert ext.attn_mlp.weights[0].shape == (H, 4 * d, 8)
    assert ext.pos_emb.shape == (H, 100, 8) and float(ext.pos_emb.detach().abs().sum()) == 0.0


# ----------------------------------------------------------------------------- target attention

def history_rows(batch: dict, histories: list[list[int]]) -> dict:
    """Copies of row 0 of ``batch`` with the given cate histories (post-padded)."""
    n = len(histories)
    rows = {k: v[:1].repeat(n, *([1] * (v.dim() - 1))) for k, v in batch.items()}
    hist = torch.zeros(n, SEQ_LEN, dtype=rows["cate_his"].dtype)
    for i, h in enumerate(histories):
        hist[i, :len(h)] = torch.tensor(h)
    rows["cate_his"] = hist
    return rows


@pytest.mark.parametrize("refiner", [True, False])
@pytest.mark.parametrize("use_pos_emb", [False, True])
def test_a_and_a_a_give_the_same_output(refiner, use_pos_emb, data, tmp_path):
    """Softmax over the valid positions: a history [a] and [a, a] (and [a, a, a]) give the same
    interests. With the causal mask every copy of a has the same refined and extracted vector,
    so this holds with position embeddings too (they only move the weights, which then average
    equal vectors). Sum pooling, or the reference's additive refiner mask, breaks it."""
    kw = dict(TINY_DMIN, num_heads=2, dnn_hidden_units=[8], attention_hidden_units=[8],
              use_behavior_refiner=refiner, attention_activation="Dice", batch_norm=True,
              use_pos_emb=use_pos_emb)
    rows = history_rows(first_batch(data), [[3], [3, 3], [3, 3, 3], [3, 4]])

    def logits(**extra) -> torch.Tensor:
        model = build("DMIN", data.feature_map, tmp_path, **kw, **extra)
        randomize(model)
        model.eval()
        with torch.no_grad():
            return model(rows)["logit"][:, 0]

    logit = logits()
    torch.testing.assert_close(logit[1], logit[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(logit[2], logit[0], rtol=0, atol=1e-5)
    assert abs(float(logit[3] - logit[0])) > 1e-4  # another behaviour does move it
    pooled = logits(enable_sum_pooling=True)
    assert abs(float(pooled[1] - pooled[0])) > 1e-4
    if refiner:
        leaky = logits(refiner_additive_mask=True)
        assert abs(float(leaky[1] - leaky[0])) > 1e-4


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_padded_positions_never_move_the_output(mode, data, tmp_path):
    """Changing what sits at padded positions (the padding row) changes no row with a real
    behaviour. Training mode is checked without batch statistics: with Dice (and DNN batch
    norm) the reference lets padded positions into the batch statistics, and so does this."""
    batch_stats = mode == "eval"
    model = build("DMIN", data.feature_map, tmp_path, **TINY_DMIN, dnn_hidden_units=[16, 8],
                  attention_hidden_units=[8], num_heads=2, pos_emb_dim=4, enable_sum_pooling=True,
                  attention_activation="Dice" if batch_stats else "ReLU", batch_norm=batch_stats,
                  dnn_activations="Dice" if batch_stats else "ReLU")
    randomize(model)
    batch = first_batch(data, 128)
    some = (batch["cate_his"] != 0).any(dim=1)
    assert (~some).any() and (batch["cate_his"] == 0).any(dim=1)[some].any()
    assert (batch["cate_id"] != 0).all()  # row 0 of the shared table is only ever padding
    table = model.encoder.embedding_layer.embedding_layers["cate_his"].weight
    assert table is model.encoder.embedding_layer.embedding_layers["cate_id"].weight
    model.train(mode == "train")
    with torch.no_grad():
        before = model(batch)["logit"]
        table[0] = torch.randn(table.shape[1]) * 5
        padded_changed = model(batch)["logit"]
        table[batch["cate_his"][some][0, 0]] += 3.0  # a row a real position uses
        real_changed = model(batch)["logit"]
    torch.testing.assert_close(padded_changed[some], before[some], rtol=0, atol=1e-5)
    assert not torch.allclose(real_changed[some], before[some], atol=1e-4)


# ----------------------------------------------------------------------------- parameter counts

def mlp_params(in_dim: int, hidden: list[int], out_dim: int | None, act: str,
               batch_norm: bool = False, bn_only_once: bool = False) -> int:
    """fuxictr MLP_Block: Linear (+ BatchNorm1d affine) (+ Dice/PReLU alpha per unit) per layer."""
    n = 2 * in_dim if batch_norm and bn_only_once else 0
    dims = [in_dim] + list(hidden)
    for a, b in zip(dims[:-1], dims[1:]):
        n += a * b + b
        n += 2 * b if batch_norm and not bn_only_once else 0
        n += b if act.lower() in ("dice", "prelu") else 0
    return n + (dims[-1] * out_dim + out_dim if out_dim else 0)


def reference_dmin_params(p: dict, widths: dict[str, int], max_len: int) -> int:
    """Parameters outside the embedding layer of the reference DMIN for config ``p`` (its
    layer list: refiner = MultiheadAttention + LayerNorm + FFN(d, 2d, d); extractor = W_qkv +
    per head W_o, LayerNorm, FFN, W_proj and position table, the 4d attention MLP; DNN with a
    Linear(., 1) output; aux nets only with aux_loss_lambda > 0)."""
    pairs = normalize_field_pairs(p["target_field"], p["sequence_field"])
    H, pe, ln = p["num_heads"], p["pos_emb_dim"], p["layer_norm"]
    total, dnn_in = 0, sum(w for f, w in widths.items() if f not in {s for _, ss in pairs for s in ss})
    for targets, _ in pairs:
        d = sum(widths[t] for t in targets)
        if p["use_behavior_refiner"]:
            total += (3 * d * d + 3 * d) + (d * d + d) + (2 * d if ln else 0) + (4 * d * d + 3 * d)
        per_head = (d // H) * d + (2 * d if ln else 0) + (4 * d * d + 3 * d)
        per_head += (max_len * pe + (d + pe) * d + d) if p["use_pos_emb"] else 0
        per_head += mlp_params(4 * d, p["attention_hidden_units"], 1, p["attention_activation"])
        total += 3 * d * d + H * per_head
        dnn_in += H * d + (2 * d if p["enable_sum_pooling"] else 0)
    total += mlp_params(dnn_in, p["dnn_hidden_units"], 1, p["dnn_activations"], p["batch_norm"], p["bn_only_once"])
    return total


@pytest.mark.parametrize("model_name,dataset", [("DMIN", "taobaoad_x1"), ("DMIN", "amazonelectronics_x1"),
                                                ("DMIN", "kuaivideo_x1"), ("MultiTaskDMIN", "kuaivideo_x1")])
def test_bars_config_parameter_count_equals_the_reference(model_name, dataset, tmp_path):
    p = load_experiment(f"{model_name}_{dataset}")
    feats, labels, vocab = bars_layout(dataset)
    emb = p["embedding_dim"]
    fmap = write_feature_map(str(tmp_path / dataset), feats, labels,
                             {"embedding_dim": emb, "feature_specs": p["feature_specs"]})
    for key in ("feature_specs", "model_root", "verbose", "gpu"):
        p.pop(key, None)
    torch.manual_seed(0)
    model = MODEL_REGISTRY[model_name](fmap, **{**p, "model_root": str(tmp_path), "verbose": 0})
    widths = {n: s.get("embedding_dim", emb) for n, s in fmap.features.items() if s["type"] != "meta"}
    max_len = max(s.get("max_len", 0) for s in fmap.features.values())
    expected = reference_dmin_params(p, widths, max_len)
    if model_name == "MultiTaskDMIN":  # shared bottom without the DNN's output layer, then towers
        expected -= p["dnn_hidden_units"][-1] + 1
        expected += len(labels) * mlp_params(p["dnn_hidden_units"][-1], p["tower_hidden_units"], 1,
                                             p["tower_activations"], p["batch_norm"])
    network = sum(q.numel() for n, q in model.named_parameters() if ".embedding_layer." not in f".{n}")
    assert network == expected
    # embedding tables: one per unshared field, vocab x width; numeric fields Linear(1, width);
    # the dataset's feature encoders (KuaiVideo: Linear(64, 64) on item_emb and the two sequences)
    tables = sum(v * widths[n] for n, v in vocab.items()) + sum(
        widths[n] for n, s in fmap.features.items() if s["type"] == "numeric")
    encoders = 3 * 64 * 64 if dataset == "kuaivideo_x1" else 0
    emb_layer = [m for m in model.modules() if isinstance(m, FeatureEmbeddingDict)][0]
    assert sum(q.numel() for q in emb_layer.parameters()) == tables + encoders


# ----------------------------------------------------------------------------- auxiliary loss

@pytest.fixture(scope="module")
def aux_data(tmp_path_factory):
    """The tiny dataset plus a negative history (random categories where the history is real)."""
    tiny = make_tiny_data(str(tmp_path_factory.mktemp("tiny_aux")))
    path = tiny.feature_map.data_dir
    with open(os.path.join(path, "feature_map.json")) as f:
        spec = json.load(f)
    spec["features"].append({"neg_cate_his": {"source": "user", "type": "sequence", "vocab_size": 8,
                                              "padding_idx": 0, "max_len": SEQ_LEN,
                                              "share_embedding": "cate_id"}})
    with open(os.path.join(path, "feature_map.json"), "w") as f:
        json.dump(spec, f)
    fmap = FeatureMap("tiny", path)
    fmap.load(os.path.join(path, "feature_map.json"), {"embedding_dim": 8})
    rng = np.random.default_rng(5)
    hist = tiny.columns["cate_his"]
    tiny.columns["neg_cate_his"] = np.where(hist != 0, rng.integers(1, 7, hist.shape), 0)
    tiny.feature_map = fmap
    return tiny


AUX_KW = dict(TINY_DMIN, neg_seq_field="neg_cate_his", num_heads=2, dnn_hidden_units=[8],
              attention_hidden_units=[8], aux_hidden_units=[6, 4])


def test_aux_loss_is_off_at_lambda_zero(aux_data, tmp_path):
    model = build("DMIN", aux_data.feature_map, tmp_path, **AUX_KW, aux_loss_lambda=0)
    batch = first_batch(aux_data)
    out = model(batch)
    assert "aux_loss" not in out and float(model.auxiliary_loss()) == 0.0
    assert len(model.encoder.aux_nets) == 0
    torch.testing.assert_close(model.add_loss(out, model.get_labels(batch)),
                               F.binary_cross_entropy(out["y_pred"], model.get_labels(batch)))


def test_aux_loss_equals_hand_computed_masked_bce(aux_data, tmp_path):
    lam = 0.7
    model = build("DMIN", aux_data.feature_map, tmp_path, **AUX_KW, aux_loss_lambda=lam, batch_norm=False)
    randomize(model)
    model.eval()
    batch = first_batch(aux_data, 16)
    X = model.get_inputs(batch)
    captured = []
    model.encoder.refiners[0].register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        out = model(batch)
        refined = captured[0]
        table = model.encoder.embedding_layer.embedding_layers["cate_id"].weight
        pos, neg = table[X["cate_his"].long()], table[X["neg_cate_his"].long()]
        mlp = model.encoder.aux_nets[0].mlp
        terms, count = 0.0, 0
        for b in range(16):
            for t in range(SEQ_LEN - 1):
                if X["cate_his"][b, t + 1] == 0:
                    continue  # the next behaviour is padding
                p_pos = torch.sigmoid(mlp(torch.cat([refined[b, t], pos[b, t + 1]])[None]))
                p_neg = torch.sigmoid(mlp(torch.cat([refined[b, t], neg[b, t + 1]])[None]))
                terms += float(-torch.log(p_pos) - torch.log(1 - p_neg))
                count += 2
    assert count > 0
    expected = lam * terms / count
    assert float(out["aux_loss"]) == pytest.approx(expected, rel=1e-5)
    assert float(model.auxiliary_loss()) == pytest.approx(expected, rel=1e-5)
    serving = F.binary_cross_entropy_with_logits(out["logit"], model.get_labels(batch))
    assert float(model.add_loss(out, model.get_labels(batch))) == pytest.approx(float(serving) + expected, rel=1e-5)


def test_aux_loss_trains_the_embeddings_through_fit_and_the_backbone(aux_data, tmp_path):
    model = build("DMIN", aux_data.feature_map, tmp_path, **AUX_KW, aux_loss_lambda=1.0)
    batch = first_batch(aux_data, 128)
    model.train()
    model.backbone(model.get_inputs(batch))
    aux = model.auxiliary_loss()
    assert float(aux) > 0
    aux.backward()
    table = model.encoder.embedding_layer.embedding_layers["cate_id"].weight
    assert table.grad is not None and float(table.grad.abs().sum()) > 0
    assert all(p.grad is not None for p in model.encoder.aux_nets.parameters())
    model.zero_grad()
    # fuxictr's train_step: the aux term is in the step's loss and it falls while training
    batches = list(aux_data.batches(128))
    auxes = []
    for step in range(40):
        model.train_step(batches[step % len(batches)])
        auxes.append(float(model.auxiliary_loss()))
    assert np.mean(auxes[-5:]) < np.mean(auxes[:5])


def test_an_exfm_student_of_dmin_adds_the_aux_loss_to_its_own_terms(aux_data, tmp_path):
    from exfm_plugin.distill import DistillConfig, ExFMStudent

    model = build("DMIN", aux_data.feature_map, tmp_path, **AUX_KW, aux_loss_lambda=0.7, batch_norm=False)
    student = ExFMStudent(model, DistillConfig(method="none"))
    student.eval()
    batch = first_batch(aux_data, 16)
    with torch.no_grad():
        terms = student.loss_terms(batch)
        expected = model(batch)["aux_loss"]  # the model's own forward, computed independently
    assert float(expected) > 0
    torch.testing.assert_close(terms["model_aux"], expected)


# ----------------------------------------------------------------------------- training

def test_training_decreases_loss(data, tmp_path):
    model = build("DMIN", data.feature_map, tmp_path, **TINY_DMIN, num_heads=2, dnn_hidden_units=[16, 8],
                  attention_hidden_units=[8], attention_activation="Dice", net_dropout=0.1)
    before = full_data_loss(model, data)
    batches = list(data.batches(128))
    model.train()
    for step in range(30):
        model.train_step(batches[step % len(batches)])
    assert full_data_loss(model, data) < before - 0.01


# ----------------------------------------------------------------------------- multi-task

def test_multitask_dmin_shares_one_encoder(mt_data, tmp_path):
    kw = dict(TINY_DMIN, num_heads=2, dnn_hidden_units=[16], tower_hidden_units=[8],
              attention_hidden_units=[8], batch_norm=False)
    model = build("MultiTaskDMIN", mt_data.feature_map, tmp_path, **kw)
    assert len([m for m in model.modules() if type(m).__name__ == "DMINEncoder"]) == 1
    assert len(model.towers) == 2
    batch = first_batch(mt_data, 64)
    model.train()
    out = model(batch)
    y = model.get_labels(batch)
    # each task's loss alone reaches the shared encoder (and only its own tower)
    for i, label in enumerate(["click", "like"]):
        model.zero_grad()
        F.binary_cross_entropy_with_logits(out[f"{label}_logit"], y[i]).backward(retain_graph=True)
        assert float(model.encoder.dnn.mlp[0].weight.grad.abs().sum()) > 0
        assert float(model.encoder.extractors[0].W_qkv.weight.grad.abs().sum()) > 0
        other = model.towers[1 - i]
        assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in other.parameters())
    # the towers read the same backbone vector: tower(x) of the shared x gives the logits
    model.eval()
    with torch.no_grad():
        out = model(batch)
        x = model.backbone(model.get_inputs(batch))
        for label, tower in zip(["click", "like"], model.towers):
            torch.testing.assert_close(out[f"{label}_logit"], tower(x))
    expected = (sum(p.numel() for p in model.encoder.parameters())
                + sum(p.numel() for p in model.towers.parameters()))
    assert sum(p.numel() for p in model.parameters()) == expected
