# make demo: train a small class-conditional model for a few minutes and draw its figures.
# make test: the test suite. Both create .venv and make sure FashionMNIST is there.
PY      := .venv/bin/python
DDPMLAB := .venv/bin/ddpmlab
DEMO    ?= demo

.PHONY: install data demo test clean

.venv/.installed: pyproject.toml
	python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: .venv/.installed

data: install
	$(DDPMLAB) data

demo: data
	$(DDPMLAB) train --preset resnet-class --set channels=32 --set num_blocks=6 --max-steps 500 \
		--snapshot-steps 20 --out $(DEMO)/resnet-class
	$(DDPMLAB) sample $(DEMO)/resnet-class --labels all --n 80 --steps 50 --grid $(DEMO)/samples.png --npz $(DEMO)/samples.npz
	$(DDPMLAB) process $(DEMO)/resnet-class --out $(DEMO)/process.png
	@echo "demo done: look at $(DEMO)/samples.png, $(DEMO)/process.png, $(DEMO)/resnet-class/loss.png"

test: data
	$(PY) -m pytest

clean:
	rm -rf .venv $(DEMO) .pytest_cache
