"""``python -m data_prep.synthetic taobaoad data/raw/taobaoad --size small``: write a synthetic dataset."""
from __future__ import annotations

import argparse
import logging
import time

from . import generate_bars, generate_raw

log = logging.getLogger("data_prep.synthetic")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m data_prep.synthetic", description=__doc__)
    ap.add_argument("dataset", choices=["taobaoad", "amazon", "kuaivideo"])
    ap.add_argument("out_dir")
    ap.add_argument("--size", default="small", help="tiny | small | medium | full | an int (impressions)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--drift", type=float, default=1.0)
    ap.add_argument("--bars", action="store_true", help="write the BARS split instead of the raw files")
    ap.add_argument("--with-truth", action="store_true", help="also write ground_truth.parquet")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    size = int(args.size) if args.size.isdigit() else args.size
    fn = generate_bars if args.bars else generate_raw
    t = time.time()
    paths = fn(args.dataset, args.out_dir, size=size, seed=args.seed, drift=args.drift, with_truth=args.with_truth)
    log.info("wrote %s in %.1f s", ", ".join(paths.values()), time.time() - t)


if __name__ == "__main__":
    main()
