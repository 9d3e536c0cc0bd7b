"""The README's examples run as written, the docs' copies of them are the same code, and the README stays a front
door: short, naming every recipe."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = REPO / "docs"


def example(name: str, path: Path = README, language: str = "python") -> str:
    """The code block that follows `<!-- example: name -->` in `path` (the README by default)."""
    match = re.search(rf"<!-- example: {name} -->\n```{language}\n(.*?)```", path.read_text(), re.S)
    assert match, f"{path.name} has no {language} example {name!r}"
    return match.group(1)


# Run in one fresh interpreter (one start-up and one import of torch and TRL instead of four), in this order, each in a
# directory of its own and a namespace of its own (an import one example forgot is not lent by another). patch-trl
# comes last: it patches TRL for the rest of the process.
PYTHON_EXAMPLES = [
    ("quickstart", README),
    ("reward-quickstart", README),
    ("add-your-own-loss", DOCS / "adding-a-loss.md"),
    ("patch-trl", README),
]
RUNNER = r"""
import json, os, sys
for name, code in json.loads(sys.argv[1]):
    os.makedirs(name)
    os.chdir(name)
    print(f"=== example {name}", flush=True)
    exec(compile(code, f"<example {name}>", "exec"), {"__name__": "__main__"})
    sys.stdout.flush()
    os.chdir("..")
print("=== done", flush=True)
"""


def test_every_python_example_of_the_readme_and_the_docs_runs_as_written_offline(tmp_path):
    # A fresh interpreter in an empty directory, as a reader would run them: nothing registered or patched beforehand.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRL_ROBUST_CACHE": str(tmp_path / "cache")}
    examples = [(name, example(name, path)) for name, path in PYTHON_EXAMPLES]
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, json.dumps(examples)], cwd=tmp_path, capture_output=True, text=True, env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    sections = dict(re.findall(r"=== example (\S+)\n(.*?)(?==== )", result.stdout, re.S))
    assert list(sections) == [name for name, _ in PYTHON_EXAMPLES]

    # quickstart: the 4 steps it asked for: 4 × 8 pairs (TRL's default per-device batch) = half of the 64 pairs.
    (summary,) = [line for line in sections["quickstart"].splitlines() if "train_runtime" in line]
    assert "'epoch': '0.5'" in summary, summary
    assert (tmp_path / "quickstart" / "tiny-ropo").is_dir()
    # reward-quickstart: the robust loss trained (TRL prints the logs).
    assert "sympo_sigmoid/grad_weight" in sections["reward-quickstart"]
    # add-your-own-loss: z = 0 at the first step (policy = reference): w = scale · (1 − tanh²(0)) = 2 with the
    # registered default scale 2.
    assert float(sections["add-your-own-loss"].strip().splitlines()[-1]) == 2.0
    # patch-trl: TRL's own DPOTrainer, patched, trained the robust loss to the end (2 steps) and saved where it was told.
    # 2 steps × 8 pairs = a quarter of the 64 pairs; a loss type stock TRL does not know would have raised instead.
    (summary,) = [line for line in sections["patch-trl"].splitlines() if "train_runtime" in line]
    assert "'epoch': '0.25'" in summary, summary
    assert (tmp_path / "patch-trl" / "patched-out").is_dir()


def test_the_docs_copies_of_readme_examples_are_the_same_code():
    # getting-started.md and reward-models.md repeat README examples; only the README's copy is run, so they must match.
    readme_examples = dict(re.findall(r"<!-- example: (\S+) -->\n```\w+\n(.*?)```", README.read_text(), re.S))
    copies = 0
    for page in DOCS.glob("*.md"):
        for name, code in re.findall(r"<!-- example: (\S+) -->\n```\w+\n(.*?)```", page.read_text(), re.S):
            if name in readme_examples:
                assert code == readme_examples[name], f"docs/{page.name}'s example {name!r} differs from the README's"
                copies += 1
    assert copies >= 2  # the DPO quickstart (getting-started.md) and the reward one (reward-models.md) at least


def test_the_readme_command_line_examples_parse_as_the_command_parses_them(monkeypatch):
    # Running them is `trl-robust dpo|reward` through accelerate: tests/test_cli.py
    # (test_tiny_offline_recipe_trains_and_saves_model_and_card_through_the_real_command) and tests/test_reward_cli.py
    # (test_reward_recipe_trains_and_saves_model_and_card_through_the_real_command) run these recipes through the real
    # command. Here, in this process, every line is checked by the same parser and checks the command runs before it
    # launches anything: a recipe moved, a flag renamed or a value refused fails here.
    from trl_robust.cli.arguments import parse_command_args

    monkeypatch.chdir(REPO)  # the recipes' paths are relative to the checkout, as the README runs them
    lines = [line.split("#")[0].strip() for line in example("cli", language="bash").splitlines()]
    commands = [shlex.split(line) for line in lines if line]
    assert {argv[1] for argv in commands} == {"dpo", "reward"}
    for argv in commands:
        assert argv[0] == "trl-robust", argv
        args = parse_command_args(argv[2:], argv[1], f"trl-robust {argv[1]}", check_output_dir=False)
        assert args.training_args.output_dir == argv[argv.index("--output_dir") + 1]
        assert args.training_args.use_cpu, f"{' '.join(argv)} would not run on a CPU as written"


def test_the_readme_stays_short_and_names_every_recipe():
    text = README.read_text()
    assert len(text.splitlines()) <= 300, "the README is the front door: move reference material to docs/"
    recipes = sorted(path.name for path in (REPO / "recipes").glob("*.yaml"))
    assert recipes, "no recipes found"
    missing = [name for name in recipes if f"`{name}`" not in text]
    assert not missing, f"README.md does not name {missing}: add a row to its recipe table"


def test_readme_links_into_docs_point_at_pages_and_anchors_that_exist():
    # On GitHub these are plain file links (docs/x.md, docs/x.md#anchor); mkdocs does not check the README.
    text = README.read_text()
    links = re.findall(r"\]\((docs/[^)#\s]+)(?:#([^)\s]+))?\)", text)
    assert links
    for path, anchor in links:
        page = REPO / path
        assert page.is_file(), path
        if anchor:
            headings = re.findall(r"^#+ (.+)$", page.read_text(), re.M)
            assert anchor in {_slug(h) for h in headings}, f"{path} has no heading for #{anchor}"


def _slug(heading: str) -> str:
    """The anchor GitHub and MkDocs' toc extension make of a heading: lower case, punctuation dropped, spaces -> -."""
    heading = re.sub(r"[^\w\s-]", "", heading.lower())
    return re.sub(r"\s", "-", heading.strip())


