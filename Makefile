# notifier: `make run` to try it, `make test` to run every test. See README.md.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
JS := clients/js

.PHONY: install run run-prod test test-python test-js check bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 (or set PYTHON=...)"; exit 1; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

$(JS)/node_modules/.installed: $(JS)/package.json $(JS)/package-lock.json
	cd $(JS) && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error
	touch $@

# The embedded default: SQLite, in-process channel layer and history, eager Celery tasks.
run: install
	$(BIN)/python manage.py migrate --verbosity 0
	@echo "API key for this trial (kept in .dev-api-key):"
	@$(BIN)/python manage.py dev_api_key
	@echo "Serving on http://$(HOST):$(PORT)  (WebSocket: ws://$(HOST):$(PORT)/ws/)"
	$(BIN)/daphne -b $(HOST) -p $(PORT) notifier.asgi:application

# The production shape on this machine (deploy/Procfile): Redis on 6380, two Uvicorn processes,
# a Celery worker, nginx in front on http://127.0.0.1:8000. Stop with Ctrl-C.
RUN_DIR := .run
run-prod: export REDIS_URL = redis://127.0.0.1:6380/0
run-prod: export DATABASE_URL = sqlite:///$(CURDIR)/$(RUN_DIR)/prod.sqlite3
run-prod: export DJANGO_ALLOWED_HOSTS = 127.0.0.1,localhost
run-prod: install
	mkdir -p $(RUN_DIR)
	test -s $(RUN_DIR)/secret || $(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(50))' > $(RUN_DIR)/secret
	DJANGO_SECRET_KEY=$$(cat $(RUN_DIR)/secret) $(BIN)/python manage.py migrate --verbosity 0
	@echo "API key (kept in $(RUN_DIR)/api-key):"
	@DJANGO_SECRET_KEY=$$(cat $(RUN_DIR)/secret) $(BIN)/python manage.py dev_api_key --file $(RUN_DIR)/api-key
	DJANGO_SECRET_KEY=$$(cat $(RUN_DIR)/secret) $(BIN)/honcho -d . -f deploy/Procfile start

test: test-python test-js

# The JS client's end-to-end and browser tests run from pytest: they need node_modules too.
test-python: install $(JS)/node_modules/.installed
	env -u REDIS_URL -u DATABASE_URL $(BIN)/pytest --durations=10

test-js: $(JS)/node_modules/.installed
	cd $(JS) && npm run typecheck && npm test

check: install $(JS)/node_modules/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .
	cd $(JS) && npm run typecheck

# Benchmarks (docs/benchmarks.md): its own Redis, Uvicorn, Celery and a Node load generator, about
# 35 minutes (a 15-minute soak: SOAK_MINUTES). Pick with BENCH=fanout,latency,... SUBSCRIBERS=1000,10000
# REPEAT=3, or SMOKE=1.
bench: install
	$(BIN)/python bench/run.py $(if $(SMOKE),--smoke) --only "$(BENCH)" --subscribers "$(SUBSCRIBERS)" --repeat "$(or $(REPEAT),1)" $(if $(BENCH_JSON),--json "$(BENCH_JSON)")

clean:
	rm -rf $(VENV) $(JS)/node_modules .pytest_cache .mypy_cache .ruff_cache $(RUN_DIR)
