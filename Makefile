# kefu-hub: `make run` starts the hub with embedded defaults, `make test` passes the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU wheel for the test environment; production images pick their CUDA build.
TORCH_CPU := torch==2.13.0

.PHONY: run test lint bench faq-eval docs clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.run-deps: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test-deps: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(TORCH_CPU)
	$(BIN)/pip install -q -e '.[llm,dev]'
	touch $@ $(VENV)/.run-deps

run: $(VENV)/.run-deps
	$(BIN)/python -m bot serve

test: $(VENV)/.test-deps
	$(BIN)/ruff check .
	bash scripts/browser-deps.sh
	bash scripts/with-redis.sh bash scripts/with-rabbitmq.sh $(BIN)/python -m pytest -q -ra $(PYTEST_ARGS)

lint: $(VENV)/.test-deps
	$(BIN)/ruff check .

bench: $(VENV)/.test-deps
	$(BIN)/python bench/engine.py
	bash scripts/with-redis.sh bash scripts/with-rabbitmq.sh $(BIN)/python bench/hub.py $(BENCH_ARGS)

docs: $(VENV)/.run-deps
	$(BIN)/python scripts/config_table.py --write

faq-eval: $(VENV)/.run-deps
	$(BIN)/python -m bot faq-eval $(FAQ_EVAL_ARGS)  # FAQ_EVAL_ARGS=--holdout adds the held-out set

clean:
	rm -rf $(VENV) .cache artifacts .pytest_cache
