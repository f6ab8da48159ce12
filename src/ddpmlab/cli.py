"""Command line: a thin layer over the Python API. Bad input is a one-line error, exit code 2."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from . import config as C
from .defaults import DEFAULT_SAMPLER, DEFAULT_SPACING, DEFAULT_STEPS, SAMPLE_PRECISION, SAMPLER_NAMES, SPACINGS

EXIT_USAGE = 2


_KIND = {int: "an integer", float: "a number", str: "a string"}


def parse_set(items: list[str]) -> dict:
    """`--set key=value` overrides of the model config, typed by the field's default."""
    defaults = {f.name: f.default for f in dataclasses.fields(C.ModelConfig)}
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or key not in defaults:
            raise C.ConfigError(f"--set {item!r}: expected key=value with key one of: {', '.join(defaults)}")
        d = defaults[key]
        try:
            if isinstance(d, bool):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                out[key] = value.lower() in ("true", "1")
            elif isinstance(d, tuple):
                out[key] = tuple(int(v) for v in value.split(","))
            else:
                out[key] = type(d)(value)
        except ValueError:
            raise C.ConfigError(f"--set {key}={value!r}: expected {_KIND.get(type(d), type(d).__name__)}") from None
    return out


def cmd_presets(args) -> None:
    from .models import build_model, count_parameters
    for name, p in C.PRESETS.items():
        n = count_parameters(build_model(p.model))
        print(f"{name:16s} {n / 1e6:7.2f}M params  {p.description}")


def cmd_data(args) -> None:
    from .data import verify_fashion_mnist
    d, counts = verify_fashion_mnist(args.data_dir, download=not args.no_download)
    print(f"FashionMNIST: {d} (SHA-256 verified; {counts['train']} train, {counts['test']} test images)")


def cmd_train(args) -> None:
    from pathlib import Path

    from .recipes import make_run_config
    from .train import train
    out = args.out or f"runs/{args.preset}"
    overrides = {k: v for k, v in dict(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, max_steps=args.max_steps, seed=args.seed,
        device=args.device, precision=args.precision, cond_drop=args.cond_drop, subset=args.subset,
        data=args.data, data_dir=args.data_dir, snapshot_steps=args.snapshot_steps, channels_last=args.channels_last,
        skip_unreadable=args.skip_unreadable or None,
        compile=args.compile or None, tensorboard=args.tensorboard or None,
        loss_weighting=args.loss_weighting, t_sampling=args.t_sampling, lr_schedule=args.lr_schedule,
        warmup_steps=args.warmup_steps, ema_halflife_kimg=args.ema_halflife_kimg, minutes=args.minutes).items()
        if v is not None}
    if args.resume:
        # a recipe's training settings apply like flags; the network (model, prediction) cannot change
        recipe = C.get_recipe(args.recipe) if args.recipe else {"diffusion": {}, "train": {}}
        overrides = {**recipe["train"], **overrides}
        _check_resume_keeps_the_network(Path(out), parse_set(args.set),
                                        args.prediction or recipe["diffusion"].get("prediction"), args.schedule)
        result = train(out, resume=True, progress=not args.quiet, **overrides)
    else:
        rc = make_run_config(args.preset, parse_set(args.set), recipe=args.recipe,
                             diffusion_overrides={"prediction": args.prediction, "schedule": args.schedule},
                             **overrides)
        if args.dry_run:
            import json
            print(json.dumps(rc.to_json(), indent=2))
            return
        result = train(out, rc, progress=not args.quiet)
    state = "finished" if result["finished"] else "stopped (resume with --resume)"
    print(f"{out}: {state} after {result['steps']} steps, {result['epochs']} epochs")


def _check_resume_keeps_the_network(out, model_set: dict, prediction: str | None, schedule: str | None = None) -> None:
    """The same command again with --resume is fine; a different network or diffusion is not."""
    out_cfg = out / "config.json"
    if not (model_set or prediction or schedule) or not out_cfg.is_file():
        return                                  # train() says what is wrong with a run that is not there
    from .run import load_config
    saved = load_config(out)
    for flag, value in (("prediction", prediction), ("schedule", schedule)):
        if value and value != getattr(saved.diffusion, flag):
            raise C.ConfigError(f"--{flag} {value}: {out_cfg} was trained with {flag} "
                                f"{getattr(saved.diffusion, flag)}; a run being resumed keeps it")
    have = C.to_dict(saved.model)
    changed = [k for k, v in C.to_dict(C.from_dict(C.ModelConfig, {**have, **model_set})).items() if have[k] != v]
    if changed:
        raise C.ConfigError(f"--set cannot change the model of a run being resumed ({out_cfg} has "
                            + ", ".join(f"{k}={have[k]}" for k in changed) + ")")


