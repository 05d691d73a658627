# ringcache — the user's entry points. Every target sets up what it needs itself.
# The virtualenv's interpreter: the distribution's python3 when it is 3.11 or newer and can make
# a virtualenv (Debian's and Ubuntu's are built with PGO and LTO; the node serves about a quarter
# more requests per CPU second on it than on a default pyenv build), else python3 on PATH.
PYTHON ?= $(shell for p in /usr/bin/python3 python3; do $$p -c 'import sys, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PORT   ?= 11211
MEMORY ?= 64

.PHONY: setup node test failover lint format bench clean secrets

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

node: $(STAMP)  ## one node in the foreground (PORT, MEMORY, ARGS)
	$(BIN)/ringcache-node -p $(PORT) -m $(MEMORY) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

failover: $(STAMP)  ## the failover and rebalancing suite alone, with its figures
	$(BIN)/python -m pytest tests/failover -s -m failover $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)  ## never in CI: ratios against memcached, pymemcache, pylibmc; a timeline PNG
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m bench.node_memcaslap $(BENCH_ARGS)
	$(BIN)/python -m bench.tls_throughput
	$(BIN)/python -m bench.client_ops
	$(BIN)/python -m bench.async_ops
	$(BIN)/python -m bench.move_keys
	$(BIN)/python -m bench.herd
	$(BIN)/python -m bench.hit_ratio
	$(BIN)/python -m bench.warm_restart
	$(BIN)/python -m bench.failover_timeline --out failover-timeline.png

secrets:  ## CA, node certificate and key, authfile and passwords for deploy/ (NAMESPACE, EXTRA_NAMES)
	bash deploy/make-secrets.sh deploy/secrets

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

# -- the local cluster (ringcache CLI) ------------------------------------------------------
# One per user, wherever make runs: its state is where the CLI keeps it ($RINGCACHE_RUN_DIR,
# else $XDG_STATE_HOME/ringcache, else ~/.local/state/ringcache). NODES, PORT and MEMORY shape
# a new cluster and are passed only when given (make cluster PORT=12000): a running cluster
# keeps its shape, and `up` refuses another one (grow or shrink it with ringcache add/remove).
NODES ?= 3
given = $(if $(filter command line environment,$(origin $(1))),$(2) $($(1)))
UP_ARGS = $(call given,NODES,--nodes) $(call given,PORT,--port) $(call given,MEMORY,--memory)

.PHONY: cluster status stats down

cluster: $(STAMP)  ## start NODES nodes on 127.0.0.1:PORT.. in the background, print LOCATION
	$(BIN)/ringcache up $(UP_ARGS)

status: $(STAMP)
	$(BIN)/ringcache status

stats: $(STAMP)
	$(BIN)/ringcache stats

down: $(STAMP)
	$(BIN)/ringcache down
