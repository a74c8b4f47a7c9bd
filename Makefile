# Each target is one obvious command. Fixtures, llama.cpp builds and models are cached in
# $(QCONVERT_CACHE) (default ~/.cache/qconvert), never in the checkout.
PY ?= python3

.PHONY: install demo test test-fast bench lint clean

install:
	$(PY) -m pip install --quiet -e ".[test]"

demo: install
	$(PY) -m tests.support.demo

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not oracle"

bench: install
	$(PY) bench/convert.py

lint:
	$(PY) -m ruff check quantize_cli tests bench

clean:
	rm -rf build *.egg-info quantize_cli/_kernels*.so
