"""The VM protocol every ExFM-capable model follows: ``backbone(X) -> x`` and
``serving_head(x) -> logit``.

The ExFM student attaches its distillation heads to ``x``, so a model only has to split
its forward pass at the point where the paper's "backbone output vector" lives.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from fuxictr.pytorch.models import BaseModel

from ..metrics import ExFMMetricsMixin

LOGIT_LOSSES = {"bce", "binary_crossentropy", "binary_cross_entropy"}


class ExFMModel(ExFMMetricsMixin, BaseModel):
    """A FuxiCTR ranking model split into a backbone and a serving head.

    Subclasses implement :meth:`backbone` and :meth:`serving_head`; ``forward`` composes
    them and returns fuxictr's ``{"y_pred": ...}`` (plus the raw ``logit``), so fuxictr's
    ``fit`` / ``evaluate`` / ``predict`` work unchanged.
    """

    def backbone(self, X: dict[str, torch.Tensor]) -> torch.Tensor:
        """Feature dict (already on the device) -> representation vector ``x`` (B, d)."""
        raise NotImplementedError

    def serving_head(self, x: torch.Tensor) -> torch.Tensor:
        """Representation ``x`` -> serving logit (B, 1)."""
        raise NotImplementedError

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        X = self.get_inputs(inputs)
        logit = self.serving_head(self.backbone(X))
        return {"y_pred": self.output_activation(logit), "logit": logit}

    def get_inputs(self, inputs, feature_source=None):
        """Like fuxictr's, but ignores batch columns that are not features (``fm_pred``,
        example ids): the FM supervision travels in the same batch dict."""
        known = {k: v for k, v in inputs.items() if k in self.feature_map.features}
        return super().get_inputs(known, feature_source)

    def compile(self, optimizer, loss, lr):
        super().compile(optimizer, loss, lr)
        self._loss_name = loss if isinstance(loss, str) else None

    def add_loss(self, return_dict, y_true):
        """BCE from the logit when the configured loss is BCE: the same value as fuxictr's
        loss on probabilities, but finite for saturated predictions."""
        if getattr(self, "_loss_name", None) in LOGIT_LOSSES and "logit" in return_dict:
            return F.binary_cross_entropy_with_logits(return_dict["logit"], y_true)
        return super().add_loss(return_dict, y_true)

    def compute_loss(self, return_dict, y_true):
        self.observe_training_labels(y_true)  # compute_loss runs only in training: NE's base rate
        return super().compute_loss(return_dict, y_true)

    def fit(self, data_generator, epochs=1, validation_data=None, max_gradient_norm=10., **kwargs):
        os.makedirs(self.model_dir, exist_ok=True)  # fuxictr saves checkpoints there
        return super().fit(data_generator, epochs, validation_data, max_gradient_norm, **kwargs)

    def serving_parameter_count(self) -> int:
        """Number of parameters of the serving model (trainable or frozen)."""
        return sum(p.numel() for p in self.parameters())


def check_protocol(model: object) -> None:
    """Raise a TypeError naming what is missing when ``model`` is not an ExFM VM."""
    missing = [name for name in ("backbone", "serving_head", "get_inputs", "get_labels")
               if not callable(getattr(model, name, None))]
    if missing:
        raise TypeError(
            f"vm={type(model).__name__} does not follow the ExFM backbone/head protocol: "
            f"missing method(s) {missing}; subclass exfm_plugin.models.ExFMModel")
