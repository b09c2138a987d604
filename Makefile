# The two commands of the README. Both build the virtual environment .venv themselves.
# torch is pinned to the CPU build 2.13.0 so that set-up never downloads a CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.megatron_rcm-installed

.PHONY: install test demo clean

install: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[hf,data,train,dev]' torch==2.13.0
	touch $(STAMP)

# Triton kernels run on CPU tensors through the interpreter (no GPU needed).
test: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -q -ra --durations=15 -n 2 --dist loadscope tests  # the slowest 15 close the log

demo: $(STAMP)
	$(PY) examples/demo_moving_digits.py $(DEMO_FLAGS)

clean:
	rm -rf $(VENV) build *.egg-info
