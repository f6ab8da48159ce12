"""`ddpmlab serve`: a local page to sample the models, watch one generate, compare runs side by
side and read a run's training.

    $ ddpmlab serve                      # the shipped models and the runs under runs/
    $ ddpmlab serve runs/unet-block runs/unet-input --port 7861

Four views, each a thin layer over the package's own functions, so the page shows what the
commands make: Sample (`sample.load_run` and `sample.sample`: the same seed and settings give
`ddpmlab sample`'s images), Process (`render.process_frames`, every step of `ddpmlab process`),
Compare (runs at their own settings on the same seeds and labels, each with the evaluation that
`ddpmlab evaluate RUN` cached, if any: the page never evaluates) and Training (loss.png,
snapshots/epochE-classK.png, the collapse monitor's scores in metrics.jsonl).

The page is drawn by Gradio, the optional extra `ddpmlab[ui]`: it is the convention of the field
for a model's demo page, it serves its own scripts and fonts (nothing from a CDN) and gives the
sliders, galleries and error toasts this page needs without a line of JavaScript. It is imported
only by `build_page` and `serve`, so `ddpmlab --help` and every other command run without it.
Offline and local by default: analytics off, system fonts, listening on 127.0.0.1; bad input is
the command line's one-line `ddpmlab: error: ...` in the page, and the server keeps serving.
"""
from __future__ import annotations

import json
import html
import logging
import os
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .errors import error_line
from .config import ConfigError, SamplingConfig
from .defaults import SAMPLER_NAMES

log = logging.getLogger("ddpmlab.serve")

INSTALL_HINT = "ddpmlab serve draws its page with Gradio, an optional extra: pip install 'ddpmlab[ui]'"
DEFAULT_HOST = "127.0.0.1"
MAX_IMAGES = 100            # per click: a page that answers within seconds on a CPU
MAX_COMPARE = 4
ALL = "all"                 # the class choice that cycles the labels 0..K-1, as `--labels all`
GRID_SCALE = 4              # screen pixels per image pixel: 28x28 images are tiny on a screen
PROCESS_SCALE = 8
SYSTEM_FONTS = ("ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif")
MONO_FONTS = ("ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace")


# --------------------------------------------------------------------------- runs and models

def find_runs(given=(), runs_dir="runs") -> dict[str, str]:
    """What the page lists: display name -> what `load_run` takes. The shipped models first, then
    the run directories given, or without any those found under `runs_dir` (RUNS_DIR/NAME/config.json).
    A given name that is neither is the command line's RunError; a damaged run is listed, and
    says what is wrong when it is picked."""
    from .run import PRETRAINED_DIR, resolve_run
    out = {}
    if PRETRAINED_DIR.is_dir():
        for d in sorted(PRETRAINED_DIR.iterdir()):
            if (d / "config.json").is_file():
                out[f"{d.name} (shipped)"] = d.name
    if given:
        paths = [resolve_run(g) for g in given]
    else:
        root = Path(runs_dir)
        paths = sorted(p.parent for p in root.glob("*/config.json")) if root.is_dir() else []
    for p in paths:
        if p.resolve().parent != PRETRAINED_DIR.resolve():
            out[str(p)] = str(p)
    return out


class Models:
    """Loaded runs kept in the server process (the last `size`), so a click samples at once
    instead of rebuilding the network."""

    def __init__(self, size: int = 8):
        self.size = size
        self._runs: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, run):
        """The loaded run; how it samples (autoguidance included) is the caller's Sampling."""
        from .sample import load_run
        key = str(run)
        with self._lock:
            if key not in self._runs:
                self._runs[key] = load_run(run)
                while len(self._runs) > self.size:
                    self._runs.popitem(last=False)
            self._runs.move_to_end(key)
            return self._runs[key]


def settings(loaded, sampler=None, steps=None, guidance=None, autoguidance=None):
    """The page's settings resolved as `ddpmlab sample` resolves its flags (sample.resolve_sampling)."""
    from .sample import resolve_sampling
    return resolve_sampling(loaded.config, SamplingConfig(sampler=sampler or None, steps=steps, guidance=guidance,
                                                          autoguidance=autoguidance), loaded.path)