def _check_steps(steps: int | None) -> None:
    if steps is not None and steps < 1:
        raise C.ConfigError(f"--steps must be >= 1, got {steps}")


def parse_interval(text: str | None) -> list | None:
    """`--guidance-interval LO,HI` -> [LO, HI]; None when not given."""
    if text is None:
        return None
    lo, sep, hi = text.partition(",")
    try:
        value = [int(lo), int(hi)] if sep else None
    except ValueError:
        value = None
    if value is None or not 0 <= value[0] <= value[1]:
        raise C.ConfigError(f"--guidance-interval {text!r}: expected LO,HI, integer timesteps with 0 <= LO <= HI "
                            "(e.g. 100,800)")
    return value


def sampling_from(args) -> C.SamplingConfig:
    """The sampling flags given (None: not given, the run's own or the default then), as one value."""
    _check_steps(args.steps)
    return C.SamplingConfig(sampler=args.sampler, steps=args.steps, guidance=args.guidance, spacing=args.spacing,
                            guidance_interval=parse_interval(args.guidance_interval), sigma_max=args.sigma_max,
                            autoguidance=args.autoguidance)


def cmd_sample(args) -> None:
    from .sample import load_run, resolve_sampling, sample, save_grid, save_npz
    flags = sampling_from(args)
    run = load_run(args.run, device=args.device, precision=args.precision)
    if args.labels is not None and args.labels != "all":
        raise C.ConfigError(f"--labels {args.labels!r}: valid: all")
    labels = "all" if args.labels == "all" else args.label
    x, y = sample(run, args.n, labels=labels, seed=args.seed, sampling=resolve_sampling(run.config, flags, run.path))
    from .run import default_output
    grid = args.grid or (None if args.npz else default_output(run.path, "samples/sample.png"))
    if grid:
        save_grid(run, x, y, grid)
        print(f"grid: {grid}")
    if args.npz:
        save_npz(args.npz, x, y)
        print(f"npz: {args.npz} ({x.shape[0]} images{', labelled' if y is not None else ''})")


def cmd_process(args) -> None:
    from .sample import load_run, process, resolve_sampling
    flags = sampling_from(args)
    run = load_run(args.run, device=args.device, precision=args.precision)
    from .run import default_output
    out = args.out or default_output(run.path, "process.png")
    process(run, out, label=args.label, n=args.n, seed=args.seed, sampling=resolve_sampling(run.config, flags, run.path))
    print(f"process figure: {out}")


def cmd_classifier(args) -> None:
    from .classifier import PRETRAINED, accuracy, load_classifier, read_info, train_classifier
    from .data import load_fashion_mnist
    if args.action == "train":
        out = args.out or PRETRAINED
        info = train_classifier(out, epochs=args.epochs, seed=args.seed, data_dir=args.data_dir,
                                progress=not args.quiet)
        print(f"{out}: test accuracy {info['test_acc']:.4f} after {info['epochs']} epochs "
              f"({info['train_seconds']:.0f}s)")
    else:
        path = args.out or PRETRAINED
        acc = accuracy(load_classifier(path), load_fashion_mnist("test", args.data_dir))
        print(f"{path}: test accuracy {acc:.4f} on the 10000 FashionMNIST test images "
              f"(recorded at training: {read_info(path).get('test_acc', '?')})")


