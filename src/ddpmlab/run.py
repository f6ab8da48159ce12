"""The run directory: what `train` writes and everything else reads.

    config.json          preset, model / diffusion / train / sampling configs (rebuilds the model),
                         and "about": class names, data source and checksum, versions, git commit
    checkpoint.json      the manifest of the latest checkpoint (checkpoint.py): step, files, SHA-256
    ckpt-STEP-STAMP/     model.safetensors (weights and BatchNorm buffers), ema.safetensors (the EMA
                         weights, used for sampling), state.pt (optimiser, LR scheduler, RNG states,
                         position: exact resume)
    metrics.jsonl        one JSON object per logged step and per epoch
    loss.png, samples/, snapshots/epochE-classK.png, process.png

Runs of the first layout keep model.safetensors, ema.safetensors and state.pt at the top.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from . import checkpoint
from . import config as C
from .models import build_model
from .runtime import atomic_write

log = logging.getLogger("ddpmlab.run")
PRETRAINED_DIR = Path(__file__).parent / "pretrained"
FORMAT = 2          # of config.json: 1 had no "format" key; a newer one is refused


class RunError(ValueError):
    """A path that is not a run directory, or a damaged one."""


@dataclass
class RunConfig:
    preset: str
    model: C.ModelConfig
    diffusion: C.DiffusionConfig
    train: C.TrainConfig
    sampling: C.SamplingConfig = field(default_factory=C.SamplingConfig)
    about: dict = field(default_factory=dict)   # what it was trained on, by what (describe_run)
    distill: C.DistillConfig | None = None      # a few-step student: how it was distilled (`ddpmlab distill`)

    def to_json(self) -> dict:
        d = {"format": FORMAT, "preset": self.preset, "model": C.to_dict(self.model),
             "diffusion": C.to_dict(self.diffusion), "train": C.to_dict(self.train),
             "sampling": C.to_dict(self.sampling), "about": self.about}
        if self.distill is not None:
            d["distill"] = C.to_dict(self.distill)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "RunConfig":
        return cls(d["preset"], C.from_dict(C.ModelConfig, d["model"]),
                   C.from_dict(C.DiffusionConfig, d["diffusion"]), C.from_dict(C.TrainConfig, d["train"]),
                   C.from_dict(C.SamplingConfig, d.get("sampling", {})), dict(d.get("about") or {}),
                   C.from_dict(C.DistillConfig, d["distill"]) if d.get("distill") else None)

    @property
    def class_names(self) -> tuple:
        """The run's own class names (config.json "about"); runs written before it recorded them
        were FashionMNIST when they had 10 classes."""
        names = self.about.get("class_names")
        if names and len(names) == self.model.num_classes:
            return tuple(names)
        from .data import FASHION_CLASSES
        if self.model.num_classes == 10 and self.train.data == "fashion-mnist":
            return FASHION_CLASSES
        return tuple(str(k) for k in range(self.model.num_classes))


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
    path = Path(run_dir) / "config.json"
    try:
        d = json.loads(path.read_text())
        if not isinstance(d, dict):
            raise TypeError(f"a JSON {type(d).__name__}, not an object")
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as e:
        raise RunError(f"{path} is damaged ({e}); restore it from a backup or retrain the run") from None
    if d.get("format", 1) > FORMAT:
        raise RunError(f"{path} was written by a newer ddpmlab (run format {d['format']}, this one reads up to "
                       f"{FORMAT}); upgrade ddpmlab: pip install -U ddpmlab")
    try:
        return RunConfig.from_json(d)
    except (KeyError, TypeError) as e:
        raise RunError(f"{path} is damaged (missing or malformed {e}); restore it or retrain the run") from None
    except C.ConfigError as e:
        raise RunError(f"{path}: {e}; written by another ddpmlab version? retrain the run, or use the version "
                       "that wrote it") from None


def save_weights(module: torch.nn.Module, path: Path) -> None:
    tensors = checkpoint.state_tensors(module)
    atomic_write(path, lambda p: save_file(tensors, str(p)))


def load_weights(module: torch.nn.Module, run_dir: Path, name: str | None = "ema.safetensors") -> None:
    """Load a checkpoint file of the run (checked against its manifest) into module; with
    name=None, run_dir is itself a safetensors file."""
    if name is None:
        run_dir, name = Path(run_dir).parent, Path(run_dir).name
        tensors = checkpoint.load_tensors(run_dir, name, manifest=False)
    else:
        tensors = checkpoint.load_tensors(run_dir, name)
    try:
        module.load_state_dict(tensors)
    except RuntimeError as e:
        raise RunError(f"{run_dir}/{name} does not fit the network its config.json describes "
                       f"({str(e).splitlines()[0][:120]})") from None


def load_model(path_or_name, ema: bool = True, device="cpu") -> tuple[torch.nn.Module, RunConfig]:
    """Rebuild a run's network from config.json and load its (EMA) weights, in eval mode."""
    run_dir = resolve_run(path_or_name)
    rc = load_config(run_dir)
    model = build_model(rc.model)
    load_weights(model, run_dir, "ema.safetensors" if ema else "model.safetensors")
    return model.to(device).eval(), rc


