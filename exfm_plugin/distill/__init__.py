"""The paper's contribution: auxiliary heads, gradient/label scaling, the Student Adapter."""
from .config import METHODS, DistillConfig
from .grad_scale import grad_scale
from .heads import DistillationHead, StudentAdapter
from .losses import h, scale_labels
from .student import ExFMStudent, export_serving_model

__all__ = ["METHODS", "DistillConfig", "grad_scale", "DistillationHead", "StudentAdapter", "h",
           "scale_labels", "ExFMStudent", "export_serving_model"]
