"""ExFM for FuxiCTR: external distillation from a foundation model to vertical models.

The models and the student are exported lazily, so ``exfm prep`` and the data modules start
without importing torch and fuxictr's model code.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    **{name: "exfm_plugin.models" for name in
       ("ExFMModel", "MODEL_REGISTRY", "FM", "FmFM", "DeepFM", "DCN", "DCNv2", "DMIN", "MultiTaskDMIN")},
    **{name: "exfm_plugin.distill" for name in ("DistillConfig", "ExFMStudent", "export_serving_model")},
    "H5DataLoader": "exfm_plugin.data",
    "load_exported": "exfm_plugin.export",  # an `exfm export` folder -> (model, feature_map)
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'exfm_plugin' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
