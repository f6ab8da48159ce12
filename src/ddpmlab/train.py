"""The trainer: the write-up's recipe, checkpointed for exact resume.

Adam at 1e-3, ReduceLROnPlateau halving the rate after 3 epochs without improvement of the
epoch loss (floor 1e-4), batch 64, EMA of the weights (buffers included) for sampling. The
whole dataset sits on the device as uint8; batches are drawn by index from a seeded
permutation. All randomness comes from two generators whose states are checkpointed, so
2 epochs + resume + 2 epochs gives the same weights as 4 epochs.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import math
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from . import checkpoint
from . import config as C
from . import monitor, plots, render
from .data import FASHION_CLASSES, ImageSet, load_dataset, to_model_range
from .defaults import DEFAULT_SAMPLER
from .diffusion import loss_fn, make_schedule
from .models import build_model, count_parameters
from .run import RunConfig, RunLog, describe_run, load_config, load_weights, read_metrics, save_config
from .runtime import (autocast, init_distributed, resolve_channels_last, resolve_device,
                      resolve_precision)

log = logging.getLogger("ddpmlab.train")
SAVE_EVERY_S = 600       # also checkpoint mid-epoch every 10 minutes: long CPU epochs lose little


class TrainingDiverged(RuntimeError):
    pass


class TrainingInterrupted(RuntimeError):
    pass


PLAN_FROM_STEP = 10       # --minutes: the pace is measured from here (the first steps allocate and warm caches)
PLAN_AT_STEP = 60         # first plan here, or at the end of the warmup if later; again at every epoch's end
PLAN_MARGIN = 0.98        # the share of the time left given to steps: the final save and figures take the rest


def steps_for_minutes(step: int, elapsed_s: float, seconds_per_step: float, minutes: float,
                      margin: float = PLAN_MARGIN) -> int:
    """The run's length in optimiser steps when its first `step` steps took `elapsed_s` seconds
    of its clock and each further one takes `seconds_per_step`: as many as fit in what is left
    of `minutes`, less the margin; never fewer than the steps already made."""
    left = minutes * 60 - elapsed_s
    return step + max(0, int(left * margin / seconds_per_step))


def cosine_lr(step: int, total: int, lr: float, min_lr: float, warmup: int = 0, hold: int = 0) -> float:
    """The learning rate of optimiser step `step` (0-based) of `total`: linear warmup from
    lr / warmup to lr over the first `warmup` steps, lr until step `hold` (--minutes: until the
    run's length is known), then a half cosine from lr down to min_lr, reached at the last step
    (total - 1). A function of the step alone, so a resumed run (which restores the step)
    continues it exactly."""
    if step < warmup:
        return lr * (step + 1) / warmup
    start = max(warmup, hold)
    if step < start:
        return lr
    span = max(1, total - 1 - start)
    progress = min(1.0, (step - start) / span)
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of parameters; buffers (BatchNorm statistics) are copied.

    decay: per step, warmed up as min(decay, (1 + step) / (10 + step)). Or halflife_kimg (EDM,
    Karras et al. 2022): the weights of `halflife_kimg` thousand images ago count half, i.e. a
    per-step decay 0.5 ** (images_per_step / (1000 halflife_kimg)); with rampup the half-life is
    at most rampup x the images seen so far (EDM's ema_rampup_ratio)."""

    def __init__(self, model: torch.nn.Module, decay: float, halflife_kimg: float | None = None,
                 rampup: float | None = None, images_per_step: int = 1):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay
        self.halflife_kimg, self.rampup, self.images_per_step = halflife_kimg, rampup, images_per_step

    def decay_at(self, step: int) -> float:
        if self.halflife_kimg is None:
            return min(self.decay, (1 + step) / (10 + step))   # warm-up: early samples are not the init
        halflife = self.halflife_kimg * 1000
        if self.rampup is not None:
            halflife = min(halflife, (step + 1) * self.images_per_step * self.rampup)
        return 0.5 ** (self.images_per_step / max(halflife, 1e-8))

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = self.decay_at(step)
        torch._foreach_lerp_(list(self.model.parameters()), list(model.parameters()), 1 - d)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)