def run_defaults(run) -> dict:
    """The settings the page preselects for a run: its own (config.json "sampling"), else
    ddpmlab's defaults, as `ddpmlab sample` resolves them; and its class names."""
    from .run import load_config, resolve_run
    from .sample import resolve_sampling
    rc = load_config(resolve_run(run))
    s = resolve_sampling(rc, SamplingConfig(autoguidance=0))       # the guide is not loaded to show defaults
    return {"sampler": s.sampler, "steps": s.steps, "guidance": s.guidance,
            "autoguidance": float(rc.sampling.autoguidance or 0.0), "has_guide": bool(rc.sampling.guide),
            "class_names": list(rc.class_names)}


def class_choices(class_names) -> list[tuple[str, str]]:
    return [("all classes", ALL)] + [(f"{k}: {name}", str(k)) for k, name in enumerate(class_names)]


def parse_label(choice):
    """The page's class choice -> what `sample` takes: "all" or an int."""
    if choice in (None, "", ALL):
        return ALL
    try:
        return int(choice)
    except (TypeError, ValueError):
        raise ConfigError(f"class {choice!r}: expected a class number or 'all'") from None


def _int(value, what: str, lo: int, hi: int | None = None) -> int:
    try:
        v = int(value)
        if v != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be an integer, got {value!r}") from None
    if v < lo or (hi is not None and v > hi):
        raise ConfigError(f"{what} must be between {lo} and {hi}, got {v}" if hi is not None
                          else f"{what} must be >= {lo}, got {v}")
    return v


def nfe(loaded, sampler=None, steps=None, guidance=None, autoguidance=None) -> int:
    """Network evaluations per image at these settings (diffusion.count_nfe)."""
    from .diffusion import count_nfe
    return count_nfe(loaded.schedule, settings(loaded, sampler, steps, guidance, autoguidance))


# --------------------------------------------------------------------------- images

def _upscale(a: np.ndarray, scale: int) -> np.ndarray:
    """(H, W, C) uint8 -> (H*s, W*s) (grey) or (H*s, W*s, C), nearest neighbour."""
    a = a[..., 0] if a.shape[-1] == 1 else a
    return np.repeat(np.repeat(a, scale, 0), scale, 1)


def grid_image(x, ncol: int | None = None, scale: int = GRID_SCALE) -> np.ndarray:
    """Images (N, C, H, W) in [-1, 1] as one grid, 10 a row: labels drawn cycling 0..9 put each
    class in its own column."""
    from . import plots
    return _upscale(plots.tile(x, ncol or min(10, x.shape[0])), scale)


def sample_view(models: Models, run, label, n, seed, sampler, steps, guidance, autoguidance):
    """Sample: (grid image, one line: what was drawn and how long it took, the samples x, labels y)."""
    from .diffusion import count_nfe
    from .sample import sample
    n = _int(n, "the number of images", 1, MAX_IMAGES)
    seed = _int(seed, "seed", 0)
    steps = _int(steps, "steps", 1)
    loaded = models.get(run)
    s = settings(loaded, sampler, steps, guidance, autoguidance)
    t0 = time.perf_counter()
    x, y = sample(loaded, n, labels=parse_label(label), seed=seed, sampling=s)
    seconds = time.perf_counter() - t0
    what = "all classes" if y is None or parse_label(label) == ALL else loaded.config.class_names[int(y[0])]
    text = (f"{n} image{'s' * (n > 1)} of {what} in {seconds:.2f} s: {s.sampler}, {s.steps} steps, guidance "
            f"{s.guidance:g}, autoguidance {s.autoguidance:g}, {count_nfe(loaded.schedule, s)} network evaluations "
            f"per image, seed {seed}")
    return grid_image(x), text, x, y


