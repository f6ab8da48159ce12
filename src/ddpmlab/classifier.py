"""The evaluation classifier: a small FashionMNIST CNN whose penultimate features are the space
of the default quality metric (SPEC §4: Inception weights cannot be had on every machine).

    >>> clf = load_classifier()                      # the shipped weights, eval mode
    >>> feats, logits = clf.features_and_logits(x)   # x (B, 1, 28, 28) in [-1, 1] -> (B, 128), (B, 10)

`ddpmlab classifier train` makes the shipped file (seeded: the same seed and thread count give
the same weights); `ddpmlab classifier test` prints its accuracy on the 10k test images.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
import torch.nn.functional as F

from .config import ConfigError
from .data import ImageSet, load_fashion_mnist, to_model_range
from .runtime import atomic_write

log = logging.getLogger("ddpmlab.classifier")

PRETRAINED = Path(__file__).parent / "pretrained" / "classifier.safetensors"
FORMAT = "ddpmlab-classifier-1"


@dataclass
class ClassifierConfig:
    widths: tuple = (32, 96, 128)   # channels per stage; stages run at 28, 14, then 7x7 pixels
    depths: tuple = (1, 1, 2)       # 3x3 conv + BatchNorm + ReLU layers per stage (cheap at 7x7)
    feature_dim: int = 128          # the penultimate layer: the metric's feature space
    num_classes: int = 10
    dropout: float = 0.2            # before the last layer only: the features themselves are not dropped


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class FashionClassifier(nn.Module):
    """Conv stages with 2x2 max-pooling down to 7x7, a linear layer to the features, a linear head."""

    def __init__(self, cfg: ClassifierConfig = ClassifierConfig()):
        super().__init__()
        self.cfg = cfg
        layers, cin, size = [], 1, 28
        for w, depth in zip(cfg.widths, cfg.depths):
            for _ in range(depth):
                layers += _conv(cin, w)
                cin = w
            if size > 7:                                             # 28 -> 14 -> 7, then stay
                layers.append(nn.MaxPool2d(2))
                size //= 2
        self.body = nn.Sequential(
            *layers, nn.Flatten(),                                   # (B, widths[-1] * 7 * 7)
            nn.Linear(cin * size * size, cfg.feature_dim, bias=False), nn.BatchNorm1d(cfg.feature_dim),
            nn.ReLU(inplace=True))                                   # (B, feature_dim)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.feature_dim, cfg.num_classes))
        self.to(memory_format=torch.channels_last)                   # oneDNN's fast NHWC kernels on CPU

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.body(x)
        return f, self.head(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


# ---------------------------------------------------------------------------------------------
# save / load

def save_classifier(model: FashionClassifier, path, info: dict) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "config": json.dumps(asdict(model.cfg)), "info": json.dumps(info)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))


def read_info(path=PRETRAINED) -> dict:
    """The training record stored with the weights (seed, epochs, time, test accuracy)."""
    with safe_open(str(path), "pt") as f:
        return json.loads((f.metadata() or {}).get("info", "{}"))


def load_classifier(path=None, device="cpu") -> FashionClassifier:
    path = Path(path) if path else PRETRAINED
    if not path.is_file():
        raise ConfigError(f"classifier weights {path} not found; make them with `ddpmlab classifier train`")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
        d = json.loads(meta["config"])
        cfg = ClassifierConfig(**{**d, "widths": tuple(d["widths"]), "depths": tuple(d["depths"])})
        model = FashionClassifier(cfg)
        model.load_state_dict(load_file(str(path)))
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ConfigError(f"{path} is not a ddpmlab classifier file ({e}); "
                          "make one with `ddpmlab classifier train`") from None
    return model.to(device).eval()


# ---------------------------------------------------------------------------------------------
# train / test

@torch.no_grad()
def predict(model: FashionClassifier, images_u8: torch.Tensor, batch_size: int = 1000):
    """Features (N, D) float32 and logits (N, K) of uint8 images (N, 1, 28, 28), in eval mode."""
    model.eval()
    dev = next(model.parameters()).device
    feats, logits = [], []
    for i in range(0, images_u8.shape[0], batch_size):
        f, z = model.features_and_logits(to_model_range(images_u8[i:i + batch_size].to(dev)))
        feats.append(f.float().cpu())
        logits.append(z.float().cpu())
    return torch.cat(feats), torch.cat(logits)


def accuracy(model: FashionClassifier, data: ImageSet) -> float:
    _, logits = predict(model, data.images)
    return (logits.argmax(1) == data.labels).float().mean().item()


def train_classifier(out=PRETRAINED, *, epochs: int = 4, batch_size: int = 128, lr: float = 3e-3,
                     seed: int = 0, data_dir=None, cfg: ClassifierConfig | None = None,
                     subset: int | None = None, progress: bool = True) -> dict:
    """Adam with a one-cycle learning rate (warm-up, cosine down to ~0) and random horizontal
    flips; a fixed number of epochs, no selection on the test set. Returns the training record.
    The shipped weights: 4 epochs, seed 0 (their accuracy: `ddpmlab classifier test`; docs/results.md)."""
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ConfigError("epochs and batch size must be >= 1 and lr > 0")
    torch.manual_seed(seed)                             # initialisation
    gen = torch.Generator().manual_seed(seed)           # order and augmentation
    train = load_fashion_mnist("train", data_dir).subset(subset)
    test = load_fashion_mnist("test", data_dir)
    x_all, y_all = to_model_range(train.images), train.labels
    model = FashionClassifier(cfg or ClassifierConfig())
    steps_per_epoch = math.ceil(len(train) / batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    total_steps = epochs * steps_per_epoch
    if total_steps < 4:
        raise ConfigError(f"{total_steps} optimiser steps are too few for the schedule; use more epochs or images")
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps,
                                                pct_start=max(0.2, 2 / total_steps))   # >= 2 warm-up steps
    t0 = time.time()
    from .runtime import progress_bar
    bar = progress_bar(total=total_steps, desc="classifier", unit="step", enabled=progress)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(train), generator=gen)
        flip = torch.rand(len(train), generator=gen) < 0.5
        total, correct, seen = 0.0, 0, 0
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            x, y = x_all[idx], y_all[idx]
            x = torch.where(flip[idx].view(-1, 1, 1, 1), x.flip(-1), x)   # garments are mirror-symmetric
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(idx)
            bar.update(1)
            if (i + 1) % 100 == 0:
                bar.set_postfix(epoch=epoch + 1, loss=f"{total / seen:.4f}", acc=f"{correct / seen:.4f}")
        # test accuracy is shown, never used to choose anything (fixed epochs, last weights)
        log.info(f"epoch {epoch + 1}/{epochs}: loss {total / seen:.4f}, train acc {correct / seen:.4f}, "
                 f"test acc {accuracy(model, test):.4f}, {time.time() - t0:.0f}s")
    bar.close()
    train_s = time.time() - t0
    acc = accuracy(model, test)
    info = {"test_acc": round(acc, 5), "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
            "train_images": len(train), "train_seconds": round(train_s, 1), "torch": torch.__version__,
            "threads": torch.get_num_threads()}
    save_classifier(model.eval(), out, info)
    return info
