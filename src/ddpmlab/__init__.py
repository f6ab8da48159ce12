"""ddpmlab: train, sample, visualise and evaluate small diffusion models.

The same operations as the CLI, as plain functions:

    from ddpmlab import make_run_config, train, load_run, sample, save_npz, process
    train("runs/rc", make_run_config("resnet-class", max_steps=200))
    run = load_run("runs/rc"); x, y = sample(run, 20, labels="all")
"""
from .config import PRESETS, DiffusionConfig, ModelConfig, TrainConfig, get_preset
from .data import load_fashion_mnist
from .diffusion import generate, make_schedule
from .models import build_model, count_parameters
from .sample import load_run, process, sample, save_grid, save_npz
from .train import make_run_config, train

__all__ = ["PRESETS", "DiffusionConfig", "ModelConfig", "TrainConfig", "get_preset", "load_fashion_mnist",
           "generate", "make_schedule", "build_model", "count_parameters", "load_run", "process", "sample",
           "save_grid", "save_npz", "make_run_config", "train"]
__version__ = "0.1.0"
