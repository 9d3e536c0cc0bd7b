"""The probes of every private TRL and transformers name the trainers and the audit rely on besides the loss loop.

Each probe reads the installed code (its signature, or its syntax tree where what matters is how TRL uses a name) and
returns what changed as one line per problem, or nothing. `trl_robust.compat` runs them before any model is loaded and
raises one `IncompatibleTRLError` naming every problem. The probes work on syntax trees (`*_in` functions) so that a
test can feed them a changed TRL, and so that they run on any TRL release's source files without installing it.

What each probe guards, and who relies on it:

- `self.beta`, the `self._metrics[mode]` lists (`defaultdict(list)`: we append to keys TRL never created), the loss
  list and its weights: set by `DPOTrainer.__init__` / `RewardTrainer.__init__`, read by the trainers and the audit.
- The f-divergence check of `DPOTrainer.__init__` (TRL >= 1.10): a non-default `f_divergence_type` only for a set of
  loss names. `RobustDPOTrainer` shows TRL 'sigmoid' in place of its own loss types while TRL checks, so 'sigmoid' must
  be in that set and the check must read the loss list from the config.
- Liger: TRL <= 1.13 with `use_liger_kernel=True` computes the DPO loss in a separate path that never reaches the loss
  loop (so never our loss types); `liger_bypasses_loss_loop_in` finds whether the installed TRL still has one.
- The "ref" adapter: TRL's `DPOTrainer` copies a PEFT model's adapter as "ref" and uses it as the reference when it is
  there (the audit deletes it to score against the base model instead).
- The order of a reward model's outputs: TRL's `RewardTrainer.compute_loss` splits `outputs.logits` into the chosen
  rewards then the rejected ones (`torch.chunk(..., chunks=2)`); `RobustRewardTrainer` splits them the same way.
- The model-card data (`_tag_names`, `_name`, `_paper`), `save_model(_internal_call=...)`, and transformers'
  `Trainer` names the epoch filter uses (its scoring pass, the signature columns, `TrainerState.stateful_callbacks`).

What the commands rely on (TRL's scripts, accelerate's launch check) is probed in `launch`.
"""

import ast
import dataclasses
import inspect

from .loss_loop import Shape, assigned_attributes, function_tree, self_assignments

REF_ADAPTER = "ref"  # the adapter name TRL's DPOTrainer gives the frozen copy of a PEFT model's adapter
SIGNATURE_COLUMNS = "Trainer._set_signature_columns_if_needed"


def mentioned_names(node: ast.AST) -> set[str]:
    """Every name and attribute name mentioned in `node`."""
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)
    }


def _self_attributes(nodes) -> set[str]:
    return {
        n.attr
        for node in nodes
        for n in ast.walk(node)
        if isinstance(n, ast.Attribute) and getattr(n.value, "id", "") == "self"
    }


def _ifs_on(func: ast.AST, name: str) -> list[ast.If]:
    """The `if` statements whose condition mentions `name`, in source order."""
    found = [n for n in ast.walk(func) if isinstance(n, ast.If) and name in mentioned_names(n.test)]
    return sorted(found, key=lambda n: n.lineno)


