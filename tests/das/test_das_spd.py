"""The Snapshot Publishing Database: round trips, atomic publishing, checksums, compatibility."""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
import torch

from exfm_plugin.das.spd import publish as publish_module
from exfm_plugin.das.spd import store as spd_module
from exfm_plugin.das.spd import (FeatureMapMismatch, SnapshotCorrupt, SnapshotExists, SnapshotNotFound,
                                 SnapshotStore)
from exfm_plugin.data.dayfile import read_day_attrs, write_day_file
from exfm_plugin.models import MODEL_REGISTRY
from tiny_data import make_tiny_data, model_kwargs

DCN_KW = dict(dnn_hidden_units=[16, 8], num_cross_layers=2)
MT_KW = dict(target_field="cate_id", sequence_field="cate_his", dnn_hidden_units=[16],
             tower_hidden_units=[8], attention_hidden_units=[8], num_heads=2, pos_emb_dim=4)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_data(str(tmp_path_factory.mktemp("tiny")), num_rows=512)


def trained(name: str, data, tmp_path, steps: int = 4, seed: int = 0, **kw):
    """A model trained a few steps, and the params that rebuild it."""
    torch.manual_seed(seed)
    params = dict(model_kwargs(tmp_path, **kw), model=name)
    model = MODEL_REGISTRY[name](data.feature_map, **params)
    model._max_gradient_norm = 10.0
    batches = list(data.batches(128))
    for step in range(steps):
        model.train_step(batches[step % len(batches)])
    model.eval()
    return model, params


def full_batch(data) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in data.columns.items()}


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def dcn(data, tmp_path):
    return trained("DCN", data, tmp_path, **DCN_KW)


# ----------------------------------------------------------------------------- round trips

def test_publish_and_load_single_task_round_trip(data, dcn, tmp_path):
    model, params = dcn
    # the snapshot must not depend on the training directory: publish from a copy, then remove it
    fmap_dir = tmp_path / "fmap_copy"
    shutil.copytree(data.feature_map.data_dir, fmap_dir)
    store = SnapshotStore(tmp_path / "spd")
    info = store.publish(model, model_params=params, feature_map_dir=str(fmap_dir), trained_through_day=5)
    shutil.rmtree(fmap_dir)

    assert info.model == "DCN" and info.dataset_id == "tiny" and info.trained_through_day == 5
    assert info.labels == ("click",) and not info.multitask and info.outputs == ("fm_pred",)
    snap_dir = tmp_path / "spd" / info.snapshot_id
    manifest = json.loads((snap_dir / "manifest.json").read_text())
    assert manifest["snapshot_id"] == info.snapshot_id and manifest["model"] == "DCN"
    assert manifest["labels"] == ["click"] and manifest["trained_through_day"] == 5
    expected_files = {"weights.pt", "model_params.json", "feature_map/feature_map.json",
                      "feature_map/feature_vocab.json", "feature_map/item_emb.h5"}
    assert set(manifest["files"]) == expected_files
    for rel, entry in manifest["files"].items():
        assert entry == {"sha256": sha256(snap_dir / rel), "size": os.path.getsize(snap_dir / rel)}
    assert sha256(snap_dir / "feature_map/item_emb.h5") == sha256(os.path.join(data.feature_map.data_dir, "item_emb.h5"))
    stored_params = json.loads((snap_dir / "model_params.json").read_text())
    assert stored_params["dnn_hidden_units"] == [16, 8] and stored_params["model"] == "DCN"

    loaded = store.load(info.snapshot_id)
    assert not loaded.model.training
    assert os.path.realpath(loaded.feature_map.data_dir).startswith(os.path.realpath(snap_dir))
    batch = full_batch(data)
    with torch.no_grad():
        expected = model(batch)["y_pred"].numpy().reshape(-1)
    got = loaded.predict_batch(batch)
    assert list(got) == ["fm_pred"]
    assert got["fm_pred"].shape == (data.num_rows,) and got["fm_pred"].dtype == np.float32
    np.testing.assert_array_equal(got["fm_pred"], expected)
    # the trained model is not the fresh initialisation: the weights really came from the file
    fresh = MODEL_REGISTRY["DCN"](data.feature_map, **params)
    fresh.eval()
    with torch.no_grad():
        assert not np.allclose(fresh(batch)["y_pred"].numpy().reshape(-1), expected)


