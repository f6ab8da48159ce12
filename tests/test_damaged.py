"""Damaged or odd input is one line, `ddpmlab: error: ...`, exit code 2, naming the file and the
fix; never a traceback."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from ddpmlab import cli
from ddpmlab.recipes import make_run_config
from ddpmlab.train import train

TINY = {"channels": 8, "num_blocks": 2, "time_dim": 16}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fmnist_small):
    run = tmp_path_factory.mktemp("trained") / "run"
    rc = make_run_config("resnet-class", TINY, epochs=1, batch_size=32, snapshot_steps=0, device="cpu")
    train(run, rc, data=fmnist_small.subset(64), progress=False)
    return run


def ckpt_file(run, name):
    return run / json.loads((run / "checkpoint.json").read_text())["dir"] / name


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def old_layout(run):
    """The first layout: files at the top of the run directory, no manifest."""
    d = run / json.loads((run / "checkpoint.json").read_text())["dir"]
    for f in d.iterdir():
        f.rename(run / f.name)
    d.rmdir()
    (run / "checkpoint.json").unlink()


def folder(tmp, kind):
    root = tmp / "images"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / cls / f"{i}.png")
    if kind == "unreadable":
        (root / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    else:
        (root / "c").mkdir()
    return root


TRAIN_ARGS = ["--preset", "resnet-class", "--epochs", "2", "--batch-size", "32", "--snapshot-steps", "0",
              "--device", "cpu", "--quiet"]

CASES = {
    # case: (how to damage the copied run, command, what the one line must say)
    "state.pt truncated": (lambda r: truncate(ckpt_file(r, "state.pt")), ["train", "--out", "{run}", "--resume", *TRAIN_ARGS],
                           ["state.pt is damaged", "start over"]),
    "state.pt truncated (first layout)": (lambda r: (old_layout(r), truncate(r / "state.pt")),
                                          ["train", "--out", "{run}", "--resume", *TRAIN_ARGS],
                                          ["state.pt is damaged", "start over"]),
    "state.pt not a state (first layout)": (lambda r: (old_layout(r), (r / "state.pt").write_bytes(b"junk" * 100)),
                                            ["train", "--out", "{run}", "--resume", *TRAIN_ARGS],
                                            ["state.pt is damaged or not a ddpmlab training state"]),
    "model weights truncated": (lambda r: truncate(ckpt_file(r, "model.safetensors")),
                                ["train", "--out", "{run}", "--resume", *TRAIN_ARGS], ["model.safetensors is damaged"]),
    "EMA weights truncated, sample": (lambda r: truncate(ckpt_file(r, "ema.safetensors")),
                                      ["sample", "{run}", "--n", "2", "--steps", "2", "--npz", "{tmp}/s.npz"],
                                      ["ema.safetensors is damaged", "restore"]),
    "EMA weights truncated (first layout)": (lambda r: (old_layout(r), truncate(r / "ema.safetensors")),
                                             ["sample", "{run}", "--n", "2", "--steps", "2", "--npz", "{tmp}/s.npz"],
                                             ["ema.safetensors is damaged or not a safetensors file"]),
    "checkpoint file missing": (lambda r: ckpt_file(r, "ema.safetensors").unlink(),
                                ["sample", "{run}", "--n", "2", "--npz", "{tmp}/s.npz"], ["is missing", "torn"]),
    "manifest damaged": (lambda r: truncate(r / "checkpoint.json"), ["sample", "{run}", "--n", "2", "--npz", "{tmp}/s.npz"],
                         ["checkpoint.json is damaged"]),
    "config.json damaged": (lambda r: truncate(r / "config.json"), ["sample", "{run}", "--n", "2", "--npz", "{tmp}/s.npz"],
                            ["config.json is damaged"]),
    "config.json of a newer ddpmlab": (lambda r: (r / "config.json").write_text(json.dumps(
                                           {**json.loads((r / "config.json").read_text()), "format": 99})),
                                       ["sample", "{run}", "--n", "2", "--npz", "{tmp}/s.npz"],
                                       ["written by a newer ddpmlab", "upgrade"]),
    "checkpoint of a newer ddpmlab": (lambda r: (r / "checkpoint.json").write_text(json.dumps(
                                          {**json.loads((r / "checkpoint.json").read_text()), "format": 99})),
                                      ["train", "--out", "{run}", "--resume", *TRAIN_ARGS], ["newer ddpmlab", "upgrade"]),
    "config.json with an unknown key": (lambda r: (r / "config.json").write_text(json.dumps(
                                            {**json.loads((r / "config.json").read_text()),
                                             "model": {**json.loads((r / "config.json").read_text())["model"], "widht": 3}})),
                                        ["sample", "{run}", "--n", "2", "--npz", "{tmp}/s.npz"],
                                        ["unknown ModelConfig keys ['widht']", "another ddpmlab version"]),
    "metrics.jsonl damaged mid-file": (lambda r: (r / "metrics.jsonl").write_text("{oops\n" + (r / "metrics.jsonl").read_text()),
                                       ["train", "--out", "{run}", "--resume", *TRAIN_ARGS], ["metrics.jsonl: line 1 is damaged"]),
    "npz truncated": (lambda r: (cli.main(["sample", str(r), "--n", "4", "--steps", "2", "--npz", str(r / "s.npz"), "--quiet"]),
                                 truncate(r / "s.npz", 0.6)),
                      ["evaluate", "{run}/s.npz"], ["s.npz", "truncated"]),
    "npz of object arrays": (lambda r: np.savez(r / "s.npz", arr_0=np.array([None, 1], dtype=object)),
                             ["evaluate", "{run}/s.npz"], ["object arrays", "uint8 images"]),
    "npz of RGB images": (lambda r: np.savez(r / "s.npz", arr_0=np.zeros((4, 28, 28, 3), np.uint8)),
                          ["evaluate", "{run}/s.npz"], ["(colour)", "grey 28x28 FashionMNIST-like"]),
    "image folder with an unreadable file": (lambda r: folder(r, "unreadable"),
                                             ["train", "--out", "{tmp}/f", "--data", "{run}/images", *TRAIN_ARGS],
                                             ["broken.png", "--skip-unreadable"]),
    "image folder with an empty class folder": (lambda r: folder(r, "empty"),
                                                ["train", "--out", "{tmp}/f", "--data", "{run}/images", *TRAIN_ARGS],
                                                ["images/c holds no jpg/png images", "remove it"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_input_is_one_line_naming_file_and_fix(case, trained, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    damage, argv, needles = CASES[case]
    damage(run)
    capsys.readouterr()
    argv = [a.replace("{run}", str(run)).replace("{tmp}", str(tmp_path)) for a in argv]
    assert cli.main(argv) == 2, case
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("ddpmlab:")]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("ddpmlab: error: ")
    print(f"\n| {case} | `{' '.join(argv[:1])}` | {lines[0].replace(str(tmp_path), '…')} |")
    for needle in needles:
        assert needle in lines[0], (case, lines[0])


def test_a_torn_last_line_of_metrics_is_dropped_by_resume_and_report(trained, tmp_path, capsys, fmnist_small):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "step", "step": 9, "lo')                  # a crash in the middle of a line
    train(run, resume=True, epochs=2, data=fmnist_small.subset(64), progress=False)
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "epoch"]
    assert epochs == [1, 2]
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "ep')
    assert cli.main(["report", str(run), "--no-eval", "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "REPORT.md").is_file()


def test_evaluate_reads_grey_images_without_a_channel_axis(tmp_path, fmnist_small, monkeypatch):
    from ddpmlab.samplefile import load_samples
    x = fmnist_small.images[:16, 0].numpy()                        # (N, 28, 28) uint8
    np.savez(tmp_path / "g.npz", arr_0=x, arr_1=fmnist_small.labels[:16].numpy())
    images, labels, _ = load_samples(tmp_path / "g.npz")
    assert images.shape == (16, 1, 28, 28) and np.array_equal(images[:, 0].numpy(), x)
    assert labels.tolist() == fmnist_small.labels[:16].tolist()
