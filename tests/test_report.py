"""reproduce + report on a tiny budget: runs, skip-on-rerun, a report with every section."""
import json
import shutil

import pytest
import torch

from ddpmlab import cli, reproduce as R
from ddpmlab.run import load_config, resolve_run

TINY_BUDGET = R.Budget({"resnet": {"channels": 8, "num_blocks": 2, "time_dim": 16},
                       "unet": {"channels": 8, "channel_mults": (1, 2), "blocks_per_level": 1, "time_dim": 16}},
                      {"epochs": 2, "subset": 128, "batch_size": 32, "snapshot_steps": 2, "snapshot_per_class": 2,
                       "device": "cpu"},
                      {"n": 40, "sampler": "ddim", "steps": 3}, "A tiny budget.",
                      per_preset={"unet-input": {"sampling": {"sampler": "ddim", "steps": 2, "guidance": 0.5}}},
                      studies={"init": {"steps": 3, "seeds": 1, "batch": 16, "model": {"channels": 8, "num_blocks": 2}}})


@pytest.fixture
def tiny_budget(monkeypatch):
    monkeypatch.setitem(R.BUDGETS, "quick", TINY_BUDGET)


def test_reproduce_writes_report_and_skips_finished_runs(tmp_path, tiny_budget, caplog):
    presets = ["resnet-basic", "resnet-class", "unet-input"]
    md = R.reproduce(tmp_path, "quick", presets=presets, progress=False)
    text = md.read_text()
    sections = headings(text)
    for heading in ("Very basic model", "Class embeddings", "The generation process", "UNet: class concatenated"):
        assert any(heading in h for h in sections), sections
    results = tables(text)["Results"][0]
    assert "fd floor" in results[0] and {r["preset"] for r in results} == set(presets)
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 8 and "src='figures" not in html   # self-contained
    shown = images_in_a_browser(tmp_path / "report.html")
    assert len(shown) >= 8 and all(ok for ok, _ in shown), shown     # every picture of the report loads
    for p in presets:
        evals = sorted((tmp_path / "runs" / p / "eval").glob("*.json"))
        assert [json.loads(e.read_text())["n"] for e in evals] == [40] * (2 if p == "unet-input" else 1)
    # a run with sampling settings of its own is also scored at them, in a table of its own
    assert json.loads((tmp_path / "runs" / "unet-input" / "config.json").read_text())["sampling"]["guidance"] == 0.5
    own = tables(text)["At each model's own sampling"][0]      # then the wall-time table, no heading of its own
    assert [(r["preset"], r["sampler"], r["steps"], r["guidance"], r["spacing"], r["guided for t in"],
             r["network evaluations"]) for r in own] == [("unet-input", "ddim", "2", "0.5", "trailing", "every step", "4")]
    # the findings: a verdict for each of (a)-(h), the deciding figures of those measured
    claims = tables(text)["The write-up's findings, checked"][0]
    assert [r[""] for r in claims] == [f"({k})" for k in "abcdefgh"]
    verdicts = {r[""][1]: r["verdict"] for r in claims}
    assert any(h.startswith("(c) Class embeddings make classes askable: " + verdicts["c"]) for h in sections)
    assert any(h.startswith("(d) UNet with the class at the input only") for h in sections) and "cond_acc" in text
    assert "finding-confusion-unets.png" in text and (tmp_path / "figures" / "finding-confusion-unets.png").is_file()
    # the budget's studies run inside reproduce, and their findings enter the report
    init = json.loads((tmp_path / "studies" / "init.json").read_text())
    assert init["steps"] == 3 and init["command"] == "ddpmlab reproduce --budget quick"
    assert verdicts["g"] != "not measured" and any(h.startswith("(g) ") for h in sections)
    assert "finding-study-init.png" in text
    timing = json.loads((tmp_path / "timing.json").read_text())["seconds"]
    assert set(timing) == {f"train {p}" for p in presets} | {"study init", "evaluate and report"}
    # interrupted or not, a second call trains nothing, redoes no study and reuses the cached evaluations
    mtimes = {p: (tmp_path / "runs" / p / "checkpoint.json").stat().st_mtime for p in presets}
    study_mtime = (tmp_path / "studies" / "init.json").stat().st_mtime
    caplog.set_level("INFO")
    R.reproduce(tmp_path, "quick", presets=presets, progress=False)
    assert "resnet-basic: finished earlier, skipped" in caplog.text
    assert mtimes == {p: (tmp_path / "runs" / p / "checkpoint.json").stat().st_mtime for p in presets}
    assert (tmp_path / "studies" / "init.json").stat().st_mtime == study_mtime
    assert json.loads((tmp_path / "timing.json").read_text())["seconds"]["train resnet-basic"] == \
        timing["train resnet-basic"]                    # a skipped run adds no training time


