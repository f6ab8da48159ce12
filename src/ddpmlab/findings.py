"""The write-up's findings (a)-(h), each checked against runs and given a verdict.

Pure functions of what `report` has already gathered: per-preset run summaries (report.run_summary),
evaluations (evaluate's result dicts), each run's metrics records, and the studies that
ddpmlab.studies writes into OUT/studies/*.json. Nothing here trains, samples or draws: each finding
names the figures that decide it and `report` draws them.

With one training run per design, a difference counts only when it clears the noise of one
evaluation: fd must differ by at least FD_CLEAR (a factor) and cond_acc by ACC_CLEAR. With several
training seeds (`reproduce --seeds K`), the comparisons that decide (a), (b) and (e) count a
difference only when it exceeds twice the standard error of the difference of the seed means:
the noise of training, measured (seed_verdict).
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .metrics import NUM_CLASSES
from .monitor import DIVERSITY_FLOOR, SEPARATION_FLOOR, collapse_symptoms

FD_CLEAR = 1.15       # fd of 1000 samples moves by a few % between sampling seeds; 15% is a difference
ACC_CLEAR = 0.05      # 3 binomial standard errors of cond_acc at n = 1000 (p ~ 0.5: 0.016)
LOSS_CLEAR = 1.03     # epoch-mean losses of a converging run: 3%
TWO_CLASSES = 0.6     # "only two classes": the two most predicted classes take this share of all samples

REPRODUCED, PARTLY, NOT_REPRODUCED, NOT_MEASURED = "reproduced", "partly", "not reproduced", "not measured"


TITLES = {
    "a": "Noise-level conditioning helps the very basic model",
    "b": "Spatial encoding improves coherence",
    "c": "Class embeddings make classes askable",
    "d": "UNet with the class at the input only: two classes",
    "e": "The class in the conditional BatchNorm improves things",
    "f": "UNets collapse to one blob after a few epochs",
    "g": "The basic model's initialisation is suboptimal",
    "h": "The two good bugs hurt",
}


@dataclass
class Finding:
    key: str                    # "a" .. "h" (TITLES)
    claim: str                  # the write-up's words
    verdict: str                # REPRODUCED | PARTLY | NOT_REPRODUCED | NOT_MEASURED
    evidence: str               # the numbers that decide it
    figures: list = field(default_factory=list)   # figure names report draws (report.FINDING_CAPTIONS)
    caveat: str = ""            # what this budget cannot show

    @property
    def title(self) -> str:
        return TITLES[self.key]


def _ratio(worse, better):
    return worse / better if worse and better else None


def _fd(r):
    return (r or {}).get("fd")


def _fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def _values(spread: dict, preset: str, key: str) -> list:
    return [v for v in (spread.get(preset) or {}).get(key, []) if v is not None]


def seed_note(spread: dict, *presets, key: str = "fd", spec: str = ".2f") -> str:
    """' (fd over 3 training seeds: 4.10 +- 0.21 vs 3.52 +- 0.30)', or '' with one seed."""
    vals = [_values(spread, p, key) for p in presets]
    if not all(len(v) > 1 for v in vals):
        return ""
    parts = [f"{statistics.mean(v):{spec}} +- {statistics.stdev(v):{spec}}" for v in vals]
    return f" ({key} over {min(map(len, vals))} training seeds: {' vs '.join(parts)})"


def seed_verdict(spread: dict, worse: str, better: str, key: str, lower_is_better: bool) -> int | None:
    """With at least 2 training seeds of both presets: +1 when `better` beats `worse` on `key` by
    more than twice the standard error of the difference of their means (the seed-to-seed noise
    of training, measured), -1 when it loses by as much, 0 within that noise. None with fewer
    seeds: the fixed thresholds decide then."""
    a, b = _values(spread, worse, key), _values(spread, better, key)
    if len(a) < 2 or len(b) < 2:
        return None
    diff = statistics.mean(a) - statistics.mean(b) if lower_is_better else statistics.mean(b) - statistics.mean(a)
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    return 1 if diff > 2 * se else -1 if diff < -2 * se else 0


def read_studies(out: Path) -> dict:
    """name -> the JSON a study (ddpmlab.studies) wrote into OUT/studies/NAME.json (unreadable: skipped)."""
    studies = {}
    for p in sorted((Path(out) / "studies").glob("*.json")):
        try:
            studies[p.stem] = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
    return studies


def noise_conditioning(s: dict, r: dict, spread: dict | None = None) -> Finding:
    claim = "The noise level is not used at all [...] conditioning on the noise level (conditional BatchNorm)."
    b, n = s.get("resnet-basic"), s.get("resnet-noise")
    if not (b and n):
        return Finding("a", claim, NOT_MEASURED,
                       "needs resnet-basic and resnet-noise runs")
    loss_better = b["final_loss"] and n["final_loss"] and b["final_loss"] > n["final_loss"] * LOSS_CLEAR
    ratio = _ratio(_fd(r.get("resnet-basic")), _fd(r.get("resnet-noise")))
    by_seeds = seed_verdict(spread or {}, "resnet-basic", "resnet-noise", "fd", lower_is_better=True)
    fd_better = by_seeds == 1 if by_seeds is not None else (ratio is not None and ratio >= FD_CLEAR)
    verdict = REPRODUCED if loss_better and fd_better else PARTLY if (loss_better or fd_better) else NOT_REPRODUCED
    ev = (f"final epoch loss {b['final_loss']:.4f} without vs {n['final_loss']:.4f} with the noise level; "
          f"fd {_fmt(_fd(r.get('resnet-basic')))} vs {_fmt(_fd(r.get('resnet-noise')))}"
          + (f" ({ratio:.1f}x)" if ratio else "") + seed_note(spread or {}, "resnet-basic", "resnet-noise")
          + f"; precision {_fmt(r.get('resnet-basic', {}).get('precision'), '.3f')}"
          f" vs {_fmt(r.get('resnet-noise', {}).get('precision'), '.3f')}, on {n['train_images']:,} training images each")
    return Finding("a", claim, verdict, ev,
                   ["loss-basic-noise", "same-seeds-resnet"])


def spatial_encoding(s: dict, r: dict, spread: dict | None = None) -> Finding:
    claim = "Cartesian X/Y and polar coordinates added to the input, which maybe improves coherence."
    n, sp = r.get("resnet-noise"), r.get("resnet-spatial")
    if not (n and sp):
        return Finding("b", claim, NOT_MEASURED,
                       "needs evaluated resnet-noise and resnet-spatial runs")
    ratio = _ratio(_fd(n), _fd(sp))
    by_seeds = seed_verdict(spread or {}, "resnet-noise", "resnet-spatial", "fd", lower_is_better=True)
    fd_better = by_seeds == 1 if by_seeds is not None else (ratio is not None and ratio >= FD_CLEAR)
    fd_worse = by_seeds == -1 if by_seeds is not None else (ratio is not None and ratio <= 1 / FD_CLEAR)
    prec = (sp.get("precision") or 0) - (n.get("precision") or 0)
    pc_n, pc_s = n.get("per_pred_class_fd") or [], sp.get("per_pred_class_fd") or []
    wins = sum(1 for a, c in zip(pc_n, pc_s) if a is not None and c is not None and c * FD_CLEAR <= a)
    losses = sum(1 for a, c in zip(pc_n, pc_s) if a is not None and c is not None and a * FD_CLEAR <= c)
    if fd_better and prec >= 0.02:
        verdict = REPRODUCED
    elif fd_better or prec >= 0.02 or wins > losses + 2:
        verdict = PARTLY
    else:
        verdict = NOT_REPRODUCED
    ev = (f"fd {_fmt(_fd(n))} without vs {_fmt(_fd(sp))} with coordinates"
          + (f" ({'better' if fd_better else 'worse' if fd_worse else 'within noise'}, x{ratio:.2f})" if ratio else "")
          + seed_note(spread or {}, "resnet-noise", "resnet-spatial")
          + f"; precision (fidelity) {n.get('precision', 0):.3f} vs {sp.get('precision', 0):.3f}; per-class fd "
          f"(samples grouped by the class the classifier sees) clearly better in {wins} of 10 classes, worse in {losses}")
    return Finding("b", claim, verdict, ev,
                   ["same-seeds-resnet", "per-class-fd-spatial"],
                   "" if by_seeds is not None else
                   "One training run per design: a difference this small can also be seed-to-seed noise of training "
                   "(`ddpmlab reproduce --seeds 3` measures it).")


def class_embedding(s: dict, r: dict) -> Finding:
    claim = "A 4-dimensional class embedding is trained and concatenated with the input image."
    c = r.get("resnet-class")
    if not c or c.get("cond_acc") is None:
        return Finding("c", claim, NOT_MEASURED, "needs an evaluated resnet-class")
    acc = c["cond_acc"]
    verdict = REPRODUCED if acc >= 0.5 else PARTLY if acc >= 0.2 else NOT_REPRODUCED
    per = c.get("cond_acc_per_class") or []
    names = c.get("class_names") or [str(k) for k in range(10)]
    worst = sorted((a, names[k]) for k, a in enumerate(per) if a is not None)[:2]
    ev = (f"cond_acc {acc:.3f} (chance 0.10; the classifier itself scores {c.get('classifier_test_acc', 0):.3f} on "
          f"real test images); weakest classes: " + ", ".join(f"{nm} {a:.2f}" for a, nm in worst))
    return Finding("c", claim, verdict, ev, ["samples-resnet-class"])


def _top2_share(res: dict) -> tuple[float, list]:
    hist = res.get("pred_hist") or []
    order = sorted(range(len(hist)), key=lambda k: -hist[k])
    names = res.get("class_names") or [str(k) for k in range(10)]
    return (sum(hist[k] for k in order[:2]) / max(1, sum(hist)), [names[k] for k in order[:2]])


def _adherence_at(metrics: list, steps: int) -> float | None:
    """The snapshot monitor's label adherence at the last epoch ending by optimiser step `steps`."""
    best = None
    for m in metrics:
        if m.get("kind") == "epoch" and "adherence" in m and m["step"] <= steps:
            best = m["adherence"]
    return best


