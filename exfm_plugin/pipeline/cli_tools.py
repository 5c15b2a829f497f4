"""``exfm grids`` (the shipped grids, by name) and ``exfm export`` (a cell as a FuxiCTR model)."""
from __future__ import annotations

import argparse


def add_grids_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("grids", help="list the shipped grids (exfm run --grid NAME)",
                       description="The grids shipped with exfm; run one by name: exfm run --grid table2.")
    p.add_argument("--paths", action="store_true", help="print each grid's file path too")
    p.set_defaults(func=run_grids)


def run_grids(args: argparse.Namespace) -> int:
    from ..resources import grid_description, grid_names, grids_dir

    names = grid_names()
    width = max(len(n) for n in names)
    for name in names:
        line = f"{name:<{width}}  {grid_description(name)}"
        print(line + (f"\n{'':<{width}}  {grids_dir() / (name + '.yaml')}" if args.paths else ""))
    return 0


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a cell's trained student as a plain FuxiCTR model",
                       description="Write the serving model of one VM cell (no heads, no adapter) as a "
                                   "self-contained FuxiCTR model folder: OUT/<expid>.model, OUT/model_config.yaml "
                                   "(the params that ran), OUT/dataset_config.yaml and OUT/<dataset_id>/"
                                   "feature_map.json; load it with exfm_plugin.load_exported(OUT) or "
                                   "fuxictr.utils.load_config(OUT, expid) (docs/install.md).")
    p.add_argument("--records", nargs="+", required=True, metavar="PATH",
                   help="records .jsonl file(s) or result folders holding them")
    p.add_argument("--cell", required=True, metavar="CELL_ID", help="the cell's cell_id (a unique prefix)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--work", default=None, metavar="DIR",
                   help="the run's --work folder (default: the artifact path the record names, relative to "
                        "where the run ran)")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from ..export import run_export

    return run_export(args)
