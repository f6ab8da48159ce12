"""Sample quality, measured in the feature space of the shipped FashionMNIST classifier (SPEC §4).

    >>> r = evaluate_run("runs/resnet-class", n=1000, sampling=SamplingConfig(steps=50))   # sample, evaluate
    >>> r = evaluate_npz("samples.npz")                           # arr_0 uint8 (N, 28, 28, 1), arr_1 labels
    >>> r["fd"], r["fd_floor"], r["cond_acc"], r["mode_collapse"]

Every number stands beside its floor: the same metric for N real *training* images (N = the
number of samples, class counts matched to the requested labels) against the 10k test images.

This module holds the reference (the classifier's view of the test images, cached on disk under
the classifier's hash and the ddpmlab version), the evaluation of images, of .npz files and of
runs (cached per run under the weights' and the classifier's hashes). The maths are in metrics.py,
the .npz format in samplefile.py, the printed table beside its user in cli.py.

- fd: Fréchet distance between Gaussians fitted to the classifier's penultimate features
  (128-d) of the samples and of the test images (Heusel et al. 2017; float64,
  matrix square root by scipy.linalg.sqrtm). Also per requested class, against that class's
  test images.
- cond_acc: the fraction of labelled samples that the classifier assigns to their label; compare
  it with the classifier's accuracy on real test images (`classifier_test_acc`), not with 1.
- pred_hist / pred_entropy: predicted classes of the samples; entropy in nats (natural log;
  uniform over 10 classes = ln 10 = 2.303). A collapse to one or two classes shows at once.
- precision / recall: Kynkäänniemi et al. 2019, k-NN manifolds with k = 3, against all 10k
  test images (the floor: N training images, the same way). Precision alone can be fooled: a
  tight off-manifold cluster (pure noise) may sit inside the large balls of a few real
  outliers (Naeem et al. 2020); read it beside FD, recall and the near-duplicate rate.
- collapsed_classes: requested classes whose samples are mostly (> 50%) classified as other
  classes (on real test images every class is recognised >= ~75% of the time).
  missing_classes: classes predicted for under a quarter of a uniform share.
- mode_collapse: more than 25% of the samples have a near-duplicate among the others, where a
  near-duplicate is closer in feature space than the 1st percentile of the nearest-neighbour
  distances among N real test images (so real data sits at ~1% by construction; N training
  images at 1-3%, blurred real images under 10%, one image repeated at 100%).

Inception FID (299x299, pool3) is added when the user supplies the pt_inception-2015-12-05
weights file and torch-fidelity can be imported; nothing is ever downloaded.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from . import __version__
from .classifier import PRETRAINED, load_classifier, predict
from .config import ConfigError, Sampling, SamplingConfig
from .data import FASHION_CLASSES, load_fashion_mnist, to_uint8
from .defaults import SAMPLE_PRECISION
from .metrics import (K_NN, NUM_CLASSES, collapsed_classes, confusion, entropy, fd, frechet_distance, gauss,
                      knn_radii, nn_distances, precision_recall)
from .runtime import atomic_save_numpy, atomic_write, resolve_device, resolve_precision, user_cache_dir
from .samplefile import SampleFileError, load_samples  # noqa: F401  (SampleFileError: part of this API)

log = logging.getLogger("ddpmlab.evaluate")

DUP_PERCENTILE = 1.0        # near-duplicate: closer than the 1st percentile of real NN distances
MODE_COLLAPSE_FRAC = 0.25   # flag when over 25% of samples have a near-duplicate (real: 1-3%)
MISSING_SHARE = 0.25        # a class is missing when predicted for < 1/4 of a uniform share
METRICS_VERSION = 2         # bumped when a result gains fields: cached evaluations of older ones are redone
FLOOR_SEED = 0              # which real images make the floor: fixed, whatever the sampling seed
INCEPTION_FILE = ("pt_inception-2015-12-05-6726825d.pth (the pytorch-fid GitHub releases, tag fid_weights; "
                  "used through torch-fidelity)")
INCEPTION_HINT = (f"Inception FID not computed: pass --inception-weights {INCEPTION_FILE}; "
                  "the classifier metric below is the default")


# ---------------------------------------------------------------------------------------------
# the reference: the classifier's view of the 10k test images, computed once per process

class TestSetReference:
    """The classifier (weights file) and its view of the 10k FashionMNIST test images: features,
    k-NN radii, Gaussian statistics overall and per class, its own accuracy."""

    def __init__(self, weights: Path, device="cpu"):
        self.weights = weights
        self.model = load_classifier(weights, device=device)
        self.sha = file_sha256(weights)
        test = load_fashion_mnist("test")
        self.labels = test.labels.numpy()
        self.feats, logits, self.radii = _cached_features(self.model, test.images, f"test-{self.sha[:16]}")
        self.preds = logits.argmax(1)
        correct = self.preds == self.labels
        self.acc = float(correct.mean())
        self.acc_per_class = [float(correct[self.labels == k].mean()) for k in range(NUM_CLASSES)]
        self.stats = gauss(self.feats)
        self.class_stats = [gauss(self.feats[self.labels == k]) for k in range(NUM_CLASSES)]
        self._train = None

    def features(self, images_u8: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """float64 features (N, D) and predicted classes (N,)."""
        f, z = predict(self.model, images_u8)
        return f.double().numpy(), z.argmax(1).numpy()

    def train_images(self):
        if self._train is None:
            self._train = load_fashion_mnist("train")
        return self._train


@lru_cache(maxsize=8)
def file_sha256(path: Path) -> str:
    """The SHA-256 of a weights file, read once per process (the classifier: every evaluation keys on it)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def eval_cache_dir() -> Path:
    return user_cache_dir("eval")


