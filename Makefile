# Local set-up and tests on a CPU machine, offline. `make test` is the one command a new user (and CI) runs.
#   make test          virtualenv .venv with the newest supported TRL, then the test suite
#   make test-oldest   the same suite against the oldest supported TRL (.venv-trl-oldest)
#   make test-fast     the tests that start no other process (a quick loop while developing; `make test` runs all)
#   make test-trl-minors  the parity tests against every TRL minor release in the supported range (in .venv-trl-oldest)
#   make demo          the main job: DPO vs the robust losses on the built-in task with 40% flipped labels
#   make tiny          train the built-in tiny model on built-in data through `trl-robust dpo` (no downloads)
# The CPU build of torch is pinned: an unpinned torch pulls a multi-GB CUDA build. On a GPU machine install
# the package with your usual torch instead (`pip install trl-robust[peft]`).

PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
OLDEST_TRL ?= 0.29.0
PYTEST_ARGS ?=
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: test test-fast test-oldest test-trl-minors demo tiny clean

.venv/installed: pyproject.toml
	$(PYTHON) -m venv .venv
	.venv/bin/pip install --quiet --upgrade pip
	.venv/bin/pip install --quiet torch==$(TORCH_VERSION)
	.venv/bin/pip install --quiet -e ".[dev]"
	touch $@

.venv-trl-oldest/installed: pyproject.toml
	$(PYTHON) -m venv .venv-trl-oldest
	.venv-trl-oldest/bin/pip install --quiet --upgrade pip
	.venv-trl-oldest/bin/pip install --quiet torch==$(TORCH_VERSION)
	# requests: trl 0.29's own CLI imports it (for `trl sft` passthrough tests) without declaring it
	.venv-trl-oldest/bin/pip install --quiet -e ".[dev]" trl==$(OLDEST_TRL) requests
	touch $@

test: .venv/installed
	.venv/bin/python -m pytest $(PYTEST_ARGS)

test-fast: .venv/installed
	.venv/bin/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-oldest: .venv-trl-oldest/installed
	.venv-trl-oldest/bin/python -m pytest $(PYTEST_ARGS)

test-trl-minors: .venv-trl-oldest/installed
	.ci/trl_minor_parity .venv-trl-oldest

demo: .venv/installed
	.venv/bin/trl-robust demo

tiny: .venv/installed
	.venv/bin/trl-robust dpo --config recipes/tiny_offline.yaml

clean:
	rm -rf .venv .venv-trl-oldest
