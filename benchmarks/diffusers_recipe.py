"""The recipe a user would pick instead: diffusers' own classes, trained as diffusers'
Takes: as long as the budget it is given.
unconditional training example (examples/unconditional_image_generation/train_unconditional.py)
trains by default, made class-conditional with `num_class_embeds`, sampled with diffusers'
`DPMSolverMultistepScheduler` at its defaults. The peer of benchmarks/time_to_quality.py.

    .venv/bin/python benchmarks/diffusers_recipe.py train --out RUN [--precision fp32|bf16]
    .venv/bin/python benchmarks/diffusers_recipe.py sample --run RUN --n 1000 --npz S.npz
    .venv/bin/ddpmlab evaluate S.npz

The example's defaults, kept: AdamW (lr 1e-4, betas 0.95 / 0.999, weight decay 1e-6, eps 1e-8),
a cosine learning rate with 500 warmup steps planned over its 100 epochs, batch 16, EMA with
inv_gamma 1.0, power 3/4, max decay 0.9999 (diffusers' EMAModel), DDPMScheduler with 1000
linear-beta steps and epsilon prediction, fp32 (its `--mixed_precision no`; `--precision bf16`
runs the network under autocast as its `--mixed_precision bf16` would), images in [-1, 1], no
flips. Changed for FashionMNIST: 28x28 grey images, a UNet2DModel of three levels (24, 48, 96
channels, two ResNet layers per block, attention at the lowest level and in the middle as the
example places it) with 10 class embeddings, 2.22M parameters against unet-small's 2.29M.

SIGINT checkpoints and exits 130; `train` on a run directory with a checkpoint resumes it. The
data are ddpmlab's FashionMNIST loader (the same images, the same verification).
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

import torch

from ddpmlab.data import load_fashion_mnist, to_model_range
from ddpmlab.runtime import autocast, keep_freed_memory
from ddpmlab.samplefile import save_npz

BATCH, LR, WARMUP, EPOCHS = 16, 1e-4, 500, 100          # train_unconditional.py's defaults


def make_unet():
    from diffusers import UNet2DModel
    return UNet2DModel(sample_size=28, in_channels=1, out_channels=1, layers_per_block=2,
                       block_out_channels=(24, 48, 96), norm_num_groups=8, num_class_embeds=10,
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))


def train(args) -> int:
    stop = {"now": False}
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))     # checkpoint, then exit 130
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    data = load_fashion_mnist("train")
    images, labels = data.images, data.labels
    steps_per_epoch = len(images) // BATCH
    model = make_unet()
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=WARMUP, num_training_steps=EPOCHS * steps_per_epoch)
    noise_sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    gen = torch.Generator().manual_seed(args.seed + 1)
    step = 0
    ckpt = out / "checkpoint.pt"
    if ckpt.is_file():
        s = torch.load(ckpt, weights_only=False)
        model.load_state_dict(s["model"])
        ema.load_state_dict(s["ema"])
        opt.load_state_dict(s["opt"])
        sched.load_state_dict(s["sched"])
        gen.set_state(s["gen"])
        step = s["step"]
        print(f"resumed at step {step}", flush=True)

    def save():
        tmp = out / "checkpoint.pt.tmp"
        torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                    "sched": sched.state_dict(), "gen": gen.get_state(), "step": step}, tmp)
        tmp.replace(ckpt)

    device = torch.device("cpu")
    model.train()
    t0, last_save = time.monotonic(), time.monotonic()
    perm = None
    while step < EPOCHS * steps_per_epoch and not stop["now"]:
        if step % steps_per_epoch == 0 or perm is None:     # each epoch's order from its own seed: resumable
            epoch_gen = torch.Generator().manual_seed(args.seed + 1000 + step // steps_per_epoch)
            perm = torch.randperm(len(images), generator=epoch_gen)
        i = step % steps_per_epoch
        idx = perm[i * BATCH:(i + 1) * BATCH]
        x0, y = to_model_range(images[idx]), labels[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, 1000, (BATCH,), generator=gen)
        with autocast(device, args.precision):
            pred = model(noise_sched.add_noise(x0, noise, t), t, class_labels=y).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)      # accelerator.clip_grad_norm_(..., 1.0)
        opt.step()
        sched.step()
        ema.step(model.parameters())
        step += 1
        if step % 100 == 0:
            ips = 100 * BATCH / (time.monotonic() - t0)
            print(f"step {step} loss {loss.item():.4f} lr {sched.get_last_lr()[0]:.2e} {ips:.0f} img/s", flush=True)
            t0 = time.monotonic()
        if time.monotonic() - last_save > 600:
            save()
            last_save = time.monotonic()
    save()
    return 130 if stop["now"] else 0


@torch.inference_mode()
def sample(args) -> int:
    from diffusers import DPMSolverMultistepScheduler
    s = torch.load(Path(args.run) / "checkpoint.pt", weights_only=False)
    model = make_unet()
    model.load_state_dict(s["model"])
    from diffusers.training_utils import EMAModel
    ema = EMAModel(model.parameters())
    ema.load_state_dict(s["ema"])
    ema.copy_to(model.parameters())                                   # sample from the EMA weights
    model.eval()
    sched = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear")   # its defaults
    device = torch.device("cpu")
    labels = torch.arange(args.n) % 10
    out = []
    for b in range(0, args.n, 64):
        y = labels[b:b + 64]
        x = torch.stack([torch.randn(1, 28, 28, generator=torch.Generator().manual_seed(args.seed * 1_000_003 + b + i))
                         for i in range(len(y))])
        sched.set_timesteps(args.steps)
        for t in sched.timesteps:
            with autocast(device, args.precision):
                eps = model(x, t, class_labels=y).sample.float()
            x = sched.step(eps, t, x).prev_sample
        out.append(x.clamp(-1, 1))
    save_npz(args.npz, torch.cat(out), labels)
    print(f"npz: {args.npz} ({args.n} images, DPMSolverMultistepScheduler, {args.steps} steps)")
    return 0


def main(argv=None) -> int:
    keep_freed_memory()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("train")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p = sub.add_parser("sample")
    p.add_argument("--run", required=True)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--npz", required=True)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    args = ap.parse_args(argv)
    return train(args) if args.cmd == "train" else sample(args)


if __name__ == "__main__":
    sys.exit(main())
