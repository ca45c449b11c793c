# The two commands of the README. Each creates .venv when missing and installs everything it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0
export TOKENIZERS_PARALLELISM := false
# torch's OpenMP threads spin while waiting; on a busy 2-core machine that makes them ~30x slower.
export OMP_WAIT_POLICY := PASSIVE

.PHONY: demo test install clean browser

# One line per step: pip runs quiet and the big step takes minutes, so say what is happening and how long it takes.
$(STAMP): pyproject.toml
	@echo "[1/3] creating $(VENV)"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@echo "[2/3] upgrading pip"
	@$(BIN)/python -m pip install --quiet --upgrade pip
	@echo "[3/3] installing torch, diffusers, transformers and the scorers into $(VENV) (~5-15 min, ~7.7 GB on disk)"
	@$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)
	@echo "installed: $(BIN)/loratune"

install: $(STAMP)

demo: $(STAMP)
	@echo "running: loratune demo (the known-truth world, offline)"
	$(BIN)/loratune demo

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

# Debian's chromium + chromedriver for the report's browser test (tests/test_browser.py skips without them).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) || \
		echo "warning: could not install chromium + chromium-driver; the browser test will be skipped"

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