def process_view(models: Models, run, label, seed, sampler, steps, guidance, autoguidance):
    """Process: the generation of one sample (image 0 of `seed`, the first of Sample's grid) at every
    step: (frames, captions, film strip). A frame shows x_t beside the clean image predicted from it."""
    from . import plots, render
    seed = _int(seed, "seed", 0)
    loaded = models.get(run)
    label = parse_label(label)
    label = 0 if label == ALL and loaded.num_classes else label    # one sample: "all" starts at class 0
    s = settings(loaded, sampler, _int(steps, "steps", 1), guidance, autoguidance)
    frames, _ = render.process_frames(loaded.model, loaded.schedule, loaded.config.model, s, n=1, label=label,
                                      seed=seed, columns=None, device=loaded.device, precision=loaded.precision,
                                      guide=loaded.guide_for(s))
    images, captions = [], []
    for i, (t, xt, x0) in enumerate(frames):
        pair = np.concatenate([plots.to_hwc_uint8(xt)[0], np.full((xt.shape[2], 2, xt.shape[1]), 128, np.uint8),
                               plots.to_hwc_uint8(x0)[0]], axis=1)
        images.append(_upscale(pair, PROCESS_SCALE))
        captions.append(f"final image (after {len(frames) - 1} steps)" if t < 0 else
                        f"step {i + 1} of {len(frames) - 1}: t = {t}; left x_t, right the clean image "
                        "predicted from it")
    import torch
    strip = grid_image(torch.cat([xt for _, xt, _ in frames]), ncol=len(frames), scale=2)
    return images, captions, strip


def cached_evaluation(run) -> dict | None:
    """The evaluation `ddpmlab evaluate RUN` cached for the run's current weights (RUN/eval, or
    the user cache for a shipped model): at the run's own settings if there is one, the most
    samples first; None when there is none. The page never evaluates."""
    from . import checkpoint
    from .evaluate import run_eval_dir
    from .run import load_config, resolve_run
    from .sample import resolve_sampling
    run_dir = resolve_run(run)
    d = run_eval_dir(run_dir)
    if not d.is_dir():
        return None
    sha = checkpoint.sha256(run_dir, "ema.safetensors")
    found = []
    for p in sorted(d.glob("*.json")):
        try:
            r = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(r, dict) and (r.get("cache_key") or {}).get("weights_sha256") == sha and r.get("fd") is not None:
            found.append(r)
    s = resolve_sampling(load_config(run_dir), run_dir=run_dir)
    own = (s.sampler, s.steps, s.guidance)
    return max(found, key=lambda r: ((r.get("sampler"), r.get("steps"), r.get("guidance")) == own, r.get("n") or 0),
               default=None)


def _fmt(v, f="{:.3f}") -> str:
    return "-" if v is None else f.format(v)


def compare_view(models: Models, runs, names: dict, label, n, seed):
    """Compare: 2 to 4 runs, each at its own settings, on the same seeds and labels: gallery items
    (grid, caption) and a markdown table with each run's cached fd and cond_acc."""
    runs = list(runs or [])
    if not 2 <= len(runs) <= MAX_COMPARE:
        raise ConfigError(f"compare 2 to {MAX_COMPARE} runs, {len(runs)} chosen")
    n = _int(n, "the number of images", 1, MAX_IMAGES)
    seed = _int(seed, "seed", 0)
    from .diffusion import count_nfe
    from .sample import sample
    items, rows = [], []
    for run in runs:
        loaded = models.get(run)
        s = settings(loaded)                          # every run at its own settings
        t0 = time.perf_counter()
        x, _ = sample(loaded, n, labels=parse_label(label), seed=seed, sampling=s)
        seconds = time.perf_counter() - t0
        ev = cached_evaluation(run)
        k = count_nfe(loaded.schedule, s)
        name = names.get(run, run)
        score = "" if ev is None else f", fd {_fmt(ev.get('fd'))}, cond_acc {_fmt(ev.get('cond_acc'))}"
        # 5 a row: narrow enough for 4 runs side by side
        items.append((grid_image(x, ncol=min(5, n)), f"{name}: {k} NFE{score}"))
        rows.append(f"| {name} | {s.sampler}, {s.steps} steps, guidance {s.guidance:g}, "
                    f"autoguidance {s.autoguidance:g} | {k} | {seconds:.2f} s | "
                    + ("no cached evaluation (`ddpmlab evaluate RUN`) | - | -" if ev is None else
                       f"{_fmt(ev.get('fd'))} (floor {_fmt(ev.get('fd_floor'))}) | {_fmt(ev.get('cond_acc'))} "
                       f"(real {_fmt(ev.get('classifier_test_acc'))}) | n={ev.get('n')}, {ev.get('sampler')}, "
                       f"{ev.get('steps')} steps, seed {ev.get('seed')}") + " |")
    table = "\n".join([f"Seed {seed}, {n} images each, "
                       + ("labels cycling 0..9" if parse_label(label) == ALL else f"class {parse_label(label)}")
                       + "; every run at its own settings.", "",
                       "| run | settings | NFE | time | fd | cond_acc | evaluated at |",
                       "|---|---|---|---|---|---|---|", *rows])
    return items, table


