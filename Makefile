# The two commands of the README. Both create the virtual env on first use: torch is installed first and pinned
# (a looser pin pulls a multi-GB CUDA build), then every other dependency at the exact, hash-checked versions of
# requirements/lock.txt (what this version was tested with), then ftkit itself.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements/lock.txt
TORCH := 2.13.0
UV := uv==0.13.9
LATEST := .venv-latest
# The lock is resolved against torch's CPU build (no CUDA packages in it); this machine image keeps that wheel in
# /opt/wheels. Elsewhere: make lock TORCH_WHEELS=<a folder or flat index page holding torch-$(TORCH)+cpu>
TORCH_WHEELS ?= /opt/wheels

.PHONY: demo test test-fast test-latest lock browser
demo: $(STAMP)  ## fine-tune the built-in default (minilm + polarity, LoRA) and print held-out metrics
	$(VENV)/bin/ftkit train --output runs/demo --overwrite

test: $(STAMP) browser  ## the whole test suite, the real-model group included (what CI runs)
	$(PY) -m pytest -q

# tests/test_ui.py drives a real browser: Debian's chromium + chromium-driver (apt; no browser download). Without
# root or sudo the browser tests are skipped, saying why.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		APT="$$( [ "$$(id -u)" = 0 ] && echo apt-get || { sudo -n true 2>/dev/null && echo "sudo apt-get"; } )"; \
		if [ -n "$$APT" ]; then DEBIAN_FRONTEND=noninteractive $$APT install -y -qq --no-install-recommends \
			chromium chromium-driver >/dev/null 2>&1 || { $$APT update -qq >/dev/null 2>&1 && \
			DEBIAN_FRONTEND=noninteractive $$APT install -y -qq --no-install-recommends chromium chromium-driver \
			>/dev/null; } || echo "warning: could not install chromium; the browser tests will be skipped"; \
		else echo "warning: chromium not installed and no root/sudo; the browser tests will be skipped"; fi; }

test-fast: $(STAMP)  ## tiny models only
	$(PY) -m pytest -q -m "not real"

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==$(TORCH)
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

# The fast suite in a separate venv on the newest releases pyproject.toml's ranges allow (torch stays at the pin):
# how the next upstream break is found before users find it. Upgrades on every call.
test-latest: browser
	test -x $(LATEST)/bin/python || python3 -m venv $(LATEST)
	echo "torch==$(TORCH)" > $(LATEST)/torch.txt
	$(LATEST)/bin/python -m pip install --quiet torch==$(TORCH)
	$(LATEST)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -c $(LATEST)/torch.txt -e '.[test]'
	$(LATEST)/bin/ftkit env
	$(LATEST)/bin/python -m pytest -q -m "not real" -p no:cacheprovider

# Re-resolve requirements/lock.txt to the newest releases the ranges allow (then run `make test` and commit both).
lock: $(STAMP)
	$(PY) -m pip install --quiet $(UV)
	echo "torch==$(TORCH)+cpu" > $(VENV)/torch-cpu.txt
	$(VENV)/bin/uv pip compile pyproject.toml --extra test --upgrade --generate-hashes --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --find-links $(TORCH_WHEELS) --override $(VENV)/torch-cpu.txt \
		--no-emit-package torch --custom-compile-command "make lock" -o $(LOCK)
