"""A battery of named bad inputs across ``exfm prep``, ``run``, ``das``, ``report`` and the Python API.

Every CLI case checks the error contract (``exfm_plugin.errors``): exit status 2, the last
stderr line is ``exfm <command>: ...`` and names what is wrong and where (the fragments listed
with the case), no traceback. The API cases check that the project's error type (an
``ExfmInputError``) is raised with the same facts in its message.
"""
from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from exfm_plugin.errors import ExfmInputError

from reliability_support import SOURCE, copy_raw, run_cli, tree_digest

REPO = Path(__file__).resolve().parents[2]
#: a valid grid of this test's own (the shipped grids change), the base every grid case edits
BASE_GRID = """\
grid: battery
dataset: taobaoad
source: synthetic
size: tiny
vm_schedule: stream
seeds: 3
mode: single
rounds: [0]
model_overrides:
    all: {embedding_dim: 8, batch_size: 256, learning_rate: 2.0e-3}
    FM: {learning_rate: 1.0e-3}
    FmFM: {learning_rate: 1.0e-3}
    DeepFM: {hidden_units: [32, 16], learning_rate: 1.0e-3}
    DMIN: {dnn_hidden_units: [32, 16], attention_hidden_units: [16]}
    DCN: {dnn_hidden_units: [32, 16]}
tuner_space:
    teacher: [DMIN, DCN]
    student: DeepFM
    method: [none, kd, ah, ah_sa, ah_sa_frozen]
"""


@dataclass
class Ctx:
    tmp: Path
    raw_root: Path
    das: object


# ------------------------------------------------------------------------- file mutations
def edit_lines(name: str, fn: Callable[[list[str]], list[str]]) -> Callable[[Path], None]:
    def mutate(d: Path) -> None:
        p = d / name
        if p.suffix == ".gz":
            lines = gzip.decompress(p.read_bytes()).decode("utf-8").split("\n")
            p.write_bytes(gzip.compress("\n".join(fn(lines)).encode("utf-8")))
        else:
            p.write_text("\n".join(fn(p.read_text().split("\n"))))
    return mutate


def edit_bytes(name: str, fn: Callable[[bytes], bytes], *, inside_gzip: bool = True) -> Callable[[Path], None]:
    def mutate(d: Path) -> None:
        p = d / name
        data = p.read_bytes()
        if p.suffix == ".gz" and inside_gzip:
            p.write_bytes(gzip.compress(fn(gzip.decompress(data))))
        else:
            p.write_bytes(fn(data))
    return mutate


def set_cell(name: str, row: int, column: str, value: str) -> Callable[[Path], None]:
    """CSV: put ``value`` into ``column`` of data row ``row`` (1-based)."""
    def fn(lines: list[str]) -> list[str]:
        header = [h.strip() for h in lines[0].split(",")]
        cells = lines[row].split(",")
        cells[header.index(column)] = value
        lines[row] = ",".join(cells)
        return lines
    return edit_lines(name, fn)


def csv_columns(name: str, fn: Callable[[list[list[str]]], list[list[str]]]) -> Callable[[Path], None]:
    """CSV: transform the table as a list of column lists (header first in each)."""
    def lines_fn(lines: list[str]) -> list[str]:
        rows = [ln.split(",") for ln in lines if ln]
        cols = [list(c) for c in zip(*rows)]
        return [",".join(r) for r in zip(*fn(cols))] + [""]
    return edit_lines(name, lines_fn)


def json_field(name: str, row: int, field: str, value: object, *, delete: bool = False) -> Callable[[Path], None]:
    def fn(lines: list[str]) -> list[str]:
        obj = json.loads(lines[row - 1])
        if delete:
            del obj[field]
        else:
            obj[field] = value
        lines[row - 1] = json.dumps(obj)
        return lines
    return edit_lines(name, fn)


def remove(name: str) -> Callable[[Path], None]:
    return lambda d: (d / name).unlink()


def out_of_window(times: Callable[[int], int], n: int) -> Callable[[Path], None]:
    """TaobaoAd: ``n`` impressions with the times ``times(i)`` (else valid rows)."""
    def fn(lines: list[str]) -> list[str]:
        extra = []
        for i in range(n):
            cells = lines[1 + i % 50].split(",")
            cells[1] = str(times(i))
            extra.append(",".join(cells))
        return lines[:1] + extra + lines[1:]
    return edit_lines("raw_sample.csv", fn)


