"""ddpmlab: train, sample, visualise and evaluate small diffusion models.

The same operations as the CLI, as plain functions:

    from ddpmlab import make_run_config, train, load_run, sample, save_npz, process
    train("runs/rc", make_run_config("resnet-class", max_steps=200))
    run = load_run("runs/rc"); x, y = sample(run, 20, labels="all")

Names are imported on first use (PEP 562), so `import ddpmlab` and `ddpmlab --help` load
neither torch nor matplotlib.
"""
from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.4.0"

# name -> the module that defines it
_WHERE = {
    "PRESETS": "config", "DiffusionConfig": "config", "ModelConfig": "config", "TrainConfig": "config",
    "get_preset": "config", "load_fashion_mnist": "data", "generate": "diffusion", "make_schedule": "diffusion",
    "build_model": "models", "count_parameters": "models", "load_run": "sample", "process": "sample",
    "sample": "sample", "save_grid": "sample", "save_npz": "sample", "make_run_config": "recipes", "train": "train",
}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'ddpmlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *__all__])


class _Package(types.ModuleType):
    """`sample` and `train` are functions of the modules of the same names. Importing a
    submodule binds it to the package attribute of its name; keep the function there instead,
    as the eager imports of earlier versions did."""

    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and _WHERE.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
