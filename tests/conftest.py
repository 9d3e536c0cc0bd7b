"""Shared fixtures: a tiny local model and small preference datasets; everything offline."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402

from trl_robust.tiny import make_tiny_model, tiny_preference_records  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread is fastest, and the CPU is shared with other work (use with
    `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """A 2-layer Qwen2 and its tokenizer saved to disk (TRL reloads the reference model from this path)."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture
def no_model_loading(monkeypatch):
    """Any attempt to load a model fails the test instead: for errors that must come before a model is loaded."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


@pytest.fixture
def preference_dataset():
    return Dataset.from_list(tiny_preference_records(n=16, seed=0))


@pytest.fixture
def conversational_dataset():
    return Dataset.from_list(tiny_preference_records(n=16, seed=1, conversational=True))


# torchrun's `--standalone`, through its environment default (PET_<OPTION>; accelerate passes no value of its own): the
# rendezvous and the ranks' store bind port 0 themselves, so two-process runs started at the same time never race for
# accelerate's default port 29500, nor for a port probed free and bound later. Put it in every multi-process launch.
STANDALONE_RENDEZVOUS = {"PET_STANDALONE": "1"}


def run_two_ranks(worker_source: str, tmp_path, *args) -> dict:
    """Run `worker_source` as a script on two gloo ranks (torchrun, standalone rendezvous) with `args` and then the
    directory `tmp_path/two`, into which rank 0 writes `result.json`; return that result."""
    import json
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    script = tmp_path / "worker.py"
    script.write_text(worker_source)
    env = {**os.environ, **STANDALONE_RENDEZVOUS, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script), *map(str, args),
               str(tmp_path / "two")]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=repo, timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return json.loads((tmp_path / "two" / "result.json").read_text())


def logged_steps_worker(run: str) -> str:
    """The source of a two-rank worker for `run_two_ranks`: `run` ("module:function") is called as
    `function(model_path, output_dir, per_device=4)` on each rank, and rank 0 writes the training logs by step."""
    module, function = run.split(":")
    return f"""
import json, os, sys
import torch
from {module} import {function}

model_path, output_dir = sys.argv[1], sys.argv[2]
trainer = {function}(model_path, output_dir, per_device=4)
assert trainer.accelerator.num_processes == 2, trainer.accelerator.num_processes
if trainer.accelerator.is_main_process:
    logs = {{e["step"]: e for e in trainer.state.log_history if "loss" in e}}
    with open(os.path.join(output_dir, "result.json"), "w") as file:
        json.dump(logs, file)
torch.distributed.barrier()  # then leave without gloo's teardown, as trl_robust.cli.distributed does
sys.stdout.flush(); sys.stderr.flush()
os._exit(0)
"""


def assert_same_logged_steps(two: dict, one, keys) -> dict:
    """The two-rank run's training logs (`logged_steps_worker`) equal one process's (`one`, a trainer) at every step,
    for each of `keys` the step logs; return one process's logs by step."""
    import pytest

    logs = {str(e["step"]): e for e in one.state.log_history if "loss" in e}
    assert sorted(two, key=int) == sorted(logs, key=int)
    for step, entry in logs.items():
        for key in keys:
            if key in entry:
                assert two[step][key] == pytest.approx(entry[key], rel=1e-3, abs=1e-5), (step, key)
    return logs


def train_args(tmp_path, config_cls=None, **overrides):
    """A fast CPU config for the tiny model; tests override what they pin down."""
    from trl_robust import RobustDPOConfig

    config_cls = config_cls or RobustDPOConfig
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        bf16=False,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        max_steps=3,
        learning_rate=0.1,
        logging_steps=1,
        seed=0,
        disable_tqdm=True,
    )
    defaults.update(overrides)
    return config_cls(**defaults)


def perturb_(model, seed=1, scale=0.05):
    """Move the policy away from the reference so margins are non-zero (same noise for the same seed)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * scale)


def first_batch(trainer):
    """The first collated training batch, as the trainer would see it."""
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


def independent_logps(model, batch):
    """Summed completion log-probs per sequence, from plain logits (not TRL's fused LM head)."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token_logps = logps.gather(-1, batch["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)
    mask = batch["completion_mask"][:, 1:].float()
    return (token_logps * mask).sum(dim=1)


# What starts another process (the real command, `accelerate launch`, a fresh interpreter, a benchmark script).
# Tests doing so are marked `slow`: `make test-fast` and CI's oldest-TRL run leave them out; `make test` runs everything.
# A test is marked when one of these is in its source, in a function of the tests it calls (`train(...)` in
# test_fsdp.py), or in a fixture it uses (`cli_run`), followed to any depth.
_STARTS_PROCESSES = ("subprocess.", "run_command(", "run_python(", "cli_main(", "run_two_ranks(", "run_benchmark(")


def _starts_a_process(function, seen) -> bool:
    import inspect
    import re

    function = inspect.unwrap(function)
    if function in seen or not inspect.isfunction(function):
        return False
    seen.add(function)
    try:
        if not Path(inspect.getsourcefile(function)).resolve().is_relative_to(Path(__file__).resolve().parent):
            return False  # only the tests' own code: the library's launchers are named in _STARTS_PROCESSES
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return False
    if any(token in source for token in _STARTS_PROCESSES):
        return True
    called = (function.__globals__.get(name) for name in set(re.findall(r"\b(\w+)\(", source)))
    return any(_starts_a_process(helper, seen) for helper in called if helper is not None)


def pytest_collection_modifyitems(config, items):
    for item in items:
        seen = set()
        fixtures = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
        functions = [getattr(item, "function", None)] + [d.func for defs in fixtures.values() for d in defs]
        if any(_starts_a_process(function, seen) for function in functions if function is not None):
            item.add_marker(pytest.mark.slow)


def pytest_report_header(config):
    import transformers
    import trl

    return f"trl {trl.__version__}, transformers {transformers.__version__}, torch {torch.__version__}"
