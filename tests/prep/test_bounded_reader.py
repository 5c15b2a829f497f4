"""The bucketed TaobaoAd behaviour reader against a brute-force pure-Python computation.

The expectation is computed here another way: for each impression (u, t), scan the whole log
in file order, keep u's rows with time < t, order them by (time, file position) and take
the last 50. The reader must agree on every row, whatever the number of buckets and blocks.
"""
from __future__ import annotations

import gc
import gzip
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from data_prep.errors import DataFormatError
from data_prep.readers import taobaoad
from data_prep.readers.behaviour_buckets import BehaviorIndex, BucketedSequences

T0 = 1494032110
BTAGS = ["pv", "cart", "fav", "buy"]


def write_raw(d: Path, seed: int = 0) -> tuple[list[tuple], list[tuple]]:
    """A small raw set with ties, users without behaviours, later behaviours and > 50 histories."""
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    users = list(range(1, 13))  # 11 and 12 have no behaviour at all
    seconds = T0 + np.arange(0, 400, 5)  # few distinct seconds: many ties
    log = []
    for u in users[:10]:
        n = 140 if u <= 3 else int(rng.integers(0, 30))  # users 1-3: more than 50 before most impressions
        for _ in range(n):
            brand = None if rng.random() < 0.2 else int(rng.integers(1, 9))
            log.append((u, int(rng.choice(seconds)), str(rng.choice(BTAGS)), int(rng.integers(1, 500)), brand))
    log = [log[i] for i in rng.permutation(len(log))]  # file order is not time order
    imps = []
    for _ in range(160):
        u = int(rng.choice(users))
        t = int(rng.choice(seconds)) if rng.random() < 0.6 else int(rng.integers(T0 - 20, T0 + 420))
        imps.append((u, t, int(rng.integers(1, 4)), "430548_1007", 0, 1))
    imps += [imps[0], imps[1]]  # the same (user, time) twice
    (d / "raw_sample.csv").write_text("user,time_stamp,adgroup_id,pid,nonclk,clk\n"
                                      + "".join(",".join(map(str, r)) + "\n" for r in imps))
    (d / "ad_feature.csv").write_text("adgroup_id,cate_id,campaign_id,customer,brand,price\n"
                                      "1,10,100,1000,NULL,12.5\n2,20,200,2000,55,3\n3,10,300,3000,56,1e3\n")
    (d / "user_profile.csv").write_text(
        "userid,cms_segid,cms_group_id,final_gender_code,age_level,pvalue_level,shopping_level,occupation,"
        "new_user_class_level\n" + "".join(f"{u},0,1,1,2,1,3,0,{u % 4 + 1}\n" for u in users))
    (d / "behavior_log.csv").write_text(
        "user,time_stamp,btag,cate,brand\n"
        + "".join(f"{u},{t},{b},{c},{'' if br is None else br}\n" for u, t, b, c, br in log))
    return imps, log


def brute_force(user: int, t: int, log: list[tuple], max_len: int = 50) -> tuple[list, list, list]:
    before = sorted(((bt, i, c, br, b) for i, (u, bt, b, c, br) in enumerate(log) if u == user and bt < t))
    last = before[-max_len:] if before else []
    return [r[2] for r in last], [r[3] for r in last], [r[4] for r in last]


def check_against_brute_force(full: pl.DataFrame, log: list[tuple]) -> None:
    for row in full.iter_rows(named=True):
        cate, brand, btag = brute_force(row["userid"], row["time"], log)
        assert (row["cate_his"], row["brand_his"], row["btag_his"]) == (cate, brand, btag), row


@pytest.mark.parametrize("bucket_rows,block_bytes,slab_keys", [(10 ** 9, 32 << 20, 10 ** 6), (60, 300, 16),
                                                             (7, 64, 3)])
def test_bucketed_sequences_equal_brute_force(tmp_path, bucket_rows, block_bytes, slab_keys):
    imps, log = write_raw(tmp_path / "raw")
    res = taobaoad.read_raw(tmp_path / "raw", bucket_rows=bucket_rows, block_bytes=block_bytes,
                            slab_keys=slab_keys, work_dir=tmp_path / "work")
    if bucket_rows < 100:
        assert res.extra["behaviour_buckets"] > 5  # really split
        assert len(res.add_sequences.slabs) > 5
    full = res.full_frame()
    assert full.height == len(imps)
    assert full.select("userid", "time").equals(res.frame.select("userid", "time"))
    check_against_brute_force(full, log)
    lens = full["cate_his"].list.len()
    assert lens.max() == 50  # the cap is reached and holds
    assert (lens == 0).sum() > 0 and full.filter(pl.col("userid") >= 11)["cate_his"].list.len().max() == 0
    # slices (as prepare asks, one day at a time) agree with the whole
    parts = [res.add_sequences(res.frame.slice(i, 37)) for i in range(0, res.frame.height, 37)]
    assert pl.concat(parts).equals(full)


