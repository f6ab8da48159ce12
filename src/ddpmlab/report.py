"""The write-up, regenerated from runs: DIR/REPORT.md and a self-contained DIR/report.html.

Sections follow the write-up's order; each shows its run's loss curve, samples, generation
process and a snapshot strip (one class across epochs). The results table evaluates every
run with the same settings (cached per run in RUN/eval/).
"""
from __future__ import annotations

import base64
import html
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from .config import ConfigError, Sampling, SamplingConfig  # noqa: E402
from .defaults import DEFAULT_SAMPLER, DEFAULT_STEPS  # noqa: E402
from .evaluate import cached_evaluate_run  # noqa: E402
from .findings import ACC_CLEAR, FD_CLEAR, NOT_MEASURED, all_findings, read_studies  # noqa: E402
from .models import build_model, count_parameters  # noqa: E402
from .render import parse_snapshot_name  # noqa: E402
from .run import load_config, read_metrics, resolve_run  # noqa: E402
from .runtime import atomic_write  # noqa: E402

# preset -> (section title, what the write-up says / what to look for)
SECTIONS = {
    "resnet-basic": ("Very basic model", "A residual network at full resolution. The noise level / time step is "
                     "not used at all: the network must guess how noisy its input is."),
    "resnet-noise": ("Conditioning on the noise level", "Every BatchNorm takes its scale and shift from the "
                     "noise-level embedding through a linear layer. The loss should end lower than the basic model's."),
    "resnet-spatial": ("Spatial encoding", "Cartesian x, y and polar radius, angle channels are concatenated to "
                       "the input, which may improve the coherence of the images."),
    "resnet-class": ("Class embeddings", "A learned 4-dimensional class embedding is concatenated to the input, "
                     "so a class can be asked for: conditioning accuracy (cond_acc) measures whether it is obeyed."),
    "unet-input": ("UNet: class concatenated to the input once", "The write-up's UNet with the class embedding "
                   "at the input only generated two classes whatever was asked for. Watch cond_acc and the "
                   "collapse flags."),
    "unet-cbn": ("UNet: class also in the conditional BatchNorms", "Adding the class embedding to the "
                 "conditional BatchNorms improved things in the write-up."),
    "unet-block": ("UNet: a class layer in every block (the fix)", "Every residual block adds its own projection "
                   "of the class embedding between its two convolutions; GroupNorm replaces the conditional "
                   "BatchNorm."),
    "cpu": ("UNet for a CPU", "unet-block's design at widths 24, 72 and 144 with attention at 7x7: the network "
            "recommended for a laptop CPU, and the shipped fmnist's."),
    "cpu-mini": ("UNet for runs of minutes", "unet-block's design at widths 32, 32 and 64, batch 32: the cheapest "
                 "step, for runs of minutes."),
    "unet-faces64": ("Faces, 64x64", "A 43M-parameter UNet on a folder of face images."),
}
ORDER = list(SECTIONS)


@dataclass
class Block:
    kind: str                       # heading | text | image | table
    text: str = ""
    level: int = 2
    path: Path | None = None
    rows: list = field(default_factory=list)
    header: list = field(default_factory=list)


def run_summary(run_dir: Path) -> dict:
    """Preset, parameters, epochs, training images, wall time and images/s of a run."""
    rc = load_config(run_dir)
    metrics = read_metrics(run_dir)
    steps = [m for m in metrics if m.get("kind") == "step"]
    epochs = [m for m in metrics if m.get("kind") == "epoch"]
    world = max([m.get("world", 1) for m in metrics if m.get("kind") == "ddp"] or [1])
    batch = rc.train.batch_size * world
    last_step = steps[-1]["step"] if steps else 0
    # wall time of training, from the images/s of each logged window
    seconds, prev = 0.0, 0
    for m in steps:
        seconds += (m["step"] - prev) * batch / max(m["img_per_s"], 1e-9)
        prev = m["step"]
    return {"run": str(run_dir), "preset": design(rc), "params": count_parameters(build_model(rc.model)),
            "epochs": epochs[-1]["epoch"] if epochs else 0, "steps": last_step,
            "train_images": last_step * batch, "train_seconds": round(seconds, 1),
            "img_per_s": round(last_step * batch / seconds, 1) if seconds else None,
            "final_loss": epochs[-1]["loss"] if epochs else (steps[-1]["loss"] if steps else None),
            "conditional": bool(rc.model.num_classes), "fashion": (rc.model.image_size, rc.model.in_channels) == (28, 1),
            "last_epoch": epochs[-1] if epochs else {}}


