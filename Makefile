# Local set-up and tests on a CPU machine, offline. `make test` is the one command a new user (and CI) runs.
#   make test          virtualenv .venv with the newest supported TRL, then the whole test suite
#   make test-fast     the tests that start no other process (a quick loop while developing; `make test` runs all)
#   make test-oldest   the fast suite against the oldest supported TRL (.venv-trl-oldest)
#   make test-trl-minors  the parity tests against every TRL minor release in the supported range but the two that
#                      `make test` and `make test-oldest` run (swapped into both virtualenvs, two at a time)
#   make demo          the main job: DPO vs the robust losses on the built-in task with 40% flipped labels
#   make tiny          train the built-in tiny model on built-in data through `trl-robust dpo` (no downloads)
#   make docs          the documentation site (docs/, mkdocs.yml) into site/, with `mkdocs build --strict`: a broken
#                      link or anchor fails it (the `docs` extra, installed into .venv)
# The CPU build of torch is pinned and installed by pip, which finds it on these machines' disk; uv (installed into
# the virtualenv by pip) installs the rest, keeping that torch: an unpinned torch pulls a multi-GB CUDA build. On a
# GPU machine install the package from the clone with your usual torch instead (`pip install -e ".[peft]"`).
# Tests run on both cores through pytest-xdist: JOBS=0 runs them in one process (e.g. for `--pdb`).

PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
OLDEST_TRL ?= 0.29.0
PYTEST_ARGS ?=
JOBS ?= 2
PYTEST := -m pytest -n $(JOBS)
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: test test-fast test-oldest test-trl-minors demo tiny docs clean

# $(call venv,DIR,EXTRA REQUIREMENTS): pip puts in the pinned torch (and uv), no bytecode compiled; uv the rest, with
# the same torch pin so that it fails rather than replace it. Redone when pyproject.toml or this file changes.
define venv
	$(PYTHON) -m venv $(1)
	$(1)/bin/pip install --quiet --no-compile torch==$(TORCH_VERSION) uv
	$(1)/bin/uv pip install --quiet --python $(1)/bin/python -e ".[dev]" torch==$(TORCH_VERSION) $(2)
	$(1)/bin/python -c "import torch; assert torch.__version__.split('+')[0] == '$(TORCH_VERSION)', torch.__version__"
	touch $(1)/installed
endef

.venv/installed: pyproject.toml Makefile
	$(call venv,.venv)

# requests: trl 0.29's own CLI imports it (for `trl sft` passthrough tests) without declaring it
.venv-trl-oldest/installed: pyproject.toml Makefile
	$(call venv,.venv-trl-oldest,trl==$(OLDEST_TRL) requests)

test: .venv/installed
	.venv/bin/python $(PYTEST) $(PYTEST_ARGS)

test-fast: .venv/installed
	.venv/bin/python $(PYTEST) -m "not slow" $(PYTEST_ARGS)

test-oldest: .venv-trl-oldest/installed
	.venv-trl-oldest/bin/python $(PYTEST) -m "not slow" $(PYTEST_ARGS)

test-trl-minors: .venv/installed .venv-trl-oldest/installed
	.ci/trl_minor_parity .venv-trl-oldest,.venv $$(.venv/bin/python -c "import trl; print(trl.__version__)") $(OLDEST_TRL)

demo: .venv/installed
	.venv/bin/trl-robust demo

tiny: .venv/installed
	.venv/bin/trl-robust dpo --config recipes/tiny_offline.yaml

# The docs extra into the test virtualenv (uv, with the same torch pin, so nothing else moves); a few seconds once
# .venv exists. NO_MKDOCS_2_WARNING: mkdocs-material prints a banner about MkDocs 2.0 on every build otherwise.
.venv/docs-installed: .venv/installed
	.venv/bin/uv pip install --quiet --python .venv/bin/python -e ".[dev,docs]" torch==$(TORCH_VERSION)
	touch $@

docs: .venv/docs-installed
	NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf .venv .venv-trl-oldest site