class MinutesClock:
    """--minutes: the run's wall clock, which counts from the trainer's construction (data loading
    and model building included) and runs on across interruptions (the checkpoint's train_seconds),
    not while stopped; and the run's length planned from it. `plan` is None, then {"from": [step,
    seconds]} (where the pace is measured from), then also {"at": the step of the first plan (the
    cosine decays from there), "steps": the planned length}."""

    def __init__(self, minutes: float | None):
        self.minutes = minutes
        self.t_start, self.seconds_before = time.monotonic(), 0.0
        self.plan = None

    def seconds(self) -> float:
        return self.seconds_before + time.monotonic() - self.t_start

    def planned(self) -> bool:
        return self.plan is not None and "steps" in self.plan

    def decay_from(self, step: int) -> int:
        """The step where the cosine decay starts after the warmup: with --minutes, the first
        plan's step (and, until there is one, not before the next step: the rate holds)."""
        if not self.minutes:
            return 0
        return self.plan["at"] if self.planned() else step + 1

    def due(self, step: int, warmup_steps: int) -> bool:
        """After optimiser step `step`: whether to plan the length now. Unplanned, the pace is
        measured from PLAN_FROM_STEP; the first plan comes at PLAN_AT_STEP, or at the end of the
        warmup if later (the rate holds at its peak until then)."""
        if not self.minutes or self.planned():
            return False
        if self.plan is None or step == PLAN_FROM_STEP:
            self.plan = {"from": [step, self.seconds()]}
            return False
        return step >= max(PLAN_AT_STEP, warmup_steps)

    def pace(self, step: int) -> tuple[float, float]:
        """(seconds so far, seconds per step since the pace is measured)."""
        seconds = self.seconds()
        step0, seconds0 = self.plan["from"]
        return seconds, (seconds - seconds0) / max(1, step - step0)

    def set_length(self, step: int, steps: int) -> None:
        self.plan.setdefault("at", step)
        self.plan["steps"] = steps


