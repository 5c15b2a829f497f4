"""The facts shared by more than one package: names of datasets, sources, sizes, methods and
schedules, the FM prediction column, and the result-record schema (``contracts.records``).

Nothing elsewhere re-derives these from a class name or a string; a new method or column is
added here once.
"""
from __future__ import annotations

DATASETS = ("taobaoad", "amazon", "kuaivideo")
SOURCES = ("synthetic", "raw", "bars")
SIZES = ("tiny", "small", "medium", "full")
# the exfm dataset name -> FuxiCTR/BARS dataset id (config expids end in it) and the paper's name
BARS_DATASET_IDS = {"taobaoad": "taobaoad_x1", "amazon": "amazonelectronics_x1", "kuaivideo": "kuaivideo_x1"}
BARS_DATASET_NAMES = {"taobaoad": "TaobaoAd_x1", "amazon": "AmazonElectronics_x1", "kuaivideo": "KuaiVideo_x1"}
PAPER_DATASET_NAMES = {"taobaoad": "TaobaoAd", "amazon": "AmazonElectronics", "kuaivideo": "KuaiVideo"}

# the VM training methods, in the paper's order, and the adapter control (SPEC.md, Controls):
# ah_sa with the Student Adapter frozen at its identity start
PAPER_METHODS = ("none", "kd", "ah", "ah_sa")
ADAPTER_CONTROL = "ah_sa_frozen"
METHODS = PAPER_METHODS + (ADAPTER_CONTROL,)

# how a VM is trained across days (SPEC.md, Streaming protocol): ``day`` = a fresh VM on day
# 5+r only (the paper's public protocol); ``stream`` = one VM continued day by day in time order,
# day d supervised by the FM snapshot trained through day d-1
VM_SCHEDULES = ("day", "stream")
FM_TRAINING = ("stream", "epochs")

# the FM supervision column of an augmented day file
FM_PRED = "fm_pred"


def fm_pred_column(label: str | None = None, multitask: bool = False) -> str:
    """The column holding the FM's prediction for ``label``: ``fm_pred`` for a single-task FM,
    ``fm_pred/<label>`` for a multi-task one."""
    if not multitask:
        return FM_PRED
    if not label:
        raise ValueError("a multi-task FM's prediction column needs the label it predicts")
    return f"{FM_PRED}/{label}"
