# Every target creates .venv when it is missing, from requirements/lock.txt (tested versions, torch
# the CPU wheel); `make lock` refreshes the lock from pyproject.toml.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP_VERSION := pip==26.3
LOCK := requirements/lock.txt
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: venv venv-vision lock test test-vision test-viewers lint demo bench clean

$(BIN)/.installed: pyproject.toml $(LOCK) requirements/nnunet.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(PIP_VERSION)
	$(BIN)/pip install -q -r $(LOCK)
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/pip install -q --no-deps -r requirements/nnunet.txt
	touch $@

venv: $(BIN)/.installed

# The second environment: segmentation-models-pytorch and TorchGeo need torchvision, whose only wheels
# here are CUDA builds that cannot import beside .venv's CPU torch. .venv-vision holds the same locked
# packages with the CUDA torch 2.14.1 (it runs on CPU too) instead, plus requirements/vision.txt; it
# runs the tests marked `vision` (docs/models.md). .venv stays on the CPU torch its figures rely on.
VISION := .venv-vision
VBIN := $(VISION)/bin
$(VBIN)/.installed: pyproject.toml $(LOCK) requirements/nnunet.txt requirements/vision.txt
	test -x $(VBIN)/python || $(PY) -m venv $(VISION)
	$(VBIN)/pip install -q $(PIP_VERSION)
	grep -v -E '^(torch|antlr4-python3-runtime)==' $(LOCK) > $(VISION)/lock.txt
	$(VBIN)/pip install -q -r $(VISION)/lock.txt -r requirements/vision.txt
	$(VBIN)/pip install -q --no-deps -e .
	$(VBIN)/pip install -q --no-deps -r requirements/nnunet.txt
	touch $@

venv-vision: $(VBIN)/.installed

# Re-resolve pyproject.toml (with the test extra) to the newest versions that fit, keeping torch the
# CPU wheel; run `make test` afterwards, since the lock is only worth the versions it was tested with.
lock: venv
	$(BIN)/pip install -q pip-tools
	$(BIN)/pip-compile -q --upgrade --extra test --strip-extras --allow-unsafe \
		--no-emit-index-url --no-emit-find-links -f /opt/wheels \
		-c requirements/constraints.in -o $(LOCK) pyproject.toml

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

test: venv lint
	$(BIN)/pytest -q -p no:cacheprovider

# smp and TorchGeo models, against their own frameworks (skipped in .venv, where smp cannot import).
test-vision: venv-vision
	$(VBIN)/pytest -q -p no:cacheprovider -m vision

# QGIS's Python bindings come from Debian (python3-qgis) and run under /usr/bin/python3, not the venv.
VIEWERS := build/viewers
S2_SAMPLE := samples/s2/S2A_T33UUU_20170216_B02-B03-B04-B08_10m_east512.tif
test-viewers: venv
	/usr/bin/python3 -c 'import qgis.core' 2>/dev/null || \
		(apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-qgis)
	rm -rf $(VIEWERS)
	$(BIN)/tilewise run samples/s2 $(VIEWERS)/s2 --model bundles/s2-water --polygons --probabilities
	cp $(S2_SAMPLE) $(VIEWERS)/input.tif  # QGIS writes statistics beside what it draws: not into samples/
	QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/viewers/check_qgis.py $(VIEWERS)/s2 $(VIEWERS)/input.tif \
		bundles/s2-water --png $(VIEWERS)/qgis-s2-water.png

demo: venv
	$(BIN)/python scripts/demo.py

clean:
	rm -rf demo-output benchmarks/out .pytest_cache .ruff_cache