def test_publish_and_load_multitask_round_trip(tmp_path):
    mt = make_tiny_data(str(tmp_path / "tiny_mt"), num_rows=256, multitask=True)
    model, params = trained("MultiTaskDMIN", mt, tmp_path, steps=3, **MT_KW)
    store = SnapshotStore(tmp_path / "spd")
    info = store.publish(model, model_params=params, feature_map_dir=mt.feature_map.data_dir)
    assert info.multitask and info.labels == ("click", "like")
    assert info.outputs == ("fm_pred/click", "fm_pred/like") and info.trained_through_day is None

    loaded = store.load(info.snapshot_id)
    batch = full_batch(mt)
    with torch.no_grad():
        out = model(batch)
    got = loaded.predict_batch(batch)
    assert sorted(got) == ["fm_pred/click", "fm_pred/like"]
    for label in ("click", "like"):
        np.testing.assert_array_equal(got[f"fm_pred/{label}"], out[f"{label}_pred"].numpy().reshape(-1))
    assert not np.allclose(got["fm_pred/click"], got["fm_pred/like"])
    # numpy columns as a day file stores them (narrow ints) give the same answer
    narrow = {k: v.astype(np.int16) if v.dtype.kind == "i" else v for k, v in mt.columns.items()}
    again = loaded.predict_batch(narrow)
    for key in got:
        np.testing.assert_array_equal(again[key], got[key])


def test_predict_batch_names_missing_features(data, dcn, tmp_path):
    model, params = dcn
    store = SnapshotStore(tmp_path / "spd")
    info = store.publish(model, model_params=params, feature_map_dir=data.feature_map.data_dir)
    batch = full_batch(data)
    del batch["price"]
    with pytest.raises(KeyError, match="price"):
        store.load(info.snapshot_id).predict_batch(batch)


def test_publish_rejects_params_that_cannot_rebuild_the_model(data, dcn, tmp_path):
    model, params = dcn
    store = SnapshotStore(tmp_path / "spd")
    with pytest.raises(ValueError, match="DCNv2"):
        store.publish(model, model_params=dict(params, model="DCNv2"), feature_map_dir=data.feature_map.data_dir)
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        store.publish(model, model_params=dict(params, hook=object()), feature_map_dir=data.feature_map.data_dir)
    assert store.list() == [] and os.listdir(store.root) == []


# ----------------------------------------------------------------------------- atomicity

