"""Readers of the real dataset formats into one canonical polars frame per dataset.

``read(dataset, source, input_dir)`` dispatches to the dataset's module:

==========  =======================================  ==========================================
dataset     ``raw``                                  ``bars``
==========  =======================================  ==========================================
taobaoad    raw_sample / ad_feature / user_profile   TaobaoAd_x1 train.csv, test.csv
            (+ behavior_log) csv files
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
from .common import ReadResult

#: the file formats a reader parses (``exfm prep --source synthetic`` writes one of them first)
FORMATS = ("raw", "bars")


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


__all__ = ["FORMATS", "DataFormatError", "ReadResult", "read", "amazon", "kuaivideo", "taobaoad"]