def test_bucketed_equals_in_memory_index(tmp_path):
    """Byte-identical to the previous reader: one in-memory index over the whole log."""
    write_raw(tmp_path / "raw", seed=1)
    res = taobaoad.read_raw(tmp_path / "raw", bucket_rows=25, block_bytes=128, slab_keys=7)
    log = pl.read_csv(tmp_path / "raw" / "behavior_log.csv", schema_overrides={"brand": pl.Int64})
    expected = BehaviorIndex(log, 50).attach(res.frame)
    got = res.full_frame()
    assert got.schema == expected.schema
    assert got.equals(expected)


def test_gz_behaviour_log_same_sequences(tmp_path):
    write_raw(tmp_path / "raw", seed=2)
    plain = taobaoad.read_raw(tmp_path / "raw", bucket_rows=40, block_bytes=256, slab_keys=9).full_frame()
    for name in ("behavior_log.csv", "raw_sample.csv"):
        p = tmp_path / "raw" / name
        with open(p, "rb") as src, gzip.open(str(p) + ".gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        p.unlink()
    res = taobaoad.read_raw(tmp_path / "raw", bucket_rows=40, block_bytes=256, slab_keys=9)
    assert res.files["behavior_log"].endswith("behavior_log.csv.gz")
    assert res.full_frame().equals(plain)


def test_bad_cell_deep_in_the_log_names_its_row(tmp_path):
    _, log = write_raw(tmp_path / "raw", seed=3)
    p = tmp_path / "raw" / "behavior_log.csv"
    lines = p.read_text().splitlines()
    lines[len(lines) - 5] = "4,notatime,pv,1,2"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError) as ei:
        taobaoad.read_raw(tmp_path / "raw", block_bytes=200)
    assert ei.value.column == "time_stamp" and ei.value.row == len(lines) - 5
    assert "behavior_log.csv" in str(ei.value)


def test_work_files_are_deleted(tmp_path):
    write_raw(tmp_path / "raw", seed=4)
    res = taobaoad.read_raw(tmp_path / "raw", bucket_rows=50, work_dir=tmp_path / "work")
    seq = res.add_sequences
    assert isinstance(seq, BucketedSequences) and any(seq.dir.iterdir())
    assert not list(seq.dir.glob("log_*.arrow"))  # the bucketed log is gone once sequences are stored
    d = seq.dir
    del res, seq
    gc.collect()
    assert not d.exists()


def test_row_estimate_plain_and_gz(tmp_path):
    """The bucket count comes from an estimate of the log's rows read off its first block."""
    from data_prep.readers.behaviour_buckets import estimate_rows

    rng = np.random.default_rng(5)
    rows = [f"{u},{T0 + t},pv,{c},{b}\n" for u, t, c, b in rng.integers(1, 10 ** 6, (200_000, 4))]
    p = tmp_path / "behavior_log.csv"
    p.write_text("user,time_stamp,btag,cate,brand\n" + "".join(rows))
    with open(p, "rb") as src, gzip.open(str(p) + ".gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    for path in (p, Path(str(p) + ".gz")):
        est = estimate_rows(path, block_bytes=1 << 20)
        assert 0.8 * len(rows) < est < 1.25 * len(rows), (path.name, est)
    assert estimate_rows(p, block_bytes=64 << 20) == len(rows)  # small file: counted exactly


@pytest.mark.parametrize("block_bytes", [1, 7, 64, 10 ** 6])
@pytest.mark.parametrize("ending", ["\n", "\r\n", ""])
def test_csv_blocks_cover_every_line_once(tmp_path, block_bytes, ending):
    from data_prep.readers.common import iter_csv_blocks

    rows = [f"{i},{'x' * (i % 13)}" for i in range(200)]
    sep = "\r\n" if ending == "\r\n" else "\n"
    text = "a,b" + sep + sep.join(rows) + ending
    p = tmp_path / "t.csv"
    p.write_text(text, newline="")
    with gzip.open(str(p) + ".gz", "wb") as g:
        g.write(text.encode())
    for path in (p, Path(str(p) + ".gz")):
        got = []
        for block in iter_csv_blocks(path, block_bytes):
            lines = block.decode().splitlines()
            assert lines[0] == "a,b"  # every block starts with the header
            got += lines[1:]
        assert got == rows


def test_work_dir_of_a_killed_reader_is_swept(tmp_path):
    """A reader killed by SIGKILL runs no finalizer; the next reader removes its work dir."""
    import subprocess
    import sys

    from exfm_plugin.fsutil import HOST_TAG

    write_raw(tmp_path / "raw", seed=6)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    stale = tmp_path / "work" / f".exfm_behaviour.{HOST_TAG}-{dead}-0123abcd.tmp"
    stale.mkdir(parents=True)
    (stale / "log_0000.arrow").write_bytes(b"x")
    res = taobaoad.read_raw(tmp_path / "raw", work_dir=tmp_path / "work")
    assert not stale.exists()
    assert res.add_sequences.dir.parent == tmp_path / "work" and res.add_sequences.dir.exists()
