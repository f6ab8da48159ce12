"""`ddpmlab distill`: a few-step student of a trained run, fine-tuned from the teacher's weights.

    >>> distill("fmnist", "runs/fmnist-fast", minutes=60)          # consistency distillation
    >>> distill("fmnist", "runs/fmnist-ect", method="ect", minutes=60)
    >>> distill(None, "runs/fmnist-fast", resume=True, minutes=90)   # go on, to a longer budget

The student is a run directory like any other: the teacher's network and diffusion, its own
weights, a config.json whose "sampling" names the consistency sampler (1, 2 or 4 steps, one
network evaluation each, no guidance: the guidance is in the weights) and whose "distill" says how
it was made (config.DistillConfig, where the methods are described). It trains through the
trainer (train.Trainer), so it checkpoints as one unit, resumes bit-identically, plans its length
by --minutes and stops on Ctrl-C exactly as `train` does; only the step differs (Distiller).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from . import checkpoint
from . import config as C
from .data import ImageSet, to_model_range
from .diffusion import _t_batch, consistency_x0, guided_denoiser, make_timesteps, model_output_to_eps_x0
from .run import RunConfig, load_config, load_model, resolve_run
from .runtime import autocast
from .sample import load_guide, resolve_sampling
from .train import Trainer, train_run

log = logging.getLogger("ddpmlab.distill")

STUDENT_STEPS = 2           # the student's own default: 2 network evaluations an image


def student_config(teacher, method: str = "cd", steps: int = STUDENT_STEPS, pairs: str = "lognormal",
                   **train_overrides) -> RunConfig:
    """The student's run config: the teacher's network and diffusion; a fine-tuning recipe (Adam at
    a tenth of a training rate, cosine decay, no label dropout: the student needs no null label,
    its guidance is distilled); the consistency sampler as its sampling; how it is distilled."""
    tdir = resolve_run(teacher)
    trc = load_config(tdir)
    own = resolve_sampling(trc, run_dir=tdir)        # how the teacher samples: what cd distils
    guidance = {"guidance": own.guidance, "guidance_interval": own.guidance_interval,
                "autoguidance": own.autoguidance, "autoguidance_interval": own.autoguidance_interval,
                "guide": own.guide} if method == "cd" else {}
    guidance = {k: (list(v) if isinstance(v, tuple) else v) for k, v in guidance.items()}
    train = C.from_dict(C.TrainConfig, {**C.to_dict(C.TrainConfig()), "epochs": 10_000, "lr": 2e-4, "min_lr": 1e-5,
                                       "lr_schedule": "cosine", "warmup_steps": 0, "cond_drop": 0.0,
                                       "snapshot_steps": 0, "ema_halflife_kimg": 50.0, "ema_rampup": 0.1,
                                       "data": trc.train.data, "data_dir": trc.train.data_dir,
                                       **{k: v for k, v in train_overrides.items() if v is not None}})
    if not (train.minutes or train.max_steps):
        raise C.ConfigError("distill needs a length: --minutes M or --max-steps N")
    sampling = C.SamplingConfig(sampler="consistency", steps=steps, guidance=0.0, spacing="trailing").validate()
    distill = C.DistillConfig(teacher=str(teacher), method=method, guidance=guidance, pairs=pairs,
                              teacher_sha256=checkpoint.sha256(tdir, "ema.safetensors")).validate()
    return RunConfig(trc.preset, trc.model, trc.diffusion, train, sampling, {}, distill)


class Distiller(Trainer):
    """The trainer with the consistency step in place of the diffusion loss."""

    def __init__(self, run_dir, rc: RunConfig, data: ImageSet | None = None, progress: bool = True):
        super().__init__(run_dir, rc, data=data, progress=progress)
        d = rc.distill
        tdir = resolve_run(d.teacher)
        self.teacher, trc = load_model(tdir, device=self.device)
        self.teacher.requires_grad_(False)
        if not (self.run_dir / "checkpoint.json").is_file():   # a new student starts as the teacher
            self.model.load_state_dict(self.teacher.state_dict())
            self.ema.model.load_state_dict(self.teacher.state_dict())
        self.guide, self.guided = None, None
        if d.method == "cd":          # the teacher's guidance, as a Sampling for its guided denoiser
            g = {k: (tuple(v) if k.endswith("interval") and v else v) for k, v in d.guidance.items()}
            self.guided = C.Sampling("ddim", 1, **g)
            if self.guided.autoguidance:
                self.guide = load_guide(tdir, trc, self.device).requires_grad_(False)
        self.grids, self.pair_weights = {}, {}

    def grid(self) -> list[int]:
        """The log-SNR grid of this step, from T-1 down to 0: n_min points at the start, n_max at
        the planned end, geometric in between (a function of the step: resumes exactly)."""
        d = self.rc.distill
        progress = min(1.0, self.step / max(1, self.planned_steps()))
        n = int(round(d.n_min * (d.n_max / d.n_min) ** progress))
        if n not in self.grids:
            self.grids[n] = make_timesteps(self.schedule.T, n, "logsnr", self.schedule)
        return self.grids[n]

    def pair(self, ts: list[int]) -> int:
        """The index i of this step's pair (ts[i], ts[i+1]), drawn as DistillConfig.pairs says."""
        d = self.rc.distill
        if d.pairs == "uniform":
            return int(torch.randint(len(ts) - 1, (1,), generator=self.gen, device=self.device))
        if len(ts) not in self.pair_weights:      # the log-normal mass between each pair's two sigmas
            ls = self.schedule.log_sigmas()[ts]
            cdf = torch.special.ndtr((ls - d.p_mean) / d.p_std)
            self.pair_weights[len(ts)] = (cdf[:-1] - cdf[1:]).float().to(self.device)
        return int(torch.multinomial(self.pair_weights[len(ts)], 1, generator=self.gen))

    def f(self, net, x, tb):
        """The consistency function of `net` at (x_t, t) (diffusion.consistency_x0)."""
        a = self.schedule.abar(tb, x)
        _, x0 = model_output_to_eps_x0(self.schedule.prediction, x, net(x, tb, self._labels).float(), a)
        return consistency_x0(self.schedule, x, tb, x0)

    @torch.no_grad()
    def teacher_step(self, x: torch.Tensor, t: int, s: int) -> torch.Tensor:
        """One DDIM step (Song et al. 2021, eq. 12, eta 0, x0 clipped as the samplers clip) of the
        teacher's ODE from t to s, guided as the teacher samples."""
        denoise = guided_denoiser(self.teacher, self._labels, self.guided, self.rc.model.num_classes, self.guide)
        tb, sb = _t_batch(t, x), _t_batch(s, x)
        a_t, a_s = self.schedule.abar(tb, x), self.schedule.abar(sb, x)
        with autocast(self.device, self.precision):
            out = denoise(x, tb).float()
        _, x0 = model_output_to_eps_x0(self.schedule.prediction, x, out, a_t)
        x0 = x0.clamp(-1, 1)
        eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        return a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps

    def train_step(self, idx: torch.Tensor) -> torch.Tensor:
        d = self.rc.distill
        x0 = to_model_range(self.images[idx])                               # (B, C, H, W) in [-1, 1]
        self._labels = self.labels[idx] if self.labels is not None and self.rc.model.num_classes else None
        ts = self.grid()
        i = self.pair(ts)
        t, s = ts[i], ts[i + 1]                                             # t > s, adjacent on the grid
        noise = torch.randn(x0.shape, generator=self.gen, device=self.device)
        tb, sb = _t_batch(t, x0), _t_batch(s, x0)
        a_t, a_s = self.schedule.abar(tb, x0), self.schedule.abar(sb, x0)
        x_t = a_t.sqrt() * x0 + (1 - a_t).sqrt() * noise
        if d.method == "cd":
            x_s = self.teacher_step(x_t, t, s)
        else:                                                               # ect: the same image and noise at s
            x_s = a_s.sqrt() * x0 + (1 - a_s).sqrt() * noise
        with torch.no_grad(), autocast(self.device, self.precision):
            target = self.f(self.model, x_s, sb)                            # the stop-gradient target
        with autocast(self.device, self.precision):
            pred = self.f(self.ddp, x_t, tb)
        diff = (pred - target).flatten(1)
        c = d.huber_c * math.sqrt(diff.shape[1] / 784)                      # iCT's c, scaled to the image size
        huber = (diff.square().sum(1) + c * c).sqrt() - c                   # (B,) pseudo-Huber
        # every pair weighs the same: the grid is uniform in log-SNR, so are the gaps (iCT's 1 / (sigma_t -
        # sigma_s) would silence the top of a cosine schedule, where sigma reaches 2e4 and sampling starts)
        return self.optimizer_step(huber.mean())     # student_config's cosine schedule, Adam, the EMA


def distill(teacher, out, *, method: str = "cd", steps: int = STUDENT_STEPS, pairs: str = "lognormal",
            resume: bool = False, data: ImageSet | None = None, progress: bool = True, **train_overrides) -> dict:
    """Distil `teacher` into a student at `out` (resume=True: go on with the one there; the
    overrides, e.g. minutes=90, then replace its saved training settings)."""
    out = Path(out)
    rc = None if resume else student_config(teacher, method, steps, pairs, **train_overrides)
    if resume:
        rc = load_config(out) if (out / "config.json").is_file() else None
        if rc is not None and rc.distill is None:
            raise C.ConfigError(f"--resume: {out} holds a trained run, not a distilled student; use `ddpmlab train "
                                "--resume`")
    return train_run(out, rc, Distiller, resume=resume, data=data, progress=progress,
                     **(train_overrides if resume else {}))
