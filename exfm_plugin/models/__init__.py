"""BARS baseline models on FuxiCTR layers, each split into backbone + serving head."""
from .base import ExFMModel, check_protocol
from .DCN import DCN
from .DCNv2 import DCNv2
from .DeepFM import DeepFM
from .DMIN import DMIN
from .FM import FM
from .FmFM import FmFM
from .MultiTaskDMIN import MultiTaskDMIN

MODEL_REGISTRY: dict[str, type] = {
    "FM": FM,
    "FmFM": FmFM,
    "DeepFM": DeepFM,
    "DCN": DCN,
    "DCNv2": DCNv2,
    "DMIN": DMIN,
    "MultiTaskDMIN": MultiTaskDMIN,
}

__all__ = ["ExFMModel", "check_protocol", "MODEL_REGISTRY",
           "FM", "FmFM", "DeepFM", "DCN", "DCNv2", "DMIN", "MultiTaskDMIN"]
