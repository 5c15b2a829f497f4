"""HDF5 day files and H5DataLoader: format, atomicity, FM supervision, streaming, fuxictr fit."""
from __future__ import annotations

import hashlib
import os
import tracemalloc

import h5py
import numpy as np
import pytest
import torch
from fuxictr.pytorch.dataloaders import RankDataLoader

from exfm_plugin.data import (
    SCHEMA_VERSION,
    DayFileError,
    H5DataLoader,
    read_day_attrs,
    read_day_columns,
    write_day_file,
    write_fm_supervision,
)
from exfm_plugin.data import dayfile as dayfile_mod
from tiny_data import SEQ_LEN, model_kwargs


def _sha(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _tiny_day(tiny, rows: slice | np.ndarray | None = None, with_id: bool = True) -> dict[str, np.ndarray]:
    idx = np.arange(tiny.num_rows) if rows is None else np.arange(tiny.num_rows)[rows]
    cols = {k: v[idx] for k, v in tiny.columns.items()}
    if with_id:
        cols["example_id"] = idx.astype(np.int64)
    return cols


# ------------------------------------------------------------------------ format
def test_round_trip_values_dtypes_and_attrs(tmp_path):
    rng = np.random.default_rng(1)
    n = 300
    cols = {
        "small": np.r_[rng.integers(0, 100, n - 1), 100],                 # max 100 -> int8
        "medium": np.r_[rng.integers(0, 200, n - 1), 200],                # 200 > 127 -> int16
        "wide": np.r_[rng.integers(0, 40000, n - 1), 40000],              # 40000 > 32767 -> int32
        "huge": np.r_[rng.integers(0, 10, n - 1), 3_000_000_000],         # > 2^31 -> int64
        "flag": rng.random(n) < 0.5,                                      # bool -> int8
        "price": rng.random(n),                                           # float64 -> float32
        "hist": rng.integers(0, 50000, (n, 7)),                           # sequence: 2-D int32
        "vec": rng.normal(size=(n, 4)),                                   # pretrained vector
    }
    path = tmp_path / "d1.h5"
    write_day_file(path, cols, dataset_id="taobao", day=3, time_range=(100, 200),
                   attrs={"split_note": "file order"})
    out = read_day_columns(path)
    expected_dtypes = {"small": np.int8, "medium": np.int16, "wide": np.int32, "huge": np.int64,
                       "flag": np.int8, "price": np.float32, "hist": np.int32, "vec": np.float32}
    assert list(out) == list(cols)
    for name, dt in expected_dtypes.items():
        assert out[name].dtype == np.dtype(dt), name
        assert out[name].shape == np.shape(cols[name])
    for name in ("small", "medium", "wide", "huge", "flag", "hist"):
        np.testing.assert_array_equal(out[name], cols[name].astype(np.int64))
    np.testing.assert_array_equal(out["price"], cols["price"].astype(np.float32))
    np.testing.assert_array_equal(out["vec"], cols["vec"].astype(np.float32))

    attrs = read_day_attrs(path)
    assert attrs["dataset_id"] == "taobao" and attrs["day"] == 3
    assert attrs["time_range"] == (100, 200)
    assert attrs["num_rows"] == n and attrs["schema_version"] == SCHEMA_VERSION
    assert attrs["split_note"] == "file order"
    assert {c["name"]: (c["dtype"], c["shape"]) for c in attrs["columns"]}["hist"] == ("int32", [n, 7])

    part = read_day_columns(path, ["wide", "hist"], rows=slice(10, 20))
    np.testing.assert_array_equal(part["hist"], cols["hist"][10:20])
    picked = read_day_columns(path, ["small"], rows=np.array([5, 2, 250]))
    np.testing.assert_array_equal(picked["small"], cols["small"][[5, 2, 250]])
    with pytest.raises(DayFileError, match="no column 'nope'"):
        read_day_columns(path, ["nope"])
    assert "time_range" not in read_day_attrs(_write_small(tmp_path / "d2.h5"))


def _write_small(path, value: int = 1, n: int = 10):
    write_day_file(path, {"a": np.full(n, value), "b": np.arange(n, dtype=np.float32)},
                   dataset_id="t", day=1)
    return path


def test_row_count_mismatch_names_the_column_and_counts(tmp_path):
    with pytest.raises(DayFileError, match=r"column 'b' has 9 rows but column 'a' has 10"):
        write_day_file(tmp_path / "x.h5", {"a": np.arange(10), "b": np.arange(9)}, dataset_id="t", day=1)
    assert os.listdir(tmp_path) == []


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    path = _write_small(tmp_path / "day.h5", value=7)
    before = _sha(path)
    # a column that fails conversion after two others were written
    bad = {"a": np.arange(10), "b": np.zeros(10), "s": np.array(["x"] * 10, dtype=object)}
    with pytest.raises(DayFileError, match=r"column 's' has dtype object"):
        write_day_file(path, bad, dataset_id="t", day=1)
    assert os.listdir(tmp_path) == ["day.h5"]
    assert _sha(path) == before
    np.testing.assert_array_equal(read_day_columns(path)["a"], np.full(10, 7))


def test_io_error_midway_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = _write_small(tmp_path / "day.h5", value=7)
    before = _sha(path)
    real, calls = dayfile_mod._create_column, []

    def flaky(f, name, arr, compression):
        calls.append(name)
        if name == "b":  # the second column of every write
            raise OSError("disk full (injected)")
        return real(f, name, arr, compression)

    monkeypatch.setattr(dayfile_mod, "_create_column", flaky)
    with pytest.raises(OSError, match="injected"):
        write_day_file(path, {"a": np.arange(10), "b": np.arange(10)}, dataset_id="t", day=1)
    with pytest.raises(OSError, match="injected"):  # first write of a new file: nothing appears
        write_day_file(tmp_path / "new.h5", {"a": np.arange(10), "b": np.arange(10)}, dataset_id="t", day=1)
    assert calls == ["a", "b", "a", "b"]  # it failed after a column was written
    assert os.listdir(tmp_path) == ["day.h5"]
    assert _sha(path) == before


def test_schema_version_mismatch_and_foreign_file(tmp_path):
    path = _write_small(tmp_path / "day.h5")
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION + 1
    msg = rf"{path}.*schema_version={SCHEMA_VERSION + 1} found, expected {SCHEMA_VERSION}"
    with pytest.raises(DayFileError, match=msg):
        read_day_attrs(path)
    with pytest.raises(DayFileError, match=msg):
        read_day_columns(path)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["a"] = np.arange(3)
    with pytest.raises(DayFileError, match=rf"{foreign}: not an exfm day file.*expected schema_version={SCHEMA_VERSION}"):
        read_day_attrs(foreign)


# ------------------------------------------------------------------------ FM supervision
def test_augmented_split_links_base_columns(tmp_path, monkeypatch, tiny):
    base = tmp_path / "base" / "day5.h5"
    cols = _tiny_day(tiny)
    write_day_file(base, cols, dataset_id="tiny", day=5, attrs={"split_note": "file order"})
    pred = np.random.default_rng(0).random(tiny.num_rows)
    out = tmp_path / "aug" / "snap1" / "day5_fm.h5"
    write_fm_supervision(base, out, pred, snapshot_id="snap-001", attrs={"fm_model": "DMIN"})

    monkeypatch.chdir(tmp_path / "aug")  # relative links must not depend on the cwd
    got = read_day_columns(out)
    assert set(got) == set(cols) | {"fm_pred"}
    for name, values in cols.items():
        np.testing.assert_array_equal(got[name], values, err_msg=name)
    np.testing.assert_array_equal(got["fm_pred"], pred.astype(np.float32))
    assert got["fm_pred"].dtype == np.float32
    attrs = read_day_attrs(out)
    assert attrs["snapshot_id"] == "snap-001" and attrs["day"] == 5 and attrs["base_day"] == 5
    assert attrs["base_dataset_id"] == "tiny" and attrs["num_rows"] == tiny.num_rows
    assert attrs["split_note"] == "file order" and attrs["fm_model"] == "DMIN"
    assert os.path.normpath(os.path.join(os.path.dirname(out), attrs["base_file"])) == str(base)
    with h5py.File(out, "r") as f:
        for name in cols:
            link = f.get(name, getlink=True)
            assert isinstance(link, h5py.ExternalLink) and not os.path.isabs(link.filename)
    assert os.path.getsize(out) < os.path.getsize(base) / 3
    assert os.listdir(out.parent) == ["day5_fm.h5"]


def test_multitask_supervision_and_chained_base(tmp_path, tiny):
    base = tmp_path / "day5.h5"
    write_day_file(base, _tiny_day(tiny), dataset_id="tiny", day=5)
    rng = np.random.default_rng(1)
    preds = {"click": rng.random(tiny.num_rows), "like": rng.random(tiny.num_rows)}
    out = tmp_path / "mt" / "day5_fm.h5"
    write_fm_supervision(base, out, preds, snapshot_id="s2")
    got = read_day_columns(out, ["fm_pred/click", "fm_pred/like", "user_id"])
    np.testing.assert_array_equal(got["fm_pred/like"], preds["like"].astype(np.float32))
    np.testing.assert_array_equal(got["user_id"], tiny.columns["user_id"])
    assert read_day_attrs(out)["fm_tasks"] == ["click", "like"]
    with pytest.raises(DayFileError, match="'fm_pred' is a group"):
        read_day_columns(out, ["fm_pred"])
    # re-augmenting an augmented split links to the real base and replaces fm_pred
    out2 = tmp_path / "other" / "day5_fm2.h5"
    write_fm_supervision(out, out2, preds["click"], snapshot_id="s3")
    got2 = read_day_columns(out2)
    assert "fm_pred/like" not in got2
    np.testing.assert_array_equal(got2["item_id"], tiny.columns["item_id"])
    with h5py.File(out2, "r") as f:
        assert os.path.normpath(os.path.join(out2.parent, f.get("item_id", getlink=True).filename)) == str(base)


@pytest.mark.parametrize("bad_value, pattern", [
    (np.nan, r"value nan at row 17"), (1.5, r"value 1\.5 at row 17"), (-0.1, r"at row 17")])
def test_invalid_fm_pred_refused(tmp_path, bad_value, pattern):
    base = _write_small(tmp_path / "day.h5", n=40)
    pred = np.full(40, 0.3)
    pred[17] = bad_value
    with pytest.raises(DayFileError, match=pattern):
        write_fm_supervision(base, tmp_path / "aug.h5", pred, snapshot_id="s")
    with pytest.raises(DayFileError, match=r"fm_pred\['like'\].*" + pattern):
        write_fm_supervision(base, tmp_path / "aug.h5", {"click": np.full(40, 0.3), "like": pred},
                             snapshot_id="s")
    with pytest.raises(DayFileError, match="39 predictions but base day file .* has 40 rows"):
        write_fm_supervision(base, tmp_path / "aug.h5", np.full(39, 0.3), snapshot_id="s")
    assert sorted(os.listdir(tmp_path)) == ["day.h5"]


# ------------------------------------------------------------------------ loader
@pytest.fixture
def day_files(tmp_path, tiny):
    """Two train days (1000 + 548 rows), one valid, one test day of the tiny data."""
    spans = {"d1": slice(0, 1000), "d2": slice(1000, 1548), "valid": slice(1548, 1800), "test": slice(1800, 2048)}
    paths = {}
    for i, (name, span) in enumerate(spans.items()):
        paths[name] = str(tmp_path / "days" / f"{name}.h5")
        write_day_file(paths[name], _tiny_day(tiny, span), dataset_id="tiny", day=i + 1)
    return paths


def _epoch(loader, check_alignment_with=None) -> np.ndarray:
    ids = []
    for batch in loader:
        ex = batch["example_id"].numpy()
        if check_alignment_with is not None:
            for name, values in check_alignment_with.items():
                np.testing.assert_array_equal(batch[name].numpy(), values[ex], err_msg=name)
        ids.append(ex)
    return np.concatenate(ids)


def test_loader_every_row_once_aligned_and_typed(day_files, tiny):
    loader = H5DataLoader(tiny.feature_map, day_files["d1"], batch_size=64, shuffle=True, seed=3,
                          chunk_rows=128, extra_columns=["example_id"])
    sizes, first = [], None
    for batch in loader:
        sizes.append(len(batch["example_id"]))
        first = first or batch
    assert sizes == [64] * 15 + [40] and len(loader) == 16 and loader.num_samples == 1000
    assert loader.num_blocks == 8
    for name in ("user_id", "item_id", "cate_id", "item_emb", "cate_his", "example_id"):
        assert first[name].dtype == torch.int64, name
    assert first["price"].dtype == torch.float32 and first["click"].dtype == torch.float32
    assert first["cate_his"].shape == (64, SEQ_LEN)
    ids = _epoch(loader, check_alignment_with=tiny.columns)
    np.testing.assert_array_equal(np.sort(ids), np.arange(1000))
    assert not np.array_equal(ids, np.arange(1000))


def test_loader_shuffle_is_seeded_per_epoch(day_files, tiny):
    def make(seed, **kw):
        return H5DataLoader(tiny.feature_map, [day_files["d1"], day_files["d2"]], batch_size=100,
                            shuffle=True, seed=seed, chunk_rows=256, extra_columns=["example_id"], **kw)
    a, b, c = make(7), make(7), make(8)
    a0, a1 = _epoch(a), _epoch(a)
    np.testing.assert_array_equal(a0, _epoch(b))
    assert not np.array_equal(a0, a1)
    assert not np.array_equal(a0, _epoch(c))
    for ids in (a0, a1):
        np.testing.assert_array_equal(np.sort(ids), np.arange(1548))
    a.set_epoch(1)
    np.testing.assert_array_equal(_epoch(a), a1)
    # chunk order is shuffled across files: some epoch starts with a chunk of day 2
    first_rows = []
    for epoch in range(8):
        a.set_epoch(epoch)
        first_rows.append(next(iter(a))["example_id"][0].item())
    assert max(first_rows) >= 1000 and min(first_rows) < 1000
    # seed=None: drawn from numpy's global generator (fuxictr's seed_everything)
    np.random.seed(11)
    d = make(None)
    np.random.seed(11)
    np.testing.assert_array_equal(_epoch(d), _epoch(make(None)))


def test_no_shuffle_outside_train_and_drop_last(day_files, tiny):
    files = [day_files["d1"], day_files["d2"]]
    for split in ("valid", "test"):
        loader = H5DataLoader(tiny.feature_map, files, split=split, batch_size=100, shuffle=True,
                              seed=1, chunk_rows=64, extra_columns=["example_id"])
        assert not loader.shuffle
        np.testing.assert_array_equal(_epoch(loader, check_alignment_with=tiny.columns), np.arange(1548))
    dropped = H5DataLoader(tiny.feature_map, files, batch_size=100, shuffle=True, seed=1, chunk_rows=64,
                           extra_columns=["example_id"], drop_last=True)
    assert len(dropped) == 15 and sum(1 for _ in dropped) == 15
    assert len(_epoch(dropped)) == 1500


def test_loader_reads_in_bounded_chunks(day_files, tiny, monkeypatch):
    reads = []
    real_getitem = h5py.Dataset.__getitem__

    def counting(self, key, *args, **kwargs):
        out = real_getitem(self, key, *args, **kwargs)
        if self.name == "/user_id":
            reads.append(len(out))
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", counting)
    loader = H5DataLoader(tiny.feature_map, [day_files["d1"], day_files["d2"]], batch_size=48,
                          shuffle=True, seed=0, chunk_rows=100)
    n = sum(len(b["click"]) for b in loader)
    assert n == 1548
    assert max(reads) <= 100 and sum(reads) == 1548  # every row read once, never more than a chunk
    assert loader.peak_rows_in_memory <= 100 + 48


def test_loader_memory_stays_below_the_data_size(tmp_path, tiny):
    n, width = 40_000, 64
    rng = np.random.default_rng(0)
    cols = {"user_id": rng.integers(1, 30, n), "item_id": rng.integers(1, 40, n),
            "cate_id": rng.integers(1, 6, n), "price": rng.random(n, dtype=np.float32),
            "cate_his": rng.integers(0, 40000, (n, SEQ_LEN)), "item_emb": rng.integers(1, 40, n),
            "click": np.zeros(n, np.float32), "pad": rng.integers(0, 40000, (n, width))}
    path = tmp_path / "big.h5"
    write_day_file(path, cols, dataset_id="tiny", day=1)
    loader = H5DataLoader(tiny.feature_map, path, batch_size=256, shuffle=True, seed=0,
                          chunk_rows=1024, extra_columns=["pad"])
    batch_bytes = 256 * (width + SEQ_LEN + 7) * 8
    full_bytes = n * (width + SEQ_LEN + 7) * 8  # what the batches of one epoch add up to
    tracemalloc.start()
    try:
        for _ in loader:
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * (width + SEQ_LEN + 7) * 8 + 4 * batch_bytes < full_bytes / 10


def test_loader_errors_name_file_and_column(tmp_path, tiny):
    cols = _tiny_day(tiny, slice(0, 100))
    del cols["cate_his"]
    path = str(tmp_path / "nohist.h5")
    write_day_file(path, cols, dataset_id="tiny", day=1)
    with pytest.raises(DayFileError, match=rf"{path}: missing column for feature 'cate_his'"):
        H5DataLoader(tiny.feature_map, path)
    good = str(tmp_path / "good.h5")
    write_day_file(good, _tiny_day(tiny, slice(0, 100), with_id=False), dataset_id="tiny", day=1)
    with pytest.raises(DayFileError, match=rf"{good}: requested extra column 'fm_pred' is missing"):
        H5DataLoader(tiny.feature_map, good, extra_columns=["fm_pred"])
    short = _tiny_day(tiny, slice(0, 100))
    short["cate_his"] = short["cate_his"][:, :4]
    bad_len = str(tmp_path / "short.h5")
    write_day_file(bad_len, short, dataset_id="tiny", day=1)
    with pytest.raises(DayFileError, match=rf"{bad_len}: sequence column 'cate_his'.*max_len={SEQ_LEN}"):
        H5DataLoader(tiny.feature_map, bad_len)
    unlabelled = _tiny_day(tiny, slice(0, 100))
    del unlabelled["click"]
    nolabel = str(tmp_path / "nolabel.h5")
    write_day_file(nolabel, unlabelled, dataset_id="tiny", day=1)
    with pytest.raises(DayFileError, match=rf"{nolabel}: missing label column\(s\) \['click'\]"):
        H5DataLoader(tiny.feature_map, nolabel)
    batch = next(iter(H5DataLoader(tiny.feature_map, nolabel, batch_size=10, allow_missing_labels=True)))
    assert "click" not in batch and batch["user_id"].shape == (10,)


def test_loader_reads_fm_supervision(tmp_path, day_files, tiny):
    pred = np.random.default_rng(2).random(1000)
    aug = tmp_path / "aug" / "d1_fm.h5"
    write_fm_supervision(day_files["d1"], aug, {"click": pred}, snapshot_id="s")
    loader = H5DataLoader(tiny.feature_map, aug, batch_size=128, shuffle=True, seed=0, chunk_rows=256,
                          extra_columns=["fm_pred/click", "example_id"])
    for batch in loader:
        assert batch["fm_pred/click"].dtype == torch.float32
        np.testing.assert_allclose(batch["fm_pred/click"].numpy(),
                                   pred[batch["example_id"].numpy()].astype(np.float32))


def test_device_mode_same_rows_and_seeded(day_files, tiny):
    files = [day_files["d1"], day_files["d2"]]
    host = H5DataLoader(tiny.feature_map, files, batch_size=100, shuffle=True, seed=5, chunk_rows=128,
                        extra_columns=["example_id"])
    dev = H5DataLoader(tiny.feature_map, files, batch_size=100, shuffle=True, seed=5, chunk_rows=128,
                       extra_columns=["example_id"], device="cpu")
    assert len(dev) == len(host) == 16
    sizes = []
    ids = []
    for batch in dev:
        sizes.append(len(batch["example_id"]))
        assert batch["user_id"].dtype == torch.int64 and batch["price"].dtype == torch.float32
        assert batch["cate_his"].device.type == "cpu"
        ex = batch["example_id"].numpy()
        for name, values in tiny.columns.items():
            np.testing.assert_array_equal(batch[name].numpy(), values[ex], err_msg=name)
        ids.append(ex)
    d0 = np.concatenate(ids)
    assert sizes == [100] * 15 + [48]
    np.testing.assert_array_equal(np.sort(d0), np.sort(_epoch(host)))
    d1 = _epoch(dev)
    assert not np.array_equal(d0, d1)
    dev.set_epoch(0)
    np.testing.assert_array_equal(_epoch(dev), d0)
    test = H5DataLoader(tiny.feature_map, files, split="test", batch_size=100, shuffle=True,
                        extra_columns=["example_id"], device="cpu")
    np.testing.assert_array_equal(_epoch(test), np.arange(1548))


def test_rank_data_loader_and_fuxictr_fit(tmp_path, day_files, tiny):
    from exfm_plugin.models import FM

    torch.manual_seed(0)
    train_gen, valid_gen, test_gen = RankDataLoader(
        tiny.feature_map, train_data=[day_files["d1"], day_files["d2"]], valid_data=day_files["valid"],
        test_data=day_files["test"], data_loader=H5DataLoader, batch_size=64, shuffle=True, seed=0,
        chunk_rows=512)
    assert isinstance(train_gen, H5DataLoader) and train_gen.shuffle
    assert not valid_gen.shuffle and not test_gen.shuffle
    assert (train_gen.num_samples, valid_gen.num_samples, test_gen.num_samples) == (1548, 252, 248)
    model = FM(tiny.feature_map, **model_kwargs(tmp_path))
    before = [p.detach().clone() for p in model.parameters()]
    model.fit(train_gen, epochs=1, validation_data=valid_gen)
    assert model._total_steps == len(train_gen) == 25
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    logs = model.evaluate(test_gen)
    assert set(logs) >= {"AUC", "logloss"}
    # the test split streams in file order: predictions line up with the file's labels
    from sklearn.metrics import roc_auc_score
    labels = read_day_columns(day_files["test"], ["click"])["click"]
    np.testing.assert_array_equal(labels, tiny.columns["click"][1800:])
    assert logs["AUC"] == pytest.approx(roc_auc_score(labels, model.predict(test_gen)), abs=1e-9)


def test_empty_day_round_trip_and_loader(tmp_path, tiny):
    cols = {k: v[:0] for k, v in _tiny_day(tiny).items()}
    path = tmp_path / "empty.h5"
    write_day_file(path, cols, dataset_id="tiny", day=2)
    out = read_day_columns(path)
    assert read_day_attrs(path)["num_rows"] == 0 and out["cate_his"].shape == (0, SEQ_LEN)
    loader = H5DataLoader(tiny.feature_map, path, batch_size=8, shuffle=True, seed=0)
    assert len(loader) == 0 and list(loader) == []
