"""The training loop every training step shares (an FM's day, a VM link's pass)."""
from __future__ import annotations

import time

from tqdm import tqdm


def train_one_pass(model, loader, desc: str, progress: bool) -> tuple[int, float]:
    """One pass over ``loader`` with ``model.train_step``; returns (rows, seconds)."""
    model.train()
    model._max_gradient_norm = 10.0
    rows, start = 0, time.perf_counter()
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        model.train_step(batch)
        rows += len(next(iter(batch.values())))
    return rows, time.perf_counter() - start