def unet_input_two_classes(s: dict, r: dict, metrics: dict) -> Finding:
    claim = "Class conditioning only concatenated to input once: only generates two classes regardless of what is asked for."
    ui, ub = r.get("unet-input"), r.get("unet-block")
    if not ui or ui.get("cond_acc") is None:
        return Finding("d", claim, NOT_MEASURED,
                       "needs an evaluated unet-input")
    share, top = _top2_share(ui)
    block_acc = ub.get("cond_acc") if ub else None
    # unet-block trains longer in the standard budget: compare at equal images with the monitor too
    same = _adherence_at(metrics.get("unet-block", []), s["unet-input"]["steps"]) if ub else None
    if share >= TWO_CLASSES:
        verdict = REPRODUCED
    elif block_acc is not None and ui["cond_acc"] <= block_acc - 2 * ACC_CLEAR:
        verdict = PARTLY
    else:
        verdict = NOT_REPRODUCED
    ev = (f"unet-input: cond_acc {ui['cond_acc']:.3f}, its two most generated classes ({', '.join(top)}) take "
          f"{share:.0%} of all samples (two classes only: >= {TWO_CLASSES:.0%}; uniform: 20%), class entropy "
          f"{ui.get('pred_entropy', 0):.2f} nats (uniform 2.30)")
    if block_acc is not None:
        ev += f"; unet-block: cond_acc {block_acc:.3f} on {s['unet-block']['train_images']:,} images"
        if same is not None:
            ev += f" (snapshot adherence {same:.2f} at unet-input's {s['unet-input']['train_images']:,})"
    return Finding("d", claim, verdict, ev, ["confusion-unets"],
                   "The write-up's models trained ~20 epochs of 60k images; a failure that needs that long cannot show here.")