class TrainingState:
    """Everything one checkpoint holds and restores: the network and its EMA, the optimiser and
    the plateau scheduler, both random generators, the position in the run (step, epoch, batch
    within it, the epoch's permutation and loss so far) and the --minutes clock."""

    def __init__(self, run_dir, rc: RunConfig, batch: int):
        tc = rc.train
        self.run_dir, self.rc = Path(run_dir), rc
        self.model = build_model(rc.model).to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = EMA(self.model, tc.ema_decay, tc.ema_halflife_kimg, tc.ema_rampup, batch * self.world)
        # fused: one kernel for all parameters instead of a loop of small ops (docs/experiments.md)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=tc.lr, fused=self.device.type in ("cpu", "cuda"))
        self.plateau = self.make_plateau()
        self.gen = torch.Generator(self.device).manual_seed(tc.seed + 1_000_003 * self.rank)  # t, noise, label drop
        self.perm_gen = torch.Generator().manual_seed(tc.seed + 1)          # epoch permutations
        self.step = 0
        self.epoch = 0                  # epochs completed
        self.batch_pos = 0              # batches done in the current epoch
        self.perm = None
        self.perm_epoch = None          # the epoch self.perm was drawn for
        self.epoch_loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.clock = MinutesClock(tc.minutes)
        self.runlog = RunLog(self.run_dir, tc.tensorboard) if self.rank == 0 else None
        self.last_save = time.monotonic()

    def state_dict(self) -> dict:
        gen = self.gen.get_state()
        if self.world > 1:   # every rank's noise generator, so a resumed run draws what it would have
            gens = [None] * self.world
            dist.all_gather_object(gens, gen.cpu())
        else:
            gens = [gen]
        return {"step": self.step, "epoch": self.epoch, "batch_pos": self.batch_pos, "perm": self.perm,
                "epoch_loss_sum": self.epoch_loss_sum.cpu(), "optimizer": self.opt.state_dict(),
                "plateau": self.plateau.state_dict(), "gen": gens, "perm_gen": self.perm_gen.get_state(),
                "perm_epoch": self.perm_epoch, "train_seconds": self.clock.seconds(), "minutes_plan": self.clock.plan}

    @torch.no_grad()
    def sync_buffers(self) -> None:
        """Average BatchNorm running statistics over the ranks (each saw its own shard) and copy
        them into the EMA model, so every rank holds, and rank 0 saves, the same buffers."""
        if self.world == 1:
            return
        for b in self.model.buffers():
            if b.is_floating_point():
                dist.all_reduce(b)
                b.div_(self.world)
        for b_ema, b in zip(self.ema.model.buffers(), self.model.buffers()):
            b_ema.copy_(b)

    def save(self) -> None:
        """One checkpoint unit (checkpoint.py): weights, EMA weights and state of this step."""
        self.sync_buffers()
        state = self.state_dict()     # a collective under torchrun: every rank takes part
        self.last_save = time.monotonic()
        if self.rank != 0:
            return
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.run_dir, self.rc)
        except OSError as e:
            raise checkpoint.disk_error(e, self.run_dir, f"{self.run_dir}/config.json") from None
        checkpoint.save_training(self.run_dir, self.step, self.model, self.ema.model, state,
                                 meta={"epoch": self.epoch, "batch_pos": self.batch_pos})

    def load(self) -> None:
        load_weights(self.model, self.run_dir, "model.safetensors")
        load_weights(self.ema.model, self.run_dir, "ema.safetensors")
        s = checkpoint.load_state(self.run_dir)
        self.step, self.epoch, self.batch_pos, self.perm = s["step"], s["epoch"], s["batch_pos"], s["perm"]
        self.epoch_loss_sum = s["epoch_loss_sum"].to(self.device)
        self.opt.load_state_dict(s["optimizer"])
        for group in self.opt.param_groups:   # the checkpoint's own setting (older runs: unfused) is not this device's
            group["fused"] = self.opt.defaults["fused"]
        self.plateau.load_state_dict(s["plateau"])
        gens = s["gen"] if isinstance(s["gen"], list) else [s["gen"]]
        if len(gens) == self.world:
            self.gen.set_state(gens[self.rank])
        else:
            log.warning("resuming with %d processes a run saved with %d: noise streams restart", self.world, len(gens))
        self.perm_gen.set_state(s["perm_gen"])
        self.clock.seconds_before, self.clock.plan = s.get("train_seconds", 0.0), s.get("minutes_plan")
        # the epoch the saved permutation belongs to; older checkpoints drew a new one at batch 0
        self.perm_epoch = s.get("perm_epoch", self.epoch if self.batch_pos > 0 else None)
        if self.rank == 0:
            self.runlog.keep_until(self.step)   # lines logged after this checkpoint, by a run that then crashed

    def rank_digests(self) -> list[str]:
        """SHA-256 of every rank's weights and buffers: DDP must keep them identical."""
        h = hashlib.sha256()
        for v in [*self.model.state_dict().values(), *self.ema.model.state_dict().values()]:
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        out = [None] * self.world
        dist.all_gather_object(out, h.hexdigest())
        return out

    def sum_ranks(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(t)
        return t

    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    def set_lr(self, lr: float) -> None:
        """A new learning rate for a resumed run (the restored optimiser would keep the old one);
        the plateau scheduler starts counting afresh from it."""
        if self.rc.train.min_lr > lr:
            raise C.ConfigError(f"--lr {lr:g} is below the run's min_lr {self.rc.train.min_lr:g}")
        log.info("learning rate %.1e -> %.1e from step %d", self.lr(), lr, self.step)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.plateau = self.make_plateau()

    def make_plateau(self):
        tc = self.rc.train
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.opt, mode="min", factor=tc.lr_factor, patience=tc.lr_patience, min_lr=tc.min_lr)


def for_ranks(model, device, world: int, compile: bool):
    """(what the loss calls, the network): under torchrun the network wrapped in DDP (the network
    is then its .module), compiled with --compile."""
    ddp = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel
        net = model
        if device.type == "cuda":   # SyncBatchNorm is GPU-only in PyTorch; on CPU (gloo) the
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)   # running stats come from rank 0
        ddp = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
        model = ddp.module
    return (torch.compile(ddp) if compile else ddp), model


