"""Collapse made visible while training: scores of the per-epoch snapshot samples.

The write-up saw UNets that trained well for a few epochs and then drew "the same blob
regardless of sampling or class label", or only one or two classes whatever was asked. Each
epoch the trainer scores its snapshot samples (fixed noise, the same seeds for every class):

    diversity         mean pairwise L2 distance between samples of the same class, relative to
                      the same for real images of that class (~1 healthy; "the same blob for
                      every sample" -> 0)
    label_separation  mean distance between the per-class means of the samples, relative to the
                      same for real images ("every label yields the same image" -> 0; with the
                      same seeds per class a model that ignores its label gives exactly 0)
    adherence         fraction of samples a FashionMNIST classifier assigns to the requested
                      class, and `classes_predicted` ("only likes sweaters" -> 1 or 2), where a
                      classifier is available

Pure functions of tensors: nothing here knows of models or runs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch

from .data import to_model_range

log = logging.getLogger("ddpmlab.train")

DIVERSITY_FLOOR = 0.2       # below this fraction of real diversity: collapse
SEPARATION_FLOOR = 0.2      # below this fraction of real between-class distance: labels ignored


def mean_pairwise_distance(x: torch.Tensor) -> float:
    """Mean L2 distance over all pairs i < j of x (N, ...) flattened; 0 for N < 2."""
    n = x.shape[0]
    if n < 2:
        return 0.0
    d = torch.cdist(x.reshape(n, -1).double()[None], x.reshape(n, -1).double()[None])[0]   # (N, N)
    return (d.sum() / (n * (n - 1))).item()


def within_class_distance(x: torch.Tensor, labels: torch.Tensor | None) -> float:
    """Mean over classes of the mean pairwise distance among that class's images."""
    if labels is None:
        return mean_pairwise_distance(x)
    ds = [mean_pairwise_distance(x[labels == k]) for k in labels.unique().tolist()]
    return sum(ds) / len(ds)


def class_mean_separation(x: torch.Tensor, labels: torch.Tensor | None) -> float | None:
    """Mean pairwise distance between the per-class mean images; None with fewer than 2 classes."""
    if labels is None or labels.unique().numel() < 2:
        return None
    means = torch.stack([x[labels == k].double().mean(0) for k in labels.unique().tolist()])
    return mean_pairwise_distance(means)


@dataclass
class SnapshotReference:
    """The same statistics of real images of the snapshot's classes, computed once per run."""
    within: float
    separation: float | None


def reference(images: torch.Tensor, labels: torch.Tensor | None, classes: torch.Tensor | None,
              per_class: int) -> SnapshotReference:
    """Real images (N, C, H, W), uint8 or in [-1, 1], on any device: for each class of `classes`
    (None: unconditional, take 4 * per_class images) the first `per_class` of that class, the
    snapshot's layout. Only the chosen images are converted (a whole dataset need not fit as float)."""
    if classes is None or labels is None:
        x = _as_float(images[:4 * per_class])
        return SnapshotReference(within_class_distance(x, None), None)
    idx = torch.cat([torch.nonzero(labels == k).flatten()[:per_class] for k in classes.unique().tolist()])
    x, y = _as_float(images[idx]), labels[idx].cpu()
    return SnapshotReference(within_class_distance(x, y), class_mean_separation(x, y))


def _as_float(x: torch.Tensor) -> torch.Tensor:
    x = x.cpu()
    return to_model_range(x) if x.dtype == torch.uint8 else x.float()


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def snapshot_scores(samples: torch.Tensor, labels: torch.Tensor | None, ref: SnapshotReference,
                    classify: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
    """Scores of snapshot samples (N, C, H, W) in [-1, 1] drawn for `labels` (None:
    unconditional). classify: images in [-1, 1] -> logits, or None."""
    out = {"diversity": _ratio(within_class_distance(samples, labels), ref.within),
           "label_separation": _ratio(class_mean_separation(samples, labels), ref.separation)}
    if classify is not None and labels is not None:
        with torch.no_grad():
            pred = classify(samples).argmax(1).cpu()
        out["adherence"] = (pred == labels.cpu()).float().mean().item()
        out["classes_predicted"] = int(pred.unique().numel())
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items() if v is not None}


def collapse_symptoms(scores: dict, num_classes: int = 0) -> list[str]:
    """Human-readable symptoms of collapse in `scores` (empty when healthy)."""
    out = []
    if scores.get("diversity", 1.0) < DIVERSITY_FLOOR:
        out.append(f"samples have collapsed: diversity {scores['diversity']:.2f} of real images' "
                   f"(< {DIVERSITY_FLOOR}): the same image whatever the noise")
    if scores.get("label_separation", 1.0) < SEPARATION_FLOOR:
        out.append(f"the label is ignored: classes are {scores['label_separation']:.2f} as far apart as "
                   f"real classes (< {SEPARATION_FLOOR}): every label yields the same image")
    if num_classes and "classes_predicted" in scores and scores["classes_predicted"] <= max(2, num_classes // 4):
        out.append(f"only {scores['classes_predicted']} of {num_classes} classes are generated "
                   f"(label adherence {scores['adherence']:.2f})")
    return out


class CollapseWatch:
    """Scores every per-epoch snapshot of a run against real images of the same classes, and
    warns, naming the epoch and the symptom, when the samples collapse. The reference statistics
    and the classifier are made on first use."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None, num_classes: int, per_class: int,
                 classifier: Callable[[], Callable | None] | None = None):
        self.images, self.labels, self.num_classes, self.per_class = images, labels, num_classes, per_class
        self.conditional = bool(num_classes and labels is not None)
        self.snapshot_labels = (torch.arange(num_classes).repeat_interleave(per_class)
                                if self.conditional else None)
        self._make_classifier = classifier
        self._ref = None
        self._classify = None

    def __call__(self, samples: torch.Tensor, epoch: int, where) -> dict:
        if self._ref is None:
            self._ref = reference(self.images, self.labels if self.conditional else None, self.snapshot_labels,
                                  self.per_class)
            if self.conditional and self._make_classifier is not None:
                self._classify = self._make_classifier()
        scores = snapshot_scores(samples, self.snapshot_labels, self._ref, self._classify)
        for symptom in collapse_symptoms(scores, self.num_classes if self.conditional else 0):
            log.warning("epoch %d: %s (see %s)", epoch, symptom, where)
        return scores