def cbn_improves(s: dict, r: dict, spread: dict | None = None) -> Finding:
    claim = "Adding it [the class] as an input to the conditional batchnorm improves things."
    ui, uc = r.get("unet-input"), r.get("unet-cbn")
    if not (ui and uc) or ui.get("cond_acc") is None or uc.get("cond_acc") is None:
        return Finding("e", claim, NOT_MEASURED,
                       "needs evaluated unet-input and unet-cbn")
    d_acc = uc["cond_acc"] - ui["cond_acc"]
    ratio = _ratio(_fd(ui), _fd(uc))
    acc_seeds = seed_verdict(spread or {}, "unet-input", "unet-cbn", "cond_acc", lower_is_better=False)
    fd_seeds = seed_verdict(spread or {}, "unet-input", "unet-cbn", "fd", lower_is_better=True)
    if acc_seeds is not None and fd_seeds is not None:      # measured noise decides
        better, worse = [acc_seeds == 1, fd_seeds == 1], [acc_seeds == -1, fd_seeds == -1]
    else:
        better = [d_acc >= ACC_CLEAR, ratio is not None and ratio >= FD_CLEAR]
        worse = [d_acc <= -ACC_CLEAR, ratio is not None and ratio <= 1 / FD_CLEAR]
    verdict = (REPRODUCED if any(better) and not any(worse) else PARTLY if any(better) else NOT_REPRODUCED)
    ev = (f"cond_acc {ui['cond_acc']:.3f} (input only) vs {uc['cond_acc']:.3f} (+ conditional BatchNorm), fd "
          f"{_fmt(_fd(ui))} vs {_fmt(_fd(uc))}, on the same {s['unet-cbn']['train_images']:,} images"
          + seed_note(spread or {}, "unet-input", "unet-cbn", key="cond_acc", spec=".3f")
          + seed_note(spread or {}, "unet-input", "unet-cbn"))
    return Finding("e", claim, verdict, ev,
                   ["confusion-unets", "monitor-unets"])


