"""BARS baseline models on FuxiCTR layers, each split into backbone + serving head."""
from .base import ExFMModel, check_protocol
from .FM import FM

__all__ = ["ExFMModel", "check_protocol", "FM"]
