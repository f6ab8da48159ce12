"""The metric maths of `evaluate`, as pure functions of feature arrays (N, D) and class
predictions: Fréchet distance, k-NN precision and recall, nearest-neighbour distances (for
near-duplicates), entropy of the predicted classes, collapsed classes. evaluate.py feeds them the
classifier's features; nothing here reads files or knows about models.
"""
from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import torch

K_NN = 3                    # Kynkäänniemi et al. 2019: k = 3
COLLAPSED_FRAC = 0.5        # a requested class is collapsed when > 50% go to other classes
NUM_CLASSES = 10


def gauss(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return feats.mean(0), np.cov(feats, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Heusel et al. 2017; Dowson & Landau 1982)."""
    with warnings.catch_warnings():                     # singular when N <= D (per class): expected
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():              # regularise, as pytorch-fid does
            eps = np.eye(sigma1.shape[0]) * 1e-6
            covmean = scipy.linalg.sqrtm((sigma1 + eps) @ (sigma2 + eps))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean.real))


def fd(feats: np.ndarray, ref: tuple) -> float | None:
    return frechet_distance(*gauss(feats), *ref) if feats.shape[0] >= 2 else None


def cdist_blocks(a: np.ndarray, b: np.ndarray, chunk: int = 2048):
    """Row blocks of the Euclidean distance matrix, in float32 (distances of ~1..10 need no more;
    float64 doubles the cost)."""
    tb = torch.from_numpy(b).float()
    for i in range(0, a.shape[0], chunk):
        yield i, torch.cdist(torch.from_numpy(a[i:i + chunk]).float(), tb).double()


def knn_radii(feats: np.ndarray, k: int = K_NN) -> np.ndarray:
    """Distance of each point to its k-th nearest neighbour in the same set (itself excluded)."""
    k = min(k, feats.shape[0] - 1)
    return np.concatenate([d.kthvalue(k + 1, dim=1).values.numpy() for _, d in cdist_blocks(feats, feats)])


def coverage(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> float:
    """Fraction of points inside at least one ball (centre, radius)."""
    r = torch.from_numpy(radii)
    inside = [((d - r) <= 0).any(1) for _, d in cdist_blocks(points, centres)]
    return float(torch.cat(inside).double().mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = K_NN, real_radii=None) -> tuple[float, float]:
    """Kynkäänniemi et al. 2019: precision = fakes inside the real k-NN manifold, recall =
    reals inside the fake k-NN manifold."""
    real_radii = knn_radii(real, k) if real_radii is None else real_radii
    return (coverage(fake, real, real_radii), coverage(real, fake, knn_radii(fake, k)))


def nn_distances(feats: np.ndarray) -> np.ndarray:
    """Each point's distance to its nearest other point."""
    return np.concatenate([d.kthvalue(2, dim=1).values.numpy() for _, d in cdist_blocks(feats, feats)])


def entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum()) + 0.0          # + 0.0: no "-0.000" for a single class


def confusion(labels: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """(10, 10) counts: row = requested class, column = the class the classifier sees."""
    return np.bincount(labels * NUM_CLASSES + preds, minlength=NUM_CLASSES ** 2).reshape(NUM_CLASSES, NUM_CLASSES)


def collapsed_classes(preds: np.ndarray, labels: np.ndarray, names=None) -> list[dict]:
    """Requested classes whose samples are mostly (> 50%) classified as something else, each with
    the class they most often became; names: the class names (default: their numbers)."""
    names = names or [str(k) for k in range(NUM_CLASSES)]
    out = []
    for k in range(NUM_CLASSES):
        p = preds[labels == k]
        if p.size == 0 or (p != k).mean() <= COLLAPSED_FRAC:
            continue
        counts = np.bincount(p, minlength=NUM_CLASSES)
        counts[k] = 0
        j = int(counts.argmax())
        out.append({"class": k, "name": names[k], "cond_acc": round(float((p == k).mean()), 4),
                    "predicted_as": j, "predicted_name": names[j],
                    "fraction": round(float(counts[j] / p.size), 4)})
    return out
