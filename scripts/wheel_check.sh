#!/usr/bin/env bash
# A regular install works without the source tree: build the wheel, install it into a fresh
# venv, and from a folder outside the checkout sample the shipped model and evaluate the samples.
# Also checks that nothing was written into the installed package. Used by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install --quiet --upgrade pip
"$WORK/venv/bin/pip" install --quiet torch==2.13.0
# build from a copy, so the checkout gets no build/ directory
mkdir "$WORK/src"
tar -cf - --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./runs --exclude=./demo . | tar -xf - -C "$WORK/src"
"$WORK/venv/bin/pip" wheel --quiet --no-deps --wheel-dir "$WORK/dist" "$WORK/src"
"$WORK/venv/bin/pip" install --quiet "$WORK"/dist/ddpmlab-*.whl
PKG=$("$WORK/venv/bin/python" -c "import ddpmlab, os; print(os.path.dirname(ddpmlab.__file__))")
case "$PKG" in "$PWD"*) echo "wheel check: ddpmlab imported from the checkout ($PKG)"; exit 1;; esac
find "$PKG" -type f | sort > "$WORK/before.txt"
mkdir "$WORK/user" && cd "$WORK/user"
"$WORK/venv/bin/ddpmlab" sample fmnist --n 8 --npz s.npz --quiet
"$WORK/venv/bin/ddpmlab" evaluate s.npz --quiet
"$WORK/venv/bin/ddpmlab" sample fmnist --n 4 --steps 4 --quiet      # no --grid/--npz: into the current folder
"$WORK/venv/bin/ddpmlab" process fmnist --steps 4 --quiet           # no --out: into the current folder
"$WORK/venv/bin/ddpmlab" sample fmnist-fast --n 8 --npz fast.npz --quiet  # the two-step student
find "$PKG" -type f -not -name '*.pyc' | sort > "$WORK/after.txt"
if ! diff <(grep -v '\.pyc$' "$WORK/before.txt") "$WORK/after.txt"; then
    echo "wheel check: files were written into the installed package $PKG"; exit 1
fi
ls "$WORK/user"
echo "wheel check: ok (wheel installed outside the checkout, sampled, evaluated, nothing written into $PKG)"
