# SBS developer entry points. `make demo` runs the simulator comparison on the embedded default
# cluster; `make test` runs lint, import contracts and the test suite. Both create .venv/ first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-quick lint fmt bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: venv
	$(BIN)/sbs-sim compare --trace ../shared/traces/azure_llm_2023_conv/AzureLLMInferenceTrace_conv.csv \
		--load 0.8 --duration 300 --plot out/demo-ttft.png --json out/demo.json

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

fmt: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/pytest -q

test-quick: venv
	$(BIN)/pytest -q -m "not e2e and not slow"

bench: venv
	$(BIN)/python -m sbs.bench.core_speed
	$(BIN)/python -m sbs.bench.paper_result

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache .hypothesis
