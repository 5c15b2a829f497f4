"""HDF5 day files: one file per time split ("day"), one HDF5 dataset per column.

Why HDF5 and not fuxictr's parquet: a day is read many times (FM rounds, every VM method),
and a column store with fixed-width, narrow integer columns and chunked datasets can be
sliced straight into numpy without decoding, so the loader (``loader.py``) streams
chunks at memory speed. The FM-augmented split of a day references the base day file
through HDF5 external links, so the FM predictions of a day cost a few MB, not a copy of
the features.

Layout (``SCHEMA_VERSION = 1``):

* one dataset per column at the root, row ``i`` of every dataset is example ``i``;
  sequences are 2-D ``(rows, max_len)``, pretrained vectors 2-D float32;
* integer columns are stored in the narrowest signed integer dtype holding their range
  (loaders upcast to int64), floating columns as float32;
* root attributes: ``dataset_id``, ``day`` (1-based), ``time_range`` ([min, max], absent
  when unknown), ``num_rows``, ``schema_version``, ``columns`` (JSON list of
  ``{"name", "dtype", "shape"}``), plus caller extras (e.g. ``split_note``);
* an FM-augmented split adds ``fm_pred`` (single task) or ``fm_pred/<label>`` (one per
  task) and the attributes ``snapshot_id``, ``base_file``, ``base_dataset_id``,
  ``base_day``, ``fm_tasks``; every base column is an external link to the base file.

Every write is atomic (:func:`exfm_plugin.fsutil.atomic_file`: a temporary sibling, fsync'ed,
then renamed): a reader never sees half a file and a failed write leaves an existing file
untouched.
"""
from __future__ import annotations

from ..errors import ExfmInputError

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import h5py
import numpy as np

from ..contracts import FM_PRED, fm_pred_column
from ..fsutil import atomic_file

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1

#: Attributes every day file carries (``time_range`` is optional).
REQUIRED_ATTRS = ("dataset_id", "day", "num_rows", "schema_version", "columns")
RESERVED_ATTRS = frozenset(REQUIRED_ATTRS) | {
    "time_range", "snapshot_id", "base_file", "base_dataset_id", "base_day", "fm_tasks"}

#: Storage filter. Measured on 1M TaobaoAd-shaped rows (the data of
#: ``benchmarks/perf/loader_throughput.py``; 262144-row slices of every column, page cache
#: warm): uncompressed 398 MB, full read 0.12 s; lzf + shuffle 179 MB, 0.96 s. Reading is
#: what a day file is for, so the default is no compression; ``compression="lzf"`` halves
#: the disk footprint (padded sequences compress well) for an 8x slower read.
DEFAULT_COMPRESSION: str | None = None
#: Target bytes per HDF5 chunk; rows per chunk is a power of two so that the loader's
#: power-of-two ``chunk_rows`` slices cover whole chunks (no partial-chunk reads).
CHUNK_BYTES = 1 << 20
MAX_CHUNK_ROWS = 1 << 16

_INT_DTYPES = (np.int8, np.int16, np.int32, np.int64)


class DayFileError(ExfmInputError):
    """A day file is malformed, of another schema version, or does not hold a column."""


# --------------------------------------------------------------------------- helpers
def narrowest_int_dtype(min_value: int, max_value: int) -> np.dtype:
    """Smallest signed integer dtype holding ``[min_value, max_value]``: ids are
    non-negative, but a signed type keeps torch (no uint16/uint32 indexing) happy."""
    for dt in _INT_DTYPES:
        info = np.iinfo(dt)
        if info.min <= min_value and max_value <= info.max:
            return np.dtype(dt)
    raise OverflowError(f"integer range [{min_value}, {max_value}] does not fit int64")


def _storage_array(name: str, values: Any, path: str) -> np.ndarray:
    """The array as it is stored: narrowest signed int, or float32."""
    arr = np.asarray(values)
    if arr.ndim == 0:
        raise DayFileError(f"{path}: column {name!r} is a scalar; expected an array with one row per example")
    if arr.dtype == np.bool_:
        return arr.astype(np.int8)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.size == 0:
            return arr.astype(np.int8)
        lo, hi = int(arr.min()), int(arr.max())
        return arr.astype(narrowest_int_dtype(lo, hi), copy=False)
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float32, copy=False)
    raise DayFileError(
        f"{path}: column {name!r} has dtype {arr.dtype}; expected integer ids, bool, or floats "
        f"(encode strings to ids first)")