# --------------------------------------------------------------------------- training

MONITOR_KEYS = ("diversity", "label_separation", "adherence", "classes_predicted")


def snapshot_epochs(run_dir) -> dict[int, list[tuple[int | None, Path]]]:
    """epoch -> [(label, file)] of snapshots/epochE-classK.png, labels in order."""
    from .render import parse_snapshot_name
    out: dict = {}
    d = Path(run_dir) / "snapshots"
    for p in sorted(d.glob("epoch*.png")) if d.is_dir() else []:
        parsed = parse_snapshot_name(p.name)
        if parsed is not None:
            out.setdefault(parsed[0], []).append((parsed[1], p))
    return {e: sorted(v, key=lambda lp: -1 if lp[0] is None else lp[0]) for e, v in sorted(out.items())}


def snapshot_image(run_dir, epoch: int) -> np.ndarray:
    """One epoch's snapshots, one class a row (each file already is a strip of that class)."""
    from PIL import Image
    files = snapshot_epochs(run_dir).get(int(epoch))
    if not files:
        raise ConfigError(f"{Path(run_dir) / 'snapshots'}: no snapshots of epoch {epoch}")
    rows = []
    for _, p in files:
        try:
            with Image.open(p) as im:
                rows.append(np.asarray(im.convert("L")))
        except OSError as e:
            raise ConfigError(f"{p} is not a readable PNG ({e})") from None
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1])), constant_values=255) for r in rows]
    return np.concatenate(rows)


