"""Using the ExFM student in your own FuxiCTR code, end to end on a tiny synthetic world.

    python -m exfm_plugin.examples.student_in_fuxictr [WORK_DIR] [--size tiny|small|N]   (pip install)
    python examples/student_in_fuxictr.py [WORK_DIR] [--size tiny|small|N]                (a checkout)

1. Data: ``prepare`` (``exfm prep``) writes 8 HDF5 day files and a fuxictr ``feature_map.json``.
2. The FM column: a teacher (DCN) trains on days 1-4 and is published to a snapshot store;
   the Data Augmentation Service (``exfm das run``) predicts day 5 with it and writes
   ``day_5``'s augmented split, the day file plus the ``fm_pred`` column. (``exfm run`` does
   steps 1-3 for every cell of a grid; this file is the by-hand version.)
3. The student: a plain fuxictr model (FM) wrapped in ``ExFMStudent``; fuxictr's own ``fit``
   trains it on the augmented day, ``export_serving_model`` gives back the plain FM.

``logging.basicConfig`` below is what makes fuxictr's ``verbose=1`` lines appear: fuxictr logs
through ``logging`` and prints nothing without a handler.
"""
from __future__ import annotations

import argparse
import json
import logging
import os

import torch
from fuxictr.features import FeatureMap
from fuxictr.pytorch.torch_utils import seed_everything

from data_prep.prepare import prepare
from exfm_plugin import DCN, FM, DistillConfig, ExFMStudent, H5DataLoader, export_serving_model
from exfm_plugin.cli import main as exfm

logging.basicConfig(level=logging.INFO, format="%(asctime)s P%(process)d %(levelname)s %(message)s")
ap = argparse.ArgumentParser()
ap.add_argument("work_dir", nargs="?", default="student_in_fuxictr")
ap.add_argument("--size", default="20000", help="impressions, or tiny|small|medium|full")
args = ap.parse_args()
work = os.path.abspath(args.work_dir)
seed_everything(2019)

# 1. a synthetic TaobaoAd world: day_1.h5 .. day_8.h5 and the feature map
summary = prepare("taobaoad", "synthetic", None, os.path.join(work, "data"),
                  size=int(args.size) if args.size.isdigit() else args.size)
data = str(summary.data_dir)
feature_map = FeatureMap(summary.dataset_id, data)
feature_map.load(os.path.join(data, "feature_map.json"), {})


def day(d: int) -> str:
    return os.path.join(data, f"day_{d}.h5")


common = dict(optimizer="adam", loss="binary_crossentropy", metrics=["AUC", "logloss", "NE", "calibration"],
              model_root=os.path.join(work, "checkpoints"), verbose=1, embedding_dim=16)

# 2. the FM column: train the teacher on days 1-4, publish it, let DAS write day 5 + fm_pred
teacher_params = dict(common, model="DCN", learning_rate=1e-3, dnn_hidden_units=[64, 32], num_cross_layers=2)
teacher = DCN(feature_map, **teacher_params)
teacher.fit(H5DataLoader(feature_map, [day(1), day(2), day(3), day(4)], batch_size=256, shuffle=True, seed=0),
            epochs=1, validation_data=H5DataLoader(feature_map, day(5), split="valid", batch_size=4096))
torch.save(teacher.state_dict(), os.path.join(work, "teacher.pt"))
with open(os.path.join(work, "teacher_params.json"), "w") as f:
    json.dump(teacher_params, f)
snapshots = os.path.join(work, "snapshots")
assert exfm(["das", "publish", "--snapshots", snapshots, "--model-params", os.path.join(work, "teacher_params.json"),
             "--weights", os.path.join(work, "teacher.pt"), "--feature-map-dir", data, "--day", "4",
             "--snapshot-id", "teacher_day4"]) == 0
assert exfm(["das", "run", "--snapshots", snapshots, "--day-files", f"vm={day(5)}",
             "--out", os.path.join(work, "das"), "--no-progress"]) == 0
augmented = os.path.join(work, "das", "5-teacher_day4", "vm.h5")  # <out>/<day>-<snapshot>/<vm>.h5
print(f"augmented day 5: {augmented}")

# 3. the student: your fuxictr model, wrapped; fuxictr's fit; the plain model back for serving
vm = FM(feature_map, learning_rate=1e-2, **common)
student = ExFMStudent(vm, DistillConfig(method="ah_sa", label_scale=1.0, grad_scale=1.0, loss_weight=1.0))
train = H5DataLoader(feature_map, augmented, batch_size=256, shuffle=True, seed=0,
                     extra_columns=["fm_pred"])  # the FM supervision travels in the batch
student.fit(train, epochs=1, validation_data=H5DataLoader(feature_map, day(6), split="valid", batch_size=4096))
serving_model = export_serving_model(student)  # the plain FM: same class, same parameters
metrics = dict(serving_model.evaluate(H5DataLoader(feature_map, day(6), split="test", batch_size=4096)))
print(f"student {json.dumps({k: float(v) for k, v in metrics.items()})}")
