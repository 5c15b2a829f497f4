"""FuxiCTR's run_expid.py, for ExFM: an expid of a FuxiCTR config folder, trained from YAML alone.

    exfm prep --dataset taobaoad --source synthetic --size small --out ./data
    python -m exfm_plugin.examples.run_expid --expid ExFMStudent_FM_taobaoad_synthetic [--config DIR] [--gpu -1]
    (in a checkout also: python examples/run_expid.py ...)

Any exfm model expid runs as in FuxiCTR (feature map, ``model_class(feature_map, **params)``,
``RankDataLoader``, ``fit``, ``evaluate``). An ``ExFMStudent`` expid also names its teacher
(``teacher_expid``): the teacher is trained the same way, published to the snapshot store
(``snapshots``), DAS labels the student's ``train_data`` with it (``augmented_root``), and the
student trains on the labelled day; its serving model (no heads, no adapter) is saved as a plain
FuxiCTR checkpoint. ``data_format: h5`` selects exfm's HDF5 loader through RankDataLoader.
"""
import argparse
import glob
import logging
import os

from fuxictr.features import FeatureMap
from fuxictr.pytorch.dataloaders import RankDataLoader
from fuxictr.pytorch.torch_utils import seed_everything
from fuxictr.utils import load_config, print_to_json, print_to_list, set_logger

import exfm_plugin
from exfm_plugin import H5DataLoader, export_serving_model
from exfm_plugin.resources import config_dir


def data_loader_params(params: dict) -> dict:
    """RankDataLoader's loader choice for ``data_format``: exfm's day files are HDF5."""
    return {"data_loader": H5DataLoader} if params.get("data_format") == "h5" else {}


def train_and_test(params: dict):
    """FuxiCTR's run_expid body: feature map, model, loaders, fit, evaluate on valid and test."""
    data_dir = os.path.join(params["data_root"], params["dataset_id"])
    feature_map = FeatureMap(params["dataset_id"], data_dir)
    feature_map.load(os.path.join(data_dir, "feature_map.json"), params)
    logging.info("Feature specs: " + print_to_json(feature_map.features))
    model_class = getattr(exfm_plugin, params["model"])
    model = model_class(feature_map, **params)
    model.count_parameters()
    loaders = data_loader_params(params)
    train_gen, valid_gen = RankDataLoader(feature_map, stage="train", **params, **loaders)
    model.fit(train_gen, validation_data=valid_gen, **params)
    logging.info("****** Validation evaluation ******")
    valid_result = model.evaluate(valid_gen)
    logging.info("******** Test evaluation ********")
    test_gen = RankDataLoader(feature_map, stage="test", **params, **loaders)
    test_result = model.evaluate(test_gen) if test_gen else {}
    return model, data_dir, valid_result, test_result


def publish(teacher, params: dict, data_dir: str) -> str:
    """The teacher as a new snapshot of the SPD (what ``exfm das publish`` does)."""
    from exfm_plugin.das.spd.publish import jsonable
    from exfm_plugin.das.spd import SnapshotStore

    model_params = jsonable({k: v for k, v in params.items() if k not in ("gpu", "data_loader")}, "")
    info = SnapshotStore(params["snapshots"]).publish(
        teacher, model_params=model_params, feature_map_dir=data_dir,
        trained_through_day=params.get("trained_through_day"))
    logging.info(f"published teacher {params['model_id']} as snapshot {info.snapshot_id} in {params['snapshots']}")
    return info.snapshot_id


def augment(params: dict, snapshot_id: str) -> list[str]:
    """DAS: the student's train days labelled by the snapshot (stage 1 predicts each row once,
    stage 2 writes the VM's split: ``fm_pred`` + links to the day file)."""
    from exfm_plugin.das.augment import AugmentJob, VMSpec, run_worker
    from exfm_plugin.das.metastore import open_metastore
    from exfm_plugin.das.spd import SnapshotStore

    days = params["train_data"]
    days = sorted(glob.glob(days)) if isinstance(days, str) else list(days)
    out = []
    with open_metastore(f"sqlite:///{os.path.abspath(params['snapshots'])}/das.db") as store:
        for day_file in days:
            job = AugmentJob.from_day_files([VMSpec("vm", day_file, None)], snapshot_id, params["augmented_root"])
            report = run_worker(job, store, owner=f"run_expid-{os.getpid()}",
                                snapshots=SnapshotStore(params["snapshots"]), progress=False)
            out.append(report.outputs["vm"])
            logging.info(f"DAS: {day_file} labelled by {snapshot_id} -> {out[-1]}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(config_dir()), help="FuxiCTR config folder (default: exfm's)")
    ap.add_argument("--expid", default="ExFMStudent_FM_taobaoad_synthetic", help="experiment id")
    ap.add_argument("--gpu", type=int, default=-1, help="GPU index, -1 for CPU")
    args = ap.parse_args()

    params = load_config(args.config, args.expid)
    params["gpu"] = args.gpu
    set_logger(params)
    logging.info("Params: " + print_to_json(params))
    seed_everything(seed=params["seed"])

    if params["model"] == "ExFMStudent":
        teacher_params = load_config(args.config, params["teacher_expid"])
        teacher_params.update(gpu=args.gpu, snapshots=params["snapshots"])
        logging.info(f"****** Teacher {params['teacher_expid']} ******")
        teacher, data_dir, _, teacher_test = train_and_test(teacher_params)
        logging.info("[Teacher] " + print_to_list(teacher_test))
        snapshot_id = publish(teacher, teacher_params, data_dir)
        params["train_data"] = augment(params, snapshot_id)

    logging.info(f"****** {args.expid} ******")
    model, _, valid_result, test_result = train_and_test(params)
    if params["model"] == "ExFMStudent":  # serve the VM alone: same parameters and cost as `none`
        serving = export_serving_model(model)
        path = os.path.join(os.path.dirname(model.checkpoint), f"{args.expid}.serving.model")
        serving.save_weights(path)
        logging.info(f"serving model (a plain {params['vm_model']}) saved to {path}")
    logging.info("[Valid] " + print_to_list(valid_result))
    logging.info("[Test] " + print_to_list(test_result))


if __name__ == "__main__":
    main()