def cmd_evaluate(args) -> None:
    import json
    from pathlib import Path
    from .evaluate import cached_evaluate_run, evaluate_npz
    from .runtime import atomic_write
    kw = dict(classifier=args.classifier, inception_weights=args.inception_weights)
    src = Path(args.run_or_npz)
    if src.suffix == ".npz" or (src.is_file() and src.name != "config.json"):
        if not src.is_file():
            raise C.ConfigError(f"{src}: no such file")
        r = evaluate_npz(src, args.n, sampler=args.sampler, steps=args.steps, guidance=args.guidance, **kw)
        out = args.out or src.with_suffix(".eval.json")
    else:
        r, cached = cached_evaluate_run(args.run_or_npz, 1000 if args.n is None else args.n,
                                        sampling=sampling_from(args), seed=args.seed, device=args.device,
                                        precision=args.precision, **kw)
        out = args.out or cached
    print(format_table(r))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda p: p.write_text(json.dumps(r, indent=2) + "\n"))
    print(f"json: {out}")


def cmd_report(args) -> None:
    from .report import write_report
    path = write_report(args.runs, args.out, n=args.n, sampling=sampling_from(args), evaluate=not args.no_eval)
    print(f"report: {path} and {path.parent / 'report.html'}")


def cmd_reproduce(args) -> None:
    import time
    from .reproduce import reproduce
    t0 = time.time()
    path = reproduce(args.out, args.budget, progress=not args.quiet, seeds=args.seeds)
    print(f"reproduce --budget {args.budget}: {(time.time() - t0) / 60:.1f} min; report: {path} and "
          f"{path.parent / 'report.html'}")


def cmd_serve(args) -> None:
    from .serve import serve       # imports Gradio (the ui extra) only now: --help stays fast
    serve(args.runs, host=args.host, port=args.port)


def cmd_distill(args) -> None:
    from pathlib import Path

    from .distill import distill
    from .run import load_config
    if args.resume:
        overrides = {k: getattr(args, k) for k in ("minutes", "max_steps", "lr") if getattr(args, k) is not None}
        result = distill(None, args.out, resume=True, progress=not args.quiet, **overrides)
    else:
        result = distill(args.run, args.out, method=args.method, steps=args.steps, pairs=args.pairs,
                         progress=not args.quiet,
                         minutes=args.minutes, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
                         seed=args.seed, device=args.device, precision=args.precision)
    nfe = load_config(Path(args.out)).sampling.steps       # the consistency sampler: one a step
    print(f"student {args.out}: {result['steps']} steps; sample it with `ddpmlab sample {args.out}` "
          f"({nfe} network evaluation{'s' if nfe != 1 else ''} an image)")


def cmd_study(args) -> None:
    from .budgets import WRITEUP_COLLAPSE
    from .studies import STUDIES
    size = dict(WRITEUP_COLLAPSE)
    if args.presets:
        size["presets"] = args.presets.split(",")
    if args.epochs:
        size["epochs"] = args.epochs
    r = STUDIES[args.name](args.out, command=" ".join(["ddpmlab", "study", args.name, "--out", str(args.out)]),
                           progress=not args.quiet, **size)
    print(f"study {args.name}: {r['conclusion']}; {args.out}/collapse.json, {args.out}/collapse.png")


