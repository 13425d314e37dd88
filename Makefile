# Every target creates .venv when it is missing; torch goes first so the CPU wheel is used.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: venv test test-viewers lint demo bench clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/.installed

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

test: venv lint
	$(BIN)/pytest -q -p no:cacheprovider

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