def shorten(node: ast.AST, limit: int = 100) -> str:
    text = " ".join(ast.unparse(node).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- what `__init__` sets up -------------------------------------------------------------------------------------------


def metrics_problems_in(init: ast.FunctionDef, owner: str) -> list[str]:
    """`self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}`: we append to new keys of its lists."""
    values = self_assignments(init).get("_metrics")
    if values is None:
        return [f"`{owner}.__init__` no longer sets `self._metrics`"]

    def is_expected(value) -> bool:
        return (
            isinstance(value, ast.Dict)
            and {getattr(k, "value", None) for k in value.keys} >= {"train", "eval"}
            and all(ast.unparse(v).replace(" ", "") == "defaultdict(list)" for v in value.values)
        )

    if any(is_expected(v) for v in values):
        return []
    found = ", ".join(f"`{shorten(v)}`" for v in values if v is not None) or "something else"
    return [
        f"`{owner}.__init__` now sets `self._metrics` to {found}, not to "
        '`{"train": defaultdict(list), "eval": defaultdict(list)}` (trl-robust appends its metrics to '
        "`self._metrics[mode][name]`)"
    ]


def dpo_init_problems_in(init: ast.FunctionDef) -> list[str]:
    """The attributes of `DPOTrainer.__init__` the trainers and the audit read or replace."""
    assigned = self_assignments(init)
    problems = [
        f"`DPOTrainer.__init__` no longer sets `self.{n}`" for n in ("loss_types", "loss_weights") if n not in assigned
    ]
    beta = assigned.get("beta")
    if beta is None:
        problems.append("`DPOTrainer.__init__` no longer sets `self.beta` (trl-robust's margin is `self.beta * Δ`)")
    elif not any(v is not None and ast.unparse(v) == "args.beta" for v in beta):
        found = ", ".join(f"`{shorten(v)}`" for v in beta if v is not None) or "something else"
        problems.append(f"`DPOTrainer.__init__` now sets `self.beta` to {found}, not to `args.beta`")
    return problems + metrics_problems_in(init, "DPOTrainer")


# --- the f-divergence check ------------------------------------------------------------------------------------------

_LOSS_LIST_READS = ("self.loss_types", "args.loss_type")  # the config's list, at the time TRL's __init__ checks it


def _string_set(node: ast.AST, init: ast.FunctionDef, module_globals: dict) -> set[str] | None:
    """The set of strings `node` is (a `{...}` literal, `set(...)`/`frozenset(...)` of one, or a name bound to one in
    `init` or in TRL's module), or None where it is something else."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("set", "frozenset") and len(node.args) == 1:
        node = node.args[0]
    if isinstance(node, ast.Set | ast.List | ast.Tuple):
        values = [getattr(e, "value", None) for e in node.elts]
        return set(values) if all(isinstance(v, str) for v in values) else None
    if isinstance(node, ast.Name):
        bound = [
            n.value
            for n in ast.walk(init)
            if isinstance(n, ast.Assign) and any(getattr(t, "id", None) == node.id for t in n.targets)
        ]
        if bound:
            return _string_set(bound[-1], init, module_globals)
        value = module_globals.get(node.id)
        if isinstance(value, set | frozenset | list | tuple) and all(isinstance(v, str) for v in value):
            return set(value)
    return None


def f_divergence_problems_in(init: ast.FunctionDef, module_globals: dict | None = None) -> list[str]:
    """Where `DPOTrainer.__init__` refuses a non-default `f_divergence_type` for loss types outside a set of names, it
    must compare the config's loss list with a set that contains 'sigmoid': `RobustDPOTrainer` shows 'sigmoid' in place
    of its loss types while TRL checks. No such check (TRL < 1.10): nothing to step around."""
    module_globals = module_globals or {}
    problems = []
    derived = [ast.unparse(v) for v in self_assignments(init).get("loss_types", []) if v is not None]
    for check in _ifs_on(init, "f_divergence_type"):
        if not {"loss_types", "loss_type"} & mentioned_names(check.test):
            continue  # about something else (e.g. Liger with a non-default f-divergence)
        test = shorten(check.test)
        reads = {ast.unparse(n) for n in ast.walk(check.test) if isinstance(n, ast.Attribute)}
        reads = {r for r in reads if r.endswith((".loss_types", ".loss_type"))}
        if not reads or not reads <= set(_LOSS_LIST_READS):
            problems.append(
                f"`DPOTrainer.__init__` checks `f_divergence_type` against loss types other than the config's list "
                f"(`if {test}`); trl-robust shows TRL 'sigmoid' in its loss types' place in `args.loss_type` while TRL "
                "checks"
            )
            continue
        if "self.loss_types" in reads and not any("args.loss_type" in d for d in derived):
            problems.append("`DPOTrainer.__init__` no longer takes `self.loss_types` from `args.loss_type`")
            continue
        sets = [s for n in ast.walk(check.test) if (s := _string_set(n, init, module_globals)) is not None]
        if not sets:
            problems.append(
                f"`DPOTrainer.__init__` checks `f_divergence_type` against the loss types in a way trl-robust does not "
                f"recognise (`if {test}`; it expects a set of the loss names allowed with an f-divergence)"
            )
        elif not any("sigmoid" in s for s in sets):
            allowed = sorted(set().union(*sets))
            problems.append(
                f"`DPOTrainer.__init__` allows a non-default `f_divergence_type` only with the loss types {allowed}, "
                "which no longer include 'sigmoid' (trl-robust shows 'sigmoid' in its loss types' place while TRL "
                "checks)"
            )
    return problems


def config_f_divergence_problems_in(post_init: ast.FunctionDef | None) -> list[str]:
    """TRL's `DPOConfig` must not check `f_divergence_type` against the loss types itself: trl-robust steps around the
    check in `DPOTrainer.__init__` only."""
    if post_init is None:
        return []
    return [
        f"`DPOConfig.__post_init__` now checks `f_divergence_type` against the loss types (`if {shorten(c.test)}`); "
        "trl-robust only steps around that check in `DPOTrainer.__init__`"
        for c in _ifs_on(post_init, "f_divergence_type")
        if {"loss_types", "loss_type"} & mentioned_names(c.test)
    ]


# --- Liger -------------------------------------------------------------------------------------------------------------


def liger_bypasses_loss_loop_in(compute_loss: ast.FunctionDef, loss_method: ast.FunctionDef | None = None) -> bool:
    """Whether `use_liger_kernel=True` sends the DPO loss around the loss loop of `_compute_loss` (`loss_method`):
    in `compute_loss`, a `use_liger_kernel` branch that calls a loss method of its own (TRL <= 1.13:
    `self._compute_loss_liger`) or never reaches `self._compute_loss`; or in `_compute_loss`, such a branch that
    returns. TRL 1.14 routes Liger's chunked log-probs through `_compute_loss`; 1.16 has no Liger branch at all."""
    for branch in _ifs_on(compute_loss, "use_liger_kernel"):
        called = _self_attributes(branch.body)
        own = {a for a in called if a != "_compute_loss" and ("liger" in a.lower() or a.startswith("_compute_loss"))}
        if own or "_compute_loss" not in called:
            return True
    if loss_method is not None:
        for branch in _ifs_on(loss_method, "use_liger_kernel"):
            if any(isinstance(n, ast.Return) for stmt in branch.body for n in ast.walk(stmt)):
                return True
    return False


# --- the "ref" adapter -----------------------------------------------------------------------------------------------


def ref_adapter_problems_in(init: ast.FunctionDef, loss_method: ast.FunctionDef) -> list[str]:
    """TRL's `__init__` adds the adapter copy as "ref", and `_compute_loss` uses "ref" as the reference when the model
    has it (otherwise it disables the adapters): the audit deletes that copy to score against the base model."""
    problems = []
    adds = [
        n
        for n in ast.walk(init)
        if isinstance(n, ast.Call)
        and getattr(n.func, "attr", None) == "add_adapter"
        and n.args
        and getattr(n.args[0], "value", None) == REF_ADAPTER
    ]
    if not adds:
        problems.append(
            f"`DPOTrainer.__init__` no longer adds a PEFT model's reference adapter as {REF_ADAPTER!r} "
            "(`model.add_adapter('ref', ...)`), which the audit removes to score against the base model"
        )
    uses = [
        n
        for n in ast.walk(loss_method)
        if isinstance(n, ast.Compare)
        and getattr(n.left, "value", None) == REF_ADAPTER
        and isinstance(n.ops[0], ast.In)
        and "peft_config" in mentioned_names(n.comparators[0])
    ]
    if not uses:
        problems.append(
            f"`DPOTrainer._compute_loss` no longer picks the reference adapter by `{REF_ADAPTER!r} in "
            "model.peft_config` (falling back to disabling the adapters), which the audit relies on"
        )
    return problems


# --- the reward trainer ------------------------------------------------------------------------------------------------


def reward_order_problems_in(compute_loss: ast.FunctionDef) -> list[str]:
    """`rewards_chosen, rewards_rejected = torch.chunk(outputs.logits..., chunks=2)`: the chosen rewards first."""
    splits = []
    for node in ast.walk(compute_loss):
        if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)):
            continue
        call = node.value
        if getattr(call.func, "attr", getattr(call.func, "id", None)) != "chunk":
            continue
        receiver = call.args[0] if call.args else getattr(call.func, "value", None)
        two = any(k.arg == "chunks" and getattr(k.value, "value", None) == 2 for k in call.keywords) or any(
            getattr(a, "value", None) == 2 for a in call.args[1:2]
        )
        if receiver is not None and "logits" in mentioned_names(receiver) and two:
            splits.append(node)
    expected = ["rewards_chosen", "rewards_rejected"]
    if any(
        len(s.targets) == 1
        and isinstance(s.targets[0], ast.Tuple)
        and [getattr(e, "id", None) for e in s.targets[0].elts] == expected
        for s in splits
    ):
        return []
    found = f" (it now has `{shorten(splits[0])}`)" if splits else ""
    return [
        "`RewardTrainer.compute_loss` no longer splits the model's outputs as `rewards_chosen, rewards_rejected = "
        f"torch.chunk(outputs.logits..., chunks=2)`{found}: trl-robust takes the first half of the rewards as the "
        "chosen responses' and the second half as the rejected ones'"
    ]