def training_data(rc: RunConfig, data: ImageSet | None) -> ImageSet:
    """The run's images (its subset), checked against what the network takes."""
    tc = rc.train
    data = data if data is not None else load_dataset(tc.data, tc.data_dir, size=rc.model.image_size,
                                                      channels=rc.model.in_channels, skip_unreadable=tc.skip_unreadable)
    data = data.subset(tc.subset)
    want = (rc.model.in_channels, rc.model.image_size, rc.model.image_size)
    if tuple(data.images.shape[1:]) != want:
        raise C.ConfigError(f"preset {rc.preset} takes images {want} (C, H, W), the data ({data.source}) "
                            f"holds {tuple(data.images.shape[1:])}")
    if rc.model.num_classes and data.num_classes != rc.model.num_classes:
        raise C.ConfigError(f"preset {rc.preset} needs {rc.model.num_classes} classes, data has {data.num_classes}")
    return data


class LossWindow:
    """The loss summed on the device over the steps since the last log line: one host sync a window."""

    def __init__(self, device):
        self.sum, self.n, self.t0 = torch.zeros((), device=device), 0, time.perf_counter()

    def add(self, loss: torch.Tensor) -> None:
        self.sum += loss
        self.n += 1

    def restart(self) -> None:
        self.sum.zero_()
        self.n, self.t0 = 0, time.perf_counter()


