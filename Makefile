# make demo: a tour of the shipped models: samples, generation process, evaluation, report, for
# fmnist at its own sampling settings (16 network evaluations per image) and beside it fmnist-fast,
# its two-evaluation student (`ddpmlab distill`).
# make test: the test suite.
# Both need nothing preinstalled but Python 3.11: they create .venv, install the package, and get
# FashionMNIST (scripts/get_data.sh); `make test` also gets a headless browser for the browser
# tests where apt exists (scripts/get_browser.sh).
PY      := .venv/bin/python
DDPMLAB := .venv/bin/ddpmlab
DEMO    ?= demo

.PHONY: install data browser demo test clean

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: .venv/.installed

data: install
	@DDPMLAB=$(DDPMLAB) bash scripts/get_data.sh

browser:
	@bash scripts/get_browser.sh

demo: data
	$(DDPMLAB) sample fmnist --labels all --n 100 --grid $(DEMO)/samples.png --npz $(DEMO)/samples.npz
	$(DDPMLAB) process fmnist --out $(DEMO)/process.png
	$(DDPMLAB) sample fmnist-fast --labels all --n 100 --grid $(DEMO)/samples-fast.png --npz $(DEMO)/samples-fast.npz
	$(DDPMLAB) process fmnist-fast --out $(DEMO)/process-fast.png
	$(DDPMLAB) evaluate fmnist --n 1000 --out $(DEMO)/eval.json
	$(DDPMLAB) evaluate fmnist-fast --n 1000 --out $(DEMO)/eval-fast.json
	$(DDPMLAB) report fmnist fmnist-fast --n 1000 --out $(DEMO)/report
	@echo "demo done: look at $(DEMO)/samples.png beside $(DEMO)/samples-fast.png, $(DEMO)/process.png beside $(DEMO)/process-fast.png, $(DEMO)/eval.json, $(DEMO)/eval-fast.json and $(DEMO)/report/report.html"
	@echo "to play with the models in a browser: $(DDPMLAB) serve   (it prints the address, 127.0.0.1 only)"

test: data browser
	$(PY) -m pytest

clean:
	rm -rf .venv $(DEMO) .pytest_cache