# --- the installed TRL -----------------------------------------------------------------------------------------------


def _tree(obj, what: str) -> ast.FunctionDef:
    return function_tree(obj, what)


def dpo_problems() -> list[str]:
    """Every probe of `DPOTrainer`, `DPOConfig` and transformers' `Trainer` (without building anything)."""
    import trl
    from transformers import Trainer, TrainerState
    from trl import DPOConfig, DPOTrainer

    problems = []

    def check(condition: bool, problem: str) -> None:
        if not condition:
            problems.append(problem)

    # Model-card data (`RobustDPOTrainer._set_model_card_data`).
    check(isinstance(getattr(DPOTrainer, "_tag_names", None), list), "`DPOTrainer._tag_names` is no longer a list")
    check(isinstance(getattr(DPOTrainer, "_name", None), str), "`DPOTrainer._name` is no longer a string")
    paper = getattr(DPOTrainer, "_paper", None)
    check(
        isinstance(paper, dict) and {"title", "id", "citation"} <= set(paper),
        "`DPOTrainer._paper` is no longer a dict with title, id and citation",
    )
    module_globals = vars(inspect.getmodule(DPOTrainer) or trl)
    for probe in (
        lambda: dpo_init_problems_in(_tree(DPOTrainer.__init__, "`DPOTrainer.__init__`")),
        lambda: f_divergence_problems_in(_tree(DPOTrainer.__init__, "`DPOTrainer.__init__`"), module_globals),
        lambda: config_f_divergence_problems_in(
            _tree(DPOConfig.__post_init__, "`DPOConfig.__post_init__`") if "__post_init__" in vars(DPOConfig) else None
        ),
        lambda: ref_adapter_problems_in(
            _tree(DPOTrainer.__init__, "`DPOTrainer.__init__`"),
            _tree(vars(DPOTrainer).get("_compute_loss"), "`DPOTrainer._compute_loss`"),
        ),
        # transformers' `Trainer`: the column list `remove_unused_columns` keeps (extended for passed-through columns).
        lambda: [] if "_signature_columns" in assigned_attributes(
            getattr(Trainer, "_set_signature_columns_if_needed", None), f"transformers' `{SIGNATURE_COLUMNS}`"
        ) else [f"transformers' `{SIGNATURE_COLUMNS}` no longer sets `self._signature_columns`"],
    ):
        try:
            problems += probe()
        except Shape as problem:
            problems.append(str(problem))
    # The epoch filter's scoring pass and its saved choice.
    loop_parameters = set(inspect.signature(Trainer.evaluation_loop).parameters)
    check(
        {"dataloader", "description", "prediction_loss_only", "metric_key_prefix"} <= loop_parameters,
        "transformers' `Trainer.evaluation_loop` changed its arguments",
    )
    check(
        len(inspect.signature(Trainer.get_eval_dataloader).parameters) >= 2,
        "transformers' `Trainer.get_eval_dataloader` no longer takes a dataset",
    )
    check(
        "stateful_callbacks" in {f.name for f in dataclasses.fields(TrainerState)},
        "transformers' `TrainerState` has no `stateful_callbacks` (where the epoch filter saves its choice)",
    )
    check(
        "_internal_call" in inspect.signature(DPOTrainer.save_model).parameters,
        "`DPOTrainer.save_model` no longer takes `_internal_call`",
    )
    check(callable(getattr(DPOTrainer, "create_model_card", None)), "`DPOTrainer.create_model_card` is gone")
    return list(dict.fromkeys(problems))  # a source that cannot be read is named once


