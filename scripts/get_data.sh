#!/usr/bin/env bash
# `make data`: make FashionMNIST available on a fresh machine, from whatever the machine reaches.
# Order: a copy ddpmlab already finds (--data-dir, $DDPMLAB_DATA, the user cache, Debian's folder),
# then Debian's package dataset-fashion-mnist where apt exists (sudo when not root), then the
# official mirror (`ddpmlab data` downloads into the user cache). apt comes first because the
# machines this project targets reach Debian's archive but often not the mirror.
set -uo pipefail
DDPMLAB=${DDPMLAB:-.venv/bin/ddpmlab}

if "$DDPMLAB" data --no-download 2>/dev/null; then exit 0; fi

if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else SUDO="none"; fi
    fi
    if [ "$SUDO" != none ]; then
        echo "FashionMNIST not found: installing Debian's dataset-fashion-mnist"
        if ! $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq dataset-fashion-mnist >/dev/null 2>&1; then
            # a fresh machine has no package lists yet
            $SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null 2>&1
            $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq dataset-fashion-mnist >/dev/null 2>&1
        fi
        if "$DDPMLAB" data --no-download 2>/dev/null; then exit 0; fi
    fi
fi

echo "FashionMNIST: trying the official download"
if "$DDPMLAB" data 2>/dev/null; then exit 0; fi
echo "ddpmlab: error: could not get FashionMNIST: neither Debian's package dataset-fashion-mnist (apt-get) nor the official download (http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/) was reachable; put the four idx files in a folder and set DDPMLAB_DATA to it" >&2
exit 2