def collapse_epochs(metrics: list) -> list[int]:
    """Epochs whose snapshots show a symptom of the collapse monitor (monitor.collapse_symptoms)
    after at least one healthy epoch."""
    out, healthy = [], False
    for m in metrics:
        if m.get("kind") != "epoch" or "diversity" not in m:
            continue
        sick = bool(collapse_symptoms(m, NUM_CLASSES))
        if sick and healthy:
            out.append(m["epoch"])
        healthy = healthy or not sick
    return out


def unet_collapse(s: dict, metrics: dict, studies: dict) -> Finding:
    claim = ("Some Unet setups worked okay for the first few epochs, but then only ever produced the same blob "
             "regardless of sampling or class label (epochs 5 to 25).")
    seen, found = [], []
    for p in ("unet-input", "unet-cbn", "unet-block"):
        if p in metrics:
            epochs = [m for m in metrics[p] if m.get("kind") == "epoch"]
            seen.append(f"{p} {len(epochs)} epochs ({s[p]['train_images']:,} images)")
            found += [f"{p} epoch {e}" for e in collapse_epochs(metrics[p])]
    study = studies.get("collapse")
    if study:
        for name, run in study.get("runs", {}).items():
            seen.append(f"{name} {run.get('epochs')} epochs ({run.get('images', 0):,} images, the collapse study)")
            if run.get("collapsed_at"):
                found.append(f"{name} epoch {run['collapsed_at']}")
    if not seen:
        return Finding("f", claim, NOT_MEASURED, "no UNet runs")
    longest = max([len([m for m in metrics[p] if m.get("kind") == "epoch"]) for p in metrics if p.startswith("unet")]
                  + [r.get("epochs", 0) for r in (study or {}).get("runs", {}).values()])
    if found:
        verdict, ev = REPRODUCED, "collapse after healthy epochs: " + "; ".join(found)
    else:
        verdict = NOT_REPRODUCED if longest >= 25 else NOT_MEASURED
        ev = (f"no collapse (diversity < {DIVERSITY_FLOOR}, label separation < {SEPARATION_FLOOR} or <= 2 classes "
              "after a healthy epoch) in: "
              + "; ".join(seen))
    if study and study.get("conclusion"):
        ev += ". " + study["conclusion"][:1].upper() + study["conclusion"][1:]   # a sentence of its own
    caveat = "" if longest >= 25 else (f"The longest UNet run here has {longest} epochs; the write-up's collapse came "
                                       "after epoch 5 and was complete by 25: run `ddpmlab reproduce --budget standard`.")
    return Finding("f", claim, verdict, ev,
                   ["monitor-unets", "snapshots-unets"] + (["study-collapse"] if study else []), caveat)


