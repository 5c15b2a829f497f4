"""The Ray Data engine gives the in-process engine's predictions, row for row, whatever order
Ray returns the batches in, with 1 and 2 actors; and it drops into the augmenter unchanged.

Ray starts once for the module (2 CPUs, no dashboard): its start-up is the slow part.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray")

from exfm_plugin.das.augment import AugmentJob, VMSpec, run_worker  # noqa: E402
from exfm_plugin.das.augment.engines import InProcessEngine, RayEngine, rejoin_by_id  # noqa: E402
from exfm_plugin.das.metastore import open_metastore  # noqa: E402
from exfm_plugin.das.spd import SnapshotStore  # noqa: E402
from exfm_plugin.data.dayfile import read_day_columns, write_day_file  # noqa: E402
from exfm_plugin.models import MODEL_REGISTRY  # noqa: E402
from tiny_data import make_tiny_data, model_kwargs  # noqa: E402

N_ROWS = 700


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def fm(tmp_path_factory):
    root = tmp_path_factory.mktemp("das_ray")
    tiny = make_tiny_data(str(root / "tiny"), num_rows=N_ROWS, seed=5)
    torch.manual_seed(0)
    params = dict(model_kwargs(root), model="DCN", dnn_hidden_units=[16], num_cross_layers=2)
    model = MODEL_REGISTRY["DCN"](tiny.feature_map, **params)
    model._max_gradient_norm = 10.0
    for batch in list(tiny.batches(128))[:4]:
        model.train_step(batch)
    spd = SnapshotStore(str(root / "spd"))
    info = spd.publish(model, model_params=params, feature_map_dir=str(root / "tiny"))
    # rows in a shuffled order with sparse ids: the engines must keep the input's order
    order = np.random.default_rng(2).permutation(N_ROWS)
    columns = {k: v[order] for k, v in tiny.columns.items() if k != "click"}
    columns["example_id"] = order.astype(np.int64) * 3 + 11
    return {"root": root, "spd": spd, "info": info, "loaded": spd.load(info.snapshot_id),
            "columns": columns, "tiny": tiny}


def test_rejoin_by_id_restores_input_order_and_catches_lost_rows():
    ids = np.array([40, 10, 30, 20])
    got = rejoin_by_id(ids, np.array([20, 40, 10, 30]), {"p": np.array([0.2, 0.4, 0.1, 0.3], np.float32)})
    np.testing.assert_array_equal(got["example_id"], ids)
    np.testing.assert_allclose(got["p"], [0.4, 0.1, 0.3, 0.2])
    with pytest.raises(RuntimeError, match="20 more than once"):
        rejoin_by_id(ids, np.array([20, 40, 10, 20]), {"p": np.zeros(4, np.float32)})
    with pytest.raises(RuntimeError, match="99"):
        rejoin_by_id(ids, np.array([20, 40, 10, 99]), {"p": np.zeros(4, np.float32)})
    with pytest.raises(RuntimeError, match="3 rows for 4"):
        rejoin_by_id(ids, np.array([20, 40, 10]), {"p": np.zeros(3, np.float32)})


@pytest.mark.parametrize("workers", [1, 2])
def test_ray_engine_equals_in_process_engine(fm, ray_session, workers):
    cols = fm["columns"]
    expected = InProcessEngine(fm["loaded"], batch_size=64).predict(cols)
    engine = RayEngine(fm["spd"].root, fm["info"].snapshot_id, num_workers=workers, batch_size=64)
    got = engine.predict(cols)
    engine.close()  # Ray was started by the fixture: close leaves it running
    assert ray.is_initialized()
    assert set(got) == set(expected) == {"example_id", "fm_pred"}
    np.testing.assert_array_equal(got["example_id"], cols["example_id"])
    np.testing.assert_allclose(got["fm_pred"], expected["fm_pred"], rtol=0, atol=1e-6)
    assert got["fm_pred"].std() > 0  # not a constant the two engines could agree on by accident


def test_augmenter_with_ray_engine_writes_the_in_process_splits(fm, ray_session, tmp_path):
    cols = dict(fm["columns"], click=fm["tiny"].columns["click"][(fm["columns"]["example_id"] - 11) // 3])
    files = {}
    for name, sl in {"a": slice(0, 450), "b": slice(300, N_ROWS)}.items():
        files[name] = str(tmp_path / f"{name}.h5")
        write_day_file(files[name], {k: v[sl] for k, v in cols.items()}, dataset_id="tiny", day=2)
    vms = [VMSpec(n, p) for n, p in files.items()]
    sid = fm["info"].snapshot_id
    outs = {}
    for kind in ("inproc", "ray"):
        job = AugmentJob.from_day_files(vms, sid, str(tmp_path / kind), shard_rows=400)
        engine = (None if kind == "inproc" else
                  (lambda _loaded: RayEngine(fm["spd"].root, sid, num_workers=1, batch_size=100)))
        with open_metastore(f"sqlite://{tmp_path}/{kind}.db") as store:
            report = run_worker(job, store, kind, 30, loaded=fm["loaded"], engine=engine, progress=False)
        assert report.complete and len(report.shards_done) == 2
        outs[kind] = job
    for vm in files:
        a = read_day_columns(outs["inproc"].vm_output(vm), ["example_id", "fm_pred"])
        b = read_day_columns(outs["ray"].vm_output(vm), ["example_id", "fm_pred"])
        np.testing.assert_array_equal(a["example_id"], b["example_id"])
        np.testing.assert_allclose(a["fm_pred"], b["fm_pred"], rtol=0, atol=1e-6)
    assert os.path.exists(os.path.join(outs["ray"].job_dir, "manifest.json"))