class Trainer(TrainingState):
    """The training loop over a TrainingState: batches drawn by index from a seeded permutation of
    the images on the device, the loss of one step, the log, the checkpoint cadence, the work at
    each epoch's end."""

    def __init__(self, run_dir, rc: RunConfig, data: ImageSet | None = None, progress: bool = True):
        tc = rc.train
        # under torchrun: one process per device (or CPU share), each a disjoint shard of every epoch
        self.rank, self.world, self.device = init_distributed(resolve_device(tc.device))
        self.precision = resolve_precision(tc.precision, self.device)
        self.channels_last = resolve_channels_last(tc.channels_last, self.device, self.precision, rc.model.arch)
        self.progress = progress
        torch.manual_seed(tc.seed)   # model initialisation
        data = training_data(rc, data)
        self.class_names = data.class_names
        rc.about = describe_run(data, self.world)
        self.images = data.images.to(self.device)                           # (N, C, H, W) uint8
        self.labels = data.labels.to(self.device) if data.labels is not None else None
        self.batch = min(tc.batch_size, len(data))
        self.batches_per_epoch = max(1, len(data) // (self.batch * self.world))  # last partial batch dropped
        self.schedule = make_schedule(rc.diffusion)
        super().__init__(run_dir, rc, self.batch)
        self.ddp, self.model = for_ranks(self.model, self.device, self.world, tc.compile)
        self.interrupted = False
        self.stop_agreed = False        # distributed: all ranks stop at the same step
        self.postfix = {}               # collapse scores of the last epoch, shown on the progress bar
        self.watch = monitor.CollapseWatch(self.images, self.labels, rc.model.num_classes, tc.snapshot_per_class,
                                           classifier=lambda: snapshot_classifier(self.class_names))
        self.bar = None                 # the progress bar while fit() runs
        self.compile_s = None           # torch.compile: seconds of the first step, compilation included
        self.epoch_t0, self.epoch_imgs = time.perf_counter(), 0   # images/s of the current epoch

    def log_metrics(self, **m) -> None:
        if self.runlog is not None:
            self.runlog.append(**m)

    def planned_steps(self) -> int:
        """The run's length in optimiser steps (where lr_schedule cosine reaches min_lr): epochs x
        batches per epoch, or max_steps if fewer, or what --minutes planned if fewer still."""
        tc = self.rc.train
        total = tc.epochs * self.batches_per_epoch
        total = min(total, tc.max_steps) if tc.max_steps else total
        return min(total, self.clock.plan["steps"]) if self.clock.planned() else total

    # ------------------------------------------------------------------ one step
    def train_step(self, idx: torch.Tensor) -> torch.Tensor:
        x0 = to_model_range(self.images[idx])                               # (B, C, H, W) in [-1, 1]
        if self.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        label = None
        if self.labels is not None and self.rc.model.num_classes:
            label = self.labels[idx]
            if self.rc.train.cond_drop > 0:   # classifier-free guidance: null label at random
                drop = torch.rand(label.shape, device=self.device, generator=self.gen) < self.rc.train.cond_drop
                label = torch.where(drop, self.rc.model.num_classes, label)
        tc = self.rc.train
        with autocast(self.device, self.precision):
            loss = loss_fn(self.ddp, self.schedule, x0, label, self.gen, weighting=tc.loss_weighting,
                           min_snr_gamma=tc.min_snr_gamma, t_sampling=tc.t_sampling, p_mean=tc.p_mean, p_std=tc.p_std)
        return self.optimizer_step(loss)

    def optimizer_step(self, loss: torch.Tensor) -> torch.Tensor:
        """Backward, the learning rate of this step, Adam, the EMA: what every step ends with."""
        tc = self.rc.train
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc.lr_schedule == "cosine":     # per step, from the step alone (resumes exactly)
            lr = cosine_lr(self.step, self.planned_steps(), tc.lr, tc.min_lr, tc.warmup_steps,
                           self.clock.decay_from(self.step))
            for g in self.opt.param_groups:
                g["lr"] = lr
        self.opt.step()
        self.ema.update(self.model, self.step)
        return loss.detach()

    def check_finite(self, value: float) -> None:
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"loss became {value} at step {self.step} (epoch {self.epoch + 1}); stopped without saving, "
                f"the last good checkpoint in {self.run_dir} is kept; try a lower --lr or --precision fp32")

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict:
        """Set up, run the loop, save; the final figures (`fit`)."""
        return fit(self)

    def run_epochs(self) -> bool:
        """Epochs of batches until the run's length. True when the run is complete (its epochs, or
        the --minutes plan), False when it stopped early (max_steps, Ctrl-C)."""
        tc = self.rc.train
        window = LossWindow(self.device)
        while self.epoch < tc.epochs:
            perm = self.start_epoch()
            while self.batch_pos < self.batches_per_epoch:
                if self.clock.planned() and self.step >= self.clock.plan["steps"]:
                    return True                     # --minutes: the budget is spent, the run is done
                if (tc.max_steps and self.step >= tc.max_steps) or self.stop_requested():
                    return False
                first = (self.batch_pos * self.world + self.rank) * self.batch     # this rank's shard
                idx = perm[first:first + self.batch]
                compiling = tc.compile and self.compile_s is None
                loss = first_step_compiled(self, idx) if compiling else self.train_step(idx)
                self.step += 1
                self.batch_pos += 1
                if self.clock.due(self.step, tc.warmup_steps):
                    plan_length(self)
                self.epoch_loss_sum += loss
                window.add(loss)
                self.epoch_imgs += self.batch * self.world
                self.bar.update(1)
                if window.n == tc.log_every or self.batch_pos == self.batches_per_epoch:
                    self.log_window(window)
            end_epoch(self)
            window.restart()   # snapshot time does not count as training time
        return True

    def start_epoch(self) -> torch.Tensor:
        """This epoch's permutation, on the device (drawn anew unless the epoch was interrupted)."""
        if self.perm_epoch != self.epoch:   # a new epoch; one stopped at its first batch keeps its own
            self.perm = torch.randperm(len(self.images), generator=self.perm_gen)
            self.perm_epoch = self.epoch
            self.epoch_loss_sum.zero_()
        # images/s of this epoch count from here (from the resume point mid-epoch)
        self.epoch_t0, self.epoch_imgs = time.perf_counter(), 0
        self.model.train()
        return self.perm.to(self.device)

    def stop_requested(self) -> bool:
        return self.interrupted if self.world == 1 else self.stop_agreed

    def log_window(self, window: LossWindow) -> None:
        """The one host sync per window: the mean loss logged and checked; under torchrun also where
        all ranks agree on stopping (Ctrl-C) and on a time-based checkpoint (every SAVE_EVERY_S)."""
        want_save = time.monotonic() - self.last_save > SAVE_EVERY_S
        flags = torch.tensor([float(self.interrupted), float(want_save)], device=self.device)
        agreed = self.sum_ranks(torch.cat([window.sum.float().view(1), flags])).tolist()
        value = agreed[0] / (window.n * self.world)
        self.stop_agreed, want_save = agreed[1] > 0, agreed[2] > 0
        self.check_finite(value)
        ips = window.n * self.batch * self.world / (time.perf_counter() - window.t0)
        self.log_metrics(kind="step", step=self.step, epoch=self.epoch + 1, loss=value,
                         lr=self.lr(), img_per_s=round(ips, 2))
        self.bar.set_postfix(loss=f"{value:.4f}", lr=f"{self.lr():.1e}", img_s=f"{ips:.0f}", **self.postfix)
        window.restart()
        if want_save:
            self.save()

    def finish_figures(self) -> None:
        for work in END_OF_TRAINING:
            work(self)

    def on_sigint(self, *_):
        if self.interrupted:   # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.interrupted = True


