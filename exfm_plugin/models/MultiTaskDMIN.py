"""Hard-parameter-shared multi-task DMIN: the teacher FM of the paper's Table 5 (KuaiVideo:
click, like, follow).

One shared bottom (the DMIN representation: ``DMINEncoder``, whose last DNN hidden layer is
``backbone(X)``; the same layers, defaults and auxiliary loss as ``DMIN``), then one tower MLP
and one logit per label in ``feature_map.labels``.
It follows fuxictr's ``MultiTaskModel``: ``forward`` returns ``{f"{label}_pred": probability}``
for every label (plus ``f"{label}_logit"``), ``get_labels`` returns one tensor per label, and
``evaluate`` reports ``{label}_{metric}`` plus the mean over tasks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from fuxictr.pytorch.layers import MLP_Block
from fuxictr.pytorch.models import MultiTaskModel

from .base import LOGIT_LOSSES, FeatureInputsMixin
from .dmin_layers import DMINEncoder
from .training import TrainingOptionsMixin


class MultiTaskDMIN(FeatureInputsMixin, TrainingOptionsMixin, MultiTaskModel):
    """Hard-parameter-shared multi-task DMIN, the teacher FM of the paper's Table 5: DMIN's
    encoder (the same layers, defaults and auxiliary loss as :class:`DMIN`) as the shared
    bottom, then one tower MLP and one logit per label, trained with fuxictr's
    ``MultiTaskModel`` losses (``EQ``: the sum over tasks, or per-label weights).

    Args:
        feature_map (FeatureMap): the dataset's feature specs (fuxictr's ``FeatureMap``).
        model_id (str): model identifier, the checkpoint's name. Default: ``"MultiTaskDMIN"``.
        gpu (int): GPU device index, ``-1`` for CPU. Default: ``-1``.
        task (str or list): fuxictr's task type(s), one per label. Default:
            ``"binary_classification"``.
        num_tasks (int or None): the number of labels; ``None`` takes ``feature_map.labels``.
            Default: ``None``.
        loss_weight (str or list): ``"EQ"`` or one weight per label. Default: ``"EQ"``.
        tower_hidden_units (list[int]): hidden layers of each task tower. Default: ``[64]``.
        tower_activations (str or list): the towers' activation(s). Default: ``"ReLU"``.
        learning_rate (float): the optimizer's learning rate. Default: ``1e-3``.
        embedding_dim (int): embedding width of every field. Default: ``10``.
        dnn_hidden_units (list[int]): hidden layers of the DNN over the interests and the other
            field embeddings; its last layer is the backbone vector x. Default: ``[512, 128, 64]``.
        dnn_activations (str or list): the DNN's activation(s). Default: ``"Dice"``.
        aux_hidden_units (list[int]): hidden layers of the auxiliary-loss network. Default: ``[100, 50]``.
        aux_activation (str): its activation. Default: ``"ReLU"``.
        net_dropout (float): dropout of the DNN, the refiner and the extractor. Default: ``0``.
        target_field (tuple or list): the target field(s), one per pair; a tuple is fields
            concatenated. Default: ``("item_id", "cate_id")``.
        sequence_field (tuple or list): the behaviour sequence field(s) paired with them.
            Default: ``("click_history", "cate_history")``.
        neg_seq_field (tuple or list): negative sequences for the auxiliary loss (ignored while
            absent and the loss is off). Default: ``("neg_click_history", "neg_cate_history")``.
        num_heads (int): interests (attention heads) per pair; must divide the pair's width.
            Default: ``4``.
        enable_sum_pooling (bool): add ``[sum(seq), target * sum(seq)]`` per pair. Default: ``False``.
        attention_hidden_units (list[int]): hidden layers of the target-attention MLP.
            Default: ``[80, 40]``.
        attention_activation (str): its activation. Default: ``"ReLU"``.
        attention_dropout (float): dropout of the attention weights and that MLP. Default: ``0``.
        use_pos_emb (bool): concatenate a position embedding to the target. Default: ``True``.
        pos_emb_dim (int): its width. Default: ``8``.
        use_behavior_refiner (bool): self-attention refiner before the extractor. Default: ``True``.
        refiner_additive_mask (bool): reproduce the reference refiner's additive ``+1`` mask
            instead of applying the causal and padding mask. Default: ``False``.
        aux_loss_lambda (float): weight of the auxiliary next-behaviour loss; 0 turns it off.
            Default: ``0``.
        batch_norm (bool): batch normalisation in the DNNs. Default: ``True``.
        bn_only_once (bool): batch normalisation on the first DNN layer only. Default: ``False``.
        layer_norm (bool): LayerNorm in the refiner and the extractor. Default: ``True``.
        embedding_regularizer (str, float or None): regularizer of the embeddings. Default: ``None``.
        net_regularizer (str, float or None): regularizer of the other weights. Default: ``None``.
        **kwargs: FuxiCTR's ``BaseModel`` arguments (``optimizer`` and ``loss``, both required,
            ``model_root``, ``metrics``, ``verbose``, ``monitor``, ``early_stop_patience``, ...)
            and the training options ``embedding_update``, ``precision``, ``torch_compile``
            (docs/models.md, Training options).
    """
    def __init__(self,
                 feature_map,
                 model_id: str = "MultiTaskDMIN",
                 gpu: int = -1,
                 task="binary_classification",
                 num_tasks: int | None = None,
                 loss_weight="EQ",
                 learning_rate: float = 1e-3,
                 embedding_dim: int = 10,
                 dnn_hidden_units: list[int] = [512, 128, 64],
                 dnn_activations="Dice",
                 tower_hidden_units: list[int] = [64],
                 tower_activations="ReLU",
                 aux_hidden_units: list[int] = [100, 50],
                 aux_activation="ReLU",
                 attention_hidden_units: list[int] = [80, 40],
                 attention_activation="ReLU",
                 attention_dropout: float = 0,
                 net_dropout: float = 0,
                 batch_norm: bool = True,
                 bn_only_once: bool = False,
                 layer_norm: bool = True,
                 num_heads: int = 4,
                 enable_sum_pooling: bool = False,
                 target_field=("item_id", "cate_id"),
                 sequence_field=("click_history", "cate_history"),
                 neg_seq_field=("neg_click_history", "neg_cate_history"),
                 use_pos_emb: bool = True,
                 pos_emb_dim: int = 8,
                 use_behavior_refiner: bool = True,
                 refiner_additive_mask: bool = False,
                 aux_loss_lambda: float = 0,
                 embedding_regularizer=None,
                 net_regularizer=None,
                 **kwargs):
        labels = list(feature_map.labels)
        if num_tasks is None:
            num_tasks = len(labels)
        if num_tasks != len(labels) or num_tasks < 1:
            raise ValueError(f"num_tasks={num_tasks} must equal the number of labels in the "
                             f"feature map ({labels})")
        if not (loss_weight == "EQ" or (isinstance(loss_weight, (list, tuple))
                                        and len(loss_weight) == num_tasks)):
            raise ValueError(f"loss_weight={loss_weight!r}: expected 'EQ' or a list of "
                             f"{num_tasks} weights, one per label {labels}")
        super().__init__(feature_map, model_id=model_id, task=task, num_tasks=num_tasks,
                         loss_weight=loss_weight, gpu=gpu,
                         embedding_regularizer=embedding_regularizer,
                         net_regularizer=net_regularizer, **kwargs)
        self.encoder = DMINEncoder.from_model_args(feature_map, locals())
        self._aux_loss: torch.Tensor | None = None
        self.towers = nn.ModuleList(
            MLP_Block(input_dim=self.encoder.output_dim, hidden_units=list(tower_hidden_units),
                      hidden_activations=tower_activations, output_dim=1,
                      dropout_rates=net_dropout, batch_norm=batch_norm)
            for _ in range(num_tasks))
        self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
        self._loss_name = kwargs["loss"] if isinstance(kwargs["loss"], str) else None
        self.reset_parameters()
        self.model_to_device()

    def backbone(self, X: dict[str, torch.Tensor]) -> torch.Tensor:
        """Feature dict -> shared-bottom vector (B, d)."""
        x, self._aux_loss = self.encoder(X)
        return x

    def auxiliary_loss(self) -> torch.Tensor:
        """The lambda-weighted DMIN auxiliary loss of the last ``backbone`` call (0 when off)."""
        if self._aux_loss is None:
            return torch.zeros((), device=self.device)
        return self._aux_loss

    def task_logits(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Shared-bottom vector -> one (B, 1) logit per label, in feature_map.labels order."""
        return {label: tower(x) for label, tower in zip(self.feature_map.labels, self.towers)}

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.task_logits(self.backbone(self.get_inputs(inputs)))
        out = {}
        for i, (label, logit) in enumerate(logits.items()):
            out[f"{label}_logit"] = logit
            out[f"{label}_pred"] = self.output_activation[i](logit)
        if self._aux_loss is not None:
            out["aux_loss"] = self._aux_loss
        return out

    def add_loss(self, return_dict, y_true):
        """Per-label loss (from logits for BCE, finite when saturated), then 'EQ' sum or the
        configured per-label weights."""
        labels = self.feature_map.labels
        losses = []
        for i, label in enumerate(labels):
            if self._loss_name in LOGIT_LOSSES:
                losses.append(F.binary_cross_entropy_with_logits(return_dict[f"{label}_logit"], y_true[i]))
            else:
                losses.append(self.loss_fn[i](return_dict[f"{label}_pred"], y_true[i], reduction="mean"))
        if self.loss_weight == "EQ":
            loss = torch.stack(losses).sum()
        else:
            loss = sum(float(w) * l for w, l in zip(self.loss_weight, losses))
        if "aux_loss" in return_dict:  # the shared encoder's auxiliary loss, once
            loss = loss + return_dict["aux_loss"]
        return loss