def headings(md: str) -> list[str]:
    """The report's headings, without their #s."""
    return [line.lstrip("#").strip() for line in md.splitlines() if line.startswith("#")]


def tables(md: str) -> dict[str, list[list[dict]]]:
    """heading -> the tables under it, each a list of rows {column: cell}: what a reader sees,
    whatever the Markdown's spacing."""
    out, heading, lines = {}, "", md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        elif line.startswith("|") and i + 1 < len(lines) and set(lines[i + 1].replace("|", "").strip()) <= set("-: "):
            cells = lambda row: [c.strip() for c in row.strip().strip("|").split("|")]   # noqa: E731
            header, rows = cells(line), []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(dict(zip(header, cells(lines[i]))))
                i += 1
            out.setdefault(heading, []).append(rows)
            continue
        i += 1
    return out


def images_in_a_browser(page) -> list[tuple[bool, int]]:
    """(loaded, natural width) of every <img> of the page, as headless Chromium shows it."""
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"):
        opts.add_argument(flag)
    from selenium.webdriver.chrome.service import Service
    driver = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))
    try:
        driver.get(page.resolve().as_uri())
        return driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete && i.naturalWidth > 0, i.naturalWidth]);")
    finally:
        driver.quit()


def test_reproduce_resumes_an_unfinished_run(tmp_path, tiny_budget):
    from ddpmlab.train import train
    run = tmp_path / "runs" / "resnet-basic"
    train(run, TINY_BUDGET.run_config("resnet-basic", max_steps=3), progress=False)
    R.reproduce(tmp_path, "quick", presets=["resnet-basic"], progress=False)
    epochs = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in epochs if m["kind"] == "epoch"] == [1, 2]


def test_report_cli_rejects_non_runs(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path), "--out", str(tmp_path / "rep")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_report_of_a_shipped_model_draws_its_samples_and_process(tmp_path):
    """A shipped model has no sample grid or process figure on disk: the report draws them."""
    assert cli.main(["report", "fmnist", "--no-eval", "--out", str(tmp_path), "--quiet"]) == 0
    figures = sorted(p.name for p in (tmp_path / "figures").iterdir())
    preset = load_config(resolve_run("fmnist")).preset    # figures are named by the preset
    assert f"{preset}-samples.png" in figures and f"{preset}-process.png" in figures, figures
    # titled for its model and the preset its card names, not as the regenerated write-up
    title = (tmp_path / "REPORT.md").read_text().splitlines()[0]
    assert title == "# ddpmlab report: fmnist (preset cpu)" and preset == "cpu"
    md = (tmp_path / "REPORT.md").read_text()
    assert f"{preset}-samples.png" in md and f"{preset}-process.png" in md


def test_reproduce_with_two_seeds_reports_the_spread(tmp_path, tiny_budget):
    """--seeds 2: every design is trained again from seed 1 (its own run directory, other weights),
    scored alike, and the report gives each score's mean and spread across the seeds."""
    from ddpmlab import checkpoint
    presets = ["resnet-noise", "resnet-spatial"]
    md = R.reproduce(tmp_path, "quick", presets=presets, progress=False, seeds=2)
    for p in presets:
        a = checkpoint.load_tensors(tmp_path / "runs" / p, "model.safetensors")
        b = checkpoint.load_tensors(tmp_path / "runs" / f"{p}-seed1", "model.safetensors")
        assert load_config(tmp_path / "runs" / f"{p}-seed1").train.seed == 1
        assert any(not torch.equal(a[k], b[k]) for k in a)               # another initialisation
    text = md.read_text()
    spread = next(t for t in tables(text)["Results"] if t and "seeds" in t[0])
    assert [(r["preset"], r["seeds"]) for r in spread] == [(p, "2") for p in presets]
    assert all("+-" in r["fd"] for r in spread) and "reproduce --budget quick --seeds 2" in text
    assert "over 2 training seeds" in text                                  # (b) decided by the measured noise