def _fmt(v, fmt="{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def format_table(r: dict) -> str:
    """`evaluate`'s printed table: each metric beside its floor."""
    from .evaluate import MODE_COLLAPSE_FRAC
    names = r["class_names"]
    lines = [f"{r['source']}: n={r['n']}, sampler={r['sampler'] or '-'}, steps={r['steps'] or '-'}, "
             f"guidance={_fmt(r['guidance'], '{:g}')}"
             f"{', spacing=' + r['spacing'] if r.get('spacing') else ''}"
             f"{', sigma_max {:g}'.format(r['sigma_max']) if r.get('sigma_max') else ''}"
             f"{', guided for t in {}..{}'.format(*r['guidance_interval']) if r.get('guidance_interval') else ''}"
             f"{', autoguidance {weight:g} from {guide}'.format(**r['autoguidance']) if r.get('autoguidance') else ''}"
             f"{', network in ' + r['sampling_precision'] if r.get('sampling_precision') else ''}, input {r['input_range']}",
             f"classifier: {r['classifier']['feature_dim']}-d features, accuracy on real test images "
             f"{r['classifier_test_acc']:.4f}",
             *([] if r["inception_fid"] is not None else [r["inception_note"]]),
             "",
             f"{'metric':32s} {'samples':>10s} {'real (floor)':>13s}",
             f"{'FD, classifier features':32s} {_fmt(r['fd']):>10s} {_fmt(r['fd_floor']):>13s}"]
    if r["inception_fid"] is not None:
        lines.append(f"{'Inception FID (299x299)':32s} {_fmt(r['inception_fid']):>10s} {_fmt(r['inception_fid_floor']):>13s}")
    lines += [
        f"{'precision (k=3)':32s} {_fmt(r['precision']):>10s} {_fmt(r['precision_floor']):>13s}",
        f"{'recall (k=3)':32s} {_fmt(r['recall']):>10s} {_fmt(r['recall_floor']):>13s}",
        f"{'cond. accuracy (real: test acc)':32s} {_fmt(r['cond_acc']):>10s} {_fmt(r['classifier_test_acc']):>13s}",
        f"{'class entropy, nats (max 2.303)':32s} {_fmt(r['pred_entropy']):>10s} {_fmt(r['pred_entropy_floor']):>13s}",
        f"{'near-duplicate fraction':32s} {_fmt(r['dup_frac']):>10s} {_fmt(r['dup_frac_floor']):>13s}",
        "",
        f"{'class':12s} {'predicted':>9s} {'FD':>8s} {'floor':>7s} {'cond_acc':>8s} {'real acc':>8s}"]
    for k, name in enumerate(names):
        pc = r["per_class_fd"] or [None] * len(names)
        pf = r["per_class_fd_floor"] or [None] * len(names)
        ca = r["cond_acc_per_class"] or [None] * len(names)
        lines.append(f"{name:12s} {r['pred_hist'][k] / r['n']:>9.1%} {_fmt(pc[k], '{:.2f}'):>8s} "
                     f"{_fmt(pf[k], '{:.2f}'):>7s} {_fmt(ca[k]):>8s} {r['classifier_test_acc_per_class'][k]:>8.3f}")
    collapsed = ", ".join(f"{c['name']} -> {c['predicted_name']} ({c['fraction']:.0%})" for c in r["collapsed_classes"])
    lines += ["",
              f"collapsed classes: {collapsed or ('none' if r['labelled'] else 'n/a (the samples carry no labels)')}",
              f"missing classes:   {', '.join(names[k] for k in r['missing_classes']) or 'none'}",
              f"mode collapse:     {'YES' if r['mode_collapse'] else 'no'} ({r['dup_frac']:.1%} of samples have a "
              f"near-duplicate; flagged above {MODE_COLLAPSE_FRAC:.0%}, real data {r['dup_frac_floor']:.1%})"]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ddpmlab", description="Train, sample, visualise and evaluate small diffusion models.")
    sub = ap.add_subparsers(dest="command", required=True)

    sub.add_parser("presets", help="list the presets with parameter counts").set_defaults(fn=cmd_presets)

    p = sub.add_parser("data", help="find (or fetch) FashionMNIST and verify it")
    p.add_argument("--data-dir")
    p.add_argument("--no-download", action="store_true", help="only look for it; fail instead of downloading")
    p.set_defaults(fn=cmd_data)

    p = sub.add_parser("train", help="train a preset")
    p.add_argument("--preset", default="resnet-class", help=f"one of: {', '.join(C.PRESETS)}")
    p.add_argument("--out", help="run directory (default runs/PRESET)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--max-steps", type=int, help="stop after N optimiser steps")
    p.add_argument("--minutes", type=float,
                   help="a wall-clock budget: after the warmup the run measures its pace and plans its length "
                        "(again at every epoch's end) so that it, and a cosine schedule, end when the budget is spent; "
                        "with --resume, a new budget re-plans at once (a finished run goes on; --epochs still caps it)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"))
    p.add_argument("--channels-last", choices=("auto", "on", "off"))
    p.add_argument("--seed", type=int)
    p.add_argument("--cond-drop", type=float, help="null-label probability for classifier-free guidance")
    p.add_argument("--subset", type=int, help="train on the first N images only")
    p.add_argument("--data", help="fashion-mnist | folder (the folder --data-dir names) | a folder of images")
    p.add_argument("--data-dir", help="where FashionMNIST is; for data 'folder' (unet-faces64): the image folder")
    p.add_argument("--snapshot-steps", type=int, help="DDIM steps of the per-epoch snapshots (0 = none)")
    p.add_argument("--skip-unreadable", action="store_true",
                   help="image folders: skip files that cannot be decoded (default: stop and name them)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a model setting, e.g. channels=32")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (compile time is logged)")
    p.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard under OUT/tensorboard")
    p.add_argument("--dry-run", action="store_true", help="print the resolved configuration and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--recipe", help=f"a named set of the training options below, applied before the flags given: "
                                    f"{', '.join(C.RECIPES)} (default: the write-up's recipe)")
    p.add_argument("--prediction", choices=C.PREDICTIONS, help="what the network outputs (default: eps)")
    p.add_argument("--schedule", choices=C.NOISE_SCHEDULES,
                   help="noise schedule: linear (DDPM's) | cosine (Nichol & Dhariwal 2021) (default: the preset's, linear)")
    p.add_argument("--loss-weighting", choices=C.LOSS_WEIGHTINGS, help="min-snr: Hang et al. 2023, gamma 5 (default: uniform)")
    p.add_argument("--t-sampling", choices=C.T_SAMPLINGS, help="training timesteps; lognormal: EDM's (default: uniform)")
    p.add_argument("--lr-schedule", choices=C.LR_SCHEDULES,
                   help="cosine: linear warmup, then cosine decay to min_lr at the end of the run (default: plateau)")
    p.add_argument("--warmup-steps", type=int, help="lr-schedule cosine: warmup steps (default: 0)")
    p.add_argument("--ema-halflife-kimg", type=float,
                   help="EMA half-life in thousands of images instead of the fixed ema_decay (default: none)")
    p.set_defaults(fn=cmd_train)

    own = "the run's own (config.json \"sampling\"), else"

    def precision_flag(p):
        p.add_argument("--precision", default=SAMPLE_PRECISION, choices=("auto", "fp32", "bf16"),
                       help="the network's arithmetic while sampling; auto: bf16 on CUDA and on CPUs with native "
                            "bf16 (default: %(default)s)")

    def sampling_flags(p, default_text=own):
        """The flags of how to sample, declared once for sample, process, evaluate and report;
        `sampling_from(args)` reads them into one SamplingConfig."""
        p.add_argument("--sampler", choices=SAMPLER_NAMES, help=f"default: {default_text} {DEFAULT_SAMPLER}")
        p.add_argument("--steps", type=int, help=f"default: {default_text} {DEFAULT_STEPS}")
        p.add_argument("--guidance", type=float,
                       help=f"classifier-free guidance weight, 0 = plain conditional (default: {default_text} 0)")
        p.add_argument("--spacing", choices=SPACINGS, help=f"timestep spacing (default: {default_text} {DEFAULT_SPACING})")
        p.add_argument("--guidance-interval", metavar="LO,HI",
                       help=f"guide only at timesteps LO..HI (default: {default_text} every step)")
        p.add_argument("--sigma-max", type=float, metavar="S",
                       help="logsnr and karras spacings: start their range at noise level sigma S (EDM: 80) where the "
                            f"schedule's top is higher (default: {default_text} the schedule's top)")
        p.add_argument("--autoguidance", type=float, metavar="W",
                       help="weight of autoguidance: guided steps in its interval steer away from the weaker network "
                            "the run names (config.json sampling.guide) instead of the null label; 0: off "
                            f"(default: {default_text} off)")

    def run_flags(p):
        p.add_argument("run", help="run directory or shipped model name")
        sampling_flags(p)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
        precision_flag(p)
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("sample", help="draw samples: a grid and/or an .npz")
    run_flags(p)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--label", type=int, help="class to draw (default: cycle all classes)")
    p.add_argument("--labels", help="'all': cycle the labels 0..K-1")
    p.add_argument("--grid")
    p.add_argument("--npz")
    p.set_defaults(fn=cmd_sample)

    p = sub.add_parser("process", help="the generation-process figure")
    run_flags(p)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--label", type=int)
    p.add_argument("--out")
    p.set_defaults(fn=cmd_process)

    p = sub.add_parser("evaluate", help="sample quality beside its floor on real data (classifier FD, ...)")
    p.add_argument("run_or_npz", metavar="RUN_OR_NPZ", help="run directory, shipped model name, or .npz of samples")
    p.add_argument("--n", type=int, help="samples to draw (default 1000) or to read from the .npz (default all)")
    sampling_flags(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    precision_flag(p)
    p.add_argument("--out", help="JSON file (default: RUN/eval/SETTINGS.json, the user cache for a shipped model, or NPZ with .eval.json)")
    p.add_argument("--classifier", help="classifier weights (default: the shipped ones)")
    p.add_argument("--inception-weights", metavar="FILE",
                   help="pt_inception-2015-12-05-6726825d.pth: adds Inception FID at 299x299")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_evaluate)

    p = sub.add_parser("classifier", help="the evaluation classifier: train it, or test it")
    p.add_argument("action", choices=("train", "test"))
    p.add_argument("--out", "--weights", dest="out",
                   help="weights file to write or test (default: the shipped pretrained/classifier.safetensors)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_classifier)
    p = sub.add_parser("report", help="the write-up, regenerated from runs: REPORT.md + report.html")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--out", default="report")
    p.add_argument("--n", type=int, default=1000, help="samples evaluated per run")
    sampling_flags(p, "each run's own, else")
    p.add_argument("--no-eval", action="store_true", help="figures only, no evaluation")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("reproduce", help="train the whole ladder, evaluate every model, write the report")
    p.add_argument("--budget", default="quick", choices=("quick", "standard", "full"))
    p.add_argument("--out", default="reproduce")
    p.add_argument("--seeds", type=int, default=1,
                   help="train every design from seeds 0..K-1: each score gets its spread, and the findings "
                        "count a difference only beyond the measured seed-to-seed noise (default: 1)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_reproduce)

    p = sub.add_parser("distill", help="a few-step student of a trained run (consistency distillation)")
    p.add_argument("run", nargs="?", help="the teacher: a run directory or shipped model name (not with --resume)")
    p.add_argument("--out", required=True, help="the student's run directory")
    p.add_argument("--method", default="cd", choices=C.DISTILL_METHODS,
                   help="cd: from the teacher's guided ODE (its guidance distilled); ect: consistency tuning "
                        "on the data alone (default: %(default)s)")
    p.add_argument("--steps", type=int, default=2, choices=(1, 2, 4), help="the student's default network "
                   "evaluations an image (`sample --steps` chooses another; default: %(default)s)")
    p.add_argument("--pairs", default="lognormal", choices=C.DISTILL_PAIRS,
                   help="which noise levels a step trains: each adjacent pair of the log-SNR grid alike, or as "
                        "often as iCT's log-normal density of sigma puts between them (default: %(default)s)")
    p.add_argument("--minutes", type=float, help="a wall-clock budget, planned as `train --minutes` plans it")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="default: 2e-4, decayed along a cosine to 1e-5")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    p.add_argument("--resume", action="store_true", help="go on with the student in --out")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_distill)

    p = sub.add_parser("study", help="a finding's study at the write-up's own scale (hours; rerun to resume)")
    p.add_argument("name", choices=["collapse"], help="collapse: finding (f), the BatchNorm UNets for 25 epochs of 60k")
    p.add_argument("--out", default="runs/study-collapse")
    p.add_argument("--presets", help="comma-separated (default: unet-cbn,unet-input)")
    p.add_argument("--epochs", type=int, help="default: 25")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=cmd_study)

    p = sub.add_parser("serve", help="a local page: sample, watch the process, compare runs, read training")
    p.add_argument("runs", nargs="*", metavar="RUN",
                   help="run directories or shipped model names (default: the shipped models and runs/*)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s, this machine only; 0.0.0.0: the network)")
    p.add_argument("--port", type=int, help="default: the first free one from 7860")
    p.set_defaults(fn=cmd_serve, quiet=True)       # no progress bars in the server's log
    return ap


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    from .runtime import keep_freed_memory, set_progress
    keep_freed_memory()
    set_progress(not getattr(args, "quiet", False))
    from .errors import error_line
    from .train import TrainingDiverged, TrainingInterrupted
    try:
        args.fn(args)
    except TrainingDiverged as e:
        print(f"ddpmlab: training diverged: {e}", file=sys.stderr)
        return 1
    except TrainingInterrupted as e:
        print(f"ddpmlab: {e}", file=sys.stderr)
        return 130
    except Exception as e:
        line = error_line(e)
        if line is None:
            raise
        print(line, file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
