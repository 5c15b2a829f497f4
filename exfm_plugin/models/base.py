"""The VM protocol every ExFM-capable model follows: ``backbone(X) -> x`` and
``serving_head(x) -> logit``.

The ExFM student attaches its distillation heads to ``x``, so a model only has to split
its forward pass at the point where the paper's "backbone output vector" lives.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from fuxictr.pytorch.layers import FeatureEmbeddingDict
from fuxictr.pytorch.models import BaseModel
from torch import nn

from ..metrics import ExFMMetricsMixin
from .training import TrainingOptionsMixin

LOGIT_LOSSES = {"bce", "binary_crossentropy", "binary_cross_entropy"}


class FeatureInputsMixin:
    """``get_inputs`` like fuxictr's, but ignoring batch columns that are not features
    (``fm_pred``, ``fm_pred/<label>``, example ids): the FM supervision travels in the same
    batch dict. Put it before the fuxictr base class."""

    def get_inputs(self, inputs, feature_source=None):
        known = {k: v for k, v in inputs.items() if k in self.feature_map.features}
        return super().get_inputs(known, feature_source)


class ExFMModel(FeatureInputsMixin, TrainingOptionsMixin, ExFMMetricsMixin, BaseModel):
    """A FuxiCTR ranking model split into a backbone and a serving head.

    Subclasses implement :meth:`backbone` and :meth:`serving_head`; ``forward`` composes
    them and returns fuxictr's ``{"y_pred": ...}`` (plus the raw ``logit``), so fuxictr's
    ``fit`` / ``evaluate`` / ``predict`` work unchanged. Every subclass also takes the
    training options ``embedding_update``, ``precision`` and ``torch_compile``
    (:mod:`exfm_plugin.models.training`).
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

    def reset_parameters(self):
        super().reset_parameters()
        for module in self.modules():
            if isinstance(module, FeatureEmbeddingDict):
                init_unshared_sequence_tables(module)

    def fit(self, data_generator, epochs=1, validation_data=None, max_gradient_norm=10., **kwargs):
        os.makedirs(self.model_dir, exist_ok=True)  # fuxictr saves checkpoints there
        return super().fit(data_generator, epochs, validation_data, max_gradient_norm, **kwargs)

    def serving_parameter_count(self) -> int:
        """Number of parameters of the serving model (trainable or frozen)."""
        return sum(p.numel() for p in self.parameters())


def init_unshared_sequence_tables(embedding: FeatureEmbeddingDict) -> None:
    """Initialise tables that fuxictr 2.3.10 leaves at torch's N(0, 1) default.

    ``FeatureEmbeddingDict.init_weights`` skips every feature whose spec names a
    ``share_embedding`` target, assuming the table is the target's. With ``use_sharing=False``
    (as in ``LogisticRegression``) such a feature gets its own table, which then keeps N(0, 1)
    weights: a 50-long behaviour sequence sum-pooled over them starts the first-order term at
    a logit of about +-10. Those tables get the layer's own initializer here.
    """
    features = embedding._feature_map.features
    for name, table in embedding.embedding_layers.items():
        target = features[name].get("share_embedding")
        if target is None or not isinstance(table, nn.Embedding):
            continue
        if target in embedding.embedding_layers and embedding.embedding_layers[target] is table:
            continue  # really shared: the target's initialisation already covered it
        with torch.no_grad():
            if table.padding_idx is not None:
                embedding.embedding_initializer(table.weight[1:, :])
                table.weight[table.padding_idx].zero_()
            else:
                embedding.embedding_initializer(table.weight)


def check_protocol(model: object) -> None:
    """Raise a TypeError naming what is missing when ``model`` is not an ExFM VM."""
    missing = [name for name in ("backbone", "serving_head", "get_inputs", "get_labels")
               if not callable(getattr(model, name, None))]
    if missing:
        raise TypeError(
            f"vm={type(model).__name__} does not follow the ExFM backbone/head protocol: "
            f"missing method(s) {missing}; subclass exfm_plugin.models.ExFMModel")
