"""The audit's input checks, all before any model is loaded: settings, output directory, model paths, dataset, loss."""

import json
import math
import numbers
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import builtin
from ..data import ROW_COLUMN
from ..paths import listing_if_not_empty, looks_like_local_path


class AuditInputError(ValueError):
    """Bad input to the audit, found before any model is loaded (or, for rows TRL would not score, right after)."""


def check_settings(beta, batch_size, max_length) -> None:
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not math.isfinite(beta) or beta <= 0:
        raise AuditInputError(f"beta must be a finite number > 0 (the β the policy was trained with), got {beta!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise AuditInputError(f"batch_size must be a positive integer, got {batch_size!r}")
    if max_length is not None and (
        isinstance(max_length, bool) or not isinstance(max_length, numbers.Integral) or max_length < 2
    ):
        raise AuditInputError(f"max_length must be None (no truncation) or an integer >= 2, got {max_length!r}")


def check_output_dir(output_dir, overwrite: bool) -> None:
    if output_dir is None:
        return
    path = Path(output_dir)
    if path.exists() and not path.is_dir():
        raise AuditInputError(f"output_dir {str(path)!r} exists and is not a directory")
    shown = None if overwrite else listing_if_not_empty(path)
    if shown is not None:
        raise AuditInputError(
            f"output_dir {str(path)!r} already exists and is not empty ({shown}); the audit would overwrite it. "
            "Pass overwrite=True (`--overwrite_output_dir true`) or choose another directory."
        )


@dataclass
class ModelSource:
    """Where a policy or reference comes from, resolved without loading it."""

    value: Any  # a path / Hub id, or a loaded model
    is_adapter: bool  # a PEFT adapter (directory, Hub id or `PeftModel`)
    base: str | None = None  # the adapter's base model, read from adapter_config.json
    is_reward_model: bool = False  # a one-label sequence classifier (what TRL's RewardTrainer saves): see `reward_model_kind`

    @property
    def is_loaded(self) -> bool:
        return not isinstance(self.value, (str, os.PathLike))

    def describe(self) -> str:
        if self.is_loaded:
            return f"a loaded {type(self.value).__name__}"
        return str(self.value) + (f" (PEFT adapter on {self.base})" if self.is_adapter else "")


def resolve_model(value, role: str) -> ModelSource:
    """Check that a model path exists and say whether it is a PEFT adapter; load nothing."""
    if value is None:
        raise AuditInputError(f"{role} is required")
    if builtin.is_builtin(value):  # `builtin:tiny`, as in the commands: built locally, never looked up on the Hub
        try:
            value = builtin.model_path(value)
        except ValueError as error:
            raise AuditInputError(f"{role}: {error}") from None
    if not isinstance(value, (str, os.PathLike)):
        from accelerate.utils import is_peft_model

        if not isinstance(value, torch.nn.Module):
            raise AuditInputError(f"{role} must be a path, a Hub id or a loaded model, got {type(value).__name__}")
        config = getattr(value, "config", None)
        is_reward = is_reward_config(
            [type(value).__name__], getattr(config, "num_labels", None), f"{role} (a loaded {type(value).__name__})"
        )
        if is_reward and is_peft_model(value):
            raise AuditInputError(
                f"{role} is a PEFT adapter of a sequence classifier (a reward model trained with LoRA); pass "
                "`model.merge_and_unload()`"
            )
        return ModelSource(value, is_adapter=is_peft_model(value), is_reward_model=is_reward)
    name = os.path.expanduser(os.fspath(value))
    if os.path.isdir(name):
        adapter_config = os.path.join(name, "adapter_config.json")
        if os.path.isfile(adapter_config):
            with open(adapter_config) as file:
                base = json.load(file).get("base_model_name_or_path")
            if not base:
                raise AuditInputError(
                    f"{role} {name!r} is a PEFT adapter whose adapter_config.json names no base model"
                )
            check_not_reward_adapter(adapter_config, f"{role} {name!r}")
            if looks_like_local_path(base) and not os.path.isdir(os.path.expanduser(base)):
                raise AuditInputError(
                    f"{role} {name!r} is a PEFT adapter on the base model {base!r}, which does not exist; load the "
                    "adapter yourself and pass the `PeftModel`, or fix base_model_name_or_path in adapter_config.json"
                )
            return ModelSource(name, is_adapter=True, base=base)
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise AuditInputError(
                f"{role} {name!r} holds neither a model (config.json) nor a PEFT adapter (adapter_config.json)"
            )
        return ModelSource(name, is_adapter=False, is_reward_model=reward_model_kind(os.path.join(name, "config.json"), role))
    if os.path.exists(name):
        raise AuditInputError(f"{role} {name!r} is a file; expected a model directory or a Hub id")
    if looks_like_local_path(name):
        raise AuditInputError(f"{role} {name!r} does not exist")
    # A Hub id (or a cached one under HF_HUB_OFFLINE=1): ask for adapter_config.json without loading weights.
    from transformers.utils import cached_file

    try:
        adapter_config = cached_file(
            name, "adapter_config.json", _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    except (OSError, ValueError) as error:
        raise AuditInputError(
            f"{role} {name!r} is neither a local directory nor a reachable Hub repository: {error}"
        ) from None
    if adapter_config:
        check_not_reward_adapter(adapter_config, f"{role} {name!r}")
        with open(adapter_config) as file:
            return ModelSource(name, is_adapter=True, base=json.load(file).get("base_model_name_or_path"))
    config = cached_file(name, "config.json", _raise_exceptions_for_missing_entries=False,
                         _raise_exceptions_for_connection_errors=False)
    return ModelSource(name, is_adapter=False, is_reward_model=bool(config) and reward_model_kind(config, role))


# Why the audit tells a reward model from a policy by its checkpoint, with no argument to say which: the two are
# different kinds of model (TRL's RewardTrainer saves `<Arch>ForSequenceClassification` with one label; DPO saves a
# causal LM), each can only be scored one way, so a flag could only repeat what the checkpoint says or contradict it.
# A causal LM is always audited as a policy: TRL would give it a fresh, random reward head, whose ranking means nothing.
def is_reward_config(architectures, num_labels, described: str) -> bool:
    """True for a one-label sequence classifier (a reward model); an `AuditInputError` for one with several labels."""
    if not any(str(name).endswith("ForSequenceClassification") for name in architectures or ()):
        return False
    if num_labels != 1:
        raise AuditInputError(
            f"{described} is a sequence classifier with {num_labels} labels; the audit ranks pairs by a reward model's "
            "margin r(chosen) − r(rejected), which needs one output (num_labels=1, what TRL's RewardTrainer saves), or "
            "by a DPO policy's implicit-reward margin (a causal LM)"
        )
    return True


def reward_model_kind(config_path: str, role: str) -> bool:
    """Whether the model whose config.json is at `config_path` is a reward model (read as JSON; nothing loaded)."""
    with open(config_path) as file:
        config = json.load(file)
    # transformers saves `id2label` (one entry per label) and derives `num_labels` from it; 2 when neither is saved.
    labels = config.get("id2label")
    num_labels = len(labels) if isinstance(labels, dict) and labels else config.get("num_labels", 2)
    return is_reward_config(config.get("architectures"), num_labels, f"{role} {os.path.dirname(config_path)!r}")


def check_not_reward_adapter(adapter_config_path: str, described: str) -> None:
    with open(adapter_config_path) as file:
        task_type = json.load(file).get("task_type")
    if task_type == "SEQ_CLS":
        raise AuditInputError(
            f"{described} is a PEFT adapter of a sequence classifier (task_type SEQ_CLS, e.g. a reward model trained "
            "with LoRA); merge it into its base model (`merge_and_unload()` + `save_pretrained`) and audit that directory"
        )


def resolve_models(model, ref_model) -> tuple[ModelSource, ModelSource | None]:
    policy = resolve_model(model, "model")
    reference = None if ref_model is None else resolve_model(ref_model, "ref_model")
    if policy.is_reward_model:
        if reference is not None:
            raise AuditInputError(
                f"model {policy.describe()} is a reward model (a one-label sequence classifier): it scores each pair by "
                "its own margin r(chosen) − r(rejected), with no reference; leave ref_model out (`--ref_model`)"
            )
        return policy, None
    if reference is None and not policy.is_adapter:
        raise AuditInputError(
            f"ref_model is required: the policy {policy.describe()} is a full model, and a model's "
            "`config._name_or_path` does not reliably name the model it was trained from (it is rewritten on every "
            "save_pretrained). Pass the reference the policy was trained against (its SFT / starting checkpoint) as "
            "ref_model (`--ref_model PATH`). Only for a PEFT adapter is the reference implied: its base model."
        )
    if reference is not None and reference.is_adapter:
        raise AuditInputError(
            f"ref_model {reference.describe()} is a PEFT adapter; merge it into its base model first "
            "(`merge_and_unload()` + `save_pretrained`) and pass that directory"
        )
    if reference is not None:
        check_same_vocabulary(vocabulary_facts(policy), vocabulary_facts(reference), policy, reference)
    return policy, reference


def _model_directory(source: ModelSource) -> str | None:
    """The local directory holding the model's config.json (an adapter's base model), or None (Hub id, loaded)."""
    if source.is_loaded:
        return None
    name = source.base if source.is_adapter else os.fspath(source.value)
    name = os.path.expanduser(name) if name else None
    return name if name and os.path.isdir(name) else None


def vocabulary_facts(source: ModelSource) -> dict[str, Any]:
    """What can be known of a model's vocabulary without loading it: `vocab_size` from its config, and the token → id
    map of its `tokenizer.json` (the policy's own directory first: a fine-tune saves its tokenizer there)."""
    if source.is_loaded:
        model = source.value.get_base_model() if source.is_adapter else source.value
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        return {"vocab_size": getattr(config, "vocab_size", None)}
    facts = {}
    directory = _model_directory(source)
    if directory and os.path.isfile(os.path.join(directory, "config.json")):
        with open(os.path.join(directory, "config.json")) as file:
            config = json.load(file)
        facts["vocab_size"] = config.get("vocab_size", config.get("text_config", {}).get("vocab_size"))
    for candidate in [os.fspath(source.value), directory]:
        path = os.path.join(os.path.expanduser(candidate), "tokenizer.json") if candidate else None
        if path and os.path.isfile(path):
            with open(path) as file:
                model = json.load(file).get("model", {})
            vocab = model.get("vocab")
            facts["vocab"] = vocab if isinstance(vocab, dict) else None
            break
    return facts


def saved_beta(source: ModelSource) -> float | None:
    """The β the policy was trained with, where its directory holds transformers' `training_args.bin`; else None.

    That file is a pickle: it is *read* without being unpickled (no code from it runs), by walking its opcodes for the
    float that follows the key "beta".
    """
    import pickletools
    import zipfile

    if source.is_loaded:
        return None
    path = os.path.join(os.path.expanduser(os.fspath(source.value)), "training_args.bin")
    if not os.path.isfile(path):
        return None
    try:
        if zipfile.is_zipfile(path):  # torch.save's format: the pickle is one member of a zip archive
            with zipfile.ZipFile(path) as archive:
                name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                data = archive.read(name)
        else:
            with open(path, "rb") as file:
                data = file.read()
        key_seen = False
        for opcode, argument, _ in pickletools.genops(data):
            if argument == "beta":
                key_seen = True
            elif key_seen and opcode.name in ("BINFLOAT", "FLOAT"):
                return float(argument)
            elif key_seen and isinstance(argument, str):  # the next key: β was not stored as a float
                return None
    except (OSError, ValueError, StopIteration, zipfile.BadZipFile):
        return None
    return None


def check_beta(beta: float, policy: ModelSource) -> None:
    """Warn when the β given differs from the one the policy was trained with: z = β·Δ, and the losses read z on the
    scale the policy was trained at (the ranking and the noise estimate do not depend on it)."""
    trained = saved_beta(policy)
    if trained is not None and not math.isclose(trained, beta, rel_tol=1e-6):
        warnings.warn(
            f"The policy {policy.describe()} was trained with beta={trained:g} (its training_args.bin), and the audit "
            f"uses beta={beta:g}. The ranking is the same, but z and the losses "
            f"are on another scale than in training; pass beta={trained:g} (`--beta {trained:g}`) unless you mean it.",
            UserWarning,
            stacklevel=3,
        )


def check_same_vocabulary(policy_facts, reference_facts, policy: ModelSource, reference: ModelSource) -> None:
    """Refuse a reference whose vocabulary differs from the policy's: its log-probs of the same token ids would be of
    other tokens (an index error if its vocabulary is smaller, a silently wrong ranking if it is larger)."""
    problems = []
    sizes = policy_facts.get("vocab_size"), reference_facts.get("vocab_size")
    if None not in sizes and sizes[0] != sizes[1]:
        problems.append(f"vocab_size {sizes[0]} (policy) vs {sizes[1]} (reference)")
    vocabularies = policy_facts.get("vocab"), reference_facts.get("vocab")
    if None not in vocabularies and vocabularies[0] != vocabularies[1]:
        differing = sorted(set(vocabularies[0].items()) ^ set(vocabularies[1].items()))[:3]
        problems.append(f"their tokenizer.json vocabularies differ (e.g. {differing})")
    if problems:
        raise AuditInputError(
            f"the policy {policy.describe()} and the reference {reference.describe()} do not share a vocabulary: "
            f"{'; '.join(problems)}. z compares the two models' log-probs of the same token ids, so pass the "
            "reference the policy was trained from (same tokenizer)"
        )


def check_dataset(dataset, flip_column: str | None) -> list[bool] | None:
    """Validate the preference dataset; return its flip record (or None)."""
    from datasets import Dataset

    from ..dataset_checks import check_preference_dataset

    if not isinstance(dataset, Dataset):
        hint = "; pick a split, e.g. dataset['train']" if isinstance(dataset, Mapping) else ""
        raise AuditInputError(f"dataset must be a datasets.Dataset, got {type(dataset).__name__}{hint}")
    if ROW_COLUMN in dataset.column_names:
        raise AuditInputError(f"dataset has a column named {ROW_COLUMN!r}, which the audit reserves; rename it")
    try:
        check = check_preference_dataset(dataset, "dataset")
    except ValueError as error:
        raise AuditInputError(str(error)) from None
    if check["skipped"] == "tokenized":
        raise AuditInputError(
            "dataset is already tokenised (it has prompt_ids/chosen_ids/... columns); pass the text dataset, so the "
            "audit tokenises it exactly as TRL does"
        )
    if not flip_column or flip_column not in dataset.column_names:
        return None
    flags = dataset[flip_column]
    bad = [i for i, flag in enumerate(flags) if not isinstance(flag, (bool, np.bool_)) and flag not in (0, 1)]
    if bad:
        raise AuditInputError(
            f"column {flip_column!r} must hold booleans (True where the label was flipped); rows {bad[:5]} hold "
            f"{[flags[i] for i in bad[:5]]}. Pass flip_column=None to ignore it."
        )
    return [bool(flag) for flag in flags]


def check_loss_type(loss_type, loss_hyperparameters, reward_model: bool = False) -> None:
    """`loss_type` and its hyperparameters; for a reward model (`reward_model`), one of `reward_loss_types()`."""
    from ..registry import get_loss_spec, registered_loss_types

    if loss_hyperparameters and loss_type is None:
        raise AuditInputError("loss_hyperparameters were given without a loss_type")
    if loss_type is None or loss_type == ("bradley_terry" if reward_model else "sigmoid"):  # always reported
        return
    spec = get_loss_spec(loss_type)
    if reward_model:
        from ..reward.config import reward_loss_types, unknown_reward_loss_error

        if loss_type not in reward_loss_types():
            raise AuditInputError(f"{unknown_reward_loss_error(loss_type)} (The audit reports the Bradley–Terry loss "
                                  "of a reward model always, and optionally one of these.)")
    if spec is None:
        raise AuditInputError(
            f"loss_type {loss_type!r} is not a loss type registered in trl_robust; the audit scores the DPO loss and "
            f"optionally one of {registered_loss_types()}"
        )
    allowed = {h.attribute for h in spec.hyperparameters.values()} | ({"sympo_reward_clip"} if spec.uses_reward_clip else set())
    unknown = sorted(set(loss_hyperparameters or {}) - allowed)
    if unknown:
        raise AuditInputError(
            f"loss_hyperparameters {unknown} do not apply to loss_type {loss_type!r} "
            f"(it takes {sorted(allowed) or 'none'})"
        )


def check_per_pair(loss_type: str, args) -> None:
    """Refuse a loss whose value for one pair depends on the other pairs of its batch (e.g. Dr. DPO)."""
    from ..config import robust_hyperparameter
    from ..registry import get_loss_spec

    spec = get_loss_spec(loss_type)
    kwargs = {kw: robust_hyperparameter(args, h.attribute) for kw, h in spec.hyperparameters.items()}
    z = torch.tensor([-2.0, 0.5, 3.0])
    together = spec.fn(z, **kwargs)
    alone = torch.cat([spec.fn(z[i : i + 1], **kwargs) for i in range(len(z))])
    if not torch.allclose(together, alone):
        raise AuditInputError(
            f"loss_type {loss_type!r} couples the pairs of a batch (one pair's loss depends on the others), so it has "
            "no per-pair value to rank by; audit without loss_type (the DPO loss and z are always reported)"
        )