def _chunk_rows(arr: np.ndarray) -> int:
    row_bytes = max(1, arr.itemsize * int(np.prod(arr.shape[1:], dtype=np.int64)))
    rows = max(1, CHUNK_BYTES // row_bytes)
    rows = 1 << (rows.bit_length() - 1)  # power of two
    return int(min(rows, MAX_CHUNK_ROWS, arr.shape[0]))


def _create_column(f: h5py.File, name: str, arr: np.ndarray, compression: str | None) -> None:
    kw: dict[str, Any] = {}
    if arr.shape[0] > 0:
        kw["chunks"] = (_chunk_rows(arr),) + arr.shape[1:]
        if compression is not None:
            kw["compression"] = compression
            kw["shuffle"] = arr.itemsize > 1
    f.create_dataset(name, data=arr, **kw)


def _column_entry(name: str, arr: np.ndarray) -> dict[str, Any]:
    return {"name": name, "dtype": str(arr.dtype), "shape": [int(s) for s in arr.shape]}


def _check_name(name: Any, path: str) -> str:
    if not isinstance(name, str) or not name or name.startswith("/") or name.endswith("/") or "//" in name:
        raise DayFileError(f"{path}: invalid column name {name!r}; expected a non-empty relative HDF5 path")
    return name


def _set_extra_attrs(f: h5py.File, attrs: Mapping[str, Any] | None, path: str) -> None:
    for key, value in (attrs or {}).items():
        if key in RESERVED_ATTRS:
            raise DayFileError(f"{path}: attribute {key!r} is reserved by the day-file schema; "
                               f"pass it through the dedicated argument")
        try:
            f.attrs[key] = value
        except (TypeError, ValueError) as exc:
            raise DayFileError(f"{path}: attribute {key!r}={value!r} cannot be stored in HDF5 "
                               f"({exc}); use str, numbers or arrays (json.dumps nested data)") from exc


@contextlib.contextmanager
def _atomic_h5(path: str) -> Iterator[h5py.File]:
    """Yield an h5py file that appears at ``path`` only when the block succeeds (``atomic_file``)."""
    with atomic_file(path) as tmp:
        with h5py.File(tmp, "w") as f:
            yield f
            f.flush()


# --------------------------------------------------------------------------- writing
def write_day_file(path: str | os.PathLike,
                   columns: Mapping[str, np.ndarray],
                   *,
                   dataset_id: str,
                   day: int,
                   time_range: tuple[int, int] | None = None,
                   attrs: Mapping[str, Any] | None = None,
                   compression: str | None = DEFAULT_COMPRESSION) -> None:
    """Write one day's columns atomically (see the module docstring for the layout).

    ``columns`` maps a column name to an array whose first axis is the row; all must have
    the same number of rows. Integer columns are narrowed, floats stored as float32.
    """
    path = os.fspath(path)
    if not columns:
        raise DayFileError(f"{path}: no columns to write")
    if isinstance(day, bool) or not isinstance(day, (int, np.integer)) or day < 1:
        raise DayFileError(f"{path}: day={day!r}; expected a 1-based integer")
    if time_range is not None:
        lo, hi = (int(v) for v in time_range)
        if lo > hi:
            raise DayFileError(f"{path}: time_range=({lo}, {hi}); expected min <= max")
    first_name, num_rows = None, None
    for name, values in columns.items():
        _check_name(name, path)
        n = len(values)
        if num_rows is None:
            first_name, num_rows = name, n
        elif n != num_rows:
            raise DayFileError(f"{path}: column {name!r} has {n} rows but column {first_name!r} "
                               f"has {num_rows}; every column needs one row per example")
    entries = []
    with _atomic_h5(path) as f:
        for name, values in columns.items():
            arr = _storage_array(name, values, path)
            _create_column(f, name, arr, compression)
            entries.append(_column_entry(name, arr))
        f.attrs["dataset_id"] = str(dataset_id)
        f.attrs["day"] = int(day)
        if time_range is not None:
            f.attrs["time_range"] = np.asarray([lo, hi], dtype=np.int64)
        f.attrs["num_rows"] = int(num_rows)
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["columns"] = json.dumps(entries)
        _set_extra_attrs(f, attrs, path)
    logger.info("Wrote day file %s: dataset_id=%s day=%d rows=%d columns=%d",
                path, dataset_id, day, num_rows, len(entries))


def _validated_fm_pred(values: Any, num_rows: int, task: str, base: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise DayFileError(f"{task}: shape {arr.shape} dtype {arr.dtype}; expected one float "
                           f"probability per row of {base}")
    if arr.shape[0] != num_rows:
        raise DayFileError(f"{task}: {arr.shape[0]} predictions but base day file {base} has "
                           f"{num_rows} rows")
    arr = arr.astype(np.float32)
    bad = ~np.isfinite(arr) | (arr < 0.0) | (arr > 1.0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DayFileError(f"{task}: value {float(arr[row])!r} at row {row} (of {int(bad.sum())} bad rows) "
                           f"is not a probability; expected finite values in [0, 1]")
    return arr


def write_fm_supervision(base_day_path: str | os.PathLike,
                         out_path: str | os.PathLike,
                         fm_pred: np.ndarray | Mapping[str, np.ndarray],
                         *,
                         snapshot_id: str,
                         attrs: Mapping[str, Any] | None = None) -> None:
    """Write the FM-augmented split of a day: ``fm_pred`` (array, single task) or
    ``fm_pred/<label>`` (mapping label -> array), plus an external link to every base
    column, so the small file reads like a full day file without copying features.

    Links are stored relative to ``out_path``'s directory: move the base and the augmented
    file together. Links to a base that is itself augmented point at its own base.
    """
    base = os.path.abspath(os.fspath(base_day_path))
    out = os.fspath(out_path)
    base_attrs = read_day_attrs(base)
    num_rows = base_attrs["num_rows"]
    if isinstance(fm_pred, Mapping):
        if not fm_pred:
            raise DayFileError(f"{out}: fm_pred mapping is empty; expected one array per task label")
        preds = {fm_pred_column(_check_name(label, out), multitask=True):
                 _validated_fm_pred(v, num_rows, f"{out}: fm_pred[{label!r}]", base) for label, v in fm_pred.items()}
        tasks = list(fm_pred.keys())
    else:
        preds = {FM_PRED: _validated_fm_pred(fm_pred, num_rows, f"{out}: fm_pred", base)}
        tasks = []
    out_dir = os.path.dirname(os.path.abspath(out))
    # resolve each base column to the file that really holds it
    targets: dict[str, tuple[str, str]] = {}
    with h5py.File(base, "r") as fb:
        for entry in base_attrs["columns"]:
            name = entry["name"]
            if name == FM_PRED or name.startswith(FM_PRED + "/"):
                continue  # superseded by the new supervision
            link = fb.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                target = os.path.normpath(os.path.join(os.path.dirname(base), link.filename))
                targets[name] = (target, link.path)
            else:
                targets[name] = (base, "/" + name)
    entries = [e for e in base_attrs["columns"] if e["name"] in targets]
    with _atomic_h5(out) as f:
        for name, (target, obj_path) in targets.items():
            f[name] = h5py.ExternalLink(os.path.relpath(target, out_dir), obj_path)
        for name, arr in preds.items():
            f.create_dataset(name, data=arr)  # small: contiguous, uncompressed
            entries.append(_column_entry(name, arr))
        for key in ("dataset_id", "day", "num_rows"):
            f.attrs[key] = base_attrs[key]
        if base_attrs.get("time_range") is not None:
            f.attrs["time_range"] = np.asarray(base_attrs["time_range"], dtype=np.int64)
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["columns"] = json.dumps(entries)
        f.attrs["snapshot_id"] = str(snapshot_id)
        f.attrs["base_file"] = os.path.relpath(base, out_dir)
        f.attrs["base_dataset_id"] = base_attrs["dataset_id"]
        f.attrs["base_day"] = base_attrs["day"]
        f.attrs["fm_tasks"] = json.dumps(tasks)
        # keep the base's caller extras (e.g. split_note), then the caller's own
        for key, value in base_attrs.items():
            if key not in RESERVED_ATTRS and (attrs is None or key not in attrs):
                f.attrs[key] = value
        _set_extra_attrs(f, attrs, out)
    logger.info("Wrote FM supervision %s for %s (snapshot %s, %s)", out, base, snapshot_id,
                ", ".join(preds))


# --------------------------------------------------------------------------- reading
def _attr_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _checked_attrs(f: h5py.File, path: str) -> dict[str, Any]:
    raw = {k: _attr_value(v) for k, v in f.attrs.items()}
    version = raw.get("schema_version")
    if version is None:
        raise DayFileError(f"{path}: not an exfm day file (no 'schema_version' attribute); "
                           f"expected schema_version={SCHEMA_VERSION}")
    if version != SCHEMA_VERSION:
        raise DayFileError(f"{path}: day-file schema_version={version} found, expected "
                           f"{SCHEMA_VERSION}; rewrite the file with this exfm version")
    missing = [k for k in REQUIRED_ATTRS if k not in raw]
    if missing:
        raise DayFileError(f"{path}: day file lacks attribute(s) {missing} "
                           f"(schema_version={SCHEMA_VERSION} expects {list(REQUIRED_ATTRS)})")
    raw["columns"] = json.loads(raw["columns"])
    if "fm_tasks" in raw:
        raw["fm_tasks"] = json.loads(raw["fm_tasks"])
    if raw.get("time_range") is not None:
        raw["time_range"] = tuple(int(v) for v in raw["time_range"])
    return raw


def column_names(attrs: Mapping[str, Any]) -> list[str]:
    """The names of the columns a day file's attributes list."""
    return [c["name"] for c in attrs["columns"]]


def extra_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes a writer added beyond the schema's reserved ones (carried to a copy)."""
    return {k: v for k, v in attrs.items() if k not in RESERVED_ATTRS}


def read_day_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """Root attributes as Python values (``columns`` parsed from JSON, ``time_range`` a
    tuple); raises :class:`DayFileError` for a foreign or other-version file."""
    path = os.fspath(path)
    with open_day_file(path) as (_, attrs):
        return attrs


@contextlib.contextmanager
def open_day_file(path: str | os.PathLike) -> Iterator[tuple[h5py.File, dict[str, Any]]]:
    """Open a day file read-only after checking its schema; yields ``(h5py.File, attrs)``."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"day file {path} does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:  # h5py's "file signature not found" & co: not an HDF5 file, a user's error
        raise DayFileError(f"{path}: cannot open as HDF5 ({exc}); expected a day file written by exfm prep "
                           "or exfm_plugin.data.write_day_file") from exc
    with f:
        attrs = _checked_attrs(f, path)
        if "base_file" in attrs:
            base = os.path.join(os.path.dirname(os.path.abspath(path)), attrs["base_file"])
            if not os.path.exists(base):
                raise FileNotFoundError(f"{path}: augmented split links to base day file {base}, "
                                        f"which does not exist (move base and augmented files together)")
        yield f, attrs


def get_column(f: h5py.File, attrs: Mapping[str, Any], name: str, path: str) -> h5py.Dataset:
    """The dataset of column ``name`` (following external links), checked to have
    ``num_rows`` rows; errors name the file, the column and what the file holds."""
    try:
        obj = f.get(name)
    except (KeyError, OSError) as exc:
        raise DayFileError(f"{path}: column {name!r} cannot be opened ({exc}); its external link "
                           f"target may be missing or unreadable") from exc
    if obj is None:
        raise DayFileError(f"{path}: no column {name!r}; the file holds {column_names(attrs)}")
    if isinstance(obj, h5py.Group):
        raise DayFileError(f"{path}: {name!r} is a group of columns {sorted(obj.keys())}; "
                           f"request one of them as '{name}/<name>'")
    if obj.shape[0] != attrs["num_rows"]:
        raise DayFileError(f"{path}: column {name!r} has {obj.shape[0]} rows, expected "
                           f"num_rows={attrs['num_rows']} (was a linked base file replaced?)")
    return obj


def read_day_columns(path: str | os.PathLike,
                     columns: Sequence[str] | None = None,
                     rows: slice | np.ndarray = slice(None)) -> dict[str, np.ndarray]:
    """Read columns (default: all listed in the ``columns`` attribute) in their stored
    dtypes; ``rows`` is a slice or an array of row indices. Works on augmented splits."""
    path = os.fspath(path)
    with open_day_file(path) as (f, attrs):
        names = column_names(attrs) if columns is None else list(columns)
        out = {}
        for name in names:
            ds = get_column(f, attrs, name, path)
            if isinstance(rows, slice):
                out[name] = ds[rows]
            else:
                idx = np.asarray(rows, dtype=np.int64)
                if idx.size == 0:
                    out[name] = ds[0:0]
                    continue
                lo, hi = int(idx.min()), int(idx.max())
                if lo < 0 or hi >= ds.shape[0]:
                    raise IndexError(f"{path}: row index out of range [0, {ds.shape[0]}) for column {name!r}")
                out[name] = ds[lo:hi + 1][idx - lo]
        return out
