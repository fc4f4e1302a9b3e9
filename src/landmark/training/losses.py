"""Losses over head logits or embeddings. Margin heads produce their logits; these score them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.heads import HeadSettings


def smoothed_cross_entropy(logits: Tensor, labels: Tensor, smoothing: float = 0.0) -> Tensor:
    """Softmax cross-entropy with label smoothing (the Baidu and Stanford recipes)."""
    return F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)


def one_vs_all_bce(logits: Tensor, labels: Tensor) -> Tensor:
    """Binary cross-entropy of every class against the one-hot target (the Stanford report's loss)."""
    target = torch.zeros_like(logits, dtype=torch.float32).scatter_(1, labels.view(-1, 1), 1.0)
    return F.binary_cross_entropy_with_logits(logits.float(), target)


def npairs_loss(embeddings: Tensor, labels: Tensor, scale: float = 1.0, l2_reg: float = 0.0) -> Tensor:
    """Multi-class N-pairs loss (Sohn 2016) over a batch holding at least two photos per class.

    Each anchor's positive is the next photo of its class; every other class's positive is a
    negative. ``scale`` is the inverse temperature for unit-norm embeddings (the L2 penalty of the
    original, ``l2_reg``, only matters for unnormalised ones). Returns 0 when the batch has no pair.
    """
    anchors, positives, anchor_labels = [], [], []
    for lab in labels.unique():
        idx = (labels == lab).nonzero().flatten()
        if len(idx) >= 2:
            anchors.append(embeddings[idx[0]])
            positives.append(embeddings[idx[1]])
            anchor_labels.append(lab)
    if len(anchors) < 2:
        return embeddings.sum() * 0.0
    a, p = torch.stack(anchors).float(), torch.stack(positives).float()
    logits = scale * (a @ p.t())
    target = torch.arange(len(a), device=a.device)
    reg = l2_reg * (a.pow(2).sum(1).mean() + p.pow(2).sum(1).mean())
    return F.cross_entropy(logits, target) + reg


# The losses a head kind names (landmark.models.heads.HeadKind.loss, registry landmark.training.config.LOSSES):
# each scores a batch from the head's logits (None without a head), the unit embeddings and the labels.
def cross_entropy(logits: Tensor | None, embeddings: Tensor, labels: Tensor, h: HeadSettings) -> Tensor:
    assert logits is not None
    return smoothed_cross_entropy(logits, labels, getattr(h, "label_smoothing", 0.0))


def bce(logits: Tensor | None, embeddings: Tensor, labels: Tensor, h: HeadSettings) -> Tensor:
    assert logits is not None
    return one_vs_all_bce(logits, labels)


def npairs(logits: Tensor | None, embeddings: Tensor, labels: Tensor, h: HeadSettings) -> Tensor:
    return npairs_loss(embeddings, labels, scale=h.scale)
