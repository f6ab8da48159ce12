"""`ddpmlab serve`: the page samples what `ddpmlab sample` samples, says what the command line says
about bad input, and works in a real browser (headless Chromium) without leaving 127.0.0.1.

DDPMLAB_SCREENSHOT=PATH saves the page after its first sample (the README's screenshot):
    DDPMLAB_SCREENSHOT=docs/serve.png pytest tests/test_serve.py -k browser -s
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch

from ddpmlab import cli, plots
from ddpmlab.data import to_uint8
from ddpmlab.run import PRETRAINED_DIR


def serve():
    pytest.importorskip("gradio")
    from ddpmlab import serve as S
    return S


def test_serve_without_gradio_says_in_one_line_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)        # `import gradio` raises ImportError
    assert cli.main(["serve", "fmnist"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'ddpmlab[ui]'" in err and err.startswith("ddpmlab: error:")


def test_the_command_line_never_imports_gradio_or_torch_for_help():
    code = ("import sys; from ddpmlab import cli; cli.build_parser().format_help(); "
            "print(sorted(m for m in ('gradio', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def test_the_page_samples_what_ddpmlab_sample_samples(tmp_path):
    S = serve()
    npz = tmp_path / "s.npz"
    assert cli.main(["sample", "fmnist", "--label", "3", "--n", "2", "--seed", "7", "--npz", str(npz), "--quiet"]) == 0
    d = S.run_defaults("fmnist")
    _, text, x, y = S.sample_view(S.Models(), "fmnist", "3", 2, 7, d["sampler"], d["steps"], d["guidance"],
                                  d["autoguidance"])
    with np.load(npz) as z:
        assert np.array_equal(plots.to_hwc_uint8(to_uint8(x)), z["arr_0"])
        assert z["arr_1"].tolist() == y.tolist() == [3, 3]
    assert "2 images of Dress" in text


def test_the_same_seed_differs_from_another(tmp_path):
    """The twin of the equality above: it would hold for any images if sampling ignored the seed."""
    S = serve()
    m, d = S.Models(), S.run_defaults("fmnist-v1")
    args = ("fmnist-v1", "3", 1)
    a = S.sample_view(m, *args, 7, d["sampler"], 2, d["guidance"], 0)[2]
    b = S.sample_view(m, *args, 8, d["sampler"], 2, d["guidance"], 0)[2]
    assert not torch.equal(a, b)


def _cli_error(capsys, argv) -> str:
    assert cli.main(argv) == 2
    return capsys.readouterr().err.strip()


def test_bad_input_is_the_command_lines_one_line(tmp_path, capsys):
    S = serve()
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.json").write_text("{")
    assert str(damaged) in S.find_runs([str(damaged)]).values()        # listed; says what is wrong when picked
    with pytest.raises(Exception) as e:
        S.run_defaults(str(damaged))
    assert S.error_line(e.value) == _cli_error(capsys, ["sample", str(damaged), "--quiet"])
    d = S.run_defaults("fmnist-v1")
    with pytest.raises(Exception) as e:
        S.sample_view(S.Models(), "fmnist-v1", "12", 1, 0, d["sampler"], d["steps"], d["guidance"], 0)
    assert S.error_line(e.value) == _cli_error(capsys, ["sample", "fmnist-v1", "--label", "12", "--n", "1", "--quiet"])
    assert "outside 0..9" in S.error_line(e.value)
    with pytest.raises(Exception) as e:
        S.compare_view(S.Models(), ["fmnist"], {}, "all", 1, 0)
    assert S.error_line(e.value) == "ddpmlab: error: compare 2 to 4 runs, 1 chosen"


def a_run_with_snapshots(root: Path) -> Path:
    """The shipped fmnist-v1 as a run directory, with per-epoch snapshots of 2 epochs and an
    evaluation cached for its weights."""
    from ddpmlab import checkpoint
    run = root / "run"
    shutil.copytree(PRETRAINED_DIR / "fmnist-v1", run)
    g = torch.Generator().manual_seed(0)
    for epoch in (1, 2):
        for k in range(10):
            strip = torch.rand((8, 1, 28, 28), generator=g) * 2 - 1
            plots.save_strip(strip, run / "snapshots" / f"epoch{epoch}-class{k}.png")
    ev = {"fd": 1.5, "fd_floor": 0.5, "cond_acc": 0.9, "classifier_test_acc": 0.93, "n": 1000, "seed": 0,
          "sampler": "dpm++2m", "steps": 10, "guidance": 0.3,
          "cache_key": {"weights_sha256": checkpoint.sha256(run, "ema.safetensors")}}
    (run / "eval").mkdir()
    (run / "eval" / "dpm++2m-10steps-g0.3-n1000-seed0.json").write_text(json.dumps(ev))
    stale = {**ev, "fd": 9.0, "n": 5000, "cache_key": {"weights_sha256": "0" * 64}}  # other weights: not shown
    (run / "eval" / "old.json").write_text(json.dumps(stale))
    return run


def test_training_view_and_cached_evaluation(tmp_path):
    S = serve()
    run = a_run_with_snapshots(tmp_path)
    listed = S.find_runs([], runs_dir=tmp_path)              # no RUN given: the shipped models, then RUNS_DIR/*
    assert list(listed.values()) == ["fmnist", "fmnist-fast", "fmnist-v1", str(run)]
    view = S.training_view(str(run), tmp_path / "work")
    assert list(view["snapshots"]) == [1, 2] and view["loss"] is not None and view["monitor"] is not None
    assert view["table"].count("\n| ") >= 2                            # a row per epoch of metrics.jsonl
    img = S.snapshot_image(run, 2)
    assert img.shape == (10 * ((28 + 4) * 2 + 4), (8 * 30 + 2) * 2)  # 10 class strips (2x) with gaps
    assert S.snapshot_caption(view, 2).startswith("Epoch 2")
    assert S.cached_evaluation(str(run))["fd"] == 1.5
    assert S.cached_evaluation("fmnist") is None                       # none cached in this session's cache


# --------------------------------------------------------------------------- in a real browser

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """`ddpmlab serve` as a subprocess on a free port: the shipped models, a run with snapshots and
    a damaged run. Always stopped."""
    serve()
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    run = a_run_with_snapshots(tmp_path)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.json").write_text("{")
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    proc = subprocess.Popen([sys.executable, "-m", "ddpmlab", "serve", "fmnist", "fmnist-v1", str(run), str(damaged),
                             "--port", str(port)], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.time() < deadline, f"no answer in 120 s:\n{(tmp_path / 'serve.log').read_text()}"
            time.sleep(0.3)
        yield {"url": url, "run": run, "damaged": damaged, "log": tmp_path / "serve.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def chromium(profile: Path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1280,1000"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})   # every request the page makes
    return webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))


# Clicks `button` and records when the <img> inside `root` shows a new picture, decoded.
CLICK_TO_IMAGE = """
const [rootSel, buttonSel] = arguments;
const root = document.querySelector(rootSel);
const old = (root.querySelector('img') || {}).src || '';
window.__shown = null;
if (window.__watch) window.__watch.disconnect();      // a watch left by an earlier click
const check = () => {
  const img = root.querySelector('img');
  if (!img || img.src === old || window.__shown !== null) return;
  const done = () => {
    if (window.__shown === null && img.naturalWidth > 0) { window.__shown = performance.now() - t0; watch.disconnect(); }
  };
  if (img.complete) done(); else img.addEventListener('load', done, {once: true});
};
const watch = window.__watch = new MutationObserver(check);
watch.observe(root, {subtree: true, childList: true, attributes: true});
const t0 = performance.now();
document.querySelector(buttonSel).click();
"""


def test_serve_in_a_browser(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    driver = chromium(tmp_path / "chromium-profile")
    wait = WebDriverWait(driver, 60, poll_frequency=0.05)
    js = driver.execute_script

    def img(sel: str) -> list:
        """[src, naturalWidth, naturalHeight] of the first decoded <img> under sel, or None."""
        return js("const i = document.querySelector(arguments[0] + ' img'); return i && i.complete && "
                  "i.naturalWidth > 0 ? [i.src, i.naturalWidth, i.naturalHeight] : null;", sel)

    def text(sel: str) -> str:
        return js("const e = document.querySelector(arguments[0]); return e ? e.innerText : '';", sel)

    def click_choice(group: str, name: str) -> None:
        driver.find_element(By.XPATH, f"//*[@id='{group}']//label[.//span[normalize-space()='{name}']]").click()

    def tab(name: str) -> None:
        driver.find_element(By.XPATH, f"//button[@role='tab' and normalize-space()='{name}']").click()

    try:
        driver.get(server["url"])
        wait.until(lambda d: "network evaluations" in text("#nfe"))

        # Sample at the defaults (10 images, all classes): click to decoded image
        js(CLICK_TO_IMAGE, "#sample-image", "#sample-button")
        ms = wait.until(lambda d: js("return window.__shown;"))
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "?") if Path("/proc/cpuinfo").is_file() else "?"
        print(f"\nserve: 10 images of fmnist at its defaults, click to decoded image {ms:.0f} ms "
              f"({os.cpu_count()} cores, {cpu}; load average {os.getloadavg()[0]:.1f}); "
              f"the page: {text('#sample-info')}")
        if os.environ.get("DDPMLAB_SCREENSHOT"):
            Path(os.environ["DDPMLAB_SCREENSHOT"]).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(os.environ["DDPMLAB_SCREENSHOT"])

        # class 3, 2 images: the grid decodes at the size of 2 images
        click_choice("sample-class", "3: Dress")
        box = driver.find_element(By.CSS_SELECTOR, "#sample-n input[type=number]")
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys("2", Keys.TAB)
        wait.until(lambda d: js("return document.querySelector('#sample-n input[type=range]').value;") == "2")
        before = img("#sample-image")[0]
        driver.find_element(By.CSS_SELECTOR, "#sample-button").click()
        wait.until(lambda d: (img("#sample-image") or [before])[0] != before)
        src, width, height = img("#sample-image")
        assert width == (2 * 30 + 2) * 4 and height == 32 * 4, (width, height)    # plots.tile, GRID_SCALE 4
        assert "2 images of Dress" in text("#sample-info")

        # Process: generate, then scrub three steps on
        tab("Process")
        driver.find_element(By.CSS_SELECTOR, "#process-button").click()
        wait.until(lambda d: img("#process-image") and "step 1 of" in text("#process-caption"))
        first = img("#process-image")[0]
        steps = int(text("#process-caption").split(" of ")[1].split(":")[0])
        slider = driver.find_element(By.CSS_SELECTOR, "#process-step input[type=range]")
        slider.send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
        wait.until(lambda d: f"step 4 of {steps}" in text("#process-caption"))
        wait.until(lambda d: (img("#process-image") or [first])[0] != first)
        slider.send_keys(Keys.END)
        wait.until(lambda d: "final image" in text("#process-caption"))
        assert img("#process-strip")

        # Compare: two shipped models side by side
        tab("Compare")
        click_choice("compare-runs", "fmnist (shipped)")
        click_choice("compare-runs", "fmnist-v1 (shipped)")
        driver.find_element(By.CSS_SELECTOR, "#compare-button").click()
        wait.until(lambda d: "fmnist-v1 (shipped)" in text("#compare-table"))
        wait.until(lambda d: js("return Array.from(document.querySelectorAll('#compare-gallery img'))"
                                ".filter(i => i.complete && i.naturalWidth > 0).length;") >= 2)

        # Training: the run with snapshots
        tab("Training")
        click_choice("training-run", str(server["run"]))
        wait.until(lambda d: img("#training-snapshot") and "Epoch 2" in text("#training-caption"))
        assert img("#training-loss") and img("#training-monitor")

        # a damaged run: the command line's one line, and the server goes on serving
        click_choice("model", str(server["damaged"]))
        wait.until(lambda d: "ddpmlab: error:" in text("body"))
        assert f"{server['damaged'] / 'config.json'} is damaged" in text("body")
        click_choice("model", "fmnist-v1 (shipped)")
        tab("Sample")
        before = img("#sample-image")[0]
        driver.find_element(By.CSS_SELECTOR, "#sample-button").click()
        wait.until(lambda d: (img("#sample-image") or [before])[0] != before)

        # offline: every request of the page went to 127.0.0.1
        urls = set()
        for entry in driver.get_log("performance"):
            m = json.loads(entry["message"])["message"]
            if m["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated"):
                urls.add(m["params"].get("request", m["params"]).get("url", ""))
        remote = sorted(u for u in urls if urlparse(u).scheme in ("http", "https", "ws", "wss")
                        and urlparse(u).hostname != "127.0.0.1")
        assert not remote, remote
        assert any(u.startswith(server["url"]) for u in urls)
    finally:
        driver.quit()
    assert "Traceback" not in server["log"].read_text()
