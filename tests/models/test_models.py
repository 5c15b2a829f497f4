"""Behaviour of the BARS baselines (FM, FmFM, DeepFM, DCN, DCNv2, DMIN, MultiTaskDMIN) and of
their YAML configs, on the tiny dataset of tiny_data.py."""
from __future__ import annotations

import glob
import os

import numpy as np
import polars as pl
import h5py
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from fuxictr.features import FeatureMap
from fuxictr.preprocess import FeatureProcessor
from fuxictr.utils import load_dataset_config, load_model_config

from exfm_plugin.config import build_model, load_experiment
from exfm_plugin.models import (DCN, MODEL_REGISTRY, check_protocol)
from tiny_data import build_tiny_model as build, first_batch, full_data_loss, model_kwargs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL_DIR = os.path.join(REPO, "yaml_configs", "models")
DATASET_DIR = os.path.join(REPO, "yaml_configs", "datasets")
TINY_DMIN = dict(target_field="cate_id", sequence_field="cate_his")

# Small settings per case; the YAML tests below cover the BARS sizes.
CASES = {
    "FM": ("FM", {}),
    "FmFM-vectorized": ("FmFM", dict(field_interaction_type="vectorized")),
    "FmFM-matrixed": ("FmFM", dict(field_interaction_type="matrixed")),
    "DeepFM": ("DeepFM", dict(hidden_units=[16, 8], batch_norm=True, net_dropout=0.1)),
    "DCN": ("DCN", dict(dnn_hidden_units=[16, 8], num_cross_layers=2)),
    "DCNv2-parallel": ("DCNv2", dict(model_structure="parallel", parallel_dnn_hidden_units=[16, 8],
                                     num_cross_layers=2)),
    "DCNv2-stacked": ("DCNv2", dict(model_structure="stacked", stacked_dnn_hidden_units=[16, 8],
                                    num_cross_layers=2)),
    "DCNv2-crossnet_only": ("DCNv2", dict(model_structure="crossnet_only", num_cross_layers=2)),
    "DCNv2-lowrank": ("DCNv2", dict(model_structure="stacked_parallel", use_low_rank_mixture=True,
                                    low_rank=4, num_experts=2, stacked_dnn_hidden_units=[16],
                                    parallel_dnn_hidden_units=[8], num_cross_layers=2)),
    "DMIN": ("DMIN", dict(TINY_DMIN, dnn_hidden_units=[16, 8], attention_hidden_units=[8],
                          num_heads=2, pos_emb_dim=4, attention_activation="Dice")),
    "DMIN-norefiner": ("DMIN", dict(TINY_DMIN, dnn_hidden_units=[16], attention_hidden_units=[8],
                                    num_heads=1, use_behavior_refiner=False, use_pos_emb=False,
                                    attention_activation="ReLU", enable_sum_pooling=True)),
}


pytestmark = pytest.mark.usefixtures("one_thread")






# ----------------------------------------------------------------------------- every model

@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_shapes_probabilities_and_protocol(case, data, tmp_path):
    name, kw = CASES[case]
    model = build(name, data.feature_map, tmp_path, **kw)
    check_protocol(model)
    batch = first_batch(data, 50)
    batch["fm_pred"] = torch.rand(50)  # FM supervision travels in the batch; it is no feature
    model.eval()
    with torch.no_grad():
        out = model(batch)
    assert out["y_pred"].shape == (50, 1)
    assert out["logit"].shape == (50, 1)
    assert torch.all((out["y_pred"] > 0) & (out["y_pred"] < 1))
    assert torch.allclose(out["y_pred"], torch.sigmoid(out["logit"]))