def snapshot_strip(run_dir: Path, out: Path, label: int = 0, max_rows: int = 10) -> Path | None:
    """One class across epochs, one row per epoch, side by side with the epoch number."""
    snaps = run_dir / "snapshots"
    named = [(parse_snapshot_name(p.name), p) for p in snaps.glob("epoch*.png")] if snaps.is_dir() else []
    files = [p for (epoch, k), p in sorted((e, p) for e, p in named if e is not None and e[1] in (label, None))]
    if not files:
        return None
    if len(files) > max_rows:   # keep the first and last, evenly in between
        keep = {round(i * (len(files) - 1) / (max_rows - 1)) for i in range(max_rows)}
        files = [f for i, f in enumerate(files) if i in keep]
    imgs = [Image.open(f) for f in files]
    fig, axes = plt.subplots(len(imgs), 1, figsize=(imgs[0].width / 60 + 1, len(imgs) * (imgs[0].height / 60 + 0.1)),
                             squeeze=False)
    for ax, img, f in zip(axes[:, 0], imgs, files):
        ax.imshow(img, cmap="gray", interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(f.name.split("-")[0].split(".")[0], rotation=0, ha="right", va="center", fontsize=8)
    conditional = "-class" in files[0].name
    fig.suptitle(f"snapshots from fixed noise{f', class {label}' if conditional else ''}, across epochs", fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda p: fig.savefig(p, format="png", dpi=100, bbox_inches="tight"))
    plt.close(fig)
    return out


def _fmt(v, spec="{:.3f}"):
    if v is None:
        return "-"
    if isinstance(v, float):
        return spec.format(v) if math.isfinite(v) else str(v)
    return str(v)


def _flags(r: dict) -> str:
    out = []
    if r.get("mode_collapse"):
        out.append("mode collapse")
    cc = r.get("collapsed_classes") or []
    if cc:
        out.append("collapsed: " + ", ".join(str(c["class"]) + "->" + str(c["predicted_as"]) for c in cc))
    if r.get("missing_classes"):
        out.append("missing: " + ",".join(map(str, r["missing_classes"])))
    return "; ".join(out) or "none"


RESULT_HEADER = ["preset", "params", "epochs", "train images", "wall time", "img/s", "sampler", "steps", "guidance",
                 "fd", "fd floor", "cond_acc", "class entropy", "precision", "recall", "collapse flags"]


def result_row(s: dict, r: dict | None) -> list:
    r = r or {}
    return [s["preset"], f"{s['params'] / 1e6:.2f}M", s["epochs"], f"{s['train_images']:,}",
            f"{s['train_seconds'] / 60:.1f} min", _fmt(s["img_per_s"], "{:.1f}"), r.get("sampler", "-"),
            r.get("steps", "-"), r.get("guidance", "-"), _fmt(r.get("fd"), "{:.2f}"), _fmt(r.get("fd_floor"), "{:.2f}"),
            _fmt(r.get("cond_acc")), _fmt(r.get("pred_entropy")), _fmt(r.get("precision")), _fmt(r.get("recall")),
            _flags(r) if r else "not evaluated"]


FINDING_CAPTIONS = {
    "loss-basic-noise": "training loss with and without the noise level, against images seen",
    "same-seeds-resnet": "the ResNet ladder from the same seeds (one row per model; resnet-class: classes 0-9)",
    "per-class-fd-spatial": "per-class fd (samples grouped by the class the classifier sees; lower is better)",
    "samples-resnet-class": "resnet-class: one row per requested class",
    "confusion-unets": "per requested class, the histogram of the classes the classifier sees",
    "monitor-unets": "the collapse monitor across epochs",
    "snapshots-unets": "snapshots from fixed noise across epochs",
    "study-init": "the first training steps of resnet-basic under each initialisation (the init study)",
    "study-good_bugs": "training loss with each good bug switched on (the good-bugs study)",
    "study-good_bugs-samples": "samples from the same seeds, classes 0-9, per variant (the good-bugs study)",
    "study-collapse": "long UNet runs under the collapse monitor (the collapse study)",
}


def draw_finding_figures(wanted: set, by_preset: dict, results: dict, metrics: dict, out: Path, fig_dir: Path,
                         flags: SamplingConfig) -> dict:
    """name -> PNG for every figure of FINDING_CAPTIONS in `wanted` whose runs or studies exist."""
    from . import plots
    from .data import FASHION_CLASSES
    figs = {}

    def have(*presets):
        return all(p in by_preset for p in presets)

    def add(name, path):
        if Path(path).is_file():
            figs[name] = Path(path)

    if "loss-basic-noise" in wanted and have("resnet-basic", "resnet-noise"):
        plots.plot_loss_overlay({p: metrics[p] for p in ("resnet-basic", "resnet-noise")},
                                fig_dir / "finding-loss-basic-noise.png", "resnet-basic (no noise level) vs resnet-noise")
        add("loss-basic-noise", fig_dir / "finding-loss-basic-noise.png")
    ladder = [p for p in ("resnet-basic", "resnet-noise", "resnet-spatial", "resnet-class") if p in by_preset]
    if "same-seeds-resnet" in wanted and len(ladder) >= 2:
        same_seed_rows({p: by_preset[p] for p in ladder}, fig_dir / "finding-same-seeds-resnet.png", flags)
        add("same-seeds-resnet", fig_dir / "finding-same-seeds-resnet.png")
    pair = [p for p in ("resnet-noise", "resnet-spatial") if results.get(p, {}).get("per_pred_class_fd")]
    if "per-class-fd-spatial" in wanted and len(pair) == 2:
        plots.plot_class_bars({p: results[p]["per_pred_class_fd"] for p in pair}, FASHION_CLASSES,
                              fig_dir / "finding-per-class-fd-spatial.png", "fd of the class",
                              "per-class fd without and with the coordinate channels")
        add("per-class-fd-spatial", fig_dir / "finding-per-class-fd-spatial.png")
    if "samples-resnet-class" in wanted and have("resnet-class"):
        add("samples-resnet-class", by_preset["resnet-class"] / "samples" / "grid.png")
    unets = [p for p in ("unet-input", "unet-cbn", "unet-block") if p in by_preset]
    conf = {p: results[p]["confusion"] for p in unets if results.get(p, {}).get("confusion")}
    if "confusion-unets" in wanted and conf:
        plots.plot_confusions(conf, FASHION_CLASSES, fig_dir / "finding-confusion-unets.png")
        add("confusion-unets", fig_dir / "finding-confusion-unets.png")
    if "monitor-unets" in wanted and unets:
        plots.plot_monitor({p: metrics[p] for p in unets}, fig_dir / "finding-monitor-unets.png")
        add("monitor-unets", fig_dir / "finding-monitor-unets.png")
    for name in wanted:
        if name.startswith("study-"):
            add(name, out / "studies" / (name[len("study-"):] + ".png"))
    return figs


def same_seed_rows(runs: dict, path: Path, flags: SamplingConfig, n: int = 10) -> None:
    """One row per run, n samples from the same seeds (a conditional run draws classes 0..n-1),
    unguided, with the report's sampler, steps and spacing (else ddpmlab's defaults) for every run."""
    import torch
    from . import plots
    from .render import sample_images
    from .sample import load_run
    s = Sampling(flags.sampler or DEFAULT_SAMPLER, flags.steps or DEFAULT_STEPS, spacing=flags.spacing or "trailing")
    rows = []
    for run_dir in runs.values():
        run = load_run(run_dir)
        labels = torch.arange(n) % run.num_classes if run.num_classes else None
        rows.append(sample_images(run.model, run.schedule, run.config.model, n, s, labels=labels, seed=0, device=run.device,
                         precision=run.precision).float().cpu())
    plots.write_grid(torch.cat(rows), path, ncol=n, row_labels=list(runs))


def flags_text(s: Sampling) -> str:
    """The `ddpmlab evaluate` flags that sample as `s` does."""
    return (f"--sampler {s.sampler} --steps {s.steps} --guidance {s.guidance:g}"
            + ("" if s.spacing == "trailing" else f" --spacing {s.spacing}")
            + ("" if s.sigma_max is None else f" --sigma-max {s.sigma_max:g}")
            + ("" if s.guidance_interval is None else " --guidance-interval {},{}".format(*s.guidance_interval))
            + ("" if not s.autoguidance else f" --autoguidance {s.autoguidance:g}"))


def model_blocks(p: str, d: Path, s: dict, fig_dir: Path) -> list[Block]:
    """One model's section: what the write-up says of it, its run, its loss, samples, snapshots
    across epochs and generation process (drawn here when the run has none on disk)."""
    blocks = []
    name, text = SECTIONS.get(p, (p, ""))
    blocks.append(Block("heading", f"{name} (`{p}`)", level=2))
    if text:
        blocks.append(Block("text", text))
    blocks.append(Block("text", f"Run `{d}`: {s['params']:,} parameters, {s['epochs']} epochs, "
                        f"{s['train_images']:,} training images in {s['train_seconds'] / 60:.1f} min."))
    fig_dir.mkdir(parents=True, exist_ok=True)
    drawn = draw_missing_figures(d, fig_dir, p)     # a shipped model has no sample grid or process on disk
    for src, caption in ((d / "loss.png", "loss"), (d / "samples" / "grid.png", "samples")):
        src = drawn.get(caption, src)
        if src.is_file():
            dst = fig_dir / f"{p}-{caption}.png"
            if src != dst:
                shutil.copyfile(src, dst)
            blocks.append(Block("image", caption, path=dst))
    strip = snapshot_strip(d, fig_dir / f"{p}-snapshots.png", label=3 if s["conditional"] else 0)
    if strip:
        blocks.append(Block("image", "snapshots across epochs", path=strip))
    src = drawn.get("process", d / "process.png")
    if src.is_file():
        dst = fig_dir / f"{p}-process.png"
        if src != dst:
            shutil.copyfile(src, dst)
        if p == "resnet-class":   # the write-up's "generation process visualized" section
            blocks.append(Block("heading", "The generation process", level=3))
        blocks.append(Block("image", "generation process: x_t from noise to image, predicted x0 beneath",
                            path=dst))
    return blocks


def how_evaluated(n: int, sampled: dict, results: dict) -> str:
    """The paragraph above the results table: how every row was sampled and scored."""
    settings = set(sampled.values())
    if len(settings) == 1:
        how = f"Every row is evaluated the same way: `ddpmlab evaluate RUN --n {n} {flags_text(settings.pop())}`."
    elif settings:
        how = (f"Every row is `ddpmlab evaluate RUN --n {n}` with that run's own sampling settings (its "
               "config.json \"sampling\"; sampler, steps and guidance columns), so rows differ in more than the model.")
    else:
        how = "No run here makes FashionMNIST images, so none is scored."
    precisions = sorted({r.get("sampling_precision", "fp32") for r in results.values()})
    if precisions:
        how += f" The network sampled in {' and '.join(precisions)}."
    return how + (" fd is the Fréchet distance in the feature space of ddpmlab's FashionMNIST classifier against the "
                  f"10k test images; fd floor is the same for {n} real training images. cond_acc: fraction of "
                  "samples classified as the requested class. Class entropy in nats (uniform = 2.303).")


def design(rc) -> str:
    """What the report groups runs by: the preset, and for a distilled student its method too (a
    student shares its teacher's preset but is another model, not another training seed of it)."""
    return rc.preset if rc.distill is None else f"{rc.preset}-{rc.distill.method}"


def build(runs: list, out: Path, *, n: int = 1000, sampling: SamplingConfig | None = None, evaluate: bool = True,
          title: str | None = None, intro: str = "") -> list[Block]:
    """The report's blocks. sampling: the flags every run is evaluated with, resolved against each
    run's own settings (None: each run at its own)."""
    from .sample import resolve_sampling
    flags = sampling or SamplingConfig()
    run_dirs = [resolve_run(r) for r in runs]
    if not run_dirs:
        raise ConfigError("report needs at least one run directory")
    fig_dir = out / "figures"
    designs = [design(load_config(d)) for d in run_dirs]
    by_preset, replicas = {}, {}       # preset -> its first run; -> all its runs (training seeds)
    for d, p in zip(run_dirs, designs):
        by_preset.setdefault(p, d)
        replicas.setdefault(p, []).append(d)
    summaries = {p: run_summary(d) for p, d in by_preset.items()}
    results, sampled, spread = {}, {}, {}
    if evaluate:
        for p, d in by_preset.items():
            if summaries[p]["fashion"]:
                sampled[p] = resolve_sampling(load_config(d), flags, d)
                results[p] = cached_evaluate_run(d, n, sampling=sampled[p])[0]
                if len(replicas[p]) > 1:    # the same design from other training seeds, scored alike
                    rs = [results[p]] + [cached_evaluate_run(rd, n, sampling=resolve_sampling(load_config(rd), flags, rd))[0]
                                         for rd in replicas[p][1:]]
                    spread[p] = {"fd": [r["fd"] for r in rs], "cond_acc": [r.get("cond_acc") for r in rs]}

    if title is None:      # titled for what it shows; only `reproduce` regenerates the write-up
        names = [f"{r} (preset {p})" for r, p in zip(runs, designs)]
        title = f"ddpmlab report: {', '.join(map(str, names))}"
    blocks = [Block("heading", title, level=1)]
    if intro:
        blocks.append(Block("text", intro))
    blocks.append(Block("heading", "Results", level=2))
    if not evaluate:
        blocks.append(Block("text", "Not evaluated (`--no-eval`): figures and training records only."))
    else:
        blocks.append(Block("text", how_evaluated(n, sampled, results)))
    order = sorted(by_preset, key=lambda p: ORDER.index(p) if p in ORDER else len(ORDER))
    blocks.append(Block("table", header=RESULT_HEADER, rows=[result_row(summaries[p], results.get(p)) for p in order]))
    if spread:
        blocks += seed_blocks({p: spread[p] for p in order if p in spread})
    if evaluate:
        blocks += own_sampling_blocks({p: by_preset[p] for p in order if p in results}, sampled, n)
    blocks += timing_blocks(out)
    if evaluate:
        metrics = {p: read_metrics(d) for p, d in by_preset.items()}
        blocks += findings_blocks(all_findings(summaries, results, metrics, read_studies(out), spread), by_preset, results,
                                  metrics, out, fig_dir, flags)

    for p in order:
        blocks += model_blocks(p, by_preset[p], summaries[p], fig_dir)
    return blocks


def seed_blocks(spread: dict) -> list[Block]:
    """The designs trained from several seeds: the mean and spread of their scores. The table above
    shows the first seed's run."""
    import statistics

    def ms(values, spec):
        v = [x for x in values if x is not None]
        if len(v) < 2:
            return "-"
        return f"{statistics.mean(v):{spec}} +- {statistics.stdev(v):{spec}} ({min(v):{spec}}..{max(v):{spec}})"
    rows = [[p, len(sp["fd"]), ms(sp["fd"], ".2f"), ms(sp["cond_acc"], ".3f")] for p, sp in spread.items()]
    return [Block("text", "Across training seeds (the same design and data, the training seed changed; `reproduce "
                          "--seeds K`): mean +- standard deviation (min..max). The findings below count a difference "
                          "only when it exceeds twice the standard error of the difference of these means."),
            Block("table", header=["preset", "seeds", "fd", "cond_acc"], rows=rows)]


def own_sampling_blocks(by_preset: dict, sampled: dict, n: int) -> list[Block]:
    """Runs whose config.json keeps sampling settings of their own (a guided model's), scored at
    them too when the table above used others: the model as its user would sample it."""
    from .sample import resolve_sampling
    rows = []
    for p, d in by_preset.items():
        rc = load_config(d)
        s = rc.sampling
        if s.sampler is None and s.steps is None and s.guidance is None and s.spacing is None:
            continue
        if resolve_sampling(rc, run_dir=d) == sampled[p]:
            continue
        r = cached_evaluate_run(d, n)[0]
        rows.append([p, r["sampler"], r["steps"], f"{r['guidance']:g}", r.get("spacing") or "trailing",
                     "{}-{}".format(*r["guidance_interval"]) if r.get("guidance_interval") else "every step",
                     _fmt(r.get("nfe"), "{}"), _fmt(r["fd"], "{:.2f}"), _fmt(r["fd"] / r["fd_floor"], "{:.1f}x"),
                     _fmt(r.get("cond_acc")), _fmt(r.get("pred_entropy")), _flags(r)])
    if not rows:
        return []
    return [Block("heading", "At each model's own sampling", level=3),
            Block("text", f"`ddpmlab evaluate RUN --n {n}` with no sampling flags: the settings the run keeps in "
                  "its config.json \"sampling\" (as a user of that model samples it)."),
            Block("table", header=["preset", "sampler", "steps", "guidance", "spacing", "guided for t in",
                                   "network evaluations", "fd", "fd / floor", "cond_acc", "class entropy",
                                   "collapse flags"], rows=rows)]


def timing_blocks(out: Path) -> list[Block]:
    """The wall time of each part of a `reproduce` (OUT/timing.json), when there is one."""
    import json
    try:
        parts = json.loads((out / "timing.json").read_text())["seconds"]
    except (OSError, ValueError, KeyError):
        return []
    rows = [[part, f"{sec / 60:.1f} min"] for part, sec in parts.items()]
    rows.append(["total", f"{sum(parts.values()) / 60:.1f} min"])
    return [Block("text", "Wall time of each part of this `reproduce` (OUT/timing.json; training summed over "
                          "interruptions; evaluation and report as of the call before this report was written):"),
            Block("table", header=["part", "wall time"], rows=rows)]


def findings_blocks(found: list, by_preset: dict, results: dict, metrics: dict, out: Path, fig_dir: Path,
                    flags: SamplingConfig) -> list[Block]:
    """The claims table, then each finding with the numbers and figures that decide it. A finding
    none of these runs or studies measures is left out of the sections (the table says so)."""
    measured = [f for f in found if f.verdict != NOT_MEASURED]
    if not any(f.verdict != NOT_MEASURED for f in found[:6]):   # a report of one model: no ladder to compare
        return []
    fig_dir.mkdir(parents=True, exist_ok=True)
    figs = draw_finding_figures({n for f in measured for n in f.figures}, by_preset, results, metrics, out, fig_dir,
                                flags)
    blocks = [Block("heading", "The write-up's findings, checked", level=2),
              Block("text", f"A difference counts when fd differs by at least {FD_CLEAR:g}x or cond_acc by at least "
                            f"{ACC_CLEAR:g} (about the noise of one evaluation of 1000 samples). Each design was "
                            "trained once, so seed-to-seed noise of training is not measured."),
              Block("table", header=["", "finding", "the write-up", "verdict", "here"],
                    rows=[[f"({f.key})", f.title, f.claim, f.verdict, f.evidence] for f in found])]
    for f in measured:
        blocks.append(Block("heading", f"({f.key}) {f.title}: {f.verdict}", level=3))
        blocks.append(Block("text", f"The write-up: \"{f.claim}\" Here: {f.evidence}."))
        if f.caveat:
            blocks.append(Block("text", "What this cannot show: " + f.caveat))
        for name in f.figures:
            if name == "snapshots-unets":
                for p in ("unet-input", "unet-cbn", "unet-block"):
                    strip = by_preset.get(p) and snapshot_strip(by_preset[p], fig_dir / f"{p}-snapshots.png", label=3)
                    if strip:
                        blocks.append(Block("image", f"{p}: snapshots from fixed noise across epochs, class 3", path=strip))
            elif name in figs:
                dst = figs[name]
                if fig_dir not in dst.parents:
                    dst = fig_dir / f"finding-{name}.png"
                    shutil.copyfile(figs[name], dst)
                blocks.append(Block("image", FINDING_CAPTIONS.get(name, name), path=dst))
    return blocks


def draw_missing_figures(run_dir: Path, fig_dir: Path, name: str) -> dict:
    """Draw the sample grid and the generation process of a run that has none on disk (a shipped
    model ships without them), into fig_dir, with the run's own sampling settings."""
    missing = {k: fig_dir / f"{name}-{k}.png" for k, f in (("samples", run_dir / "samples" / "grid.png"),
                                                           ("process", run_dir / "process.png")) if not f.is_file()}
    if not missing:
        return {}
    from .sample import load_run, process, sample, save_grid
    run = load_run(run_dir)
    if "samples" in missing:
        x, y = sample(run, 8 * max(1, run.num_classes) if run.num_classes else 64,
                      labels="all" if run.num_classes else None)
        save_grid(run, x, y, missing["samples"])
    if "process" in missing:
        process(run, missing["process"], n=4 if run.config.model.image_size <= 32 else 2)
    return missing


def to_markdown(blocks: list[Block], out: Path) -> str:
    lines = []
    for b in blocks:
        if b.kind == "heading":
            lines += ["#" * b.level + " " + b.text, ""]
        elif b.kind == "text":
            lines += [b.text, ""]
        elif b.kind == "image":
            lines += [f"![{b.text}]({os.path.relpath(b.path, out)})", ""]
        elif b.kind == "table":
            lines.append("| " + " | ".join(b.header) + " |")
            lines.append("|" + "---|" * len(b.header))
            lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in b.rows]
            lines.append("")
    return "\n".join(lines)


def to_html(blocks: list[Block], title: str) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
             "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
             "th{background:#f3f3f3}img{max-width:100%;display:block;margin:.5em 0}code{background:#f3f3f3}"
             "</style></head><body>"]
    for b in blocks:
        if b.kind == "heading":
            parts.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif b.kind == "text":
            parts.append(f"<p>{_inline(b.text)}</p>")
        elif b.kind == "image":
            data = base64.b64encode(Path(b.path).read_bytes()).decode()
            parts.append(f"<figure><img alt='{html.escape(b.text)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(b.text)}</figcaption></figure>")
        elif b.kind == "table":
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in b.header) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in b.rows]
            parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _inline(text: str) -> str:
    """`code` spans; everything else escaped."""
    out = html.escape(text).split("`")
    return "".join(f"<code>{s}</code>" if i % 2 else s for i, s in enumerate(out))


def write_report(runs: list, out, **kw) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    blocks = build(runs, out, **kw)
    title = blocks[0].text
    md, page = to_markdown(blocks, out), to_html(blocks, title)
    atomic_write(out / "REPORT.md", lambda p: p.write_text(md))
    atomic_write(out / "report.html", lambda p: p.write_text(page))
    return out / "REPORT.md"