def reward_problems() -> list[str]:
    """What `RobustRewardTrainer` reads from TRL's `RewardTrainer`/`RewardConfig` (without building anything).

    It calls TRL's `compute_loss(..., return_outputs=True)` and takes the rewards from the outputs, split as TRL splits
    them (so TRL's forward and metrics run unchanged), reads `args.center_rewards_coefficient`, and extends the
    model-card data and the metrics dict TRL's `__init__` sets up.
    """
    from trl import RewardConfig, RewardTrainer

    problems = []

    def check(condition: bool, problem: str) -> None:
        if not condition:
            problems.append(problem)

    parameters = inspect.signature(RewardTrainer.compute_loss).parameters
    check(
        {"model", "inputs", "return_outputs"} <= set(parameters),
        "`RewardTrainer.compute_loss` no longer takes `return_outputs` (trl-robust takes the rewards from its outputs)",
    )
    check(
        "center_rewards_coefficient" in {f.name for f in dataclasses.fields(RewardConfig)},
        "`RewardConfig` has no `center_rewards_coefficient`",
    )
    check(isinstance(getattr(RewardTrainer, "_tag_names", None), list), "`RewardTrainer._tag_names` is no longer a list")
    check(isinstance(getattr(RewardTrainer, "_name", None), str), "`RewardTrainer._name` is no longer a string")
    for probe in (
        lambda: metrics_problems_in(_tree(RewardTrainer.__init__, "`RewardTrainer.__init__`"), "RewardTrainer"),
        lambda: reward_order_problems_in(_tree(RewardTrainer.compute_loss, "`RewardTrainer.compute_loss`")),
    ):
        try:
            problems += probe()
        except Shape as problem:
            problems.append(str(problem))
    return list(dict.fromkeys(problems))
