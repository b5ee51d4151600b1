# make demo : install into .venv (pinned to constraints/lock.txt), then run the offline demo
# make test : install into .venv (pinned to constraints/lock.txt) and a headless browser, then run the whole offline test suite
# make test-upstream : in a second environment (.venv-upstream, torch 2.14.1 + torchvision, ~5.5 GB), keep_all against lmms-eval's own qwen2_5_vl
# make browser : find or install (apt-get, as root) the headless Chromium the report tests render in; never fails
# make lock : re-resolve today's newest versions into constraints/lock.txt (then run make test)
# make doctor : environment check (versions against the lock, torch build, lmms-eval, model ids, tasks)
VENV ?= .venv
PY := $(VENV)/bin/python
# test workers (pytest-xdist; one torch thread each): 2 fits the 2-core CI machine, where it measured 1.3x
TEST_WORKERS ?= 2

.PHONY: install demo test test-upstream browser bench lock doctor
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints/cpu.txt constraints/lock.txt scripts/install.sh
	VENV=$(VENV) bash scripts/install.sh
	touch $@

demo: install
	$(PY) -m sparsezip_lmms demo

test: install browser
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile tests

test-upstream:
	VENV=.venv-upstream SPARSEZIP_TORCHVISION=1 bash scripts/install.sh
	.venv-upstream/bin/python -m pytest tests/test_qwen_upstream.py

browser:
	VENV=$(VENV) bash scripts/install_browser.sh

bench: install
	$(PY) -m sparsezip_lmms bench --quick

doctor: install
	$(PY) -m sparsezip_lmms doctor

lock:
	bash scripts/lock.sh