def test_failed_publish_leaves_nothing(data, dcn, tmp_path, monkeypatch):
    model, params = dcn
    store = SnapshotStore(tmp_path / "spd")
    real_write_json = publish_module.write_json

    def fail_on_manifest(path, obj):  # everything else written: fail at the very last file
        if os.path.basename(path) == "manifest.json":
            with open(path, "w") as f:
                f.write('{"snapshot_id": "half')
            raise OSError("disk full")
        real_write_json(path, obj)

    monkeypatch.setattr(publish_module, "write_json", fail_on_manifest)
    with pytest.raises(OSError, match="disk full"):
        store.publish(model, model_params=params, feature_map_dir=data.feature_map.data_dir, snapshot_id="s1")
    assert store.list() == [] and os.listdir(store.root) == []

    monkeypatch.setattr(publish_module, "write_json", real_write_json)

    def fail_in_weights(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(spd_module.torch, "save", fail_in_weights)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        store.publish(model, model_params=params, feature_map_dir=data.feature_map.data_dir, snapshot_id="s1")
    assert store.list() == [] and os.listdir(store.root) == []

    monkeypatch.undo()
    info = store.publish(model, model_params=params, feature_map_dir=data.feature_map.data_dir, snapshot_id="s1")
    assert [s.snapshot_id for s in store.list()] == ["s1"]
    store.verify(info.snapshot_id)


def test_listing_ignores_incomplete_dirs(data, dcn, tmp_path):
    model, params = dcn
    store = SnapshotStore(tmp_path / "spd")
    good = store.publish(model, model_params=params, feature_map_dir=data.feature_map.data_dir)
    # a crashed publisher's temp dir (even one holding a manifest) and a dir without a manifest
    shutil.copytree(good.path, tmp_path / "spd" / f".tmp-zz-{os.getpid()}-abc")
    (tmp_path / "spd" / "29991231T000000.000000Z-dcn-ffff").mkdir()
    (tmp_path / "spd" / "broken").mkdir()
    (tmp_path / "spd" / "broken" / "manifest.json").write_text("{not json")
    (tmp_path / "spd" / "a-file").write_text("x")
    assert [s.snapshot_id for s in store.list()] == [good.snapshot_id]
    assert store.latest().snapshot_id == good.snapshot_id
    with pytest.raises(SnapshotCorrupt, match="manifest.json"):
        store.get("29991231T000000.000000Z-dcn-ffff")
    with pytest.raises(SnapshotNotFound):
        store.get("nope")
    assert SnapshotStore(tmp_path / "empty").latest() is None


def test_existing_id_is_never_overwritten(data, dcn, tmp_path):
    model, params = dcn
    store = SnapshotStore(tmp_path / "spd")
    first = store.publish(model, model_params=params, feature_map_dir=data.feature_map.data_dir, snapshot_id="fixed")
    before = sha256(os.path.join(first.path, "manifest.json"))
    other, _ = trained("DCN", data, tmp_path, seed=7, **DCN_KW)
    with pytest.raises(SnapshotExists, match="fixed"):
        store.publish(other, model_params=params, feature_map_dir=data.feature_map.data_dir, snapshot_id="fixed")
    assert sha256(os.path.join(first.path, "manifest.json")) == before
    assert [n for n in os.listdir(store.root) if n.startswith(".")] == []
    for bad in ("../escape", ".hidden", "a/b", ""):
        with pytest.raises(ValueError, match="snapshot_id"):
            store.publish(model, model_params=params, feature_map_dir=data.feature_map.data_dir, snapshot_id=bad)


def test_generated_ids_sort_by_creation(data, dcn, tmp_path):
    model, params = dcn
    store = SnapshotStore(tmp_path / "spd")
    ids = [store.publish(model, model_params=params, feature_map_dir=data.feature_map.data_dir).snapshot_id
           for _ in range(4)]
    assert len(set(ids)) == 4
    assert sorted(ids) == ids
    assert [s.snapshot_id for s in store.list()] == ids
    assert all("dcn" in i for i in ids)
    created = [s.created_at for s in store.list()]
    assert created == sorted(created)


# ----------------------------------------------------------------------------- corruption

def test_corrupt_byte_in_weights_is_detected(data, dcn, tmp_path):
    model, params = dcn
    store = SnapshotStore(tmp_path / "spd")
    info = store.publish(model, model_params=params, feature_map_dir=data.feature_map.data_dir)
    weights = os.path.join(info.path, "weights.pt")
    good_digest = sha256(weights)
    raw = bytearray(open(weights, "rb").read())
    raw[len(raw) // 2] ^= 0xFF
    open(weights, "wb").write(bytes(raw))
    bad_digest = sha256(weights)
    with pytest.raises(SnapshotCorrupt) as err:
        store.verify(info.snapshot_id)
    assert err.value.file == "weights.pt"
    assert good_digest in str(err.value) and bad_digest in str(err.value) and "weights.pt" in str(err.value)
    assert (err.value.expected, err.value.actual) == (good_digest, bad_digest)
    with pytest.raises(SnapshotCorrupt, match="weights.pt"):
        store.load(info.snapshot_id)
    # listing stays cheap: it does not hash, the snapshot is still listed
    assert [s.snapshot_id for s in store.list()] == [info.snapshot_id]


def test_missing_file_is_detected(data, dcn, tmp_path):
    model, params = dcn
    store = SnapshotStore(tmp_path / "spd")
    info = store.publish(model, model_params=params, feature_map_dir=data.feature_map.data_dir)
    os.remove(os.path.join(info.path, "feature_map", "item_emb.h5"))
    with pytest.raises(SnapshotCorrupt, match="feature_map/item_emb.h5.*missing") as err:
        store.verify(info.snapshot_id)
    assert err.value.actual == "missing"


# ----------------------------------------------------------------------------- compatibility

def _edited_feature_map(src_dir: str, dst_dir, edit) -> str:
    shutil.copytree(src_dir, dst_dir)
    path = os.path.join(dst_dir, "feature_map.json")
    obj = json.load(open(path))
    obj["features"] = [item for item in (edit(dict(i)) for i in obj["features"]) if item]
    json.dump(obj, open(path, "w"))
    return str(dst_dir)


def test_check_compatible_names_every_mismatched_feature(data, dcn, tmp_path):
    model, params = dcn
    store = SnapshotStore(tmp_path / "spd")
    loaded = store.load(store.publish(model, model_params=params, feature_map_dir=data.feature_map.data_dir).snapshot_id)
    loaded.check_compatible(data.feature_map)  # the training map itself
    loaded.check_compatible(data.feature_map.data_dir)

    def edit(item):
        (name, spec), = item.items()
        spec = dict(spec)
        if name == "price":
            return None  # missing in the VM data
        if name == "user_id":
            spec["vocab_size"] += 5
        if name == "cate_his":
            spec["max_len"] = 3
        if name == "item_id":
            spec["type"] = "numeric"
        return {name: spec}

    vm_dir = _edited_feature_map(data.feature_map.data_dir, tmp_path / "vm", edit)
    with pytest.raises(FeatureMapMismatch) as err:
        loaded.check_compatible(vm_dir)
    assert set(err.value.mismatches) == {"price", "user_id", "cate_his", "item_id"}
    for name in ("price", "user_id", "cate_his", "item_id"):
        assert name in str(err.value)
    assert "missing" in err.value.mismatches["price"]
    assert "vocab_size" in err.value.mismatches["user_id"] and "max_len" in err.value.mismatches["cate_his"]

    # same sizes, different token -> id encoding: caught through feature_vocab.json
    vocab_dir = _edited_feature_map(data.feature_map.data_dir, tmp_path / "vm2", lambda i: i)
    vocab = json.load(open(os.path.join(vocab_dir, "feature_vocab.json")))
    vocab["cate_id"] = {k: (v % 6) + 1 if 0 < v <= 6 else v for k, v in vocab["cate_id"].items()}
    json.dump(vocab, open(os.path.join(vocab_dir, "feature_vocab.json"), "w"))
    with pytest.raises(FeatureMapMismatch) as err:
        loaded.check_compatible(vocab_dir)
    assert set(err.value.mismatches) == {"cate_id"}


def test_check_compatible_with_day_files(data, dcn, tmp_path):
    model, params = dcn
    store = SnapshotStore(tmp_path / "spd")
    loaded = store.load(store.publish(model, model_params=params, feature_map_dir=data.feature_map.data_dir).snapshot_id)
    good = tmp_path / "day1.h5"
    write_day_file(good, data.columns, dataset_id="tiny_vm", day=1)
    loaded.check_compatible(str(good))
    loaded.check_compatible(read_day_attrs(good))

    cols = dict(data.columns)
    del cols["price"]
    cols["cate_his"] = cols["cate_his"][:, :4]
    cols["user_id"] = cols["user_id"].astype(np.float32)
    bad = tmp_path / "day2.h5"
    write_day_file(bad, cols, dataset_id="tiny_vm", day=2)
    with pytest.raises(FeatureMapMismatch) as err:
        loaded.check_compatible(read_day_attrs(bad))
    assert set(err.value.mismatches) == {"price", "cate_his", "user_id"}
    assert "max_len 4" in err.value.mismatches["cate_his"]


# ----------------------------------------------------------------------------- delete

def test_delete(data, dcn, tmp_path):
    model, params = dcn
    store = SnapshotStore(tmp_path / "spd")
    a = store.publish(model, model_params=params, feature_map_dir=data.feature_map.data_dir, snapshot_id="a")
    b = store.publish(model, model_params=params, feature_map_dir=data.feature_map.data_dir, snapshot_id="b")
    store.delete("a")
    assert [s.snapshot_id for s in store.list()] == ["b"]
    assert not os.path.exists(a.path) and os.listdir(store.root) == ["b"]
    with pytest.raises(SnapshotNotFound):
        store.get("a")
    with pytest.raises(SnapshotNotFound):
        store.delete("a")
    store.verify(b.snapshot_id)