def _ignored_top_level_dirs() -> list[str]:
    """The root-anchored directory patterns of .gitignore (`/name/`, globs allowed), as fnmatch patterns."""
    lines = (REPO / ".gitignore").read_text().splitlines()
    return [line.strip("/") for line in lines if line.startswith("/") and line.endswith("/")]


def test_what_the_readme_and_the_recipes_write_into_the_checkout_is_git_ignored():
    # A newcomer runs the README's commands from the checkout's root: what they write must not show up as changes.
    import fnmatch

    from trl_robust.experiments.demo import DemoArguments

    text = README.read_text() + (REPO / "recipes" / "clean_and_retrain.sh").read_text()
    written = {DemoArguments().output_dir}
    written |= set(re.findall(r'OUT="\$\{OUT:-([^}]+)\}"', text))  # clean_and_retrain.sh's default OUT
    written |= set(re.findall(r"--output_dir ([\w./-]+)", text))  # the README's commands (not the script's $OUT/...)
    written |= set(re.findall(r'output_dir="([^"]+)"', text))  # the README's Python examples
    for recipe in (REPO / "recipes").glob("*.yaml"):
        written |= set(re.findall(r"^output_dir: (\S+)", recipe.read_text(), re.M))
    assert {"trl-robust-demo", "clean-and-retrain", "tiny-cli"} <= written  # the search found what it looks for
    patterns = _ignored_top_level_dirs()
    for path in sorted(written):
        top = path.strip("/").split("/")[0]
        assert any(fnmatch.fnmatch(top, pattern) for pattern in patterns), f"{path} is not git-ignored"
