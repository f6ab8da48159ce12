"""A checkpoint is one unit: the weights, the EMA weights and the training state of one step,
published together or not at all.

    RUN/ckpt-000001234-<stamp>/   model.safetensors, ema.safetensors, state.pt
    RUN/checkpoint.json           the manifest: step, that directory, each file's SHA-256 and size

A save writes the three files into a hidden temporary directory, fsyncs each and the directory,
renames it into place, and then publishes it by renaming a new manifest over the old one (the
commit-by-rename of orbax; k-diffusion's state file that points at the latest checkpoint). A
reader follows the manifest and checks every file against it, so it sees the old complete
checkpoint or the new complete one, never a mix. The previous checkpoint is removed only after
the new one is published; leftovers of an interrupted save are removed at the next start.

Runs written before the manifest (the shipped `fmnist-v1`) keep their files
at the top of the run directory and still load.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Callable

from .runtime import fsync_dir

MANIFEST = "checkpoint.json"
FORMAT = 1                                   # of the manifest; a newer one is refused
FILES = ("model.safetensors", "ema.safetensors", "state.pt")
PREFIX = "ckpt-"
TMP_PREFIX = ".ckpt-"


class CheckpointError(ValueError):
    """A checkpoint that is missing, torn or damaged, or that could not be written."""


# ------------------------------------------------------------------------------ fault injection
# Tests kill or fail a save at a named phase: DDPMLAB_FAULT=PHASE[@N] sends SIGKILL to this
# process the N-th time (default 1st) it reaches PHASE; `fault_hook` may be replaced in-process.
PHASES = ("begin", "wrote:model.safetensors", "wrote:ema.safetensors", "wrote:state.pt", "synced",
          "renamed", "manifest-written", "published", "cleaned")
_seen: dict[str, int] = {}


def _env_fault(phase: str) -> None:
    spec = os.environ.get("DDPMLAB_FAULT")
    if not spec:
        return
    name, _, nth = spec.partition("@")
    if name != phase:
        return
    _seen[phase] = _seen.get(phase, 0) + 1
    if _seen[phase] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


fault_hook: Callable[[str], None] = _env_fault


# ------------------------------------------------------------------------------ durable writes

def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def disk_error(e: OSError, where: Path, what: str) -> CheckpointError:
    """One line for a failed write: a full disk says so, anything else names the OS's reason."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = f"the disk is full ({where})"
    else:
        reason = f"{e.strerror or e} ({e.filename or where})"
    return CheckpointError(f"could not write {what}: {reason}; free space or choose another --out; "
                           "the previous checkpoint is intact and resumable with --resume")


# ------------------------------------------------------------------------------ writing

def write(run_dir: Path, step: int, files: dict[str, bytes], meta: dict | None = None) -> Path:
    """Publish one checkpoint of `step` holding files {name: bytes}; returns its directory. The
    bytes are serialised by the caller, so every write to disk is Python's own and a full disk is
    an OSError here, never an error from deep inside a serialiser."""
    run_dir = Path(run_dir)
    stamp = f"{PREFIX}{step:09d}-{time.time_ns():x}"
    tmp = run_dir / f"{TMP_PREFIX}{stamp[len(PREFIX):]}.tmp"
    final = run_dir / stamp
    published = False
    try:
        fault_hook("begin")
        tmp.mkdir(parents=True)
        listed = {}
        for name, data in files.items():
            _write_synced(tmp / name, data)
            listed[name] = {"sha256": sha256_bytes(data), "bytes": len(data)}
            fault_hook(f"wrote:{name}")
        fsync_dir(tmp)
        fault_hook("synced")
        os.rename(tmp, final)
        fsync_dir(run_dir)
        fault_hook("renamed")
        manifest = {"format": FORMAT, "step": step, "dir": final.name, "files": listed, **(meta or {})}
        new = run_dir / (MANIFEST + ".tmp")
        _write_synced(new, (json.dumps(manifest, indent=2) + "\n").encode())
        fault_hook("manifest-written")
        os.replace(new, run_dir / MANIFEST)             # the publishing rename
        published = True
        fsync_dir(run_dir)
        fault_hook("published")
    except OSError as e:
        for p in (tmp, final if not published else None, run_dir / (MANIFEST + ".tmp")):
            if p is not None and p.exists():
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        if published:       # the new checkpoint is complete; only the final fsync failed
            return final
        raise disk_error(e, run_dir, f"the checkpoint of step {step} in {run_dir}") from None
    remove_stale(run_dir, keep=final.name)
    fault_hook("cleaned")
    return final


