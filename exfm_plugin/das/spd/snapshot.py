"""A snapshot loaded: the FM rebuilt from its files, in eval mode, labelling rows with predictions.

Rebuilding is the same whether the files come from the SPD (:meth:`.store.SnapshotStore.load`,
after verification) or from a training run about to be published (``exfm das publish``):
:func:`rebuild_model` does it for both. :func:`column_tensor` is the one rule for turning a
day-file column into a model input (the in-process and Ray engines use it too).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from fuxictr.features import FeatureMap

from ...contracts import FM_PRED, fm_pred_column
from .compat import check_compatible
from .manifest import FEATURE_MAP_JSON, SPDError, SnapshotInfo

__all__ = ["LoadedSnapshot", "WeightsMismatch", "column_tensor", "rebuild_model", "torch_device"]

logger = logging.getLogger("exfm_plugin.das.snapshot")  # the name before das/ became subpackages


class WeightsMismatch(SPDError, ValueError):
    """The weights do not fit the model that the params and feature map rebuild."""


def column_tensor(values: Any) -> torch.Tensor:
    """Day-file columns are narrow ints / float32: ids go to int64 (embedding lookups), values to float32."""
    arr = np.asarray(values)
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.int64))
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy().reshape(-1)


def torch_device(device: str | torch.device) -> tuple[torch.device, int]:
    """The device and fuxictr's ``gpu`` index for it (-1 for CPU)."""
    dev = torch.device(device)
    if dev.type == "cpu":
        return dev, -1
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={device!r} requested but CUDA is not available")
        index = 0 if dev.index is None else dev.index
        return torch.device("cuda", index), index
    raise ValueError(f"device={device!r}: expected 'cpu', 'cuda' or 'cuda:N'")


def rebuild_model(params: dict, dataset_id: str, feature_map_dir: str, state: Mapping[str, Any], *,
                  weights_name: str, params_name: str) -> tuple[torch.nn.Module, FeatureMap]:
    """``build_model(params, <feature map of feature_map_dir>)`` with ``state`` loaded strictly.

    :class:`WeightsMismatch` names ``weights_name`` and ``params_name`` (a file, a CLI option)
    when the weights do not fit; the model is left on the CPU, in training mode.
    """
    from ...config import build_model

    feature_map = FeatureMap(dataset_id, feature_map_dir)
    feature_map.load(os.path.join(feature_map_dir, FEATURE_MAP_JSON), params)
    model = build_model(params, feature_map)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WeightsMismatch(f"{weights_name} do not fit the model {params.get('model')} rebuilt from "
                              f"{params_name}: {e}") from e
    return model, feature_map


@dataclass(frozen=True, eq=False)
class LoadedSnapshot:
    """A snapshot's model, rebuilt and in eval mode, ready to label rows with FM predictions."""

    info: SnapshotInfo
    model: torch.nn.Module
    feature_map: FeatureMap

    @property
    def snapshot_id(self) -> str:
        return self.info.snapshot_id

    @property
    def feature_columns(self) -> list[str]:
        """The day-file columns the FM reads: its feature map's features, ``meta`` ones excluded."""
        return [name for name, spec in self.feature_map.features.items() if spec.get("type") != "meta"]

    def predict_batch(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """FM probabilities for one fuxictr batch dict: ``{"fm_pred": p}`` (single task) or
        ``{"fm_pred/<label>": p}`` per label (multi-task), each a float32 array of shape (B,).

        Extra columns (labels, ``fm_pred``, ids) are ignored; a missing feature is an error.
        """
        needed = self.feature_columns
        missing = [name for name in needed if name not in batch]
        if missing:
            raise KeyError(f"snapshot {self.snapshot_id}: batch lacks feature column(s) {missing}; "
                           f"the FM was trained on {needed}")
        inputs = {k: v if isinstance(v, torch.Tensor) else column_tensor(v)
                  for k, v in batch.items() if k in self.feature_map.features}
        with torch.no_grad():
            out = self.model(inputs)
        if "y_pred" in out and not self.info.multitask:
            return {FM_PRED: _to_numpy(out["y_pred"])}
        preds = {}
        for label in self.info.labels:
            key = f"{label}_pred"
            if key not in out:
                raise KeyError(f"snapshot {self.snapshot_id}: model {self.info.model} returned "
                               f"{sorted(out)}, expected {key!r} for label {label!r}")
            preds[fm_pred_column(label, multitask=True)] = _to_numpy(out[key])
        return preds

    def check_compatible(self, day_attrs_or_feature_map: Any) -> None:
        """:func:`.compat.check_compatible` against this snapshot's feature map."""
        check_compatible(self.snapshot_id, self.feature_map, day_attrs_or_feature_map)