@pytest.mark.parametrize("case", sorted(CASES))
def test_backbone_and_serving_head_compose_to_forward(case, data, tmp_path):
    name, kw = CASES[case]
    model = build(name, data.feature_map, tmp_path, **kw)
    batch = first_batch(data)
    model.eval()
    with torch.no_grad():
        x = model.backbone(model.get_inputs(batch))
        logit = model.serving_head(x)
        out = model(batch)
    assert x.dim() == 2 and x.shape[0] == 64 and x.shape[1] > 1
    assert logit.shape == (64, 1)
    torch.testing.assert_close(logit, out["logit"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_training_decreases_loss(case, data, tmp_path):
    name, kw = CASES[case]
    model = build(name, data.feature_map, tmp_path, **kw)
    batches = list(data.batches(128))
    before = full_data_loss(model, data)
    model.train()
    losses = [model.train_step(batches[step % len(batches)]).item() for step in range(30)]
    after = full_data_loss(model, data)
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert after < before - 0.01, (before, after)


# ----------------------------------------------------------------------------- FM family

@pytest.mark.parametrize("case", sorted(CASES))
def test_no_embedding_table_keeps_torch_default_init(case, data, tmp_path):
    """fuxictr's default embedding init is N(0, 1e-4); torch's N(0, 1) default (which fuxictr
    leaves on unshared sequence tables of the first-order term) would start the logit at
    +-10 for a 6-long history. Every trainable feature table must start small."""
    from fuxictr.pytorch.layers import FeatureEmbeddingDict
    name, overrides = CASES[case]
    model = build(name, data.feature_map, tmp_path, **overrides)
    tables = [(f"{n}.{feature}", table) for n, m in model.named_modules()
              if isinstance(m, FeatureEmbeddingDict) for feature, table in m.embedding_layers.items()
              if isinstance(table, nn.Embedding) and table.weight.requires_grad]
    assert tables
    for module_name, table in tables:
        assert float(table.weight.std()) < 0.01, module_name


def randomize_embeddings(model, std: float = 0.3, seed: int = 1) -> None:
    """The default init (std 1e-4) makes every pairwise term ~1e-8, which no equality test
    could tell apart from zero: give the tables real values first."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.embedding_layer.embedding_layers.values():
            if isinstance(layer, (nn.Embedding, nn.Linear)) and layer.weight.requires_grad:
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * std)


def manual_field_vectors(model, X) -> list[torch.Tensor]:
    """One (B, D) vector per field, in feature_map order, computed from the raw tables:
    numeric -> value * weight, sequence -> mean of the non-padding rows, else a lookup."""
    layers = model.embedding_layer.embedding_layers
    vectors = []
    for name, spec in model.feature_map.features.items():
        if spec["type"] == "numeric":
            vectors.append(X[name].float().view(-1, 1) * layers[name].weight.view(1, -1))
        elif spec["type"] == "sequence":
            ids = X[name].long()
            rows = layers[name].weight[ids]
            real = (ids != 0).float().unsqueeze(-1)
            vectors.append((rows * real).sum(1) / real.sum(1).clamp(min=1))
        else:
            vectors.append(layers[name](X[name].long()))
    return vectors


def pairwise_dot_sum(vectors) -> torch.Tensor:
    total = torch.zeros(vectors[0].shape[0], 1)
    for i in range(len(vectors)):
        for j in range(i + 1, len(vectors)):
            total += (vectors[i] * vectors[j]).sum(-1, keepdim=True)
    return total


def test_fm_logit_is_lr_plus_pairwise_dot_products(data, tmp_path):
    model = build("FM", data.feature_map, tmp_path)
    randomize_embeddings(model)
    X = model.get_inputs(first_batch(data))
    expected = model.lr_layer(X) + pairwise_dot_sum(manual_field_vectors(model, X))
    torch.testing.assert_close(model.serving_head(model.backbone(X)), expected, rtol=1e-4, atol=1e-5)


def test_fmfm_vectorized_with_unit_weights_equals_fm(data, tmp_path):
    model = build("FmFM", data.feature_map, tmp_path, field_interaction_type="vectorized")
    randomize_embeddings(model)
    with torch.no_grad():
        model.field_interaction.interaction_weight.fill_(1.0)
    X = model.get_inputs(first_batch(data))
    expected = model.lr_layer(X) + pairwise_dot_sum(manual_field_vectors(model, X))
    torch.testing.assert_close(model.serving_head(model.backbone(X)), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("interaction", ["vectorized", "matrixed"])
def test_fmfm_with_random_field_pair_weights_matches_brute_force(interaction, data, tmp_path):
    model = build("FmFM", data.feature_map, tmp_path, field_interaction_type=interaction)
    randomize_embeddings(model)
    W = model.field_interaction.interaction_weight
    with torch.no_grad():
        W.copy_(torch.randn(W.shape, generator=torch.Generator().manual_seed(2)))
    X = model.get_inputs(first_batch(data))
    v = manual_field_vectors(model, X)
    expected = model.lr_layer(X).clone()
    k = 0  # field pairs in row-major order: (0,1), (0,2), ..., (1,2), ...
    for i in range(len(v)):
        for j in range(i + 1, len(v)):
            r = W[k]
            left = v[i] * r if interaction == "vectorized" else v[i] @ r
            expected += (left * v[j]).sum(-1, keepdim=True)
            k += 1
    assert k == W.shape[0]
    torch.testing.assert_close(model.serving_head(model.backbone(X)), expected, rtol=1e-4, atol=1e-4)


def test_fmfm_rejects_unknown_interaction_type(data, tmp_path):
    with pytest.raises(ValueError, match="field_interaction_type='diagonal'"):
        build("FmFM", data.feature_map, tmp_path, field_interaction_type="diagonal")


def test_deepfm_logit_is_fm_part_plus_dnn_logit(data, tmp_path):
    model = build("DeepFM", data.feature_map, tmp_path, hidden_units=[16, 8], batch_norm=True)
    randomize_embeddings(model)
    model.eval()
    X = model.get_inputs(first_batch(data))
    v = manual_field_vectors(model, X)
    fm_logit = model.lr_layer(X) + pairwise_dot_sum(v)
    dnn_logit = model.dnn_out(model.dnn(torch.cat(v, dim=-1)))
    with torch.no_grad():
        x = model.backbone(X)
        torch.testing.assert_close(model.serving_head(x), fm_logit + dnn_logit, rtol=1e-4, atol=1e-5)
    assert x.shape[1] == 8 + 1 + 8  # bi-interaction (D) + LR (1) + last hidden layer


# ----------------------------------------------------------------------------- DCN family

def test_dcn_backbone_is_crossnet_and_dnn_outputs(data, tmp_path):
    model = build("DCN", data.feature_map, tmp_path, dnn_hidden_units=[16, 8], num_cross_layers=2)
    randomize_embeddings(model)
    model.eval()
    X = model.get_inputs(first_batch(data))
    x0 = torch.cat(manual_field_vectors(model, X), dim=-1)
    xl = x0
    for layer in model.crossnet.cross_net:  # x_{l+1} = x_0 (w_l . x_l) + b_l + x_l
        xl = x0 * (xl @ layer.weight.weight.T) + layer.bias + xl
    with torch.no_grad():
        x = model.backbone(X)
    torch.testing.assert_close(x, torch.cat([xl, model.dnn(x0)], dim=-1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("structure,units,expected_dim", [
    ("crossnet_only", {}, 6 * 8),
    ("stacked", {"stacked_dnn_hidden_units": [16, 5]}, 5),
    ("parallel", {"parallel_dnn_hidden_units": [16, 7]}, 6 * 8 + 7),
    ("stacked_parallel", {"stacked_dnn_hidden_units": [5], "parallel_dnn_hidden_units": [7]}, 12),
])
def test_dcnv2_structure_sets_the_backbone_output(structure, units, expected_dim, data, tmp_path):
    model = build("DCNv2", data.feature_map, tmp_path, model_structure=structure, num_cross_layers=2, **units)
    model.eval()
    with torch.no_grad():
        x = model.backbone(model.get_inputs(first_batch(data, 1)))  # a batch of one works too
    assert x.shape == (1, expected_dim)
    assert model.fc.in_features == expected_dim


def test_dcnv2_rejects_unknown_structure(data, tmp_path):
    with pytest.raises(ValueError, match="model_structure='serial'"):
        build("DCNv2", data.feature_map, tmp_path, model_structure="serial")


# ----------------------------------------------------------------------------- DMIN
# DMIN-specific semantics (masks, target attention, padding, parameter counts, aux loss) live in
# tests/models/test_dmin.py.


# ----------------------------------------------------------------------------- MultiTaskDMIN

MT_KW = dict(TINY_DMIN, dnn_hidden_units=[16], tower_hidden_units=[8], attention_hidden_units=[8],
             num_heads=2, pos_emb_dim=4)


def test_multitask_dmin_predicts_every_label(mt_data, tmp_path):
    model = build("MultiTaskDMIN", mt_data.feature_map, tmp_path, **MT_KW)
    batch = first_batch(mt_data, 32)
    batch["fm_pred/click"] = torch.rand(32)
    model.eval()
    with torch.no_grad():
        out = model(batch)
        logits = model.task_logits(model.backbone(model.get_inputs(batch)))
    assert list(logits) == ["click", "like"]
    for label in ("click", "like"):
        assert out[f"{label}_pred"].shape == (32, 1)
        assert torch.all((out[f"{label}_pred"] > 0) & (out[f"{label}_pred"] < 1))
        torch.testing.assert_close(out[f"{label}_pred"], torch.sigmoid(logits[label]))
    assert not torch.allclose(logits["click"], logits["like"])
    labels = model.get_labels(batch)
    assert len(labels) == 2 and labels[1].shape == (32, 1)
    logs = model.evaluate(list(mt_data.batches(512)), metrics=["AUC", "logloss"])
    assert {"click_AUC", "like_AUC", "click_logloss", "like_logloss", "AUC", "logloss"} <= set(logs)


def test_multitask_dmin_trains_and_weights_losses(mt_data, tmp_path):
    model = build("MultiTaskDMIN", mt_data.feature_map, tmp_path, **MT_KW)
    batches = list(mt_data.batches(128))
    losses = [model.train_step(batches[step % len(batches)]).item() for step in range(30)]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])

    weighted = build("MultiTaskDMIN", mt_data.feature_map, tmp_path, loss_weight=[1.0, 0.0], **MT_KW)
    batch = batches[0]
    weighted.eval()
    with torch.no_grad():
        out = weighted(batch)
        click_only = F.binary_cross_entropy(out["click_pred"], batch["click"].float().view(-1, 1))
        torch.testing.assert_close(weighted.add_loss(out, weighted.get_labels(batch)), click_only,
                                   rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="num_tasks=3"):
        build("MultiTaskDMIN", mt_data.feature_map, tmp_path, num_tasks=3, **MT_KW)


# ----------------------------------------------------------------------------- configs

DATASETS = ("taobaoad_x1", "amazonelectronics_x1", "kuaivideo_x1")
SINGLE_TASK = ("FM", "FmFM", "DeepFM", "DCN", "DCNv2", "DMIN")
EXPIDS = [f"{m}_{d}" for m in SINGLE_TASK for d in DATASETS] + ["MultiTaskDMIN_kuaivideo_x1"]

# reference/DATASETS.md, restated independently of the YAML files
DATASET_FACTS = {"taobaoad_x1": dict(embedding_dim=32, learning_rate=1e-3),
                 "amazonelectronics_x1": dict(embedding_dim=64, learning_rate=5e-4, batch_size=1024),
                 "kuaivideo_x1": dict(embedding_dim=64, learning_rate=1e-3)}
MODEL_FACTS = {
    "DMIN_taobaoad_x1": dict(dnn_hidden_units=[512, 256, 128], attention_hidden_units=[512, 256],
                             attention_dropout=0.2, num_heads=1, use_behavior_refiner=False,
                             pos_emb_dim=4, embedding_regularizer=5e-6, batch_size=8192),
    "DMIN_amazonelectronics_x1": dict(dnn_hidden_units=[1024, 512, 256], attention_hidden_units=[256, 128],
                                      attention_activation="Dice", attention_dropout=0.1, num_heads=8,
                                      use_behavior_refiner=True, pos_emb_dim=4, batch_norm=True,
                                      net_dropout=0.1, embedding_regularizer=5e-3),
    "DMIN_kuaivideo_x1": dict(batch_size=4096, dnn_hidden_units=[1024, 512, 256], dnn_activations="Dice",
                              attention_hidden_units=[512, 256], attention_dropout=0.2, num_heads=2,
                              net_dropout=0.1, embedding_regularizer=1e-4),
    "DCN_taobaoad_x1": dict(dnn_hidden_units=[512, 256, 128], num_cross_layers=2, net_dropout=0.1,
                            embedding_regularizer=5e-6, batch_size=8192),
    "DCN_amazonelectronics_x1": dict(dnn_hidden_units=[1024, 512, 256], num_cross_layers=6,
                                     net_dropout=0.1, embedding_regularizer=5e-3),
    "DCN_kuaivideo_x1": dict(batch_size=8192, dnn_hidden_units=[1024, 512, 256], num_cross_layers=3),
    "DCNv2_taobaoad_x1": dict(model_structure="parallel", num_cross_layers=4,
                              parallel_dnn_hidden_units=[512, 256, 128], net_dropout=0.1, batch_size=8192),
    "DCNv2_amazonelectronics_x1": dict(model_structure="parallel", num_cross_layers=2,
                                       parallel_dnn_hidden_units=[1024, 512, 256], batch_norm=True),
    "DCNv2_kuaivideo_x1": dict(batch_size=8192, model_structure="parallel", num_cross_layers=2,
                               batch_norm=True, net_dropout=0.1),
    "FM_taobaoad_x1": dict(regularizer=5e-7, batch_size=8192),
    "FM_amazonelectronics_x1": dict(regularizer=5e-7),
    "FM_kuaivideo_x1": dict(batch_size=4096, regularizer=1e-5),
    "FmFM_taobaoad_x1": dict(field_interaction_type="vectorized", regularizer=1e-7, batch_size=8192),
    "FmFM_amazonelectronics_x1": dict(field_interaction_type="matrixed", regularizer=5e-6),
    "FmFM_kuaivideo_x1": dict(batch_size=8192, field_interaction_type="matrixed", regularizer=5e-5),
    "DeepFM_taobaoad_x1": dict(hidden_units=[512, 256, 128], net_dropout=0, batch_size=8192),
    "DeepFM_amazonelectronics_x1": dict(hidden_units=[1024, 512, 256], batch_norm=True, net_dropout=0.1),
    "DeepFM_kuaivideo_x1": dict(batch_size=8192, hidden_units=[1024, 512, 256], net_dropout=0.2),
    "MultiTaskDMIN_kuaivideo_x1": dict(dnn_hidden_units=[1024, 512, 256], num_heads=2),
}


def test_config_files_hold_exactly_the_expected_expids():
    found = {}
    for path in glob.glob(os.path.join(MODEL_DIR, "model_config", "*.yaml")):
        if os.path.basename(path) == "ExFM.yaml":  # exfm's teacher/student examples (tests/examples/test_run_expid.py)
            continue
        with open(path) as f:
            blocks = yaml.safe_load(f)
        for key in blocks:
            assert key not in found, f"{key} defined in {path} and {found[key]}"
            found[key] = path
    assert set(found) == set(EXPIDS) | {"Base"}
    assert found["Base"].endswith("Base.yaml")
    with open(found["Base"]) as f:
        base = yaml.safe_load(f)
    assert list(base) == ["Base"]
    assert set(base["Base"]) == {"model_root", "num_workers", "verbose", "early_stop_patience",
                                 "pickle_feature_encoder", "save_best_only", "eval_steps", "debug_mode",
                                 "group_id", "use_features", "feature_specs", "feature_config"}


@pytest.mark.parametrize("expid", EXPIDS)
def test_expid_loads_with_fuxictr_and_carries_bars_settings(expid):
    params = load_model_config(MODEL_DIR, expid)
    model_name, dataset_id = expid.split("_", 1)
    assert params["model"] == model_name and params["dataset_id"] == dataset_id
    assert params["model_id"] == expid
    assert params["loss"] == "binary_crossentropy" and params["optimizer"] == "adam"
    assert {"logloss", "AUC", "gAUC"} <= set(params["metrics"]) and params["group_id"]
    assert params["task"] == "binary_classification"
    assert params["shuffle"] is True and params["seed"] == 2019
    assert params["monitor"] == "AUC" and params["monitor_mode"] == "max"
    assert params["epochs"] >= 1 and params["model_root"]  # from Base
    for key, value in {**DATASET_FACTS[dataset_id], **MODEL_FACTS[expid]}.items():
        assert params[key] == pytest.approx(value) if isinstance(value, float) else params[key] == value, key


@pytest.mark.parametrize("expid", EXPIDS)
def test_expid_builds_and_runs_on_the_tiny_feature_map(expid, data, mt_data, tmp_path):
    params = load_experiment(expid)
    # The tiny map's frozen pretrained item_emb is 8-d, so every field must be 8-d here; the
    # dataset-specific field names of DMIN are swapped for the tiny ones.
    params.update(embedding_dim=8, model_root=str(tmp_path), verbose=0)
    if "DMIN" in expid:
        params.update(TINY_DMIN)
    tiny = mt_data if expid.startswith("MultiTask") else data
    torch.manual_seed(0)
    model = build_model(params, tiny.feature_map)
    assert type(model) is MODEL_REGISTRY[params["model"]]
    batch = first_batch(tiny, 16)
    model._max_gradient_norm = 10.0
    assert np.isfinite(model.train_step(batch).item())
    linear_widths = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)]
    for key in ("hidden_units", "dnn_hidden_units", "parallel_dnn_hidden_units"):
        if key in params and (key != "parallel_dnn_hidden_units" or params["model_structure"] == "parallel"):
            widths = params[key]
            assert any(linear_widths[i:i + len(widths)] == widths for i in range(len(linear_widths))), key
    if "num_cross_layers" in params:
        cross = model.crossnet
        layers = cross.cross_net if isinstance(model, DCN) else cross.cross_layers
        assert len(layers) == params["num_cross_layers"]


def test_build_model_names_an_unknown_model(data, tmp_path):
    with pytest.raises(ValueError, match="model='xDeepFM'"):
        build_model(dict(model_kwargs(tmp_path), model="xDeepFM"), data.feature_map)


# The BARS column lists of reference/DATASETS.md (labels and non-feature columns removed).
BARS_FEATURES = {
    "taobaoad_x1": {"btag_his", "cate_his", "brand_his", "userid", "cms_segid", "cms_group_id",
                    "final_gender_code", "age_level", "pvalue_level", "shopping_level", "occupation",
                    "new_user_class_level", "adgroup_id", "cate_id", "campaign_id", "customer", "brand",
                    "price", "pid", "btag", "group_id"},
    "amazonelectronics_x1": {"user_id", "item_id", "cate_id", "item_history", "cate_history"},
    "kuaivideo_x1": {"group_id", "user_id", "item_id", "item_emb", "pos_items", "neg_items",
                     "pos_items_emb", "neg_items_emb"},
}
BARS_LABELS = {"taobaoad_x1": ["clk"], "amazonelectronics_x1": ["label"],
               "kuaivideo_x1": ["is_click", "is_like", "is_follow"]}


def synthetic_bars_csv(dataset_id: str, path: str, n: int = 40) -> None:
    """A few rows in the BARS CSV layout of each dataset (plus KuaiVideo's visual embeddings)."""
    rng = np.random.default_rng(0)

    def ids(hi):
        return rng.integers(1, hi, n)

    def seq(hi, k):
        return ["^".join(map(str, rng.integers(1, hi, rng.integers(0, k + 1)))) for _ in range(n)]

    if dataset_id == "taobaoad_x1":
        cols = {c: ids(6) for c in BARS_FEATURES[dataset_id] - {"group_id", "price", "cate_his", "brand_his", "btag_his"}}
        cols.update(price=rng.random(n), cate_his=seq(6, 5), brand_his=seq(6, 5), btag_his=seq(6, 5), clk=ids(2) - 1)
    elif dataset_id == "amazonelectronics_x1":
        cols = dict(label=ids(2) - 1, user_id=ids(6), item_id=ids(9), cate_id=ids(4),
                    item_history=seq(9, 6), cate_history=seq(4, 6))
    else:
        cols = dict(timestamp=np.arange(n), user_id=ids(6), item_id=ids(9), is_click=ids(2) - 1,
                    is_like=ids(2) - 1, is_follow=ids(2) - 1, pos_items=seq(9, 5), neg_items=seq(9, 5))
        with h5py.File(os.path.join(os.path.dirname(path), "item_visual_emb_dim64.h5"), "w") as f:
            f["key"] = np.array([str(i) for i in range(1, 9)], dtype="S")
            f["value"] = rng.normal(size=(8, 64)).astype(np.float32)
    pl.DataFrame(cols).write_csv(path)


def random_batch(feature_map, size: int = 6) -> dict:
    gen = torch.Generator().manual_seed(0)
    batch = {}
    for name, spec in feature_map.features.items():
        if spec["type"] == "numeric":
            batch[name] = torch.rand(size, generator=gen)
        elif spec["type"] == "meta":
            batch[name] = torch.arange(size)
        elif spec["type"] == "categorical":
            batch[name] = torch.randint(1, spec["vocab_size"] - 1, (size,), generator=gen)
        else:
            seq = torch.randint(1, spec["vocab_size"] - 1, (size, spec["max_len"]), generator=gen)
            length = torch.randint(0, 8, (size, 1), generator=gen)
            batch[name] = seq * (torch.arange(spec["max_len"]) < length)  # post padding
    for label in feature_map.labels:
        batch[label] = torch.randint(0, 2, (size,), generator=gen).float()
    return batch


@pytest.mark.parametrize("dataset_id", DATASETS)
def test_dataset_config_fits_with_fuxictr_and_every_expid_builds_on_it(dataset_id, tmp_path):
    params = load_dataset_config(DATASET_DIR, dataset_id)
    assert {"data_root", "data_format", "train_data", "valid_data", "test_data",
            "min_categr_count", "feature_cols", "label_col"} <= set(params)
    labels = params["label_col"] if isinstance(params["label_col"], list) else [params["label_col"]]
    assert [c["name"] for c in labels] == BARS_LABELS[dataset_id]

    # fit fuxictr's FeatureProcessor on synthetic rows in the BARS layout (fuxictr 2.3.10's
    # read_data predates the installed polars, so the frame is scanned here)
    raw = str(tmp_path / f"{dataset_id}.csv")
    synthetic_bars_csv(dataset_id, raw)
    params["data_root"] = str(tmp_path)
    for col in params["feature_cols"]:
        if "pretrained_emb" in col:
            col["pretrained_emb"] = str(tmp_path / "item_visual_emb_dim64.h5")
    processor = FeatureProcessor(**params)
    schema = {k: v for k, v in processor.dtype_dict.items() if k in pl.read_csv(raw, n_rows=1).columns}
    processor.fit(processor.preprocess(pl.scan_csv(raw, schema_overrides=schema)),
                  min_categr_count=1, rebuild_dataset=True)  # 40 rows: keep every id
    assert set(processor.feature_map.features) == BARS_FEATURES[dataset_id]

    for expid in [e for e in EXPIDS if e.endswith(dataset_id)]:
        exp = load_experiment(expid)
        exp.update(data_root=str(tmp_path), model_root=str(tmp_path / "ckpt"), verbose=0)
        feature_map = FeatureMap(dataset_id, processor.data_dir)
        feature_map.load(os.path.join(processor.data_dir, "feature_map.json"), exp)
        torch.manual_seed(0)
        model = build_model(exp, feature_map)
        model._max_gradient_norm = 10.0
        loss = model.train_step(random_batch(feature_map))
        assert np.isfinite(loss.item()), expid