def remove_stale(run_dir: Path, keep: str | None = None) -> list[str]:
    """Remove every checkpoint directory but the published one, temporaries of interrupted saves,
    and the top-level files of the old layout once a manifest supersedes them."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    if keep is None:
        m = _read_manifest(run_dir)
        keep = m["dir"] if m else None
    removed = []
    for p in run_dir.iterdir():
        stale = ((p.name.startswith(PREFIX) and p.is_dir() and p.name != keep)
                 or p.name.startswith(TMP_PREFIX) or p.name.endswith(".tmp"))
        if keep is not None and p.name in FILES and p.is_file():
            stale = True                                # the old layout, superseded by the manifest
        if stale:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p.name)
    return removed


# ------------------------------------------------------------------------------ reading

def _read_manifest(run_dir: Path) -> dict | None:
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        m = json.loads(path.read_text())
        m["step"], m["dir"], m["files"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is damaged ({e}); the run cannot be resumed from it: start over "
                              "with another --out") from None
    if m.get("format", 1) > FORMAT:
        raise CheckpointError(f"{path} was written by a newer ddpmlab (checkpoint format {m['format']}, this "
                              f"one reads {FORMAT}); upgrade ddpmlab: pip install -U ddpmlab")
    return m


def exists(run_dir) -> bool:
    """A complete checkpoint to resume from: a manifest, or the old layout's state.pt."""
    run_dir = Path(run_dir)
    return (run_dir / MANIFEST).is_file() or (run_dir / "state.pt").is_file()


def step(run_dir) -> int | None:
    m = _read_manifest(Path(run_dir))
    return None if m is None else int(m["step"])


def read_bytes(run_dir, name: str, manifest: bool = True) -> tuple[bytes, Path]:
    """The bytes of one file of the run's checkpoint, checked against the manifest, and its path.
    Runs of the old layout (no manifest), or manifest=False, read the top-level file unchecked."""
    run_dir = Path(run_dir)
    m = _read_manifest(run_dir) if manifest else None
    if m is None:
        path = run_dir / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: the run has no saved checkpoint yet")
        return path.read_bytes(), path
    if name not in m["files"]:
        raise CheckpointError(f"{run_dir / MANIFEST} names no {name}")
    path = run_dir / m["dir"] / name
    want = m["files"][name]
    if not path.is_file():
        raise CheckpointError(f"{path} is missing although {MANIFEST} names it: the checkpoint is torn; "
                              "restore the file or start over with another --out")
    data = path.read_bytes()
    if len(data) != want["bytes"] or sha256_bytes(data) != want["sha256"]:
        raise CheckpointError(f"{path} is damaged ({len(data)} bytes, {MANIFEST} expects {want['bytes']} with "
                              "another SHA-256); restore the file or start over with another --out")
    return data, path


def sha256(run_dir, name: str) -> str:
    """The SHA-256 of a checkpoint file: from the manifest, else hashed (old layout)."""
    m = _read_manifest(Path(run_dir))
    if m is not None and name in m["files"]:
        return m["files"][name]["sha256"]
    return sha256_bytes(read_bytes(run_dir, name)[0])


def load_state(run_dir) -> dict:
    """The training state (state.pt), loaded with weights_only=True."""
    import pickle
    import zipfile

    import torch
    data, path = read_bytes(run_dir, "state.pt")
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is damaged or not a ddpmlab training state ({first[:120]}); "
                              "the run cannot resume from it: start over with another --out") from None


def load_tensors(run_dir, name: str, manifest: bool = True) -> dict:
    """The tensors of a safetensors file of the checkpoint; a damaged file is a CheckpointError."""
    from safetensors import SafetensorError
    from safetensors.torch import load
    data, path = read_bytes(run_dir, name, manifest)
    try:
        return load(data)
    except (SafetensorError, ValueError, OSError) as e:
        raise CheckpointError(f"{path} is damaged or not a safetensors file ({str(e)[:120]}); restore it "
                              "or retrain the run") from None


# ------------------------------------------------------------------------------ a training checkpoint

def save_training(run_dir, step: int, model, ema_model, state: dict, meta: dict | None = None) -> Path:
    """The checkpoint of a training run: the network's and the EMA's state_dicts as safetensors,
    the trainer's state (optimiser, schedulers, RNG, position) with torch.save."""
    from safetensors.torch import save

    import torch
    buf = io.BytesIO()
    torch.save(state, buf)
    return write(run_dir, step, {"model.safetensors": save(state_tensors(model)),
                                 "ema.safetensors": save(state_tensors(ema_model)), "state.pt": buf.getvalue()}, meta)


def state_tensors(module) -> dict:
    """What a safetensors file holds of a module: its state_dict, contiguous, on the CPU."""
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
