# stillmotion: `make demo` runs the main job on a tiny model, `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   := demo-output
export HF_HUB_OFFLINE ?= 1
export DO_NOT_TRACK := 1

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

# torch first and pinned (a local CPU build here): otherwise pip resolves a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --progress-bar off -q torch==2.13.0
	$(BIN)/pip install --progress-bar off -q -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/stillmotion make-tiny-model $(DEMO)/tiny-model
	$(BIN)/stillmotion generate --model $(DEMO)/tiny-model --image manifests/examples/images/lighthouse.png \
		--prompt "a lighthouse at night" --prompt "a lighthouse in snow" --keyframes 3 --steps 20 \
		--out $(DEMO)/lighthouse
	@echo
	@echo "Demo video: $(DEMO)/lighthouse/video.mp4 (tiny random model: it proves the pipeline, not the looks)"
	@echo "With real weights (GPU recommended): $(BIN)/stillmotion generate --model CompVis/stable-diffusion-v1-4 \\"
	@echo "    --image manifests/examples/images/lighthouse.png --prompt 'a lighthouse at night' --out out/lighthouse"

test: setup
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	@echo "benchmarks arrive with issue 5"

clean:
	rm -rf $(DEMO) .pytest_cache
