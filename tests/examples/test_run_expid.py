"""examples/run_expid.py runs an ExFM teacher -> DAS -> student chain from the shipped FuxiCTR
config folder alone (fuxictr's load_config, RankDataLoader with data_format h5), on tiny
synthetic data; the pieces are checked against models rebuilt independently from the same YAML."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from fuxictr.features import FeatureMap
from fuxictr.pytorch.dataloaders import RankDataLoader
from fuxictr.utils import load_config
from sklearn.metrics import roc_auc_score

from exfm_plugin import H5DataLoader
from exfm_plugin.cli import main
from exfm_plugin.config import build_model
from exfm_plugin.data import DayFileError, read_day_columns
from exfm_plugin.resources import config_dir

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = str(config_dir())
STUDENT, TEACHER = "ExFMStudent_FM_taobaoad_synthetic", "DCN_taobaoad_synthetic"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run_expid")
    prep = subprocess.run([sys.executable, "-m", "exfm_plugin.cli", "prep", "--dataset", "taobaoad", "--source",
                           "synthetic", "--size", "tiny", "--out", "data"], cwd=tmp, capture_output=True, text=True)
    assert prep.returncode == 0, prep.stderr[-2000:]
    out = subprocess.run([sys.executable, os.path.join(REPO, "examples", "run_expid.py"), "--expid", STUDENT],
                         cwd=tmp, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return tmp, out.stderr + out.stdout


def _model(tmp, expid, **overrides):
    cwd = os.getcwd()
    os.chdir(tmp)  # the config's paths are relative to the working directory, as in FuxiCTR
    try:
        params = dict(load_config(CONFIG, expid), gpu=-1, model_root=str(tmp / "rebuilt"), **overrides)
        data_dir = os.path.join(params["data_root"], params["dataset_id"])
        fmap = FeatureMap(params["dataset_id"], data_dir)
        fmap.load(os.path.join(data_dir, "feature_map.json"), params)
        return build_model(params, fmap), fmap, params
    finally:
        os.chdir(cwd)


def test_das_labels_the_students_day_with_the_published_teacher(run):
    tmp, log = run
    teacher, fmap, params = _model(tmp, TEACHER)
    teacher.load_weights(str(tmp / "checkpoints" / "taobaoad_synthetic" / f"{TEACHER}.model"))
    day5 = str(tmp / "data" / "taobaoad_synthetic" / "day_5.h5")
    expected = teacher.predict(H5DataLoader(fmap, day5, split="test", batch_size=512))
    augmented = re.search(r"DAS: \S+ labelled by \S+ -> (\S+\.h5)", log).group(1)
    got = read_day_columns(augmented, ["fm_pred"])["fm_pred"]
    np.testing.assert_allclose(got.reshape(-1), expected.reshape(-1), rtol=1e-5, atol=1e-6)
    manifests = [os.path.join(d, "manifest.json") for d in (tmp / "spd").glob("*") if d.is_dir()]
    with open(next(m for m in manifests if os.path.exists(m))) as f:
        assert json.load(f)["trained_through_day"] == 4  # the teacher's config says so


def test_the_students_serving_checkpoint_is_a_plain_vm_with_the_logged_test_auc(run):
    tmp, log = run
    vm, fmap, params = _model(tmp, STUDENT, model="FM")  # the same YAML, as the bare VM it names
    state = torch.load(tmp / "checkpoints" / "taobaoad_synthetic" / f"{STUDENT}.serving.model")
    assert set(state) == set(vm.state_dict())  # no distillation head, no adapter
    vm.load_state_dict(state)
    day6 = str(tmp / "data" / "taobaoad_synthetic" / "day_6.h5")
    pred = vm.predict(H5DataLoader(fmap, day6, split="test", batch_size=512))
    logged = float(re.search(r"\[Test\] .*?\bAUC: ([0-9.]+)", log).group(1))
    assert roc_auc_score(read_day_columns(day6, ["clk"])["clk"], pred) == pytest.approx(logged, abs=1e-6)


def test_rank_data_loader_requests_the_fm_column_for_training_only(run):
    tmp, _ = run
    _, fmap, params = _model(tmp, STUDENT)
    day6 = str(tmp / "data" / "taobaoad_synthetic" / "day_6.h5")  # no fm_pred in it
    test_gen = RankDataLoader(fmap, stage="test", **dict(params, test_data=day6), data_loader=H5DataLoader)
    assert "fm_pred" not in next(iter(test_gen))
    with pytest.raises(DayFileError, match="fm_pred"):  # a training split must carry it
        RankDataLoader(fmap, stage="train", **dict(params, train_data=day6, valid_data=None),
                       data_loader=H5DataLoader)


def test_das_publish_reads_base_from_another_file_of_the_config_folder(run, capsys):
    """`--model-params <folder>/model_config/ExFM.yaml --expid` once failed with KeyError
    'verbose': the Base block lives in Base.yaml."""
    tmp, _ = run
    rc = main(["das", "publish", "--snapshots", str(tmp / "spd_cli"),
               "--model-params", os.path.join(CONFIG, "model_config", "ExFM.yaml"), "--expid", TEACHER,
               "--weights", str(tmp / "checkpoints" / "taobaoad_synthetic" / f"{TEACHER}.model"),
               "--feature-map-dir", str(tmp / "data" / "taobaoad_synthetic"), "--day", "4"])
    assert rc == 0, capsys.readouterr().err
    snapshot_id = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["snapshot_id"]
    with open(tmp / "spd_cli" / snapshot_id / "model_params.json") as f:
        published = json.load(f)
    assert published["verbose"] == 1 and published["early_stop_patience"] == 2  # from Base.yaml
