"""The audit's checks of its models, before any is loaded: where each comes from (directory, PEFT adapter, Hub id,
loaded), what kind it is (a causal LM policy, a reward model, or neither), that policy and reference share a vocabulary,
and whether the β given is the one the policy was trained with."""

import json
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from .. import builtin
from ..paths import looks_like_local_path
from .checks import AuditInputError


@dataclass
class ModelSource:
    """Where a policy or reference comes from, resolved without loading it."""

    value: Any  # a path / Hub id, or a loaded model
    is_adapter: bool  # a PEFT adapter (directory, Hub id or `PeftModel`)
    base: str | None = None  # the adapter's base model, read from adapter_config.json
    is_reward_model: bool = False  # a one-label sequence classifier (what TRL's RewardTrainer saves): see `config_kind`

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
        model = value.get_base_model() if is_peft_model(value) else value
        # A subclass of a causal LM is one too: every class it derives from is looked at, by name.
        causal = any(_names_a_causal_lm(cls.__name__) for cls in type(model).__mro__)
        is_reward = check_kind(role, f"(a loaded {type(value).__name__})", [type(value).__name__], causal,
                               getattr(config, "num_labels", None))
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
        return ModelSource(name, is_adapter=False, is_reward_model=config_kind(os.path.join(name, "config.json"), role))
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
    return ModelSource(name, is_adapter=False, is_reward_model=bool(config) and config_kind(config, role, name))


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


def config_kind(config_path: str, role: str, shown: str | None = None) -> bool:
    """Whether the model whose config.json is at `config_path` is a reward model (read as JSON; nothing loaded);
    an `AuditInputError` where it is neither that nor a causal LM (`check_kind`)."""
    with open(config_path) as file:
        config = json.load(file)
    # transformers saves `id2label` (one entry per label) and derives `num_labels` from it; 2 when neither is saved.
    labels = config.get("id2label")
    num_labels = len(labels) if isinstance(labels, dict) and labels else config.get("num_labels", 2)
    architectures = [str(name) for name in config.get("architectures") or ()]
    causal = is_causal_lm_config(architectures, config.get("model_type"))
    return check_kind(role, repr(shown or os.path.dirname(config_path)), architectures, causal, num_labels)


def _names_a_causal_lm(class_name: str) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():  # what `AutoModelForCausalLM` builds, per model type
        if class_name in ((value,) if isinstance(value, str) else value):
            return True
    return class_name.endswith(("ForCausalLM", "LMHeadModel"))  # a model with its own code, not in the mapping


def is_causal_lm_config(architectures: list[str], model_type) -> bool | None:
    """Whether a config describes a causal LM: by `architectures` (the classes it was saved from), else by its
    `model_type`; None where neither tells."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if architectures:
        return any(_names_a_causal_lm(name) for name in architectures)
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return True
    return False if model_type in CONFIG_MAPPING_NAMES else None


# Why a reference that is not a causal LM is refused before loading: `AutoModelForCausalLM.from_pretrained` loads a
# sequence classifier (a reward model) or an encoder without complaint, giving it a fresh, random LM head, and the
# audit would rank the pairs by noise. Its config's `architectures` says what it is.
def check_kind(role: str, described: str, architectures: list[str], causal: bool | None, num_labels) -> bool:
    """For the policy (`role` "model"): True for a reward model, False for a causal LM, an `AuditInputError` for any
    other kind. For the reference: an `AuditInputError` unless it is a causal LM (or its config does not say)."""
    kind = architectures[0] if architectures else "model"
    if role == "ref_model":
        if causal is False:
            reward = any(name.endswith("ForSequenceClassification") for name in architectures)
            raise AuditInputError(
                f"ref_model {described} is a {kind}, not a causal language model: z compares the policy's log-probs "
                "with the reference's, so the reference is the causal LM the policy was trained from (its SFT / "
                "starting checkpoint)."
                + (" To rank the pairs by a reward model's margin r(chosen) − r(rejected), pass the reward model as "
                   "the model (`--model_name_or_path`) without ref_model." if reward else "")
            )
        return False
    is_reward = is_reward_config(architectures, num_labels, f"{role} {described}")
    if not is_reward and causal is False:
        raise AuditInputError(
            f"{role} {described} is a {kind}: the audit scores a DPO policy (a causal LM, with the ref_model it was "
            "trained against) or a reward model (a one-label ...ForSequenceClassification, alone)"
        )
    return is_reward


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