def initialisation(studies: dict) -> Finding:
    claim = "The loss curve [of the very basic model] maybe shows some suboptimal initialization."
    st = studies.get("init")
    if not st:
        return Finding("g", claim, NOT_MEASURED,
                       "run `ddpmlab reproduce` (its init study)")
    v = st["variants"]
    ours, default = v.get("ddpmlab"), v.get("pytorch-default")
    # a short study (the quick budget's) has no loss at the later steps: name only those it reached
    parts = [f"{name}: loss " + ", ".join(f"{x:.3f} at step {k}" for k, x in d["loss_at"].items() if x is not None)
             for name, d in v.items()]
    verdict = NOT_REPRODUCED
    if ours and default:
        early = _ratio(default["loss_at"].get("10"), ours["loss_at"].get("10"))
        late = _ratio(default["loss_at"].get("100"), ours["loss_at"].get("100"))
        if early and early >= 1.2:
            verdict = REPRODUCED if late and late >= LOSS_CLEAR else PARTLY
    ev = "; ".join(parts) + f" (mean of {len(st.get('seeds', []))} seeds, {st.get('steps')} steps)"
    return Finding("g", claim, verdict, ev, ["study-init"],
                   "ddpmlab zero-initialises every residual branch's last convolution; the write-up's network did not.")


def good_bugs(studies: dict) -> Finding:
    claim = ("Good bugs: tensors are CoW, so you need to copy them to keep residuals; pooling as first step in a "
             "Unet block did not work.")
    st = studies.get("good_bugs")
    if not st:
        return Finding("h", claim, NOT_MEASURED,
                       "run `ddpmlab reproduce` (its good-bugs study)")
    v = st["variants"]
    # each bug against the network identical but for it: the alias against its out-of-place control
    # (when the study has one), pooling first against the correct network
    against = {"residual-inplace": "residual-copy" if "residual-copy" in v else "ddpmlab", "pool-first": "ddpmlab"}
    parts, hurt = [], []
    for name, d in v.items():
        parts.append(f"{name}: loss {_fmt(d.get('final_loss'), '.4f')}, fd {_fmt(d.get('fd'))}, "
                     f"cond_acc {_fmt(d.get('cond_acc'), '.3f')}")
        base = v.get(against.get(name, ""), {})
        if base:
            r = _ratio(d.get("fd"), base.get("fd"))
            lr = _ratio(d.get("final_loss"), base.get("final_loss"))
            hurt.append(bool((r and r >= FD_CLEAR) or (lr and lr >= LOSS_CLEAR)))
    verdict = REPRODUCED if hurt and all(hurt) else PARTLY if any(hurt) else NOT_REPRODUCED
    return Finding("h", claim, verdict,
                   "; ".join(parts) + f" ({st.get('images', 0):,} training images each, same seed and data order)",
                   ["study-good_bugs", "study-good_bugs-samples"])


def all_findings(summaries: dict, results: dict, metrics: dict, studies: dict,
                 spread: dict | None = None) -> list[Finding]:
    """spread: preset -> {"fd": [...], "cond_acc": [...]} over training seeds (`reproduce --seeds
    K`); with 2 or more seeds of both sides, the comparisons of (a), (b) and (e) are decided by the
    measured seed-to-seed noise instead of the fixed thresholds."""
    return [noise_conditioning(summaries, results, spread), spatial_encoding(summaries, results, spread),
            class_embedding(summaries, results), unet_input_two_classes(summaries, results, metrics),
            cbn_improves(summaries, results, spread), unet_collapse(summaries, metrics, studies),
            initialisation(studies), good_bugs(studies)]
