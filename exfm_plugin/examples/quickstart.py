"""ExFM in 40 lines: a DCN teacher (FM) trained on days 1-4 labels day 5; an FM student (VM)
trains on day 5 with each method and is tested on day 6. Synthetic TaobaoAd, no downloads.

    python -m exfm_plugin.examples.quickstart [WORK_DIR] [--size N|tiny|small]   (pip install)
    python examples/quickstart.py [WORK_DIR] [--size N|tiny|small]                (a checkout)

The default, 50,000 impressions (about 6,000 a day), is about the smallest at which the teacher
learns (test AUC about 0.65; at `tiny`, 10,000, it is noise: 0.49); a minute or two on a CPU.
"""
import argparse
import os

from fuxictr.features import FeatureMap
from fuxictr.pytorch.torch_utils import seed_everything

from data_prep.prepare import prepare
from exfm_plugin import DCN, FM, DistillConfig, ExFMStudent, H5DataLoader, export_serving_model
from exfm_plugin.data import write_fm_supervision

ap = argparse.ArgumentParser()
ap.add_argument("work_dir", nargs="?", default="quickstart")
ap.add_argument("--size", default="50000", help="a number of impressions, or tiny|small|medium|full")
args = ap.parse_args()
size = int(args.size) if args.size.isdigit() else args.size
seed_everything(2019)  # the models' initial weights; the data's seed is prepare's

summary = prepare("taobaoad", "synthetic", None, os.path.join(args.work_dir, "data"), size=size)
data = str(summary.data_dir)
fmap = FeatureMap(summary.dataset_id, data)
fmap.load(os.path.join(data, "feature_map.json"), {})
common = dict(optimizer="adam", loss="binary_crossentropy", metrics=["AUC", "logloss", "NE", "calibration"],
              model_root=os.path.join(args.work_dir, "checkpoints"), verbose=0, embedding_dim=16)


def day(d):
    return os.path.join(data, f"day_{d}.h5")


def loader(path, split="train", **kw):
    return H5DataLoader(fmap, path, split=split, batch_size=256 if split == "train" else 4096,
                        shuffle=split == "train", seed=0, **kw)


# 1. the teacher trains on days 1..4; its predictions for day 5 become the FM supervision
teacher = DCN(fmap, learning_rate=1e-3, dnn_hidden_units=[128, 64], num_cross_layers=2, **common)
teacher.fit(loader([day(1), day(2), day(3), day(4)]), epochs=1, validation_data=loader(day(5), "valid"))
write_fm_supervision(day(5), os.path.join(data, "day_5.fm.h5"),
                     teacher.predict(loader(day(5), "test")).astype("float32"), snapshot_id="quickstart")
print(f"teacher  {dict(teacher.evaluate(loader(day(6), 'test')))}")

# 2. the student trains on day 5 with each method and is tested on day 6 (serving head only)
for method in ("none", "kd", "ah", "ah_sa"):
    vm = FM(fmap, learning_rate=1e-2, **common)
    student = ExFMStudent(vm, DistillConfig(method=method))
    student.fit(loader(os.path.join(data, "day_5.fm.h5"), extra_columns=["fm_pred"]), epochs=1,
                validation_data=loader(day(6), "valid"))
    serving_model = export_serving_model(student)  # a plain FM: no heads, no adapter
    print(f"{method:8s} {dict(serving_model.evaluate(loader(day(6), 'test')))}")
