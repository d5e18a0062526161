# Two entry points: `make demo` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The torch/torchvision pair that installs from this project's package mirror.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install $(TORCH_PINS)
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# The demo: a short training run, the best shipped weights of nin evaluated, then the shipped nin_xnornet
# evaluated, packed to 1-bit weights, evaluated again through the binary kernel, asked for predictions and profiled.
DEMO := runs/demo
demo: install
	$(BIN)/compactnets train
	$(BIN)/compactnets eval --model nin --pretrained --no-progress
	$(BIN)/compactnets eval --model nin_xnornet --pretrained --no-progress
	$(BIN)/compactnets export nin_xnornet --pretrained --format packed --out $(DEMO)/nin_xnornet.packed.safetensors
	$(BIN)/compactnets eval --packed $(DEMO)/nin_xnornet.packed.safetensors --no-progress
	$(BIN)/python tools/demo_images.py $(DEMO)/images
	$(BIN)/compactnets predict --model nin_xnornet --pretrained --topk 1 $(DEMO)/images
	$(BIN)/compactnets profile nin_xnornet

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n auto

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache
