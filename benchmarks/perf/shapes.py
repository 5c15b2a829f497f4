"""TaobaoAd-shaped feature maps and random batches for performance benchmarks.

Vocabulary sizes follow the real TaobaoAd_x1 data (orders of magnitude), so embedding
tables and lookups cost what they cost on the real dataset.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch
from fuxictr.features import FeatureMap

SEQ_LEN = 50
TAOBAO_CATEGORICAL = {  # name -> vocab size
    "userid": 1_141_730, "cms_segid": 99, "cms_group_id": 15, "final_gender_code": 4,
    "age_level": 9, "pvalue_level": 5, "shopping_level": 5, "occupation": 4,
    "new_user_class_level": 7, "adgroup_id": 846_813, "cate_id": 6_771, "campaign_id": 423_438,
    "customer": 255_877, "brand": 99_816, "pid": 4, "btag": 6,
}
TAOBAO_SEQUENCES = {"cate_his": "cate_id", "brand_his": "brand", "btag_his": "btag"}


def scaled_vocab(scale: float = 1.0) -> dict[str, int]:
    """TaobaoAd's vocabulary sizes times ``scale`` (at least 2 ids each), for dry runs."""
    return {name: max(2, int(size * scale)) for name, size in TAOBAO_CATEGORICAL.items()}


def taobao_feature_map(data_dir: str, dataset_id: str = "taobao_shape", scale: float = 1.0) -> FeatureMap:
    """A FuxiCTR FeatureMap with TaobaoAd_x1's fields: 16 categorical, price, 3 sequences."""
    vocab = scaled_vocab(scale)
    features = [{name: {"source": "", "type": "categorical", "vocab_size": size, "padding_idx": 0}}
                for name, size in vocab.items()]
    features.append({"price": {"source": "", "type": "numeric"}})
    for seq, target in TAOBAO_SEQUENCES.items():
        features.append({seq: {"source": "", "type": "sequence", "max_len": SEQ_LEN, "padding_idx": 0,
                               "vocab_size": vocab[target], "share_embedding": target}})
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, "feature_map.json")
    with open(path, "w") as f:
        json.dump({"dataset_id": dataset_id, "labels": ["clk"], "features": features}, f)
    fmap = FeatureMap(dataset_id, data_dir)
    fmap.load(path, {})
    return fmap


def taobao_batches(num_batches: int, batch_size: int, seed: int = 0,
                   with_teacher: bool = True, scale: float = 1.0) -> list[dict[str, torch.Tensor]]:
    """Random TaobaoAd-shaped batches (5% CTR, sequences half-filled on average)."""
    rng = np.random.default_rng(seed)
    vocab = scaled_vocab(scale)
    batches = []
    for _ in range(num_batches):
        batch = {name: torch.from_numpy(rng.integers(1, size, batch_size))
                 for name, size in vocab.items()}
        batch["price"] = torch.from_numpy(rng.random(batch_size).astype(np.float32))
        lengths = rng.integers(0, SEQ_LEN + 1, batch_size)
        filled = np.arange(SEQ_LEN)[None, :] < lengths[:, None]
        for seq, target in TAOBAO_SEQUENCES.items():
            ids = rng.integers(1, vocab[target], (batch_size, SEQ_LEN))
            batch[seq] = torch.from_numpy(np.where(filled, ids, 0))
        batch["clk"] = torch.from_numpy((rng.random(batch_size) < 0.05).astype(np.float32))
        if with_teacher:
            batch["fm_pred"] = torch.from_numpy(rng.beta(1, 19, batch_size).astype(np.float32))
        batches.append(batch)
    return batches


def interleaved_seconds(step_fns: dict, steps: int, warmup: int = 2,
                        cpu: dict | None = None, rounds: dict | None = None) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved one by one (first caller
    alternating) so that load changes on a shared machine hit every variant alike. The first
    ``warmup`` rounds (allocation of optimizer state, caches) are not timed. When ``cpu`` is a
    dict it receives the median CPU seconds (all threads of this process) per call: on a
    machine shared with other jobs, CPU time is far less disturbed than wall time. When
    ``rounds`` is a dict it receives every timed round's seconds per function, for paired
    ratios (:func:`paired_ratio`)."""
    import statistics
    import time

    times = {name: [] for name in step_fns}
    cpu_times = {name: [] for name in step_fns}
    names = list(step_fns)
    for i in range(warmup + steps):
        for name in (names if i % 2 == 0 else names[::-1]):
            start, start_cpu = time.perf_counter(), time.process_time()
            step_fns[name](i)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
                cpu_times[name].append(time.process_time() - start_cpu)
    if cpu is not None:
        cpu.update({name: statistics.median(t) for name, t in cpu_times.items()})
    if rounds is not None:
        rounds.update(times)
    return {name: statistics.median(t) for name, t in times.items()}


def paired_ratio(rounds: dict[str, list[float]], base: str, other: str) -> tuple[float, float, float]:
    """Throughput of ``other`` over ``base`` from the same rounds of :func:`interleaved_seconds`:
    the median, min and max over rounds of base seconds / other seconds. Both calls of a round
    ran back to back, so a load change between rounds cancels out of each ratio."""
    import statistics

    ratios = [b / o for b, o in zip(rounds[base], rounds[other])]
    return statistics.median(ratios), min(ratios), max(ratios)


BARS_DATA_KEYS = ("data_root", "data_format", "train_data", "valid_data", "test_data", "feature_cols",
                  "label_col", "min_categr_count", "model_root", "dataset_id", "feature_specs", "group_id",
                  "metrics", "verbose", "epochs", "shuffle", "seed", "monitor", "monitor_mode")


def bars_model_params(model: str, dataset: str = "taobaoad_x1", **overrides) -> dict:
    """The BARS hyperparameters of ``model`` on ``dataset`` (yaml_configs/models), without the
    data-loading keys, plus ``overrides``."""
    from exfm_plugin.config import load_experiment

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    params = load_experiment(f"{model}_{dataset}", model_dir=os.path.join(repo, "yaml_configs", "models"),
                             dataset_dir=os.path.join(repo, "yaml_configs", "datasets"))
    for key in BARS_DATA_KEYS:
        params.pop(key, None)
    params.update(verbose=0, metrics=["AUC"])
    params.update(overrides)
    return params


def add_allocator_option(ap) -> None:
    """``--allocator system|retain``: the benchmark's process allocator. ``system`` (default) is
    glibc's malloc, what ``exfm run`` uses unless ``EXFM_MALLOC=retain``; ``retain`` keeps freed
    memory (exfm_plugin/allocator.py)."""
    ap.add_argument("--allocator", choices=["system", "retain"], default="system",
                    help="system: glibc's malloc (default, as exfm run); retain: freed memory is reused, "
                         "as with EXFM_MALLOC=retain")


def apply_allocator(choice: str) -> str:
    """Apply ``--allocator`` before any large allocation; returns the name for the header."""
    from exfm_plugin.allocator import allocator_name, retain_freed_memory

    if choice == "retain" and not retain_freed_memory():
        print("(allocator: retain was asked for but is not available here, e.g. not glibc)")
    return allocator_name()