# ---------------------------------------------------------------------- around the loop

def fit(tr: "Trainer") -> dict:
    """Set up, run the loop, save; the final figures. Ctrl-C stops at the next step and saves."""
    prepare_run_dir(tr)
    total = tr.planned_steps()
    log.info("run %s: preset %s, %d parameters, %d images, device %s, precision %s, channels_last %s%s",
             tr.run_dir, tr.rc.preset, count_parameters(tr.model), len(tr.images),
             tr.device, tr.precision, tr.channels_last,
             f", rank {tr.rank} of {tr.world}" if tr.world > 1 else "")
    tr.bar = tqdm(total=total, initial=min(tr.step, total), disable=not (tr.progress and tr.rank == 0),
                  unit="step", dynamic_ncols=True, desc=tr.rc.preset)
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, tr.on_sigint)
    try:
        finished = tr.run_epochs()
    finally:
        signal.signal(signal.SIGINT, previous)
        tr.bar.close()
        tr.bar = None
    tr.save()
    if tr.interrupted:
        raise TrainingInterrupted(f"interrupted at step {tr.step}; saved, continue with --resume")
    if tr.world > 1:
        tr.log_metrics(kind="ddp", step=tr.step, world=tr.world, weights_sha256=tr.rank_digests())
    if tr.rank == 0:
        try:
            tr.finish_figures()
        except KeyboardInterrupt:
            # Ctrl-C (or a harness's SIGINT at its budget) after the final save: the run is
            # complete on disk, only its last figures are missing; say so in one line, exit 130
            raise TrainingInterrupted(f"interrupted while drawing the final figures after step {tr.step}; "
                                      "the run is saved") from None
    return {"steps": tr.step, "epochs": tr.epoch, "finished": finished}


def plan_length(tr: "Trainer") -> None:
    """--minutes: the run's length from its pace since PLAN_FROM_STEP (epoch-end work
    included), so that it, and a cosine schedule with it, ends when the budget is spent;
    re-planned at every epoch's end as the pace becomes known. Each plan goes into the
    checkpoint, so a run resumed at the same pace ends as the uninterrupted one."""
    seconds, per_step = tr.clock.pace(tr.step)
    steps = torch.tensor(float(steps_for_minutes(tr.step, seconds, per_step, tr.clock.minutes)
                               if tr.rank == 0 else 0), device=tr.device)
    steps = int(tr.sum_ranks(steps).item())       # rank 0's clock decides, for every rank
    tr.clock.set_length(tr.step, steps)
    if tr.bar is not None:
        tr.bar.total = tr.planned_steps()
        tr.bar.refresh()
    tr.log_metrics(kind="plan", step=tr.step, steps=steps, seconds=round(seconds, 1),
                     seconds_per_step=round(per_step, 4))
    log.info("--minutes %g: %.3f s a step, %.0f s in at step %d: the run is %d steps",
             tr.clock.minutes, per_step, seconds, tr.step, steps)


def prepare_run_dir(tr: "Trainer") -> None:
    if tr.rank == 0:
        tr.run_dir.mkdir(parents=True, exist_ok=True)
        removed = checkpoint.remove_stale(tr.run_dir)     # leftovers of an interrupted save
        if removed:
            log.info("removed %s: left by an interrupted checkpoint", ", ".join(sorted(removed)))
        if tr.step == 0:              # a fresh run: no log of an earlier attempt survives
            tr.runlog.reset()
        save_config(tr.run_dir, tr.rc)
    tr.last_save = time.monotonic()


