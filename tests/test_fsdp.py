"""Sharded training: two FSDP2 ranks on the CPU (gloo) through `trl-robust dpo`, with a robust loss and the per-step
filter, train like one unsharded process with the same global batch."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from .conftest import STANDALONE_RENDEZVOUS

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# Records, in each training rank, what accelerate was told to do: FSDP on, and which version.
SITECUSTOMIZE = textwrap.dedent("""
    import json, os
    if "RANK" in os.environ:
        keys = ("ACCELERATE_USE_FSDP", "FSDP_VERSION")
        with open(os.path.join(os.environ["LAUNCH_RECORD"], "rank" + os.environ["RANK"] + ".json"), "w") as file:
            json.dump({key: os.environ.get(key) for key in keys}, file)
""")


def train(tmp_path: Path, name: str, recipe: dict, extra_env: dict | None = None) -> list[dict]:
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump({**recipe, "output_dir": str(tmp_path / name)}))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TRL_ROBUST_CACHE": str(tmp_path / "builtin-cache"),
        **STANDALONE_RENDEZVOUS,
        **(extra_env or {}),
    }
    result = subprocess.run(
        [str(BIN / "trl-robust"), "dpo", "--config", str(config)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    states = sorted((tmp_path / name).glob("checkpoint-*/trainer_state.json"))
    return json.loads(states[-1].read_text())["log_history"]


def test_two_fsdp2_ranks_on_the_cpu_train_like_one_unsharded_process(tmp_path):
    site, record = tmp_path / "site", tmp_path / "record"
    site.mkdir()
    record.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    recipe = {
        **yaml.safe_load((REPO / "recipes" / "tiny_offline.yaml").read_text()),
        "loss_type": "ropo",
        "ropo_filter_ratio": 0.25,
        "logging_steps": 1,
        "eval_strategy": "no",
        "save_strategy": "steps",
        "save_steps": 8,
        "save_only_model": True,
    }
    sharded = train(
        tmp_path, "fsdp2",
        # TRL's fsdp2 config (distributed_type FSDP); not `multi_gpu`, which would override it with plain DDP, and no
        # bf16 autocast, so that the run is comparable with the fp32 single process.
        {**recipe, "num_processes": 2, "accelerate_config": "fsdp2", "mixed_precision": "no"},
        {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), "LAUNCH_RECORD": str(record)},
    )
    single = train(tmp_path, "one", {**recipe, "per_device_train_batch_size": 16})
    # Both ranks were launched with FSDP2 on (what accelerate's launcher passes to its Accelerator).
    launches = [json.loads(path.read_text()) for path in sorted(record.glob("rank*.json"))]
    assert launches == [{"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}] * 2

    compared = ["loss", "ropo/grad_weight", "ropo/negative_margin_frac", "ropo/filtered_frac"]
    rows = {
        name: {(entry["step"], key): entry[key] for entry in log for key in compared if key in entry}
        for name, log in (("fsdp2", sharded), ("one", single))
    }
    assert rows["fsdp2"].keys() == rows["one"].keys() and len(rows["one"]) == 8 * len(compared)
    for key, value in rows["one"].items():
        assert rows["fsdp2"][key] == pytest.approx(value, rel=1e-3, abs=1e-5), key
    final = {name: AutoModelForCausalLM.from_pretrained(tmp_path / name).state_dict() for name in ("fsdp2", "one")}
    for name, weight in final["one"].items():
        torch.testing.assert_close(final["fsdp2"][name], weight, rtol=1e-4, atol=1e-5, msg=name)
