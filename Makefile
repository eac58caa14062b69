# The two commands of the README. Both create the virtual env on first use: torch is installed first and pinned
# (a looser pin pulls a multi-GB CUDA build), then ftkit itself with its test extras.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast
demo: $(STAMP)  ## fine-tune the built-in default (minilm + polarity, LoRA) and print held-out metrics
	$(VENV)/bin/ftkit train --output runs/demo --overwrite

test: $(STAMP)  ## the whole test suite, the real-model group included (what CI runs)
	$(PY) -m pytest -q

test-fast: $(STAMP)  ## tiny models only
	$(PY) -m pytest -q -m "not real"

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)
