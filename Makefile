# The two commands: `make up` (run the service) and `make test` (run the tests). Everything else is optional.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

.PHONY: venv system-deps export up test lint format repository bench overhead loadtest evaluate clean

# The venv is (re)built when pyproject.toml changes; torch 2.14.1 comes from the local wheel store here.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all]'
	touch $@

venv: $(VENV)/.installed

## Debian packages the tests start for real: Prometheus (the E-P2.6 dashboard test), promtool, docker-compose
## (validates the compose file without an engine), headless Chromium and a font for it (the page's browser test,
## tests/test_page.py). Needs root or sudo; skipped when already present.
SYSTEM_PACKAGES := prometheus docker-compose chromium fonts-dejavu-core
system-deps:
	@command -v prometheus >/dev/null && command -v docker-compose >/dev/null && command -v chromium >/dev/null \
	  && test -d /usr/share/fonts/truetype/dejavu || { \
	  SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
	    install -y -qq --no-install-recommends $(SYSTEM_PACKAGES); }

## Export the tiny models to ONNX (embedded target) into build/model_repository; `make up` then serves them.
export: venv
	$(PY) -m export --profile tiny --target embedded --out build/model_repository

## Embedded tritonserver + gateway on http://127.0.0.1:8080 (Ctrl-C stops both). Serves the exported repository
## when `make export` has written one, else the checked-in torch repository.
up: venv
	$(PY) -m service $(if $(wildcard build/model_repository/spatial_encoder/1/model.onnx),--model-repository build/model_repository) $(ARGS)

## Lint, type-check, then every test (unit and integration: the integration tests start the real stack on loopback);
## the 15 slowest are listed at the end, so CI's log shows where its minutes go.
test: venv system-deps
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest -q -ra --durations=15 $(ARGS)

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check hybrid service export tests benchmarks

format: venv
	$(PY) -m ruff format hybrid service export tests benchmarks
	$(PY) -m ruff check --fix .

## Regenerate model_repository/ from hybrid/contracts.py (the tiny, CPU repository).
repository: venv
	$(PY) -m export.repository --out model_repository

## The serving benchmark of the README (tiny profile, this machine): writes benchmarks/results/.
bench: venv
	$(PY) -m benchmarks.serving $(ARGS)

## The paired E-P2.6 benchmark against a running gateway (make up first): JSON, markdown table and PNG chart.
overhead: venv
	$(PY) -m benchmarks.overhead $(ARGS)

## Locust against a running gateway (make up in another shell): make loadtest ARGS="--users 4 --run-time 60s"
loadtest: venv system-deps
	$(PY) -m loadtest $(ARGS)

## Gate-1 evaluation against a running gateway (make up first): make evaluate ARGS="--n 8 --out build/gate1"
evaluate: venv
	$(PY) -m evaluation $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