def first_step_compiled(tr: "Trainer", idx: torch.Tensor) -> torch.Tensor:
    """train_step, timed: with --compile the first call compiles, and the log says how long."""
    t0 = time.perf_counter()
    loss = tr.train_step(idx).item()
    tr.compile_s = time.perf_counter() - t0
    log.info("torch.compile: first step (compilation included) took %.1f s", tr.compile_s)
    tr.log_metrics(kind="compile", step=tr.step + 1, seconds=round(tr.compile_s, 1))
    return torch.tensor(loss, device=tr.device)


# ---------------------------------------------------------------------- end-of-epoch and final work

def end_epoch(tr: "Trainer") -> None:
    """The epoch's mean loss (logged, and read by the plateau scheduler), its snapshots and collapse
    scores (END_OF_EPOCH), a re-plan of --minutes, a checkpoint and the loss figure."""
    # the mean over all ranks: every rank's LR scheduler must see the same number
    epoch_loss = tr.sum_ranks(tr.epoch_loss_sum.clone()).item() / (tr.batches_per_epoch * tr.world)
    tr.check_finite(epoch_loss)
    seconds = time.perf_counter() - tr.epoch_t0
    if tr.rc.train.lr_schedule == "plateau":
        tr.plateau.step(epoch_loss)
    tr.epoch += 1
    tr.batch_pos = 0
    scores = {}
    if tr.rank == 0:
        for work in END_OF_EPOCH:
            scores.update(work(tr) or {})
    if tr.clock.planned():                # --minutes: the pace now includes an epoch's end
        plan_length(tr)
    tr.log_metrics(kind="epoch", step=tr.step, epoch=tr.epoch, loss=epoch_loss, lr=tr.lr(),
                   img_per_s=round(tr.epoch_imgs / seconds, 2), seconds=round(seconds, 1), **scores)
    log.info("epoch %d: loss %.4f, lr %.1e, %.1f img/s%s", tr.epoch, epoch_loss, tr.lr(),
             tr.epoch_imgs / seconds, "".join(f", {k} {v}" for k, v in scores.items()))
    tr.save()
    if tr.rank == 0:
        loss_figure(tr)


# Plain functions of the trainer (rank 0 only), run in order; the epoch's ones return scores for
# its metrics line.

def snapshots_and_collapse_scores(tr: Trainer) -> dict:
    """Per-epoch snapshots from fixed noise (snapshots/epochE-classK.png), scored against real
    images of the same classes; a warning naming the epoch when they collapse."""
    tc = tr.rc.train
    if not tc.snapshot_steps:
        return {}
    x = render.snapshots(tr.ema.model, tr.schedule, tr.rc.model, tr.run_dir / "snapshots", tr.epoch,
                         per_class=tc.snapshot_per_class, steps=tc.snapshot_steps, seed=tc.seed, device=tr.device)
    scores = tr.watch(x, tr.epoch, tr.run_dir / "snapshots")
    short = {"diversity": "div", "label_separation": "sep", "adherence": "adh"}
    tr.postfix = {short[k]: f"{v:.2f}" for k, v in scores.items() if k in short}
    if tr.bar is not None:
        tr.bar.set_postfix(epoch=tr.epoch, **tr.postfix)
    if tr.runlog.tb is not None:
        tr.runlog.tb.add_image("snapshots", plots.tile(x, tc.snapshot_per_class), tr.epoch, dataformats="HWC")
    return scores


def loss_figure(tr: Trainer) -> None:
    d, t, dist = tr.rc.diffusion, tr.rc.train, tr.rc.distill
    if dist is not None:        # a student's loss compares two consistency functions (distill.py)
        title = f"{tr.rc.preset}, {dist.method} student of {dist.teacher}: distillation loss"
        ylabel = f"pseudo-Huber distance (c={dist.huber_c:g})"
    else:
        target = {"eps": "the noise", "v": "v", "x0": "the clean image"}[d.prediction]
        weighting = f"min-SNR-{t.min_snr_gamma:g} weighted " if t.loss_weighting == "min-snr" else ""
        title, ylabel = f"{tr.rc.preset}: training loss", f"{weighting}MSE on {target}"
    plots.plot_loss(read_metrics(tr.run_dir), tr.run_dir / "loss.png", title=title, ylabel=ylabel)


