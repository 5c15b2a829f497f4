"""Readers of the real dataset formats into one canonical polars frame per dataset.

``read(dataset, source, input_dir)`` dispatches to the dataset's module:

==========  =======================================  ==========================================
dataset     ``raw``                                  ``bars``
==========  =======================================  ==========================================
taobaoad    raw_sample / ad_feature / user_profile   TaobaoAd_x1 train.csv, test.csv
            (+ behavior_log) csv files, or
            Tianchi's ``*.csv.tar.gz`` as shipped
amazon      reviews_Electronics_5.json(.gz) +        AmazonElectronics_x1 train.csv, test.csv
            meta_Electronics.json(.gz)
kuaivideo   (BARS is the only public form: same as   KuaiVideo_x1 train.csv, test.csv +
            ``bars``)                                item_visual_emb_dim64.h5
==========  =======================================  ==========================================
"""
from __future__ import annotations

from pathlib import Path

from exfm_plugin.contracts import DATASETS

from ..errors import DataFormatError
from . import amazon, kuaivideo, taobaoad
from .common import ReadResult, with_gz

#: the file formats a reader parses (``exfm prep --source synthetic`` writes one of them first)
FORMATS = ("raw", "bars")


def _any_of(*names: str) -> tuple[str, ...]:
    return tuple(with_gz(names))


#: the files a real data root must hold, per (dataset, format): one group of accepted names
#: (any one will do) per file; the names are the readers' own (``find_file`` order)
REAL_FILES: dict[tuple[str, str], list[tuple[str, ...]]] = {
    ("taobaoad", "raw"): [_any_of(*taobaoad.RAW_NAMES[k]) for k in ("raw_sample", "ad_feature", "user_profile")],
    ("taobaoad", "bars"): [_any_of("train.csv"), _any_of("test.csv")],
    ("amazon", "raw"): [_any_of(*amazon.REVIEW_NAMES), _any_of(*amazon.META_NAMES)],
    ("amazon", "bars"): [_any_of("train.csv"), _any_of("test.csv")],
    ("kuaivideo", "raw"): [_any_of("train.csv"), _any_of("test.csv"), (kuaivideo.EMB_FILE,)],
    ("kuaivideo", "bars"): [_any_of("train.csv"), _any_of("test.csv"), (kuaivideo.EMB_FILE,)],
}


def read(dataset: str, source: str, input_dir: str | Path, *, seed: int = 0) -> ReadResult:
    """Read ``dataset`` from ``input_dir`` in the ``source`` format into its canonical frame."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    if source not in FORMATS:
        raise ValueError(f"unknown source format {source!r}; expected one of {FORMATS}")
    if dataset == "taobaoad":
        return taobaoad.read_raw(input_dir) if source == "raw" else taobaoad.read_bars(input_dir)
    if dataset == "amazon":
        return amazon.read_raw(input_dir, seed=seed) if source == "raw" else amazon.read_bars(input_dir)
    return kuaivideo.read_bars(input_dir)


__all__ = ["FORMATS", "REAL_FILES", "DataFormatError", "ReadResult", "read", "amazon", "kuaivideo", "taobaoad"]
