# Two commands on a fresh machine: `make demo` and `make test`. CONTRIBUTING.md has the rest.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

# The locks: every package at an exact version with its hashes, made from pyproject.toml's ranges
# by `make lock`. runtime.txt is what the Docker image installs; test.txt is what CI and
# `make venv` install (the runtime set plus the test and dev extras). The runtime lock is resolved
# within the test lock, so CI tests exactly the versions the image ships. checkov.txt is
# terraform/check.sh's own venv (from requirements/checkov.in).
LOCK_RUNTIME := requirements/runtime.txt
LOCK_TEST := requirements/test.txt
LOCK_TEST_EXTRAS := --extra test --extra dev
UV := $(VENV)/bin/uv
# Universal: one lock for Linux, macOS and Windows, Python 3.11 and newer.
UV_COMPILE = $(UV) pip compile --quiet --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command "make lock" $(LOCK_UPGRADE)
# pyproject.toml's [build-system] requires, locked too: the package is installed without build
# isolation, so nothing unhashed is fetched to build it.
BUILD_REQUIRES = $(PYTHON) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"], sep="\n")'
INSTALL_LOCKED = $(PYTHON) -m venv $(VENV) && $(VENV)/bin/pip install --quiet --require-hashes -r $(LOCK_TEST)

.PHONY: venv demo test check lint lock lock-upgrade clean

# pytest caches the test modules it rewrites for its assertions only where Python may write
# bytecode; an environment that forbids it (some images set PYTHONDONTWRITEBYTECODE) would have
# every test process rewrite all of them on every run, seconds each.
unexport PYTHONDONTWRITEBYTECODE

venv: $(STAMP)

# pip refuses any package of the lock whose hash differs, and any dependency the lock lacks; the
# package itself is then installed editable with no dependencies of its own, and `pip check`
# catches a pyproject.toml dependency the lock does not have yet.
$(STAMP): pyproject.toml $(LOCK_TEST)
	$(INSTALL_LOCKED)
	$(VENV)/bin/pip install --quiet --no-deps --no-build-isolation -e .
	@$(VENV)/bin/pip check >/dev/null || { $(VENV)/bin/pip check; \
		echo "$(LOCK_TEST) does not match pyproject.toml: run 'make lock'" >&2; exit 1; }
	touch $(STAMP)

demo: venv
	$(VENV)/bin/ci-broker demo

# The whole suite: what CI runs, on every core (pytest-xdist; TEST_WORKERS=0 for one process).
# Most of its time is spent waiting on subprocesses (act, gitlab-ci-local, gunicorn, terraform),
# so two workers on CI's two cores take about half the serial time.
TEST_WORKERS ?= auto
test: venv
	$(VENV)/bin/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

# The fast tier for the edit-test loop: everything but the tests tests/conftest.py marks slow
# (act, gitlab-ci-local, `ci-broker serve` subprocesses, terraform, checkov, benchmark runs, the
# pipeline clients under real shells, fault injection), on every core (pytest-xdist;
# PYTEST_ARGS=-n0 for one process, e.g. with a debugger), with 25 examples per property test
# instead of 200 (tests/fuzz/) and 2,000 (tests/test_policydiff_property.py).
check: venv
	FUZZ_EXAMPLES=25 $(VENV)/bin/python -m pytest -m "not slow" -n auto $(PYTEST_ARGS)

# The gate before every commit: ruff's lint and formatter, then mypy (strict) on broker/; all
# configured in pyproject.toml.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Regenerate the locks after changing dependencies in pyproject.toml: pins that still satisfy the
# ranges are kept. `make lock-upgrade` moves every pin to the newest release the ranges allow.
# Needs only uv (from the current lock), not an up-to-date venv.
lock: | $(UV)
	$(BUILD_REQUIRES) | $(UV_COMPILE) pyproject.toml - $(LOCK_TEST_EXTRAS) -o $(LOCK_TEST)
	$(BUILD_REQUIRES) | $(UV_COMPILE) pyproject.toml - -c $(LOCK_TEST) -o $(LOCK_RUNTIME)
	$(UV_COMPILE) requirements/checkov.in -o requirements/checkov.txt

lock-upgrade:
	$(MAKE) lock LOCK_UPGRADE=--upgrade

$(UV):
	$(INSTALL_LOCKED)

clean:
	rm -rf $(VENV) .pytest_cache
