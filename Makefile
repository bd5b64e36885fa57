# Two commands do all the set-up on a fresh Debian/Ubuntu machine with Python 3.11+:
#   make serve   demo services + the gateway on 127.0.0.1:8080
#   make test    the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PLUGINS := $(sort $(wildcard plugins/*/pyproject.toml))
STAMP := $(VENV)/.installed
PYTEST_ARGS ?= -n 2

.PHONY: serve serve-https test install lint redis-server nginx chromium nodejs graphql-audit clean fuzz dist

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install when any pyproject changes (new plugin, new dependency). setuptools
# announces every editable install with a UserWarning of a dozen lines: not shown.
$(STAMP): pyproject.toml $(PLUGINS) | $(BIN)/python
	PYTHONWARNINGS=ignore::UserWarning $(BIN)/pip install --quiet -e ".[test,speed]" \
	  $(foreach p,$(PLUGINS),-e ./$(dir $(p)))
	touch $(STAMP)

install: $(STAMP)

# The demo services, then the gateway: one process owns both (python -m pygate.demo
# --gateway): a service that cannot start stops it before the gateway starts, and
# Ctrl-C, a kill of make alone, or the gateway exiting stops everything.
serve: $(STAMP)
	@exec $(BIN)/python -m pygate.demo --gateway pygate.toml

# The same over HTTPS and HTTP/2 on :8443 with a local CA (.demo-tls/ca.pem for curl),
# :8080 redirecting to it (pygate/demo/tls.py).
serve-https: $(STAMP)
	@exec $(BIN)/python -m pygate.demo --gateway pygate.toml --https 8443

# Tests that need Redis start their own redis-server; install it when missing and allowed.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; \
	  elif sudo -n true 2>/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq redis-server >/dev/null; \
	  else echo "redis-server is missing and cannot be installed (not root, no sudo)"; fi; }

# The cluster test puts two gateway nodes behind a real nginx; install it when missing and
# allowed (the tests run their own nginx process with a generated configuration).
nginx:
	@{ command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx; } || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq nginx >/dev/null; \
	  elif sudo -n true 2>/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq nginx >/dev/null; \
	  else echo "nginx is missing and cannot be installed (not root, no sudo)"; fi; }

# The GraphQL route's conformance test runs the official GraphQL-over-HTTP audit (the npm
# package graphql-http) against pygate serve: Debian's nodejs and npm when missing and
# allowed, then the locked packages into tests/graphql_audit/node_modules (git-ignored).
GRAPHQL_AUDIT := tests/graphql_audit
nodejs:
	@{ command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null; \
	  elif sudo -n true 2>/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq nodejs npm >/dev/null; \
	  else echo "node/npm are missing and cannot be installed (not root, no sudo)"; fi; }

$(GRAPHQL_AUDIT)/node_modules/.package-lock.json: $(GRAPHQL_AUDIT)/package.json $(GRAPHQL_AUDIT)/package-lock.json | nodejs
	@if command -v npm >/dev/null 2>&1; then cd $(GRAPHQL_AUDIT) && npm ci --no-audit --no-fund --loglevel=error; \
	else echo "npm is missing: the GraphQL audit cannot be installed"; fi

graphql-audit: $(GRAPHQL_AUDIT)/node_modules/.package-lock.json

# The dashboard's browser test drives Debian's Chromium through chromedriver; install both
# when missing and allowed.
chromium:
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  elif sudo -n true 2>/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "chromium/chromium-driver are missing and cannot be installed (not root, no sudo)"; fi; }

test: $(STAMP) redis-server nginx chromium graphql-audit
	$(BIN)/ruff check .
	$(BIN)/mypy pygate
	$(BIN)/pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy pygate

# The HTTP fuzzer of tests/test_fuzz_functional.py, run long with a fresh seed
# (benchmarks/README.md, "Fuzzing"); FUZZ_ARGS="--requests 5000 --seed 1" for others.
fuzz: $(STAMP)
	$(BIN)/python benchmarks/fuzz_http.py --requests 100000 $(FUZZ_ARGS)

# Every distribution's wheel and sdist, the core's and each plugin's, into $(DIST):
# pip install --find-links dist "pygate-gateway[all]" then installs without an index
# for pygate's own distributions.
DIST ?= dist
dist: $(STAMP)
	rm -rf $(DIST) && mkdir -p $(DIST)
	PYTHONWARNINGS=ignore::UserWarning $(BIN)/python -m build --quiet --outdir $(DIST) .
	for p in $(dir $(PLUGINS)); do \
	  PYTHONWARNINGS=ignore::UserWarning $(BIN)/python -m build --quiet --outdir $(DIST) $$p \
	  || exit 1; done

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
