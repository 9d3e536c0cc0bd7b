"""A loss from a separately installed package reaches every process through the `trl_robust.losses` entry point.

`tests/plugin_package` is a real out-of-tree plugin (its own pyproject.toml, one module, one entry point). It is
installed with pip into a throwaway directory that only the subprocesses here see (through PYTHONPATH, which
`trl-robust dpo` passes on to the training process `accelerate launch` starts); this test process never sees it. Then
its loss type is listed in Python, trains through `trl-robust dpo` in the launched process, and is reported by
`trl-robust audit`; without the install, the same command refuses the name.
"""

import importlib.metadata
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import trl_robust
from trl_robust.registry import ENTRY_POINT_GROUP

pytestmark = pytest.mark.slow  # pip and the real commands, in other processes

PLUGIN_SOURCE = Path(__file__).resolve().parent / "plugin_package"
TINY_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "tiny_offline.yaml"
BIN = Path(sys.executable).parent
LOSS = "example_tanh"  # the name trl_robust_example_plugin registers
SCALE = 2.0  # its `example_tanh_scale` default


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """Install the plugin with pip into a fresh directory; yield (site directory, plugin log path)."""
    tmp = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(PLUGIN_SOURCE, tmp / "source")  # pip's build leaves files beside the sources
    site = tmp / "site"
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(source)]
    # Offline with the environment's own setuptools (the dev extra's tensorboard brings one that builds wheels itself);
    # where that cannot build (an older setuptools without `wheel`), pip's isolated build, which fetches setuptools.
    result = subprocess.run([*install, "--no-index", "--no-build-isolation"], capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        shutil.rmtree(site, ignore_errors=True)
        result = subprocess.run(install, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    # What importlib.metadata sees there is what trl-robust will see in the subprocesses: the dist-info and its entry
    # point (and nothing of the kind on this process's own path).
    (dist,) = importlib.metadata.distributions(path=[str(site)])
    assert dist.metadata["Name"] == "trl-robust-example-plugin"
    (entry_point,) = dist.entry_points.select(group=ENTRY_POINT_GROUP)
    assert (entry_point.name, entry_point.value) == (LOSS, "trl_robust_example_plugin:register")
    return site, tmp / "plugin.log"


def plugin_env(tmp_path, site=None, log=None):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "TRL_ROBUST_CACHE": str(tmp_path / "builtin-cache"),
        "HF_DATASETS_CACHE": str(tmp_path / "datasets-cache"),
    }
    if site is not None:  # in front of whatever the caller has (the launched processes inherit it)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    if log is not None:
        env["TRL_ROBUST_EXAMPLE_PLUGIN_LOG"] = str(log)
    return env


def log_lines(log: Path) -> list[tuple[str, int]]:
    """(event, pid) per line the plugin wrote."""
    if not log.exists():
        return []
    return [(event, int(pid.removeprefix("pid="))) for event, pid in (line.split() for line in log.read_text().splitlines())]


def run_python(code, env, tmp_path):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


def dpo_recipe(tmp_path) -> Path:
    recipe = {**yaml.safe_load(TINY_RECIPE.read_text()), "loss_type": LOSS, "max_steps": 2, "logging_steps": 1,
              "eval_strategy": "no", "save_steps": 2}
    del recipe["ropo_alpha"]
    path = tmp_path / "plugin.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def test_without_the_installed_entry_point_the_loss_type_is_unknown(tmp_path):
    # This process has no such plugin on its path: the name is unknown here and to the command.
    assert LOSS not in trl_robust.available_loss_types()
    result = subprocess.run(
        [str(BIN / "trl-robust"), "dpo", "--config", str(dpo_recipe(tmp_path)), "--output_dir", str(tmp_path / "out")],
        capture_output=True, text=True, env=plugin_env(tmp_path), cwd=tmp_path, timeout=120,
    )
    assert result.returncode != 0
    assert f"Unknown loss_type '{LOSS}'" in result.stderr


def test_python_lists_the_plugin_loss_after_loading_it_lazily_once(plugin, tmp_path):
    site, _ = plugin
    log = tmp_path / "python.log"
    code = f"""
import json, os, trl_robust
from trl_robust import registry
log = {str(log)!r}
seen_at_import = os.path.exists(log)  # importing trl_robust loads no plugin
names = trl_robust.available_loss_types()
spec = trl_robust.get_loss_spec({LOSS!r})
again = registry.registered_loss_types()
print(json.dumps({{"seen_at_import": seen_at_import, "names": names, "again": again, "module": spec.fn.__module__,
                   "defaults": registry.hyperparameter_defaults(), "reward": trl_robust.reward_loss_types()}}))
"""
    result = run_python(code, plugin_env(tmp_path, site, log), tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    out = json.loads(result.stdout)
    assert not out["seen_at_import"]
    assert LOSS in out["names"] and LOSS in out["again"]
    assert out["names"][-1] == LOSS  # after TRL's built-ins and the package's own losses
    assert out["module"] == "trl_robust_example_plugin"
    assert out["reward"][-1] == LOSS  # a per-pair loss: reward models take it too
    assert out["defaults"]["example_tanh_scale"] == SCALE
    assert [event for event, _ in log_lines(log)] == ["registered"]  # once per process, however often resolved


def test_a_plugin_that_fails_to_import_is_named_not_skipped(tmp_path):
    # A second, broken plugin next to nothing else: a dist-info by hand whose entry point names a missing module.
    site = tmp_path / "site"
    dist_info = site / "broken_loss_plugin-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-loss-plugin\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nbroken = no_such_module_here:register\n")
    code = "import trl_robust\ntrl_robust.get_loss_spec('ropo')"
    result = run_python(code, plugin_env(tmp_path, site), tmp_path)
    assert result.returncode != 0
    assert "LossPluginError" in result.stderr
    assert "entry point 'broken' = 'no_such_module_here:register'" in result.stderr
    assert "'broken-loss-plugin' 1.0" in result.stderr and "No module named 'no_such_module_here'" in result.stderr


def test_the_plugin_loss_trains_through_trl_robust_dpo_and_the_audit_reports_it(plugin, tmp_path):
    site, _ = plugin
    log = tmp_path / "dpo.log"
    env = plugin_env(tmp_path, site, log)
    out = tmp_path / "out"
    command = [str(BIN / "trl-robust"), "dpo", "--config", str(dpo_recipe(tmp_path)), "--output_dir", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stdout[-2000:] + stderr[-4000:]

    # The launched training process (not the command's own) loaded the plugin and computed the loss with its function.
    events = log_lines(log)
    registered = {pid for event, pid in events if event == "registered"}
    computed = {pid for event, pid in events if event == "computed"}
    assert process.pid in registered  # the command checked the recipe with the plugin's registration
    assert computed and process.pid not in computed and computed <= registered

    # Its values: at the first step policy = reference, so z = 0: ℓ = 1 − tanh(0) = 1, w = s·(1 − tanh²(0)) = s.
    (state,) = out.glob("checkpoint-*/trainer_state.json")
    history = [entry for entry in json.loads(state.read_text())["log_history"] if "loss" in entry]
    assert len(history) == 2
    assert history[0]["loss"] == pytest.approx(1.0, abs=1e-6)
    assert history[0][f"{LOSS}/grad_weight"] == pytest.approx(SCALE, abs=1e-6)
    tags = yaml.safe_load((out / "README.md").read_text().split("---")[1])["tags"]
    assert LOSS in tags

    # The audit takes the plugin's loss type and its hyperparameter flag, and reports that loss per pair.
    audit_help = subprocess.run([str(BIN / "trl-robust"), "audit", "--help"], capture_output=True, text=True, env=env,
                                cwd=tmp_path, timeout=120)
    assert audit_help.returncode == 0 and "--example_tanh_scale" in audit_help.stdout
    audit = [str(BIN / "trl-robust"), "audit", "--model_name_or_path", str(out), "--ref_model", "builtin:tiny",
             "--dataset_name", "builtin:tiny", "--output_dir", str(tmp_path / "audit"), "--use_cpu", "true",
             "--loss_type", LOSS, "--example_tanh_scale", "3"]
    result = subprocess.run(audit, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=180)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    pairs = [json.loads(line) for line in (tmp_path / "audit" / "audit.jsonl").read_text().splitlines()]
    assert len(pairs) == 64 and any(abs(pair["z"]) > 1e-4 for pair in pairs)  # the trained policy moved the margins
    for pair in pairs:
        assert pair[f"{LOSS}_loss"] == pytest.approx(1 - math.tanh(3 * pair["z"]), abs=1e-5)
