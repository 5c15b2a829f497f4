"""ExFM for FuxiCTR: external distillation from a foundation model to vertical models."""
from .models import FM, ExFMModel

__version__ = "0.1.0"
__all__ = ["ExFMModel", "FM"]