class RunLog:
    """metrics.jsonl, one JSON object per logged step, epoch and event, and optionally the same
    scalars in TensorBoard (RUN/tensorboard). Written by rank 0 only."""

    SCALARS = ("loss", "lr", "img_per_s", "diversity", "label_separation", "adherence")

    def __init__(self, run_dir, tensorboard: bool = False):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise C.ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def append(self, **m) -> None:
        if self.tb is not None and m["kind"] in ("step", "epoch"):
            for k in self.SCALARS:
                if isinstance(m.get(k), (int, float)):
                    self.tb.add_scalar(f"{m['kind']}/{k}", m[k], m["step"])
        with open(self.path, "a") as f:
            f.write(json.dumps(m) + "\n")

    def keep_until(self, step: int) -> None:
        """Drop the lines logged after `step` (a crash between a log line and the checkpoint) and a
        torn last line."""
        kept = [m for m in read_metrics(self.path.parent) if m.get("step", 0) <= step]
        text = "".join(json.dumps(m) + "\n" for m in kept)
        atomic_write(self.path, lambda p: p.write_text(text))

    def reset(self) -> None:
        self.path.unlink(missing_ok=True)


def read_metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl; a last line torn by a crash is dropped with a warning, a damaged line
    elsewhere is a RunError."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    out = []
    for i, line in enumerate(lines):
        try:
            m = json.loads(line)
            if not isinstance(m, dict):
                raise ValueError("not an object")
        except ValueError:
            if i == len(lines) - 1:
                log.warning("%s: the last line is torn (a crash while it was written); dropped", path)
                break
            raise RunError(f"{path}: line {i + 1} is damaged; delete that line (the log is one JSON object "
                           "per line)") from None
        out.append(m)
    return out


def git_commit() -> str | None:
    """The commit of the ddpmlab source this process runs, when it runs from a git checkout
    ("+dirty" with uncommitted changes); None for an installed wheel."""
    import subprocess
    src = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def describe_run(data, world_size: int = 1) -> dict:
    """config.json "about": what a run was trained on and by what (EDM's training_options.json
    in spirit). `data` is the ImageSet."""
    from . import __version__
    return {"class_names": list(data.class_names), "data_source": data.source, "data_checksum": data.checksum,
            "images": len(data), "ddpmlab": __version__, "torch": torch.__version__, "git_commit": git_commit(),
            "world_size": world_size}


def is_shipped(run_dir) -> bool:
    """A model shipped inside the installed package: read-only for ddpmlab, whatever the file
    permissions say."""
    return PRETRAINED_DIR.resolve() in Path(run_dir).resolve().parents


def default_output(run_dir, name: str) -> Path:
    """Where a command writes `name` (e.g. samples/sample.png) without --out: into the run
    directory, or for a shipped model into the current directory as MODEL-NAME."""
    run_dir = Path(run_dir)
    if is_shipped(run_dir):
        return Path.cwd() / f"{run_dir.name}-{Path(name).name}"
    return run_dir / name
