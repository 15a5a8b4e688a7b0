# Set-up and the two everyday jobs. `make demo` and `make test` work on a fresh clone.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO ?= demo

.PHONY: install demo test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/install.sh
	ASD_VENV=$(VENV) bash scripts/install.sh
	touch $@

# The main job, end to end on freshly generated synthetic data with the tiny (demo) config.
demo: install
	bash scripts/demo.sh $(DEMO)

test: install
	$(PY) -m pytest -q tests

bench: install
	$(PY) bench/bench_features.py

clean:
	rm -rf $(DEMO) .pytest_cache
