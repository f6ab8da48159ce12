"""`make data` on a fresh machine (scripts/get_data.sh): a copy ddpmlab finds, else Debian's package,
else the official download, else one line naming both. Driven with stand-ins for `ddpmlab` and
`apt-get` that record their calls, so each route is taken on any machine, without a network."""
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

DDPMLAB = """#!/bin/sh
echo "ddpmlab $*" >> "$STATE/log"
if [ "$2" = "--no-download" ]; then [ -e "$STATE/installed" ] && echo "FashionMNIST: found"; [ -e "$STATE/installed" ]; exit $?; fi
[ -e "$STATE/online" ] && echo "FashionMNIST: downloaded" && exit 0
echo "ddpmlab: error: could not download" >&2; exit 2
"""
APT = """#!/bin/sh
echo "apt-get $*" >> "$STATE/log"
case "$*" in *install*dataset-fashion-mnist*) [ -e "$STATE/apt_ok" ] && touch "$STATE/installed" && exit 0; exit 100;; esac
exit 0
"""


def get_data(tmp_path, *have) -> tuple[subprocess.CompletedProcess, list[str]]:
    if os.geteuid() != 0:
        pytest.skip("the apt route runs apt-get through sudo when not root; these stand-ins need root")
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    for name, text in (("ddpmlab", DDPMLAB), ("apt-get", APT)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    for flag in have:
        (state / flag).touch()
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STATE": str(state),
           "DDPMLAB": str(bin_dir / "ddpmlab")}
    p = subprocess.run(["bash", str(ROOT / "scripts" / "get_data.sh")], env=env, capture_output=True, text=True,
                       timeout=60)
    log = (state / "log").read_text().splitlines() if (state / "log").exists() else []
    return p, log


def test_data_already_there_installs_nothing(tmp_path):
    p, log = get_data(tmp_path, "installed")
    assert p.returncode == 0 and log == ["ddpmlab data --no-download"]


def test_missing_data_comes_from_debians_package_first(tmp_path):
    p, log = get_data(tmp_path, "apt_ok", "online")
    assert p.returncode == 0, p.stderr
    installs = [line for line in log if line.startswith("apt-get") and "install" in line]
    assert installs and "dataset-fashion-mnist" in installs[0]
    assert "ddpmlab data" not in log                     # never downloaded: apt had it


def test_without_apt_it_downloads(tmp_path):
    p, log = get_data(tmp_path, "online")
    assert p.returncode == 0, p.stderr
    assert log[-1] == "ddpmlab data" and any("dataset-fashion-mnist" in line for line in log)


def test_with_neither_one_line_naming_both(tmp_path):
    p, _ = get_data(tmp_path)
    assert p.returncode == 2
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ddpmlab: error:")
    assert "dataset-fashion-mnist" in err[0] and "download" in err[0]
