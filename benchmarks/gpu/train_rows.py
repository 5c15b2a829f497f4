"""Training rows/s with the loader included: a TaobaoAd-shaped day file (real vocabulary
sizes, benchmarks/perf/shapes.py) read by ``H5DataLoader(device=...)``, one ``train_step``
per batch, fp32 and bf16 (the ``precision`` model option), for FM, DeepFM, DCNv2 and DMIN
with their BARS TaobaoAd hyperparameters.

    python benchmarks/gpu/train_rows.py --device cuda:0 [--steps 30] [--models FM DeepFM DCNv2 DMIN]
    python benchmarks/gpu/train_rows.py --device cpu --steps 2 --rows 20000   # dry run
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "perf"))
from shapes import bars_model_params, taobao_batches, taobao_feature_map  # noqa: E402

from exfm_plugin.data import H5DataLoader, write_day_file  # noqa: E402
from exfm_plugin.models import MODEL_REGISTRY  # noqa: E402


def write_shape_day(path: str, rows: int, seed: int = 0, scale: float = 1.0) -> None:
    """One day file of random TaobaoAd-shaped rows (written in 8192-row pieces, then joined)."""
    pieces = taobao_batches((rows + 8191) // 8192, 8192, seed=seed, with_teacher=True, scale=scale)
    columns = {k: torch.cat([p[k] for p in pieces])[:rows].numpy() for k in pieces[0]}
    write_day_file(path, columns, dataset_id="taobao_shape", day=1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rows_per_second(model, loader, steps: int, warmup: int, device: torch.device) -> float:
    """Train ``warmup`` batches untimed, then ``steps`` timed batches (loader included)."""
    model.train()
    model._max_gradient_norm = 10.0
    done, rows, start = 0, 0, None
    while done < warmup + steps:
        for batch in loader:
            if done == warmup:
                sync(device)
                start = time.perf_counter()
            model.train_step(batch)
            if done >= warmup:
                rows += len(batch["clk"])
            done += 1
            if done == warmup + steps:
                break
    sync(device)
    return rows / (time.perf_counter() - start)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--models", nargs="+", default=["FM", "DeepFM", "DCNv2", "DMIN"])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--batch-size", type=int, default=8192)
    ap.add_argument("--rows", type=int, default=8192 * 24, help="rows in the day file (the loader cycles it)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per model and precision")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--vocab-scale", type=float, default=1.0, help="scale TaobaoAd's vocabularies (dry runs)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.index if device.type == "cuda" else -1
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the usual GPU setting for fp32 training
    root = tempfile.mkdtemp(prefix="exfm_gpu_rows_")
    fmap = taobao_feature_map(os.path.join(root, "data"), scale=args.vocab_scale)
    day = os.path.join(root, "day_1.h5")
    write_shape_day(day, args.rows, scale=args.vocab_scale)
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"torch {torch.__version__}, batch {args.batch_size}, {args.steps} timed steps, loader on the device, "
          f"vocabulary scale {args.vocab_scale}")
    print(f"{'model':7s} " + " ".join(f"{p + ' rows/s':>14s}" for p in args.precisions))
    for name in args.models:
        rates = []
        for precision in args.precisions:
            torch.manual_seed(0)
            params = bars_model_params(name, model_id=f"{name}_{precision}", model_root=root, gpu=gpu,
                                       precision=precision)
            try:
                model = MODEL_REGISTRY[name](fmap, **params)
                loader = H5DataLoader(fmap, day, batch_size=args.batch_size, shuffle=True, seed=0,
                                      device=device, drop_last=True)
                rates.append(f"{rows_per_second(model, loader, args.steps, args.warmup, device):14.0f}")
            except Exception as exc:  # noqa: BLE001 - report and go on with the next model
                rates.append(f"{'failed':>14s}")
                print(f"{name} {precision}: {type(exc).__name__}: {exc}", file=sys.stderr)
            model = loader = None
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        print(f"{name:7s} " + " ".join(rates), flush=True)


if __name__ == "__main__":
    main()
