#!/usr/bin/env bash
# `make test`: the browser tests (the HTML report, `ddpmlab serve`) drive Debian's chromium and
# chromium-driver headless. Install them where apt exists (sudo when not root); elsewhere those
# tests skip and say why, and the rest of the suite runs.
set -uo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "note: no chromium and no apt-get here: the browser tests will be skipped"; exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "note: not root and no sudo: the browser tests will be skipped"; exit 0; fi
fi
echo "installing Debian's chromium and chromium-driver for the browser tests"
if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq chromium chromium-driver >/dev/null 2>&1; then
    $SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null 2>&1
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq chromium chromium-driver >/dev/null 2>&1 \
        || echo "note: could not install chromium: the browser tests will be skipped"
fi
exit 0
