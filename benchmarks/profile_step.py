"""Where a training step's time goes: torch.profiler over ddpmlab's own Trainer.train_step.

    .venv/bin/python benchmarks/profile_step.py [--preset unet-block] [--precision bf16] [--channels-last auto]
        [--steps 3] [--by-shape] [--compile] [--budget]

Prints the operators by self CPU time over a few steps after warm-up (real FashionMNIST batches,
batch 64), and with --by-shape each convolution's forward and backward time per input and weight
shape, with the GFLOP/s it reached.

--budget splits the (unprofiled) step into convolutions and everything else, counts the step's
FLOPs (torch.utils.flop_counter) and measures the single-convolution ceiling of
train_throughput.py in the same run, then prints what fraction of that ceiling the step reaches,
what it would reach if everything but the convolutions were free, and how much time everything
else may take for the step to reach 85% of the ceiling.
"""
from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from ddpmlab.data import load_fashion_mnist
from ddpmlab.runtime import keep_freed_memory
from ddpmlab.train import Trainer, make_run_config
from common import count_flops, median_time, output_dir   # benchmarks/ is on sys.path when run as a script


def conv_rows(prof) -> list[tuple]:
    rows = []
    for e in prof.key_averages(group_by_input_shape=True):
        if e.key == "aten::mkldnn_convolution":
            x, w = e.input_shapes[0], e.input_shapes[1]
            flops = 1
        elif e.key == "aten::convolution_backward":
            x, w = e.input_shapes[1], e.input_shapes[2]
            flops = 2                        # gradients of input and weight (the stem's input: none)
        else:
            continue
        if len(x) != 4 or len(w) != 4:
            continue
        gflop = 2 * x[0] * w[0] * w[1] * w[2] * w[3] * x[2] * x[3] * flops * e.count / 1e9   # stride 1
        ms = e.self_cpu_time_total / 1e3
        rows.append((e.key.removeprefix("aten::"), str(x), str(w), e.count, ms, gflop / ms * 1e3))
    return sorted(rows, key=lambda r: -r[4])


CONV_OPS = ("aten::mkldnn_convolution", "aten::convolution_backward")


def budget(prof, tr, batches, data, args, target: float = 0.85):
    from train_throughput import ceiling

    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv_share = sum(e.self_cpu_time_total for e in events if e.key in CONV_OPS) / total
    step = median_time(lambda i: tr.train_step(batches[i % len(batches)]).item(), max(args.steps, 3), 1)[0]
    counter = tr if not args.compile else Trainer(      # the flop counter needs the eager model
        output_dir("profile_step"), run_config(args, compile=False), data=data, progress=False)
    gflop = count_flops(lambda: counter.train_step(batches[0])) / 1e9
    conv_ceiling = ceiling(tr.precision)[0]
    conv_s = conv_share * step
    print(f"budget: {gflop:.1f} GFLOP per step in {step * 1e3:.0f} ms (median, unprofiled): "
          f"{gflop / step:.1f} GFLOP/s, {gflop / step / conv_ceiling:.1%} of the {conv_ceiling:.1f} GFLOP/s "
          f"conv ceiling")
    print(f"  convolutions {conv_s * 1e3:.0f} ms ({conv_share:.1%} of the profiled time, "
          f"{gflop / conv_s:.1f} GFLOP/s counting every FLOP of the step as theirs), "
          f"everything else {(step - conv_s) * 1e3:.0f} ms")
    print(f"  with everything else free the step would reach {gflop / conv_s / conv_ceiling:.1%} of the ceiling; "
          f"{target:.0%} needs a step of {gflop / (target * conv_ceiling) * 1e3:.0f} ms, so everything else "
          f"within {(gflop / (target * conv_ceiling) - conv_s) * 1e3:.0f} ms at these convolution speeds")


def run_config(args, compile: bool):
    return make_run_config(args.preset, batch_size=args.batch, precision=args.precision, device="cpu",
                           snapshot_steps=0, channels_last=args.channels_last, compile=compile)


def main(argv: list[str] | None = None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="unet-block")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--channels-last", default="auto")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--by-shape", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model first (warm-up compiles)")
    ap.add_argument("--budget", action="store_true", help="the step's time against the conv ceiling")
    args = ap.parse_args(argv)
    keep_freed_memory()             # as the command line does; process-wide, so for every network timed here
    data = load_fashion_mnist("train").subset(args.batch * (args.steps + 3))
    tr = Trainer(output_dir("profile_step"), run_config(args, compile=args.compile), data=data, progress=False)
    batches = [torch.arange(i * args.batch, (i + 1) * args.batch) for i in range(args.steps + 3)]
    for idx in batches[:3]:
        tr.train_step(idx).item()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.by_shape) as prof:
        for idx in batches[3:]:
            tr.train_step(idx).item()
    print(f"{args.preset}, {tr.precision}, channels_last {tr.channels_last}, batch {args.batch}, "
          f"{torch.get_num_threads()} threads, {args.steps} steps")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    if args.budget:
        budget(prof, tr, batches, data, args)
    if args.by_shape:
        print("convolutions by shape (stride-2 downsamples are counted as stride 1: their GFLOP/s reads 4x high)")
        for r in conv_rows(prof):
            print("%-22s x %-20s w %-18s %4d calls %8.1f ms %6.0f GFLOP/s" % r)


if __name__ == "__main__":
    main()