# ------------------------------------------------------------------------- case builders
def prep(dataset: str, mutate: Callable[[Path], None] | None = None, *extra: str) -> Callable[[Ctx], list]:
    def build(ctx: Ctx) -> list:
        d = copy_raw(ctx.raw_root, dataset, ctx.tmp / "in")
        if mutate is not None:
            mutate(d)
        return ["prep", "--dataset", dataset, "--source", SOURCE[dataset], "--input", d,
                "--out", ctx.tmp / "out", *extra]
    return build


def grid(edit: Callable[[str], str] | None = None, *extra: str, text: str | None = None) -> Callable[[Ctx], list]:
    def build(ctx: Ctx) -> list:
        body = text if text is not None else BASE_GRID
        edited = edit(body) if edit else body
        assert edit is None or edited != body, "the case's edit does not apply to BASE_GRID"
        path = ctx.tmp / "grid.yaml"
        path.write_text(edited)
        return ["run", "--grid", path, "--work", ctx.tmp / "work", "--results", ctx.tmp / "results",
                "--no-progress", *extra]
    return build


def data_root_bad_label(ctx: Ctx) -> list:
    d = copy_raw(ctx.raw_root, "taobaoad", ctx.tmp / "real")
    set_cell("raw_sample.csv", 4, "clk", "7")(d)
    path = ctx.tmp / "grid.yaml"
    path.write_text(BASE_GRID)
    return ["run", "--grid", path, "--data-root", d, "--work", ctx.tmp / "work", "--results", ctx.tmp / "r",
            "--no-progress"]


def das_publish(**over: str) -> Callable[[Ctx], list]:
    def build(ctx: Ctx) -> list:
        fixed = {}
        for k, v in over.items():
            if k != "params_text":
                v = v.format(tmp=ctx.tmp, spd=ctx.das.spd)
            if k == "weights_bytes":
                (ctx.tmp / "bad.pt").write_bytes(v.encode("latin-1"))
                fixed["--weights"] = str(ctx.tmp / "bad.pt")
            elif k == "params_text":
                (ctx.tmp / "params.json").write_text(v)
                fixed["--model-params"] = str(ctx.tmp / "params.json")
            else:
                fixed["--" + k.replace("_", "-")] = v
        return ctx.das.publish_args(**fixed)
    return build


def das_run(*extra: str, day_files: list[str] | None = None, corrupt: bool = False,
            day_bytes: bytes | None = None) -> Callable[[Ctx], list]:
    def build(ctx: Ctx) -> list:
        args = ctx.das.run_args(ctx.tmp / "out", *[e.format(tmp=ctx.tmp) for e in extra],
                                day_files=[f.format(tmp=ctx.tmp) for f in day_files] if day_files else None)
        if corrupt:
            spd = ctx.das.corrupt_copy(ctx.tmp / "spd")
            args[args.index("--snapshots") + 1] = str(spd)
            args += ["--metastore", f"sqlite:///{ctx.tmp}/meta.db"]
        if day_bytes is not None:
            (ctx.tmp / "day.h5").write_bytes(day_bytes)
        return args
    return build


def report(setup: Callable[[Path], Path]) -> Callable[[Ctx], list]:
    def build(ctx: Ctx) -> list:
        return ["report", "--records", setup(ctx.tmp), "--out", ctx.tmp / "rep"]
    return build


def _records(text: str) -> Callable[[Path], Path]:
    def setup(tmp: Path) -> Path:
        (tmp / "recs.jsonl").write_text(text)
        return tmp / "recs.jsonl"
    return setup


