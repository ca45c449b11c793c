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

# Every package and its hashes, for every platform and Python >= 3.10 (uv's universal resolution); `make lock` writes it.
LOCK := requirements/lock.txt
# The extras `make` installs; the lock holds them all.
EXTRAS := dev postgres
pin = $(or $(shell sed -n 's/^\($(1)==[^ ;]*\).*/\1/p' $(LOCK)),$(1))
PIP_PIN := $(call pin,pip)

.PHONY: demo test lint install lock clean browser postgres

# One line per step: pip runs quiet and the big step takes minutes, so say what is happening and how long it takes.
# The lock is installed as it is (hash-checked, nothing resolved), then loratune itself without dependencies.
$(STAMP): pyproject.toml $(LOCK)
	@echo "[1/3] creating $(VENV)"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@echo "[2/3] installing $(PIP_PIN)"
	@$(BIN)/python -m pip install --quiet "$(PIP_PIN)"
	@echo "[3/3] installing torch, diffusers, transformers and the scorers from $(LOCK) into $(VENV) (~2-15 min, ~7.9 GB)"
	@$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	@$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@$(BIN)/python -m pip check >/dev/null || ($(BIN)/python -m pip check; exit 1)
	@touch $(STAMP)
	@echo "installed: $(BIN)/loratune"

install: $(STAMP)

demo: $(STAMP)
	@echo "running: loratune demo (the known-truth world, offline)"
	$(BIN)/loratune demo

# The lint runs first (seconds): a finding stops `make test` before the suite's minutes.
test: $(STAMP) lint browser postgres
	$(BIN)/python -m pytest -q

# ruff's default rules (its version is the lock's; pyproject.toml's [tool.ruff] says what differs). Not `ruff format`.
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

# Debian's chromium + chromedriver for the report's browser test (tests/test_browser.py skips without them).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) || \
		echo "warning: could not install chromium + chromium-driver; the browser test will be skipped"

# Debian's PostgreSQL server for the many-workers tests: each test session starts a throw-away one of its own
# (tests/pg_cluster.py); the package's own cluster is not used. Its programs live in /usr/lib/postgresql/<version>/bin.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) || \
		echo "warning: could not install postgresql; the PostgreSQL tests will be skipped (and fail under CI)"

# Re-resolve the lock after a change to pyproject.toml's dependencies or requirements/lock.in: pins that still fit are
# kept. `make lock UPGRADE=1` moves every package to its newest release within the ranges (then run `make test`).
# Needs only uv, not the installed lock (which a new dependency makes stale).
lock:
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet "$(call pin,uv)"
	$(BIN)/uv pip compile pyproject.toml requirements/lock.in $(addprefix --extra ,$(EXTRAS)) --universal \
		--python-version 3.10 --generate-hashes --custom-compile-command "make lock" --quiet \
		$(if $(UPGRADE),--upgrade) -o $(LOCK)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
