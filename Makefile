# make demo : install into .venv, then run the offline demo (tiny random LLaVA + mini POPE/MME/DocVQA)
# make test : install into .venv, then run the whole offline test suite
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test bench
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints/cpu.txt scripts/install.sh
	VENV=$(VENV) bash scripts/install.sh
	touch $@

demo: install
	$(PY) -m sparsezip_lmms demo

test: install
	$(PY) -m pytest tests

bench: install
	$(PY) -m sparsezip_lmms bench --quick