def _empty_dir(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


def _file_as_out(ctx: Ctx) -> list:
    (ctx.tmp / "afile").write_text("x")
    d = copy_raw(ctx.raw_root, "taobaoad", ctx.tmp / "in")
    return ["prep", "--dataset", "taobaoad", "--source", "raw", "--input", d, "--out", ctx.tmp / "afile"]


def _below_file_out(ctx: Ctx) -> list:
    args = _file_as_out(ctx)
    args[-1] = ctx.tmp / "afile" / "sub"
    return args


# (id, command, builder, fragments the error line must hold); a fragment is matched case-insensitively
CASES = [
    # ---------------------------------------------------------------- prep: options and paths
    ("prep-vocab-days-word", "prep", prep("taobaoad", None, "--vocab-days", "1,two"), ["'two'", "--vocab-days", "1..8"]),
    ("prep-vocab-days-9-10", "prep", prep("taobaoad", None, "--vocab-days", "9,10"), ["day 9", "--vocab-days", "1..8"]),
    ("prep-vocab-days-0", "prep", prep("taobaoad", None, "--vocab-days", "0"), ["day 0", "1..8"]),
    ("prep-vocab-days-empty", "prep", prep("taobaoad", None, "--vocab-days", ","), ["no day", "--vocab-days"]),
    ("prep-out-is-a-file", "prep", _file_as_out, ["not a directory", "--out", "expected a directory"]),
    ("prep-out-below-a-file", "prep", _below_file_out, ["not a directory", "is a file", "expected"]),
    ("prep-input-missing", "prep", lambda c: ["prep", "--dataset", "taobaoad", "--source", "raw", "--input",
                                              c.tmp / "nowhere", "--out", c.tmp / "o"], ["nowhere"]),
    # ---------------------------------------------------------------- prep: TaobaoAd raw
    ("taobao-no-raw-sample", "prep", prep("taobaoad", remove("raw_sample.csv")), ["raw_sample"]),
    ("taobao-no-ad-feature", "prep", prep("taobaoad", remove("ad_feature.csv")), ["ad_feature"]),
    ("taobao-clk-7", "prep", prep("taobaoad", set_cell("raw_sample.csv", 3, "clk", "7")),
     ["raw_sample.csv", "'clk'", "row 3", "expected 0 or 1"]),
    ("taobao-time-word", "prep", prep("taobaoad", set_cell("raw_sample.csv", 2, "time_stamp", "noon")),
     ["raw_sample.csv", "time_stamp", "expected"]),
    ("taobao-user-float", "prep", prep("taobaoad", set_cell("raw_sample.csv", 5, "user", "1.5")),
     ["raw_sample.csv", "user", "expected"]),
    ("taobao-drop-clk-column", "prep", prep("taobaoad", csv_columns("raw_sample.csv", lambda c: c[:-1])),
     ["raw_sample.csv", "clk", "expected"]),
    ("taobao-rename-user-column", "prep", prep("taobaoad", edit_lines(
        "raw_sample.csv", lambda L: ["usr" + L[0][4:]] + L[1:])), ["raw_sample.csv", "user", "expected"]),
    pytest.param("taobao-duplicate-column", "prep", prep("taobaoad", csv_columns("raw_sample.csv", lambda c: c + [c[-1]])),
                 ["raw_sample.csv", "clk", "expected"], id="taobao-duplicate-column"),
    ("taobao-header-only", "prep", prep("taobaoad", edit_lines("raw_sample.csv", lambda L: L[:1])),
     ["raw_sample.csv", "expected"]),
    ("taobao-2pct-in-year-2100", "prep", prep("taobaoad", out_of_window(lambda i: 4102444800 + i, 30)),
     ["outside", "'time'", "2017-05-06", "at most 1%"]),
    ("taobao-2pct-negative-time", "prep", prep("taobaoad", out_of_window(lambda i: -5 - i, 30)),
     ["outside", "'time'", "2017-05-06"]),
    ("taobao-milliseconds", "prep", prep("taobaoad", edit_lines("raw_sample.csv", lambda L: L[:1] + [
        ",".join(c if j != 1 else c + "000" for j, c in enumerate(ln.split(","))) if ln else ln for ln in L[1:]])),
     ["outside", "'time'"]),
    ("taobao-price-word", "prep", prep("taobaoad", set_cell("ad_feature.csv", 2, "price", "cheap")),
     ["ad_feature.csv", "price", "expected"]),
    ("taobao-behaviour-time-word", "prep", prep("taobaoad", set_cell("behavior_log.csv", 2, "time_stamp", "x")),
     ["behavior_log.csv", "time_stamp", "expected"]),
    pytest.param("taobao-bad-byte-in-row", "prep", prep("taobaoad", edit_bytes(
        "raw_sample.csv", lambda b: b.replace(b"_1007,1,0\n", b"_1007,1,\xff0\n", 1))),
        ["raw_sample.csv", "row", "utf-8"], id="taobao-bad-byte-in-row"),
    # ---------------------------------------------------------------- prep: Amazon raw
    ("amazon-reviews-not-utf8", "prep", prep("amazon", edit_bytes(
        "reviews_Electronics_5.json.gz", lambda b: b[:200] + b"\xff\xfe" + b[200:])),
     ["reviews_Electronics_5.json.gz", "row 1", "not utf-8", "expected utf-8"]),
    ("amazon-meta-not-utf8", "prep", prep("amazon", edit_bytes(
        "meta_Electronics.json.gz", lambda b: b[:300] + b"\xc3\x28" + b[300:])),
     ["meta_Electronics.json.gz", "not utf-8", "expected utf-8"]),
    ("amazon-reviews-not-json", "prep", prep("amazon", edit_lines(
        "reviews_Electronics_5.json.gz", lambda L: L[:3] + ["{not json"] + L[3:])),
     ["reviews_Electronics_5.json.gz", "row 4", "not valid json", "expected"]),
    ("amazon-reviews-no-asin", "prep", prep("amazon", json_field("reviews_Electronics_5.json.gz", 2, "asin", None,
                                                                delete=True)),
     ["reviews_Electronics_5.json.gz", "asin", "expected"]),
    ("amazon-reviews-time-string", "prep", prep("amazon", json_field("reviews_Electronics_5.json.gz", 2,
                                                                    "unixReviewTime", "yesterday")),
     ["reviews_Electronics_5.json.gz", "unixReviewTime", "expected"]),
    ("amazon-reviews-truncated-gzip", "prep", prep("amazon", edit_bytes(
        "reviews_Electronics_5.json.gz", lambda b: b[: len(b) // 2], inside_gzip=False)),
     ["reviews_Electronics_5.json.gz", "expected"]),
    ("amazon-meta-garbage-line", "prep", prep("amazon", edit_lines(
        "meta_Electronics.json.gz", lambda L: L[:2] + ["{'asin': "] + L[2:])),
     ["meta_Electronics.json.gz", "row 3", "expected"]),
    ("amazon-reviews-year-2100", "prep", prep("amazon", edit_lines(
        "reviews_Electronics_5.json.gz",
        lambda L: [ln.replace('"unixReviewTime":1', '"unixReviewTime":4') for ln in L])),
     ["outside", "'time'", "1995-01-01"]),
    ("amazon-reviews-empty", "prep", prep("amazon", edit_lines("reviews_Electronics_5.json.gz", lambda L: [""])),
     ["reviews_Electronics_5.json.gz"]),
    ("amazon-no-meta", "prep", prep("amazon", remove("meta_Electronics.json.gz")), ["meta_Electronics"]),
    # ---------------------------------------------------------------- prep: KuaiVideo BARS
    ("kuai-no-train", "prep", prep("kuaivideo", remove("train.csv")), ["train"]),
    ("kuai-is-click-2", "prep", prep("kuaivideo", set_cell("train.csv", 3, "is_click", "2")),
     ["train.csv", "is_click", "row 3", "expected"]),
    ("kuai-drop-is-like", "prep", prep("kuaivideo", csv_columns("train.csv", lambda c: c[:4] + c[5:])),
     ["train.csv", "is_like", "expected"]),
    ("kuai-timestamp-word", "prep", prep("kuaivideo", set_cell("test.csv", 2, "timestamp", "later")),
     ["test.csv", "timestamp", "expected"]),
    ("kuai-embeddings-garbage", "prep", prep("kuaivideo", edit_bytes(
        "item_visual_emb_dim64.h5", lambda b: b"not hdf5" * 10, inside_gzip=False)),
     ["item_visual_emb_dim64.h5", "expected"]),
    # ---------------------------------------------------------------- run: grid files and options
    ("grid-yaml-syntax", "run", grid(lambda t: t.replace("seeds: 3", "seeds: [3")), ["grid.yaml", "line", "yaml"]),
    ("grid-tab-indent", "run", grid(lambda t: t.replace("    all:", "\tall:")), ["grid.yaml", "tab"]),
    ("grid-unknown-key", "run", grid(lambda t: t + "\nlabel_scale: [abc]\n"), ["grid.yaml", "label_scale"]),
    ("grid-label-scale-word", "run", grid(lambda t: t.replace(
        "method: [none, kd, ah, ah_sa, ah_sa_frozen]", "method: [ah]\n    label_scale: [abc]")),
     ["grid.yaml", "label_scale", "abc"]),
    ("grid-seeds-0", "run", grid(lambda t: t.replace("seeds: 3", "seeds: 0")), ["grid.yaml", "seed"]),
    ("grid-cli-seeds-negative", "run", grid(None, "--seeds", "-1"), ["seed"]),
    ("grid-teacher-empty", "run", grid(lambda t: t.replace("teacher: [DMIN, DCN]", "teacher: []")),
     ["grid.yaml", "teacher"]),
    ("grid-override-unknown-key", "run", grid(lambda t: t.replace(
        "FM: {learning_rate: 1.0e-3}", "FM: {learning_rate: 1.0e-3, not_a_key: 3}")),
     ["grid.yaml", "not_a_key", "FM"]),
    ("grid-vm-epochs-0", "run", grid(lambda t: t.replace("vm_schedule: stream", "vm_schedule: day\nvm_epochs: 0")),
     ["grid.yaml", "vm_epochs", ">= 1"]),
    ("grid-unknown-dataset", "run", grid(lambda t: t.replace("dataset: taobaoad", "dataset: criteo")),
     ["grid.yaml", "criteo"]),
    ("grid-unknown-method", "run", grid(lambda t: t.replace("ah_sa_frozen]", "ah_sa_frozen, magic]")),
     ["grid.yaml", "magic"]),
    ("grid-unknown-student", "run", grid(lambda t: t.replace("student: DeepFM", "student: GPT")),
     ["grid.yaml", "GPT"]),
    ("grid-size-too-small", "run", grid(None, "--size", "50"), ["size", "50", "at least 1000"]),
    ("grid-size-word", "run", grid(None, "--size", "huge"), ["size", "huge"]),
    ("grid-not-a-mapping", "run", grid(text="- a\n- b\n"), ["grid.yaml"]),
    ("grid-empty-file", "run", grid(text=""), ["grid.yaml"]),
    ("grid-file-missing", "run", lambda c: ["run", "--grid", c.tmp / "nope.yaml"], ["nope.yaml"]),
    ("grid-threads-0", "run", grid(None, "--threads", "0"), ["--threads", ">= 1"]),
    # ---------------------------------------------------------------- run: flags (issue 24)
    ("grid-cli-seeds-0", "run", grid(None, "--seeds", "0"), ["--seeds must be >= 1", "'0'"]),
    ("grid-cli-threads-word", "run", grid(None, "--threads", "two"), ["--threads", "whole number", "'two'"]),
    ("grid-cli-cpus-per-step-0", "run", grid(None, "--cpus-per-step", "0"), ["--cpus-per-step", "> 0"]),
    ("grid-cli-gpu-below-minus-1", "run", grid(None, "--gpu", "-2"), ["--gpu", ">= -1"]),
    ("grid-cli-gpu-and-device-differ", "run", grid(None, "--gpu", "-1", "--device", "cuda:0"), ["--device", "--gpu"]),
    ("grid-cli-flag-prefix-refused", "run", grid(None, "--gpus", "0"), ["unrecognized", "--gpus", "--gpus-per-step"]),
    ("grid-cli-unknown-flag", "run", grid(None, "--epochs", "3"), ["unrecognized", "--epochs"]),
    ("grid-rounds-5", "run", grid(lambda t: t.replace("rounds: [0]", "rounds: [5]")), ["grid.yaml", "5"]),
    ("run-data-root-bad-label", "run", data_root_bad_label, ["raw_sample.csv", "'clk'", "expected 0 or 1"]),
    # ---------------------------------------------------------------- das publish / run
    ("das-publish-garbage-weights", "das publish", das_publish(weights_bytes="\x00garbage" * 8),
     ["--weights", "bad.pt", "expected a torch state_dict"]),
    ("das-publish-empty-weights", "das publish", das_publish(weights_bytes=""), ["--weights", "bad.pt", "expected"]),
    ("das-publish-weights-missing", "das publish", das_publish(weights="{tmp}/none.pt"), ["none.pt", "not found"]),
    ("das-publish-existing-id", "das publish", das_publish(snapshot_id="s1"), ["s1", "already exists"]),
    ("das-publish-bad-id", "das publish", das_publish(snapshot_id="../escape"), ["../escape"]),
    ("das-publish-params-not-json", "das publish", das_publish(params_text="{model: "), ["params"]),
    ("das-publish-params-no-model", "das publish", das_publish(params_text='{"embedding_dim": 8}'), ["model"]),
    ("das-publish-no-feature-map", "das publish", das_publish(feature_map_dir="{tmp}"), ["feature_map.json"]),
    ("das-run-corrupt-pinned", "das run", das_run("--snapshot", "s1", corrupt=True),
     ["s1", "weights.pt", "does not match the manifest"]),
    ("das-run-corrupt-current", "das run", das_run(corrupt=True), ["snapshot"]),
    ("das-run-unknown-snapshot", "das run", das_run("--snapshot", "nope"), ["nope"]),
    ("das-run-day-file-missing", "das run", das_run(day_files=["a={tmp}/missing.h5"]), ["missing.h5"]),
    ("das-run-day-file-garbage", "das run", das_run(day_files=["a={tmp}/day.h5"], day_bytes=b"garbage" * 20),
     ["day.h5"]),
    ("das-run-day-files-no-name", "das run", das_run(day_files=["{tmp}/x.h5"]), ["x.h5"]),
    ("das-run-bad-metastore-url", "das run", das_run("--metastore", "ftp://host/x"), ["ftp://host/x"]),
    # ---------------------------------------------------------------- report
    ("report-empty-folder", "report", report(_empty_dir), ["no records", "empty", "expected"]),
    ("report-records-missing", "report", report(lambda t: t / "none.jsonl"), ["none.jsonl"]),
    ("report-folder-missing", "report", report(lambda t: t / "no_results"), ["no such", "no_results", "expected"]),
    ("report-bad-json-line", "report", report(_records('{"a": 1}\n{oops\n')), ["recs.jsonl", "2", "json"]),
    ("report-record-wrong-schema", "report", report(_records('{"kind": "vm"}\n')), ["recs.jsonl", "1"]),
]


class _WouldRun(BaseException):
    """Not an Exception: the runner's per-cell ``except Exception`` must not record it."""


def _params() -> list:
    out = []
    for case in CASES:
        out.append(case if hasattr(case, "marks") else pytest.param(*case, id=case[0]))
    return out


@pytest.mark.parametrize("name,command,build,fragments", _params())
def test_bad_input_is_one_line_exit_2(name, command, build, fragments, tmp_path, raw_root, das_world, capsys,
                                      monkeypatch):
    ctx = Ctx(tmp_path, raw_root, das_world)
    argv = build(ctx)
    if command == "run":  # a grid that validates must not start training here: stop at the first cell
        import exfm_plugin.pipeline.runner as runner

        def would_run(*args, **kwargs):
            raise _WouldRun("the grid was accepted and its first cell started")
        monkeypatch.setattr(runner, "run_record", would_run)
    out_root = tmp_path / "out"
    before = tree_digest(out_root)
    result = run_cli(capsys, argv)
    assert result.code == 2, (result.code, result.err[-2000:])
    assert "Traceback" not in result.err
    line = result.error_line
    assert line.startswith(f"exfm {command}: "), line
    for fragment in fragments:
        assert fragment.lower() in line.lower(), (fragment, line)
    assert tree_digest(out_root) == before  # nothing written where the output goes


def test_verbose_adds_the_traceback(tmp_path, raw_root, capsys):
    argv = prep("taobaoad", None, "--vocab-days", "1,two")(Ctx(tmp_path, raw_root, None))
    result = run_cli(capsys, ["-v", *argv])
    assert result.code == 2 and "Traceback" in result.err
    assert result.error_line.startswith("exfm prep: bad day 'two'")


def test_internal_bug_keeps_its_traceback(tmp_path, raw_root, monkeypatch):
    """A bug is not the user's to fix: main() lets it propagate (the console script prints it)."""
    import data_prep.prepare as prepare_module

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")
    monkeypatch.setattr(prepare_module, "prepare", broken)
    argv = prep("taobaoad")(Ctx(tmp_path, raw_root, None))
    from exfm_plugin.cli import main
    with pytest.raises(RuntimeError, match="a bug"):
        main([str(a) for a in argv])


def test_existing_output_survives_a_refused_prep(tmp_path, raw_root, capsys):
    good = prep("taobaoad")(Ctx(tmp_path / "a", raw_root, None))
    good[good.index("--out") + 1] = tmp_path / "out"
    assert run_cli(capsys, good).code == 0
    before = tree_digest(tmp_path / "out")
    bad = prep("taobaoad", set_cell("raw_sample.csv", 3, "clk", "7"))(Ctx(tmp_path / "b", raw_root, None))
    bad[bad.index("--out") + 1] = tmp_path / "out"
    assert run_cli(capsys, bad).code == 2
    assert tree_digest(tmp_path / "out") == before and before


# ------------------------------------------------------------------------- the Python API
def _prepare(tmp: Path, raw_root: Path, **kw) -> None:
    from data_prep.prepare import prepare

    d = copy_raw(raw_root, "taobaoad", tmp / "in")
    prepare("taobaoad", "raw", str(d), str(tmp / "out"), **kw)


def _prepare_source(tmp: Path, source: str) -> None:
    from data_prep.prepare import prepare
    prepare("taobaoad", source, None, str(tmp / "out"))


def _student_with_fm_pred(tmp: Path, shape_of: Callable[[int], tuple]) -> None:
    import sys

    import torch
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_data import make_tiny_data, model_kwargs

    from exfm_plugin.distill import DistillConfig, ExFMStudent
    from exfm_plugin.models import MODEL_REGISTRY

    tiny = make_tiny_data(str(tmp / "tiny"), num_rows=64)
    vm = MODEL_REGISTRY["DeepFM"](tiny.feature_map, **model_kwargs(tmp, hidden_units=[8]))
    student = ExFMStudent(vm, DistillConfig(method="ah"))
    batch = next(tiny.batches(16))
    batch["fm_pred"] = torch.full(shape_of(16), 0.5)
    student.teacher_probs(batch)


def _negative_lr(tmp: Path) -> None:
    import sys
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_data import make_tiny_data, model_kwargs

    from exfm_plugin.models import MODEL_REGISTRY

    tiny = make_tiny_data(str(tmp / "tiny"), num_rows=32)
    MODEL_REGISTRY["DeepFM"](tiny.feature_map, **model_kwargs(tmp, learning_rate=-1e-3))


def _load_grid_text(text: str) -> Callable[[Path], None]:
    def run(tmp: Path) -> None:
        from exfm_plugin.pipeline.grid import load_grid
        (tmp / "g.yaml").write_text(text)
        load_grid(str(tmp / "g.yaml"))
    return run


def _spd_get_missing(tmp: Path) -> None:
    from exfm_plugin.das.spd import SnapshotStore
    SnapshotStore(str(tmp / "spd")).get("nope")


def _day_file_lengths(tmp: Path) -> None:
    import numpy as np

    from exfm_plugin.data.dayfile import write_day_file
    write_day_file(str(tmp / "d.h5"), {"a": np.zeros(3), "b": np.zeros(4)}, dataset_id="x", day=1)


def _record_bad(tmp: Path) -> None:
    from exfm_plugin.contracts.records import validate_record
    validate_record({"kind": "vm", "status": "ok"})


API_CASES = [
    ("api-prepare-vocab-9", lambda t, r: _prepare(t, r, vocab_policy=[9]), ["day 9", "1..8"]),
    ("api-prepare-vocab-string", lambda t, r: _prepare(t, r, vocab_policy="1,x"), ["'x'"]),
    ("api-prepare-size-10", lambda t, r: _prepare(t, r, size=10), ["size 10", "at least 1000"]),
    ("api-prepare-source-csv", lambda t, r: _prepare_source(t, "csv"), ["csv", "expected one of"]),
    ("api-student-fm-pred-short", lambda t, r: _student_with_fm_pred(t, lambda n: (n - 3,)),
     ["'fm_pred'", "(13,)", "16 rows"]),
    ("api-student-fm-pred-2-columns", lambda t, r: _student_with_fm_pred(t, lambda n: (n, 2)),
     ["'fm_pred'", "(16, 2)", "expected"]),
    ("api-model-negative-lr", lambda t, r: _negative_lr(t), ["learning_rate", "-0.001", ">= 0"]),
    ("api-load-grid-bad-yaml", lambda t, r: _load_grid_text("grid: [x\n")(t), ["g.yaml"]),
    ("api-spd-get-missing", lambda t, r: _spd_get_missing(t), ["nope"]),
    ("api-day-file-ragged", lambda t, r: _day_file_lengths(t), ["d.h5"]),
    ("api-record-invalid", lambda t, r: _record_bad(t), ["record"]),
]


@pytest.mark.parametrize("name,call,fragments", [pytest.param(*c, id=c[0]) for c in API_CASES])
def test_api_bad_input_raises_the_project_error(name, call, fragments, tmp_path, raw_root):
    with pytest.raises(ExfmInputError) as info:
        call(tmp_path, raw_root)
    text = str(info.value)
    for fragment in fragments:
        assert fragment.lower() in text.lower(), (fragment, text)
