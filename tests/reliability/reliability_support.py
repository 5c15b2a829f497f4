"""Helpers of the reliability suites: tiny valid raw files of every dataset, a published
DAS snapshot, and helpers that run the ``exfm`` CLI in-process and read its one error line."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from exfm_plugin.cli import main as exfm_main

#: rows of the synthetic raw files (the generators' minimum): a prep takes a fraction of a second
RAW_ROWS = 1000
#: the reader format of each dataset's synthetic files
SOURCE = {"taobaoad": "raw", "amazon": "raw", "kuaivideo": "bars"}


@pytest.fixture(scope="session")
def raw_root(tmp_path_factory) -> Path:
    """``<root>/<dataset>/``: valid raw (KuaiVideo: BARS) files of each dataset, never modified."""
    from data_prep.synthetic import generate_raw

    root = tmp_path_factory.mktemp("raw")
    for dataset in SOURCE:
        generate_raw(dataset, str(root / dataset), size=RAW_ROWS, seed=0)
    return root


def copy_raw(raw_root: Path, dataset: str, dest: Path) -> Path:
    """A private copy of ``dataset``'s valid files, to mutate."""
    shutil.copytree(raw_root / dataset, dest)
    return dest


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> digest); {} when it does not exist."""
    out = {}
    for path in sorted(Path(root).rglob("*")):
        if path.is_file():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def error_line(self) -> str:
        """The last stderr line (logging warnings may come before it)."""
        lines = [ln for ln in self.err.splitlines() if ln.strip()]
        return lines[-1] if lines else ""


def run_cli(capsys: pytest.CaptureFixture, argv: list[str]) -> CliResult:
    """``exfm argv`` in this process; any exception other than SystemExit propagates (a traceback
    is a failure of the contract)."""
    capsys.readouterr()
    try:
        code = exfm_main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own usage errors
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


class DasWorld:
    """Tiny data, one VM day file, a DCN FM published as snapshot ``s1``, and its weights/params
    files for ``exfm das publish``."""

    def __init__(self, root: Path) -> None:
        import sys

        import torch

        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tiny_data import make_tiny_data, model_kwargs

        from exfm_plugin.das.spd import SnapshotStore
        from exfm_plugin.data.dayfile import write_day_file
        from exfm_plugin.models import MODEL_REGISTRY

        self.root = root
        tiny = make_tiny_data(str(root / "tiny"), num_rows=256)
        self.feature_map_dir = root / "tiny"
        cols = dict(tiny.columns, example_id=np.arange(256, dtype=np.int64))
        self.day_file = root / "vm.h5"
        write_day_file(str(self.day_file), cols, dataset_id="tiny", day=6)
        torch.manual_seed(0)
        self.params = dict(model_kwargs(root), model="DCN", dnn_hidden_units=[8], num_cross_layers=1)
        model = MODEL_REGISTRY["DCN"](tiny.feature_map, **self.params)
        self.spd = root / "spd"
        SnapshotStore(str(self.spd)).publish(model, model_params=self.params, feature_map_dir=str(self.feature_map_dir),
                                             trained_through_day=5, snapshot_id="s1")
        self.weights = root / "w.pt"
        torch.save(model.state_dict(), self.weights)
        self.params_file = root / "params.json"
        self.params_file.write_text(json.dumps(self.params))

    def publish_args(self, **over: str) -> list[str]:
        args = {"--snapshots": str(self.spd), "--model-params": str(self.params_file),
                "--weights": str(self.weights), "--feature-map-dir": str(self.feature_map_dir)}
        args.update(over)
        return ["das", "publish", *[x for kv in args.items() for x in kv]]

    def run_args(self, out: Path, *extra: str, day_files: list[str] | None = None) -> list[str]:
        return ["das", "run", "--snapshots", str(self.spd), "--day-files",
                *(day_files or [f"a={self.day_file}"]), "--out", str(out), "--no-progress", *extra]

    def corrupt_copy(self, dest: Path) -> Path:
        """A copy of the SPD whose snapshot ``s1`` has one flipped byte in its weights."""
        shutil.copytree(self.spd, dest)
        weights = dest / "s1" / "weights.pt"
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
        return dest


@pytest.fixture(scope="session")
def das_world(tmp_path_factory) -> DasWorld:
    return DasWorld(tmp_path_factory.mktemp("das_world"))


@pytest.fixture(autouse=True)
def _quiet_threads():
    """Tiny tensors: one intra-op thread (the machine is shared)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    os.environ.setdefault("TQDM_DISABLE", "1")
    yield
    torch.set_num_threads(threads)
