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

# the VM training methods, in the paper's order, and the adapter control (docs/method.md, The methods):
# ah_sa with the Student Adapter frozen at its identity start
PAPER_METHODS = ("none", "kd", "ah", "ah_sa")
ADAPTER_CONTROL = "ah_sa_frozen"
METHODS = PAPER_METHODS + (ADAPTER_CONTROL,)

# how a VM is trained across days (docs/method.md, Streaming protocol): ``day`` = a fresh VM on day
# 5+r only (the paper's public protocol); ``stream`` = one VM continued day by day in time order,
# day d supervised by the FM snapshot trained through day d-1
VM_SCHEDULES = ("day", "stream")
FM_TRAINING = ("stream", "epochs")

# the streaming protocol's time splits (docs/method.md, Streaming protocol): days 1..N_DAYS; in
# round r the FM trains on days 1..FIRST_TRAIN_DAY-1+r, the VM trains on day FIRST_TRAIN_DAY+r
# and is tested on the day after; ROUNDS end at the last day
N_DAYS = 8
DAYS = tuple(range(1, N_DAYS + 1))
FIRST_TRAIN_DAY = 5
ROUNDS = tuple(range(N_DAYS - FIRST_TRAIN_DAY))


def train_day(round_: int) -> int:
    """The day a round's VM trains on (day 5+r; its FM has seen days 1..4+r)."""
    return FIRST_TRAIN_DAY + round_


def test_day(round_: int) -> int:
    """The day a round's VM is tested on: the day after its training day (6+r)."""
    return FIRST_TRAIN_DAY + 1 + round_


def day_file_name(day: int) -> str:
    """The file of one day's split in a prepared data folder (``day_<d>.h5``)."""
    return f"day_{day}.h5"


# the exported serving model (the bare VM's state_dict) every VM link of a run keeps
SERVING_WEIGHTS = "serving_model.pt"

# the two model roles of external distillation: the teacher (foundation model) and the student
# (vertical model)
ROLE_FM = "fm"
ROLE_VM = "vm"
ROLES = (ROLE_FM, ROLE_VM)

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

# the synthetic world's true probability of a row, in a day-file column of its own that no model
# reads (feature maps never name it): the oracle row of every synthetic test day
TRUE_PROB = "true_prob"


def truth_column(label: str) -> str:
    """The day-file column holding the world's true P(``label`` = 1) (synthetic data only)."""
    return f"{TRUE_PROB}/{label}"

# a grid file whose world dials are lists (a dose-response) runs one grid per level, named
# ``<grid>@<dial>=<value>[,...]``; the report reads such levels along their dial
WORLD_LEVEL_SEPARATOR = "@"


def base_grid_name(name: str) -> str:
    """The grid file's name of a level's name (``science_bias@domain_shift=0.5`` -> ``science_bias``)."""
    return name.split(WORLD_LEVEL_SEPARATOR, 1)[0]