def training_view(run, work: Path) -> dict:
    """Training: the loss curve, the snapshot epochs, the collapse monitor per epoch (a figure and
    a table); figures missing on disk are drawn from metrics.jsonl into `work`."""
    from PIL import Image

    from . import plots
    from .monitor import collapse_symptoms
    from .run import load_config, read_metrics, resolve_run
    run_dir = resolve_run(run)
    rc = load_config(run_dir)
    metrics = read_metrics(run_dir)
    epochs = [m for m in metrics if m.get("kind") == "epoch"]
    work.mkdir(parents=True, exist_ok=True)
    loss = run_dir / "loss.png"
    if not loss.is_file() and metrics:
        loss = work / "loss.png"
        plots.plot_loss(metrics, loss, title=f"{run_dir.name}: training loss")
    monitor = None
    if any(k in m for m in epochs for k in MONITOR_KEYS):
        monitor = work / "monitor.png"
        plots.plot_monitor({run_dir.name: metrics}, monitor, batch=rc.train.batch_size)
    rows = []
    for m in epochs:
        symptoms = collapse_symptoms(m, rc.model.num_classes if "adherence" in m else 0)
        rows.append(f"| {m.get('epoch')} | {m.get('step')} | {_fmt(m.get('loss'), '{:.4f}')} | "
                    f"{_fmt(m.get('lr'), '{:.1e}')} | " + " | ".join(_fmt(m.get(k), '{:g}') for k in MONITOR_KEYS)
                    + f" | {'; '.join(symptoms) or 'healthy' if any(k in m for k in MONITOR_KEYS) else '-'} |")
    table = ("| epoch | step | loss | lr | diversity | label separation | adherence | classes | collapse monitor |\n"
             "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows)) if rows else \
        "No epoch finished yet (metrics.jsonl)."

    def read(p):
        if p is None or not Path(p).is_file():
            return None
        with Image.open(p) as im:
            return im.convert("RGB")
    return {"loss": read(loss), "monitor": read(monitor), "table": table, "snapshots": snapshot_epochs(run_dir),
            "class_names": list(rc.class_names), "epochs": {m.get("epoch"): m for m in epochs}}


def snapshot_caption(view: dict, epoch: int) -> str:
    from .monitor import collapse_symptoms
    labels = [lab for lab, _ in view["snapshots"].get(int(epoch), [])]
    names = ", ".join("all" if lab is None else view["class_names"][lab] if lab < len(view["class_names"])
                      else str(lab) for lab in labels)
    m = view["epochs"].get(int(epoch), {})
    scores = ", ".join(f"{k} {m[k]:g}" for k in MONITOR_KEYS if k in m)
    symptoms = collapse_symptoms(m, len(view["class_names"]) if "adherence" in m else 0)
    return (f"Epoch {epoch}, fixed noise, one class a row ({names})."
            + (f" Monitor: {scores}." if scores else "") + (f" **{'; '.join(symptoms)}**" if symptoms else ""))


# --------------------------------------------------------------------------- the page

CSS = ".pixelated img { image-rendering: pixelated; }"     # enlarged 28x28 images stay sharp


def build_page(runs: dict[str, str], models: Models | None = None, work: Path | None = None):
    """The Gradio page for `runs` (display name -> run); not launched."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"      # before gradio reads it: no telemetry
    import gradio as gr

    from .run import resolve_run
    models = models or Models()
    work = Path(work or tempfile.mkdtemp(prefix="ddpmlab-serve-"))
    names = {v: k for k, v in runs.items()}
    choices = list(runs.items())
    first = choices[0][1]

    def guarded(fn):
        """Errors the command line expects become its one line in the page; the server goes on."""
        def call(*args):
            try:
                return fn(*args)
            except Exception as e:   # noqa: BLE001  (a page handler must not take the server down)
                line = error_line(e)
                if line is None:
                    log.exception("ddpmlab serve: %s failed", fn.__name__)
                    line = f"ddpmlab: error: {type(e).__name__}: {e}"
                raise gr.Error(html.escape(line), print_exception=False) from None
        call.__name__ = fn.__name__
        return call

    d0 = run_defaults(first)
    md = dict(latex_delimiters=[])         # no KaTeX: nothing to load

    with gr.Blocks(analytics_enabled=False, title="ddpmlab", delete_cache=(3600, 3600)) as page:
        gr.Markdown("# ddpmlab\nSample the models, watch one generate, compare runs, read a run's training. "
                    "Served from this machine only; nothing is loaded from the internet.", **md)
        with gr.Row():
            with gr.Column(scale=3):
                model = gr.Radio(choices, value=first, label="model (Sample and Process)", elem_id="model")
                nfe_md = gr.Markdown(elem_id="nfe", **md)
            with gr.Column(scale=2):
                with gr.Row():
                    sampler = gr.Dropdown(list(SAMPLER_NAMES), value=d0["sampler"], label="sampler",
                                          elem_id="sampler")
                    steps = gr.Number(d0["steps"], label="steps", precision=0, minimum=1, elem_id="steps")
                    seed = gr.Number(0, label="seed", precision=0, minimum=0, elem_id="seed")
                with gr.Row():
                    guidance = gr.Number(d0["guidance"], label="guidance", step=0.1, elem_id="guidance")
                    autoguidance = gr.Number(d0["autoguidance"], label="autoguidance", step=0.1, minimum=0,
                                             interactive=d0["has_guide"], elem_id="autoguidance")
        settings = [sampler, steps, guidance, autoguidance]

        with gr.Tab("Sample", id="sample"):
            with gr.Row():
                label = gr.Radio(class_choices(d0["class_names"]), value=ALL, label="class", elem_id="sample-class",
                                 scale=3)
                n = gr.Slider(1, MAX_IMAGES, value=10, step=1, label="images", elem_id="sample-n", scale=1)
            go = gr.Button("Sample", variant="primary", elem_id="sample-button")
            info = gr.Markdown(elem_id="sample-info", **md)
            grid = gr.Image(label="samples (labels cycling 0..9: one class a column)", type="numpy", format="png",
                            interactive=False, elem_id="sample-image", elem_classes="pixelated")

        with gr.Tab("Process", id="process"):
            gr.Markdown("The generation of one sample: image 0 of the seed, the first of Sample's grid "
                        "(class 0 when all classes are chosen). Scrub through the steps.", **md)
            with gr.Row():
                p_label = gr.Radio(class_choices(d0["class_names"]), value="0" if d0["class_names"] else ALL,
                                   label="class", elem_id="process-class", scale=3)
                p_go = gr.Button("Generate", variant="primary", elem_id="process-button", scale=1)
            frames = gr.State([])
            step = gr.Slider(0, 1, value=0, step=1, label="step", elem_id="process-step")
            p_caption = gr.Markdown(elem_id="process-caption", **md)
            frame = gr.Image(label="x_t | predicted clean image", type="numpy", format="png", interactive=False,
                             elem_id="process-image", elem_classes="pixelated")
            strip = gr.Image(label="every step, noise (left) to image (right)", type="numpy", format="png",
                             interactive=False, elem_id="process-strip", elem_classes="pixelated")

        with gr.Tab("Compare", id="compare"):
            gr.Markdown("Two to four runs on the same seeds and classes, each at its own settings, "
                        "with its fd and cond_acc where `ddpmlab evaluate RUN` cached one.", **md)
            with gr.Row():
                c_runs = gr.CheckboxGroup(choices, label="runs (2 to 4)", elem_id="compare-runs", scale=3)
                with gr.Column(scale=2):
                    c_label = gr.Radio(class_choices(d0["class_names"]), value=ALL, label="class",
                                       elem_id="compare-class")
                    c_n = gr.Slider(1, 30, value=10, step=1, label="images per run", elem_id="compare-n")
            c_go = gr.Button("Compare", variant="primary", elem_id="compare-button")
            c_gallery = gr.Gallery(label="side by side", columns=MAX_COMPARE, object_fit="contain", height="auto",
                                   elem_id="compare-gallery", elem_classes="pixelated", interactive=False)
            c_table = gr.Markdown(elem_id="compare-table", **md)

        with gr.Tab("Training", id="training"):
            t_run = gr.Radio(choices, value=first, label="run", elem_id="training-run")
            t_loss = gr.Image(label="loss curve", type="pil", interactive=False, elem_id="training-loss")
            t_monitor = gr.Image(label="collapse monitor per epoch", type="pil", interactive=False,
                                 elem_id="training-monitor")
            t_view = gr.State({})
            t_epoch = gr.Slider(0, 1, value=0, step=1, label="epoch", elem_id="training-epoch")
            t_caption = gr.Markdown(elem_id="training-caption", **md)
            t_snap = gr.Image(label="per-epoch snapshot", type="numpy", format="png", interactive=False,
                              elem_id="training-snapshot", elem_classes="pixelated")
            t_table = gr.Markdown(elem_id="training-table", **md)

        # ---------------------------------------------------------------- events
        def pick_model(run):
            d = run_defaults(run)
            loaded = models.get(run)
            classes = class_choices(d["class_names"]) if d["class_names"] else [("all classes", ALL)]
            return (d["sampler"], d["steps"], d["guidance"],
                    gr.Number(value=d["autoguidance"], interactive=d["has_guide"]),
                    gr.Radio(classes, value=ALL), gr.Radio(classes, value=classes[min(1, len(classes) - 1)][1]),
                    _nfe_text(loaded, d["sampler"], d["steps"], d["guidance"], d["autoguidance"]))

        def show_nfe(run, sampler, steps, guidance, autoguidance):
            loaded = models.get(run)
            return _nfe_text(loaded, sampler, _int(steps, "steps", 1), guidance, autoguidance)

        def do_sample(run, label, n, seed, sampler, steps, guidance, autoguidance):
            image, text, _, _ = sample_view(models, run, label, n, seed, sampler, steps, guidance, autoguidance)
            return image, text

        def do_process(run, label, seed, sampler, steps, guidance, autoguidance):
            images, captions, film = process_view(models, run, label, seed, sampler, steps, guidance, autoguidance)
            state = list(zip(images, captions))
            return state, gr.Slider(0, len(state) - 1, value=0, step=1), images[0], captions[0], film

        def scrub(state, i):
            if not state:
                return None, "Press Generate first."
            i = max(0, min(int(i), len(state) - 1))
            return state[i]

        def do_compare(chosen, label, n, seed):
            items, table = compare_view(models, chosen, names, label, n, seed)
            return gr.Gallery(items, columns=len(items)), table

        def pick_run(run):
            view = training_view(run, work / "training" / Path(str(run)).name)
            epochs = list(view["snapshots"])
            if not epochs:
                note = ("No per-epoch snapshots in this run (snapshots/epochE-classK.png; a shipped model keeps "
                        "only its loss curve and metrics).")
                return view, view["loss"], view["monitor"], gr.Slider(0, 1, value=0, visible=False), note, None, \
                    view["table"]
            last = epochs[-1]
            return (view, view["loss"], view["monitor"],
                    gr.Slider(epochs[0], last, value=last, step=1, visible=True),
                    snapshot_caption(view, last), snapshot_image(resolve_run(run), last), view["table"])

        def pick_epoch(view, run, epoch):
            if not view or not view.get("snapshots"):
                return None, ""
            epochs = list(view["snapshots"])
            epoch = min(epochs, key=lambda e: abs(e - float(epoch)))   # the nearest epoch that has snapshots
            return snapshot_image(resolve_run(run), epoch), snapshot_caption(view, epoch)

        model.change(guarded(pick_model), model, [*settings, label, p_label, nfe_md])
        for c in settings:
            c.change(guarded(show_nfe), [model, *settings], nfe_md, show_progress="hidden")
        go.click(guarded(do_sample), [model, label, n, seed, *settings], [grid, info])
        p_go.click(guarded(do_process), [model, p_label, seed, *settings], [frames, step, frame, p_caption, strip])
        step.change(scrub, [frames, step], [frame, p_caption], show_progress="hidden")
        c_go.click(guarded(do_compare), [c_runs, c_label, c_n, seed], [c_gallery, c_table])
        t_run.change(guarded(pick_run), t_run, [t_view, t_loss, t_monitor, t_epoch, t_caption, t_snap, t_table])
        t_epoch.change(guarded(pick_epoch), [t_view, t_run, t_epoch], [t_snap, t_caption], show_progress="hidden")
        page.load(guarded(show_nfe), [model, *settings], nfe_md)
        page.load(guarded(pick_run), t_run, [t_view, t_loss, t_monitor, t_epoch, t_caption, t_snap, t_table])
    return page


def _nfe_text(loaded, sampler, steps, guidance, autoguidance=None) -> str:
    return f"**{nfe(loaded, sampler, steps, guidance, autoguidance)} network evaluations (NFE) per image** at these settings"


def theme():
    """Gradio's default look in the system's fonts: no web font is fetched."""
    import gradio as gr
    return gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)


def serve(runs=(), host: str = DEFAULT_HOST, port: int | None = None, runs_dir="runs") -> None:
    """Start the page and serve until interrupted (Ctrl+C)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    logging.getLogger("httpx").setLevel(logging.WARNING)    # Gradio's own requests to itself at start
    import shutil
    listed = find_runs(runs, runs_dir)
    work = Path(tempfile.mkdtemp(prefix="ddpmlab-serve-"))    # figures drawn for the Training view
    page = build_page(listed, Models(), work)
    page.queue(default_concurrency_limit=1)        # one sampling at a time: it uses every core
    _, url, _ = page.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True,
                            share=False, inbrowser=False, ssr_mode=False, pwa=False, mcp_server=False,
                            enable_monitoring=False, footer_links=[], theme=theme(), css=CSS)
    where = ("this machine only (127.0.0.1); --host 0.0.0.0 opens it to the network"
             if host in ("127.0.0.1", "localhost") else f"{host}: other machines can reach it")
    print(f"ddpmlab serve: {url} ({len(listed)} models; listening on {where}); Ctrl+C stops it", flush=True)
    try:
        page.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        page.close()
        shutil.rmtree(work, ignore_errors=True)