def final_sampling(tr: Trainer) -> C.Sampling:
    """The final figures' sampling: unguided, ddpmlab's default sampler, at least 10 steps; a
    few-step student (consistency sampler) at its own steps."""
    own = tr.rc.sampling
    if own.sampler == "consistency":
        return C.Sampling("consistency", own.steps or 1, spacing=own.spacing or "trailing")
    return C.Sampling(DEFAULT_SAMPLER, max(tr.rc.train.snapshot_steps, 10))


def final_sample_grid(tr: Trainer) -> None:
    render.sample_grid(tr.ema.model, tr.schedule, tr.rc.model, tr.run_dir / "samples" / "grid.png", final_sampling(tr),
                       per_class=8, seed=tr.rc.train.seed, device=tr.device, class_names=tr.class_names)


def final_process_figure(tr: Trainer) -> None:
    render.process_figure(tr.ema.model, tr.schedule, tr.rc.model, tr.run_dir / "process.png", final_sampling(tr),
                          n=4 if tr.rc.model.image_size <= 32 else 2, seed=tr.rc.train.seed, device=tr.device,
                          class_names=tr.class_names)


END_OF_EPOCH = (snapshots_and_collapse_scores,)
END_OF_TRAINING = (loss_figure, final_sample_grid, final_process_figure)


def snapshot_classifier(class_names):
    """The FashionMNIST evaluation classifier (images in [-1, 1] -> logits) when the data is
    FashionMNIST and its weights exist; None otherwise (then no adherence score)."""
    if tuple(class_names) != FASHION_CLASSES:
        return None
    try:
        from .classifier import load_classifier
        clf = load_classifier(device="cpu")
    except (ImportError, C.ConfigError, OSError) as e:
        log.info("no label-adherence score: %s", e)
        return None
    return lambda x: clf(x.float().cpu())


def train(run_dir, rc: RunConfig | None = None, *, resume: bool = False, data: ImageSet | None = None,
          progress: bool = True, **overrides) -> dict:
    """Train a run. resume=True continues run_dir from its checkpoint; `overrides` (e.g.
    epochs=4, max_steps=None) then replace the saved training settings."""
    return train_run(run_dir, rc, Trainer, resume=resume, data=data, progress=progress, **overrides)


def train_run(run_dir, rc: RunConfig | None, trainer_class, *, resume: bool = False, data: ImageSet | None = None,
              progress: bool = True, **overrides) -> dict:
    """`train` with the trainer of one's choice (distill.Distiller: the same loop, another step)."""
    run_dir = Path(run_dir)
    if resume:
        if not checkpoint.exists(run_dir):
            what = "was stopped before its first checkpoint was complete" if (run_dir / "config.json").is_file() \
                else "holds no run"
            raise C.ConfigError(f"--resume: {run_dir} {what}: nothing is resumable yet; start over with the same "
                                "command without --resume")
        rc = load_config(run_dir)
        saved_minutes = rc.train.minutes
        rc.train = C.from_dict(C.TrainConfig, {**C.to_dict(rc.train), **overrides})
    elif rc is None:
        raise C.ConfigError("train needs a RunConfig (or resume=True)")
    elif checkpoint.exists(run_dir):
        raise C.ConfigError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    trainer = trainer_class(run_dir, rc, data=data, progress=progress)
    try:
        if resume:
            trainer.load()
            if "lr" in overrides:
                trainer.set_lr(overrides["lr"])
            if rc.train.minutes != saved_minutes and trainer.clock.planned():
                # a new budget (say 60 minutes more for a finished run): its length is planned
                # again now from the pace so far, and the cosine schedule stretches to the new end
                plan_length(trainer)
        result = trainer.fit()
        if trainer.world > 1:
            # rank 0 still draws the final figures: the others wait, so that no rank tears down
            # its connections while a peer still holds its end
            dist.barrier()
        return result
    finally:
        # under torchrun: leave the process group before the interpreter exits; otherwise gloo's
        # worker threads are torn down during finalisation and a rank can die with SIGABRT
        # ("terminate called without an active exception") after a run that finished
        if trainer.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
