"""`trl-robust audit`: the noisy-pair audit as a command (see `trl_robust.audit` for what it computes).

    trl-robust audit --model_name_or_path OUT --ref_model BASE --dataset_name DATA --output_dir AUDIT
    accelerate launch -m trl_robust.scripts.audit ...          (several processes / GPUs)
"""

import os
import sys
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path

from ..audit import AuditInputError, AuditResult, audit_preferences
from ..audit.checks import check_loss_type, check_output_dir, check_settings
from ..audit.loading import FILE_BUILDERS, load_preference_split
from ..audit.models import resolve_models
from ..audit.result import CLEAN_MODES, DEFAULT_FLIP_COLUMN
from ..filter.rules import n_suspected
from ..registry import registered_hyperparameters
from .usage import suggestion


@dataclass
class AuditArguments:
    """Arguments of `trl-robust audit` (and `accelerate launch -m trl_robust.scripts.audit`)."""

    model_name_or_path: str = field(
        metadata={"help": "The trained policy: a model directory, a PEFT adapter directory, or a Hub id. Or a reward "
                  "model (a one-label ...ForSequenceClassification checkpoint, as `trl reward` / `trl-robust reward` "
                  "save it, recognised by its config): pairs are then ranked by its margin r(chosen) − r(rejected), "
                  "with no --ref_model and no --beta."}
    )
    dataset_name: str = field(
        metadata={"help": "The preference data, as TRL's `--dataset_name`: a local directory of data files, a single "
                  f"file ({', '.join(FILE_BUILDERS)}; it is the split audited), a Hub id, a directory written by "
                  "`Dataset.save_to_disk`, or `builtin:tiny`."}
    )
    output_dir: str = field(
        metadata={"help": "Where audit.jsonl, audit.csv, summary.md and z_histogram.png go (checked before scoring: it "
                  "must be creatable and writable, and empty unless --overwrite_output_dir)."}
    )
    ref_model: str | None = field(
        default=None,
        metadata={"help": "The reference the policy was trained against. Required for a full model; for a PEFT "
                  "adapter the default is its base model (the adapter disabled)."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name (Hub datasets)."})
    dataset_train_split: str = field(default="train", metadata={"help": "The split to audit."})
    beta: float | None = field(
        default=None,
        metadata={"help": "β of z = β·Δ: the β the policy was trained with (default 0.1). Not for a reward model."},
    )
    per_device_eval_batch_size: int = field(default=8, metadata={"help": "Pairs per device per forward pass."})
    max_length: int | None = field(
        default=None, metadata={"help": "Truncate prompt+completion to this many tokens, as TRL does. Default: none."}
    )
    loss_type: str | None = field(
        default=None,
        metadata={"help": "Also report this registered loss per pair (ropo, sympo_sigmoid, ...); for a reward model, "
                  "one of its loss types, as `trl-robust reward` trains with it."},
    )
    flip_column: str = field(
        default=DEFAULT_FLIP_COLUMN,
        metadata={"help": "Boolean column recording known flipped labels; if present, AUROC and precision@k."},
    )
    dtype: str = field(default="auto", metadata={"help": "Load the models in this dtype: auto, float32, bfloat16."})
    use_cpu: bool = field(default=False, metadata={"help": "Run on the CPU even if a GPU is available."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Write into a non-empty output_dir."})
    clean_share: float = field(
        default=0.0,
        metadata={"help": "Clean-and-retrain: also write `cleaned/train.jsonl` in output_dir, the audited split with its "
                  "most suspicious pairs (this share, in [0, 1)) dropped or swapped; pass that directory as "
                  "`--dataset_name` to retrain. Identical pairs are cleaned together. Refused (exit 2, the audit's "
                  "files written) when the ranking carries no information: every z the same, or margins that a flip "
                  "rate of 1/2 fits (a model with no opinion; the summary says why). 0 = write nothing more."},
    )
    clean_mode: str = field(
        default="drop",
        metadata={"help": "What `--clean_share` does with the suspects: `drop` them or `swap` chosen and rejected.",
                  "choices": list(CLEAN_MODES)},
    )


def _loss_flags() -> dict[str, tuple[type, str]]:
    """The audit's loss flags, one per registered loss hyperparameter (so a newly registered loss brings its own), plus
    SymPO's reward clip: flag → (type, help)."""
    flags = {}
    for attribute, hyperparameter in registered_hyperparameters().items():
        numeric = isinstance(hyperparameter.default, (int, float)) and not isinstance(hyperparameter.default, bool)
        flags[attribute] = (float if numeric else str, hyperparameter.help or f"`{attribute}` of its loss type.")
    flags["sympo_reward_clip"] = (str, "Reward clip of the `sympo_*` losses (default 10; `none` disables it).")
    return flags


def audit_arguments_class() -> type:
    """`AuditArguments` plus an optional flag per registered loss hyperparameter (default: the loss's own default)."""
    extra = [
        (name, kind | None, field(default=None, metadata={"help": help_text}))
        for name, (kind, help_text) in _loss_flags().items()
    ]
    return make_dataclass("AuditArguments", extra, bases=(AuditArguments,))


def run_audit_command(args: AuditArguments, noise=None) -> AuditResult:
    """What `trl-robust audit` does: check, load the data, audit, print the summary and where the files went.

    `noise` (`LabelNoiseArguments`): flip the loaded split exactly as `trl-robust dpo --flip_rate ...` did before
    training on it (same rate, seed and mode give the same pairs), so a run on injected noise can be audited against
    its flip record.
    """
    from types import SimpleNamespace

    from ..builtin import materialise_builtins

    # Cheap checks first, before the dataset is downloaded or read.
    check_settings(0.1 if args.beta is None else args.beta, args.per_device_eval_batch_size, args.max_length)
    if not 0 <= args.clean_share < 1:
        raise AuditInputError(f"--clean_share must be in [0, 1) (the share of pairs to clean), got {args.clean_share}")
    check_output_dir(args.output_dir, args.overwrite_output_dir)
    hyperparameters = {
        name: getattr(args, name) for name in _loss_flags() if getattr(args, name, None) is not None
    }
    # `builtin:` names -> local paths (built once into the cache; safe when several ranks race), models first.
    for attribute in ("model_name_or_path", "ref_model"):
        holder = SimpleNamespace(model_name_or_path=getattr(args, attribute), dataset_name=None)
        materialise_builtins(holder, holder)
        setattr(args, attribute, holder.model_name_or_path)
    policy, _ = resolve_models(args.model_name_or_path, args.ref_model)
    check_loss_type(args.loss_type, hyperparameters, reward_model=policy.is_reward_model)
    if policy.is_reward_model and args.beta is not None:
        raise AuditInputError(f"--beta was given, but {args.model_name_or_path!r} is a reward model: its margin "
                              "r(chosen) − r(rejected) has no β. Leave --beta out.")
    holder = SimpleNamespace(model_name_or_path=None, dataset_name=args.dataset_name)
    materialise_builtins(holder, holder)
    args.dataset_name = holder.dataset_name
    dataset = load_preference_split(args.dataset_name, args.dataset_config, args.dataset_train_split)
    if noise is not None and noise.flip_rate > 0:
        from ..data import flip_preferences

        dataset = flip_preferences(dataset, noise.flip_rate, seed=noise.flip_seed, mode=noise.flip_mode)
    result = audit_preferences(
        args.model_name_or_path,
        dataset,
        ref_model=args.ref_model,
        beta=args.beta,
        batch_size=args.per_device_eval_batch_size,
        max_length=args.max_length,
        loss_type=args.loss_type,
        loss_hyperparameters=hyperparameters or None,
        output_dir=args.output_dir,
        overwrite=args.overwrite_output_dir,
        flip_column=args.flip_column or None,
        dtype=args.dtype,
        use_cpu=args.use_cpu,
    )
    from accelerate import PartialState

    is_main = PartialState().is_main_process
    if is_main:
        print(result.summary)
        print(f"Wrote {', '.join(result.paths.values())}")
    if args.clean_share > 0:
        # Every rank holds the same result, so every rank refuses alike (and exits alike).
        reason = result.uninformative()
        if reason is not None:
            raise AuditInputError(f"--clean_share {args.clean_share:g}: no cleaned/train.jsonl written: {reason}. The "
                                  f"audit's own files are in {args.output_dir}.")
        if is_main:
            _write_cleaned(result, dataset, args)
    return result


def _write_cleaned(result: AuditResult, dataset, args) -> None:
    rows = result.rows_to_clean(dataset, args.clean_share)
    cleaned = result.cleaned(dataset, args.clean_share, args.clean_mode, flip_column=args.flip_column or None)
    path = Path(args.output_dir) / "cleaned" / "train.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    cleaned.to_json(str(path))
    result.paths["cleaned"] = str(path)
    action = "without" if args.clean_mode == "drop" else "with chosen/rejected swapped on"
    twins = ", identical pairs together" if len(rows) > n_suspected(args.clean_share, len(dataset)) else ""
    print(f"Wrote {path}: the {len(dataset)} pairs {action} the {len(rows)} most suspicious{twins} ({len(cleaned)} "
          f"pairs); retrain with --dataset_name {path.parent}")


def main(argv: list[str] | None = None, prog: str = "trl-robust audit") -> int:
    """Entry point of `trl-robust audit` and of `trl_robust.scripts.audit` (under `accelerate launch -m`)."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    from transformers import HfArgumentParser

    description = "Rank preference pairs by how likely their label is wrong (trl-robust's noisy-pair audit)."
    from .arguments import LabelNoiseArguments

    parser = HfArgumentParser((audit_arguments_class(), LabelNoiseArguments), prog=prog, description=description)
    try:
        # Unknown arguments come back instead of raising, so that they get one line, as `trl-robust dpo` gives them.
        args, noise, unknown = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    except ValueError as error:  # a dataclass's own check of its values, e.g. `--flip_rate 2`
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    try:
        if unknown:
            raise AuditInputError(_unknown_arguments(unknown, parser, prog))
        run_audit_command(args, noise)
    except AuditInputError as error:  # found alike on every rank: before any collective operation, or from the result
        print(f"{prog}: error: {error}", file=sys.stderr)  # every rank holds after the audit (the clean step's refusal)
        code = 2
    else:
        code = 0
    from .distributed import end_distributed

    end_distributed(exit_code=code)  # outside a distributed run, nothing
    return code


def _unknown_arguments(unknown: list[str], parser, prog: str) -> str:
    """One line for what the parser did not take: each unknown `--name`, with the closest argument of the audit, or
    (for a training argument such as `--learning_rate`) a note that the audit trains nothing."""
    names = [token.split("=", 1)[0] for token in unknown if token.startswith("-")]
    if not names:
        return f"unexpected argument {unknown[0]!r}: every value needs its `--name` before it"
    from dataclasses import fields

    from ..config import RobustDPOConfig

    options = {option for action in parser._actions for option in action.option_strings}
    training_only = {f"--{f.name}" for f in fields(RobustDPOConfig)} - options
    problems = []
    for name in names:
        # The closest of both kinds: `--lerning_rate` is nearer `--learning_rate` than the audit's `--flip_rate`.
        hint = suggestion(name, sorted(options | training_only))
        if name in training_only:
            hint = " (a training argument: the audit trains nothing)"
        elif hint.removeprefix(" (did you mean ").removesuffix("?)").strip("'") in training_only:
            hint = hint[:-1] + " That is a training argument: the audit trains nothing)"
        problems.append(f"unknown argument {name!r}{hint}")
    return f"{'; '.join(problems)}. `{prog} --help` lists the audit's arguments."
