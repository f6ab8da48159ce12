"""The run directory: what `train` writes and everything else reads.

    config.json          preset, model / diffusion / train configs (rebuilds the model)
    model.safetensors    weights (and BatchNorm buffers)
    ema.safetensors      EMA weights, used for sampling
    state.pt             optimiser, LR scheduler, RNG states, position: exact resume
    metrics.jsonl        one JSON object per logged step and per epoch
    train.log, loss.png, samples/, snapshots/epochE-classK.png, process.png
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from . import config as C
from .models import build_model
from .runtime import atomic_write

PRETRAINED_DIR = Path(__file__).parent / "pretrained"


class RunError(ValueError):
    """A path that is not a run directory, or a damaged one."""


@dataclass
class RunConfig:
    preset: str
    model: C.ModelConfig
    diffusion: C.DiffusionConfig
    train: C.TrainConfig
    sampling: C.SamplingConfig = field(default_factory=C.SamplingConfig)

    def to_json(self) -> dict:
        return {"preset": self.preset, "model": C.to_dict(self.model), "diffusion": C.to_dict(self.diffusion),
                "train": C.to_dict(self.train), "sampling": C.to_dict(self.sampling)}

    @classmethod
    def from_json(cls, d: dict) -> "RunConfig":
        return cls(d["preset"], C.from_dict(C.ModelConfig, d["model"]),
                   C.from_dict(C.DiffusionConfig, d["diffusion"]), C.from_dict(C.TrainConfig, d["train"]),
                   C.from_dict(C.SamplingConfig, d.get("sampling", {})))


def write_json(path: Path, obj) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2) + "\n"))


def save_config(run_dir: Path, rc: RunConfig) -> None:
    write_json(run_dir / "config.json", rc.to_json())


def resolve_run(path_or_name) -> Path:
    """A run directory, or the name of a shipped pretrained model."""
    p = Path(path_or_name)
    if (p / "config.json").is_file():
        return p
    shipped = PRETRAINED_DIR / str(path_or_name)
    if (shipped / "config.json").is_file():
        return shipped
    names = sorted(d.name for d in PRETRAINED_DIR.iterdir() if (d / "config.json").is_file()) \
        if PRETRAINED_DIR.is_dir() else []
    valid = "a directory written by `ddpmlab train`" + (f", or one of: {', '.join(names)}" if names else "")
    raise RunError(f"{path_or_name} is not a run directory (no config.json); valid: {valid}")


def load_config(run_dir: Path) -> RunConfig:
    try:
        return RunConfig.from_json(json.loads((Path(run_dir) / "config.json").read_text()))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise RunError(f"{run_dir}/config.json is damaged ({e})") from None


def save_weights(module: torch.nn.Module, path: Path) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    atomic_write(path, lambda p: save_file(tensors, str(p)))


def load_weights(module: torch.nn.Module, path: Path) -> None:
    if not path.is_file():
        raise RunError(f"{path} is missing: the run has no saved weights yet")
    module.load_state_dict(load_file(str(path)))


def load_model(path_or_name, ema: bool = True, device="cpu") -> tuple[torch.nn.Module, RunConfig]:
    """Rebuild a run's network from config.json and load its (EMA) weights, in eval mode."""
    run_dir = resolve_run(path_or_name)
    rc = load_config(run_dir)
    model = build_model(rc.model)
    load_weights(model, run_dir / ("ema.safetensors" if ema else "model.safetensors"))
    return model.to(device).eval(), rc


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
