"""Training rows/s of the BARS-faithful DMIN vs the DMIN it replaced (``legacy_dmin.py``, frozen
from commit fe69c6a), side by side in one run, on the BARS TaobaoAd and Amazon DMIN configs.

Layer sizes, heads, batch sizes (8192 TaobaoAd, 1024 Amazon) and sequence lengths (50, 100) are
the BARS ones (yaml_configs/models/model_config/DMIN.yaml). TaobaoAd uses its real vocabulary
sizes (benchmarks/perf/shapes.py); Amazon uses the BARS AmazonElectronics_x1 sizes (63,001
items, 801 categories). Histories are post-padded with lengths uniform in [0, max_len] (half
full on average). Steps of the two models are interleaved one by one (first caller alternating)
and the median seconds per step is taken, so load changes on a shared machine hit both alike;
'paired' is the median [min, max] over rounds of the two back-to-back steps' ratio.
Target (issue 10): new / legacy >= 1 despite the layers the reference adds.

    python benchmarks/perf/dmin_throughput.py [--steps 2] [--datasets taobaoad amazon] [--threads 2]
        [--taobaoad-batch 8192] [--amazon-batch 1024] [--vocab-cap N]

A smaller batch or a vocabulary cap (printed in the output) keeps a run short on a loaded
machine; per-row costs dominate both models, so the ratio moves little with the batch size.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np
import torch
from fuxictr.features import FeatureMap

sys.path.insert(0, os.path.dirname(__file__))
from legacy_dmin import LegacyDMIN  # noqa: E402
from shapes import (TAOBAO_CATEGORICAL, add_allocator_option, apply_allocator,  # noqa: E402
                    interleaved_seconds, paired_ratio, taobao_batches, taobao_feature_map)

from exfm_plugin.config import load_experiment  # noqa: E402
from exfm_plugin.models import DMIN  # noqa: E402

AMAZON_VOCAB = {"item_id": 63_001, "cate_id": 801}
AMAZON_LEN = 100
# keys of the BARS config the legacy class does not take (it predates them)
NEW_ONLY = ("aux_loss_lambda", "neg_seq_field", "aux_hidden_units", "aux_activation", "refiner_additive_mask")


def amazon_feature_map(data_dir: str) -> FeatureMap:
    features = [{name: {"source": "", "type": "categorical", "vocab_size": size + 2, "padding_idx": 0}}
                for name, size in AMAZON_VOCAB.items()]
    for seq, target in (("item_history", "item_id"), ("cate_history", "cate_id")):
        features.append({seq: {"source": "", "type": "sequence", "max_len": AMAZON_LEN, "padding_idx": 0,
                               "vocab_size": AMAZON_VOCAB[target] + 2, "share_embedding": target}})
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, "feature_map.json")
    with open(path, "w") as f:
        json.dump({"dataset_id": "amazon_shape", "labels": ["label"], "features": features}, f)
    fmap = FeatureMap("amazon_shape", data_dir)
    fmap.load(path, {})
    return fmap


def amazon_batches(num_batches: int, batch_size: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num_batches):
        item = rng.integers(1, AMAZON_VOCAB["item_id"], batch_size)
        batch = {"item_id": torch.from_numpy(item),
                 "cate_id": torch.from_numpy(rng.integers(1, AMAZON_VOCAB["cate_id"], batch_size))}
        lengths = rng.integers(0, AMAZON_LEN + 1, batch_size)
        filled = np.arange(AMAZON_LEN)[None, :] < lengths[:, None]
        for seq, target in (("item_history", "item_id"), ("cate_history", "cate_id")):
            ids = rng.integers(1, AMAZON_VOCAB[target], (batch_size, AMAZON_LEN))
            batch[seq] = torch.from_numpy(np.where(filled, ids, 0))
        batch["label"] = torch.from_numpy((rng.random(batch_size) < 0.5).astype(np.float32))
        out.append(batch)
    return out


def bars_params(expid: str, target, sequence) -> dict:
    params = load_experiment(expid)
    keep = ("embedding_dim", "learning_rate", "dnn_hidden_units", "dnn_activations", "attention_hidden_units",
            "attention_activation", "attention_dropout", "num_heads", "use_behavior_refiner", "layer_norm",
            "use_pos_emb", "pos_emb_dim", "enable_sum_pooling", "net_dropout", "batch_norm", "bn_only_once",
            "embedding_regularizer", "net_regularizer", "batch_size") + NEW_ONLY
    out = {k: params[k] for k in keep if k in params}
    out.update(target_field=target, sequence_field=sequence, optimizer="adam", loss="binary_crossentropy",
               verbose=0, metrics=["AUC"])
    return out


def run_dataset(name: str, steps: int, root: str, batch_size: int | None = None,
                vocab_cap: int | None = None) -> dict:
    if vocab_cap:
        for vocab in (TAOBAO_CATEGORICAL, AMAZON_VOCAB):
            vocab.update({k: min(v, vocab_cap) for k, v in vocab.items()})
    if name == "taobaoad":
        fmap = taobao_feature_map(os.path.join(root, "taobao"))
        params = bars_params("DMIN_taobaoad_x1", [("cate_id", "brand", "btag")],
                             [("cate_his", "brand_his", "btag_his")])
    else:
        fmap = amazon_feature_map(os.path.join(root, "amazon"))
        params = bars_params("DMIN_amazonelectronics_x1", [("item_id", "cate_id")],
                             [("item_history", "cate_history")])
    bars_batch = params.pop("batch_size")
    if batch_size and batch_size > bars_batch:
        raise ValueError(f"batch size {batch_size} exceeds the BARS one ({bars_batch}) for {name}")
    batch_size = batch_size or bars_batch
    batches = (taobao_batches(2, batch_size, with_teacher=False) if name == "taobaoad"
               else amazon_batches(2, batch_size))
    models = {}
    torch.manual_seed(0)
    models["legacy"] = LegacyDMIN(fmap, model_id="legacy", model_root=root,
                                  **{k: v for k, v in params.items() if k not in NEW_ONLY})
    torch.manual_seed(0)
    models["new"] = DMIN(fmap, model_id="new", model_root=root, **params)
    for m in models.values():
        m._max_gradient_norm = 10.0
        m.train()
        m.train_step({k: v[:64] for k, v in batches[0].items()})  # warm-up: Adam state, first calls
    rounds: dict[str, list[float]] = {}
    median = interleaved_seconds({k: (lambda i, m=m: m.train_step(batches[i % len(batches)]))
                                  for k, m in models.items()}, steps, warmup=0, rounds=rounds)
    rows = {k: batch_size / t for k, t in median.items()}
    counts = {k: sum(p.numel() for n, p in m.named_parameters() if "embedding_layer" not in n)
              for k, m in models.items()}
    return {"dataset": name, "batch_size": batch_size, "rows_s": rows, "ratio": rows["new"] / rows["legacy"],
            "paired": paired_ratio(rounds, "legacy", "new"), "network_params": counts}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2, help="timed steps per model (median taken)")
    ap.add_argument("--datasets", nargs="+", default=["taobaoad", "amazon"], choices=["taobaoad", "amazon"])
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    ap.add_argument("--taobaoad-batch", type=int, default=None, help="rows per step (default: BARS, 8192)")
    ap.add_argument("--amazon-batch", type=int, default=None, help="rows per step (default: BARS, 1024)")
    ap.add_argument("--vocab-cap", type=int, default=None,
                    help="cap every vocabulary at this size (default: the real sizes)")
    add_allocator_option(ap)
    args = ap.parse_args(argv)
    args.allocator_name = apply_allocator(args.allocator)
    torch.set_num_threads(args.threads)
    root = tempfile.mkdtemp(prefix="exfm_dmin_bench_")
    print(f"DMIN train rows/s, legacy (fe69c6a) vs new (BARS-faithful); allocator {args.allocator_name}; {args.steps} interleaved steps, "
          f"{args.threads} threads, vocabularies {'capped at ' + str(args.vocab_cap) if args.vocab_cap else 'real'}")
    for name in args.datasets:
        batch = args.taobaoad_batch if name == "taobaoad" else args.amazon_batch
        r = run_dataset(name, args.steps, root, batch, args.vocab_cap)
        print(f"{name:9s} batch {r['batch_size']:5d}  legacy {r['rows_s']['legacy']:9.0f} rows/s  "
              f"new {r['rows_s']['new']:9.0f} rows/s  new/legacy {r['ratio']:.2f} "
              f"(paired {r['paired'][0]:.2f} [{r['paired'][1]:.2f}, {r['paired'][2]:.2f}])  "
              f"(network params legacy {r['network_params']['legacy']:,}, new {r['network_params']['new']:,})",
              flush=True)


if __name__ == "__main__":
    main()