def _cached_features(model, images_u8, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, logits and k-NN radii (the real manifold) of a fixed image set, cached on disk
    under the classifier's hash, k and the ddpmlab version (the metric code): a second process
    starts in well under a second, and a new classifier or metric never reuses stale numbers."""
    path = eval_cache_dir() / f"{key}-k{K_NN}-v{__version__}.npz"
    try:
        with np.load(path) as z:
            return z["feats"].astype(np.float64), z["logits"], z["radii"]
    except (OSError, KeyError, ValueError):
        pass
    f, z = predict(model, images_u8)
    feats, logits = f.double().numpy(), z.numpy()
    radii = knn_radii(feats)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save_numpy(path, np.savez, feats=feats.astype(np.float32), logits=logits, radii=radii)
    except OSError:                                     # a read-only cache costs time, not results
        pass
    return feats, logits, radii                        # float32 values, as the cache holds them


@lru_cache(maxsize=4)
def _reference(weights: str, device: str) -> TestSetReference:
    return TestSetReference(Path(weights), device)


def reference(weights=None, device="cpu") -> TestSetReference:
    """The classifier and the test-set features, computed once per process (and cached on disk)."""
    return _reference(str(Path(weights) if weights else PRETRAINED), str(device))


# ---------------------------------------------------------------------------------------------
# evaluation

def _floor_indices(train_labels: np.ndarray, n: int, labels: np.ndarray | None, rng) -> np.ndarray:
    """N training images; with labels, class by class in the same counts as the samples."""
    if labels is None:
        return rng.choice(len(train_labels), size=n, replace=n > len(train_labels))
    idx = []
    for k, c in enumerate(np.bincount(labels, minlength=NUM_CLASSES)):
        pool = np.flatnonzero(train_labels == k)
        idx.append(rng.choice(pool, size=c, replace=c > len(pool)))
    return np.concatenate(idx)


def _side(ref: TestSetReference, feats, preds, labels, dup_threshold) -> dict:
    """All metrics of one image set (samples or the floor) against the test images."""
    hist = np.bincount(preds, minlength=NUM_CLASSES)
    precision, recall = precision_recall(ref.feats, feats, real_radii=ref.radii)
    out = {"fd": fd(feats, ref.stats), "precision": precision, "recall": recall,
           "pred_hist": hist.tolist(), "pred_entropy": entropy(hist),
           "dup_frac": float((nn_distances(feats) < dup_threshold).mean())}
    # unconditional samples: each class the classifier sees, against the test images of that class
    out["per_pred_class_fd"] = [fd(feats[preds == k], ref.class_stats[k]) for k in range(NUM_CLASSES)]
    if labels is not None:
        out["confusion"] = confusion(labels, preds).tolist()
        out["per_class_fd"] = [fd(feats[labels == k], ref.class_stats[k]) for k in range(NUM_CLASSES)]
        out["cond_acc"] = float((preds == labels).mean())
        out["cond_acc_per_class"] = [float((preds[labels == k] == k).mean()) if (labels == k).any() else None
                                     for k in range(NUM_CLASSES)]
    return out


def evaluate_images(images_u8: torch.Tensor, labels: torch.Tensor | None = None, *, source: str = "",
                    sampler: str | None = None, steps: int | None = None, guidance: float | None = None,
                    seed: int | None = None, input_range: str = "uint8 0..255", classifier=None,
                    inception_weights=None, device="cpu") -> dict:
    """Every metric of samples (N, 1, 28, 28) uint8 beside its floor. See the module docstring."""
    t0 = time.time()
    if images_u8.dim() != 4 or tuple(images_u8.shape[1:]) != (1, 28, 28) or images_u8.dtype != torch.uint8:
        raise ConfigError(f"expected uint8 images (N, 1, 28, 28), got {images_u8.dtype} {tuple(images_u8.shape)}")
    n = images_u8.shape[0]
    if n < 2:
        raise ConfigError(f"{n} image(s); the Fréchet distance needs at least 2")
    if inception_weights and not Path(inception_weights).is_file():
        raise ConfigError(f"--inception-weights {inception_weights}: no such file; get {INCEPTION_FILE}, "
                          "or leave the option out for the default classifier metric")
    ref = reference(classifier, device)
    y = None if labels is None else labels.cpu().numpy().astype(np.int64)
    if y is not None and (y.shape != (n,) or y.min() < 0 or y.max() >= NUM_CLASSES):
        raise ConfigError(f"labels must be ({n},) in 0..{NUM_CLASSES - 1}")

    rng = np.random.default_rng(FLOOR_SEED)
    train = ref.train_images()
    floor_idx = _floor_indices(train.labels.numpy(), n, y, rng)
    real_subset = ref.feats[rng.choice(len(ref.feats), size=min(n, len(ref.feats)), replace=False)]
    dup_threshold = float(np.percentile(nn_distances(real_subset), DUP_PERCENTILE))

    feats, preds = ref.features(images_u8)
    floor_feats, floor_preds = ref.features(train.images[torch.from_numpy(floor_idx)])
    floor_y = None if y is None else train.labels.numpy()[floor_idx]
    # small LAPACK calls (sqrtm of 128x128): extra BLAS threads only fight torch's for the cores
    with threadpool_limits(1, user_api="blas"):
        s = _side(ref, feats, preds, y, dup_threshold)
        f = _side(ref, floor_feats, floor_preds, floor_y, dup_threshold)

    missing = [k for k in range(NUM_CLASSES) if s["pred_hist"][k] < MISSING_SHARE * n / NUM_CLASSES]
    result = {
        "source": str(source), "n": n, "sampler": sampler, "steps": steps, "guidance": guidance, "seed": seed,
        "input_range": input_range, "labelled": y is not None,
        "classifier": {"weights": str(ref.weights), "sha256": ref.sha, "feature_dim": int(ref.feats.shape[1])},
        "classifier_test_acc": ref.acc, "classifier_test_acc_per_class": ref.acc_per_class,
        "class_names": list(FASHION_CLASSES),
        "fd": s["fd"], "fd_floor": f["fd"],
        "per_class_fd": s.get("per_class_fd"), "per_class_fd_floor": f.get("per_class_fd"),
        "per_pred_class_fd": s["per_pred_class_fd"], "per_pred_class_fd_floor": f["per_pred_class_fd"],
        "confusion": s.get("confusion"),
        "cond_acc": s.get("cond_acc"), "cond_acc_per_class": s.get("cond_acc_per_class"),
        "pred_hist": s["pred_hist"], "pred_hist_floor": f["pred_hist"],
        "pred_entropy": s["pred_entropy"], "pred_entropy_floor": f["pred_entropy"],
        "entropy_unit": "nats (natural log; uniform over 10 classes = ln 10 = 2.3026)",
        "precision": s["precision"], "recall": s["recall"],
        "precision_floor": f["precision"], "recall_floor": f["recall"], "pr_k": K_NN,
        "dup_frac": s["dup_frac"], "dup_frac_floor": f["dup_frac"], "dup_threshold": dup_threshold,
        "collapsed_classes": collapsed_classes(preds, y, FASHION_CLASSES) if y is not None else [],
        "missing_classes": missing,
        "mode_collapse": s["dup_frac"] > MODE_COLLAPSE_FRAC,
        "inception_fid": None, "inception_fid_floor": None, "inception_note": INCEPTION_HINT,
    }
    if inception_weights:
        result.update(inception_fid(images_u8, train.images[torch.from_numpy(floor_idx)], inception_weights,
                                    device=device))
    result["seconds"] = round(time.time() - t0, 2)
    return result


def evaluate_npz(path, n: int | None = None, **kw) -> dict:
    images, labels, note = load_samples(path, n)
    return evaluate_images(images, labels, source=str(path), input_range=note, **kw)


def run_eval_dir(run_dir) -> Path:
    """Where a run's evaluations are kept: RUN/eval, or for a model shipped inside the package,
    the user cache (never the package)."""
    from .run import PRETRAINED_DIR
    run_dir = Path(run_dir).resolve()
    if PRETRAINED_DIR.resolve() in run_dir.parents:
        return eval_cache_dir() / run_dir.name
    return run_dir / "eval"


def cached_evaluate_run(run, n: int = 1000, *, sampling: SamplingConfig | Sampling | None = None, seed: int = 0,
                        device: str = "auto", precision: str = SAMPLE_PRECISION, **kw) -> tuple[dict, Path]:
    """evaluate_run, kept as RUN/eval/KEY-nN-seedS[-bf16].json (KEY: Sampling.key, the resolved
    settings) and reused until the weights (the guide's too) change; `report` and `evaluate`
    share it. Returns the result and its file. sampling: the flags to resolve against the run's
    own settings (None: its own), or a resolved Sampling; resolved here, once, and the same value
    names the file and draws the samples."""
    from . import checkpoint
    from .run import load_config, resolve_run
    from .sample import guide_dir, resolve_sampling
    run_dir = resolve_run(run)
    rc = load_config(run_dir)
    s = resolve_sampling(rc, sampling, run_dir)
    guided_by = guide_dir(run_dir, rc) if s.autoguidance else None
    precision = resolve_precision(precision, resolve_device(device))
    tag = "" if precision == "fp32" else f"-{precision}"
    path = run_eval_dir(run_dir) / f"{s.key()}-n{n}-seed{seed}{tag}.json"
    # reused only for the same weights, classifier and metric code: a retrained run, another
    # classifier or a new ddpmlab version evaluates afresh
    clf = Path(kw.get("classifier") or PRETRAINED)
    key = {"weights_sha256": checkpoint.sha256(run_dir, "ema.safetensors"),
           "classifier_sha256": file_sha256(clf) if clf.is_file() else None, "ddpmlab": __version__,
           "metrics": METRICS_VERSION}
    if guided_by is not None:
        key["guide_sha256"] = checkpoint.sha256(guided_by, "ema.safetensors")
    if not kw.get("inception_weights") and path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("cache_key") == key:
            return old, path
    r = evaluate_run(run_dir, n, sampling=s, seed=seed, device=device, precision=precision, **kw)
    r["cache_key"] = key
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(r, indent=2) + "\n"
    atomic_write(path, lambda p: p.write_text(text))
    return r, path


def evaluate_run(run, n: int = 1000, *, sampling: SamplingConfig | Sampling | None = None, seed: int = 0,
                 device: str = "auto", precision: str = SAMPLE_PRECISION, **kw) -> dict:
    """Draw n samples from a run (labels cycling 0..9 when conditional) and evaluate them.
    sampling: as cached_evaluate_run; precision: the network's while sampling (a LoadedRun brings
    its own)."""
    from .diffusion import count_nfe
    from .sample import load_run, resolve_sampling, sample
    loaded = run if hasattr(run, "model") else load_run(run, device=device, precision=precision)
    s = resolve_sampling(loaded.config, sampling, loaded.path)
    cfg = loaded.config.model
    if (cfg.image_size, cfg.in_channels) != (28, 1) or cfg.num_classes not in (0, NUM_CLASSES):
        raise ConfigError(f"{loaded.path}: makes {cfg.image_size}x{cfg.image_size}x{cfg.in_channels} images with "
                          f"{cfg.num_classes} classes; the classifier metric is for FashionMNIST (28x28 grey, 10 classes)")
    if n < 2:
        raise ConfigError(f"--n must be >= 2, got {n}")
    t0 = time.time()
    x, y = sample(loaded, n, labels="all", seed=seed, sampling=s)
    sample_s = time.time() - t0
    r = evaluate_images(to_uint8(x.cpu()), y, source=str(loaded.path), sampler=s.sampler, steps=s.steps,
                        guidance=s.guidance, seed=seed, input_range="sampled in [-1, 1], quantised to uint8",
                        device=loaded.device, **kw)
    r["spacing"], r["sigma_max"] = s.spacing, s.sigma_max
    r["guidance_interval"] = None if s.guidance_interval is None else list(s.guidance_interval)
    r["autoguidance"] = None if not s.autoguidance else {
        "guide": s.guide, "weight": s.autoguidance,
        "interval": None if s.autoguidance_interval is None else list(s.autoguidance_interval)}
    r["nfe"] = count_nfe(loaded.schedule, s)
    r["sampling_seconds"] = round(sample_s, 1)
    r["sampling_precision"] = loaded.precision
    return r


# ---------------------------------------------------------------------------------------------
# Inception FID, only with a user-supplied weights file

def inception_fid(images_u8: torch.Tensor, floor_u8: torch.Tensor, weights, device="cpu") -> dict:
    """FID with InceptionV3 pool3 features at 299x299 (torch-fidelity's TF-compatible port),
    samples and N training images (the floor) against the 10k test images."""
    weights = Path(weights)
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except Exception as e:                              # not installed, or a torchvision that does not match torch
        reason = f"{type(e).__name__}: {str(e).splitlines()[0]}" if str(e) else type(e).__name__
        return {"inception_note": f"Inception FID skipped: torch-fidelity cannot be imported here ({reason}); "
                                  "it needs `pip install torch-fidelity` with a torchvision built for this torch; "
                                  "the classifier metric below is the default"}
    try:
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                          feature_extractor_weights_path=str(weights)).to(device).eval()
    except Exception as e:
        raise ConfigError(f"--inception-weights {weights}: not the pt_inception-2015-12-05 weights ({e})") from None

    @torch.no_grad()
    def feats(x_u8: torch.Tensor) -> np.ndarray:
        out = [net(x_u8[i:i + 100].expand(-1, 3, -1, -1).to(device))[0].double().cpu()   # grey -> RGB
               for i in range(0, x_u8.shape[0], 100)]
        return torch.cat(out).numpy()

    sha = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    cache = eval_cache_dir() / f"inception-test-{sha}.npz"
    try:
        with np.load(cache) as z:
            test = z["feats"]
    except (OSError, KeyError, ValueError):
        log.info("Inception features of the 10k test images (once; cached in %s)", cache)
        test = feats(load_fashion_mnist("test").images)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, feats=test)
    ref = gauss(test)
    return {"inception_fid": frechet_distance(*gauss(feats(images_u8)), *ref),
            "inception_fid_floor": frechet_distance(*gauss(feats(floor_u8)), *ref),
            "inception_note": f"Inception FID at 299x299 with {weights.name}"}
