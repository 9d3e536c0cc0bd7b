"""Robust reward models: `bradley_terry` is stock TRL bit for bit, the robust losses have the values worked out by hand,
every loss type trains, and bad settings fail before a model is loaded."""

import builtins
import math
import os
import re
import warnings

import pytest
import torch
import transformers
import trl
from datasets import Dataset, load_dataset
from transformers.modeling_outputs import SequenceClassifierOutput

import trl_robust
from trl_robust import RewardConfig, RewardTrainer, RobustRewardConfig, RobustRewardTrainer, builtin
from trl_robust.registry import get_loss_spec, registered_loss_types
from trl_robust.tiny import tiny_preference_records

from .conftest import train_args
from .loss_reference import REFERENCE, reference_loss

# bradley_terry, then every registered loss that is a per-pair loss (read from the registry)
ROBUST_REWARD_LOSSES = [name for name in trl_robust.reward_loss_types() if name != "bradley_terry"]


def off_default_config(loss_type):
    """Config values for the loss's hyperparameters off their defaults (loss_reference.py's), keyed by attribute."""
    spec = get_loss_spec(loss_type)
    extra = REFERENCE[loss_type].extra if spec is not None else {}
    return {spec.hyperparameters[kwarg].attribute: value for kwarg, value in extra.items()}


def reward_args(tmp_path, config_cls=RobustRewardConfig, **overrides):
    """The DPO tests' fast CPU config (`conftest.train_args`), as a reward config, 2 steps by default."""
    return train_args(tmp_path, config_cls=config_cls, **{"max_steps": 2, **overrides})


@pytest.fixture
def reward_dataset():
    return Dataset.from_list(tiny_preference_records(n=16, seed=0))


@pytest.fixture
def margin_dataset(reward_dataset):
    # Margins of both signs and zero, so a wrong sign or a dropped column changes the loss.
    return reward_dataset.add_column("margin", [0.5, -0.25, 0.0, 1.5] * 4)


# --- parity: bradley_terry is TRL's own loss ----------------------------------------------------------------------------


def loss_grads_metrics(trainer_cls, model_path, dataset, args):
    trainer = trainer_cls(model=model_path, args=args, train_dataset=dataset)
    trainer.model.train()
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    seen = {key: value.clone() for key, value in batch.items() if torch.is_tensor(value)}
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}
    metrics = {key: list(values) for key, values in trainer._metrics["train"].items()}
    return loss.detach(), grads, metrics, seen


@pytest.mark.parity  # also run against every TRL minor release in the range (.ci/trl_minor_parity)
@pytest.mark.parametrize(
    "with_margin, center",
    [(False, None), (True, None), (False, 0.01), (True, 0.01)],
    ids=["plain", "margin", "center", "margin+center"],
)
@pytest.mark.parametrize("config_cls", [RobustRewardConfig, trl.RewardConfig], ids=["robust-config", "trl-config"])
def test_bradley_terry_is_bit_identical_to_stock_trl(
    tiny_model_path, reward_dataset, margin_dataset, tmp_path, with_margin, center, config_cls
):
    dataset = margin_dataset if with_margin else reward_dataset
    stock = loss_grads_metrics(
        trl.RewardTrainer, tiny_model_path, dataset, reward_args(tmp_path, trl.RewardConfig, center_rewards_coefficient=center)
    )
    robust_overrides = {"loss_type": "bradley_terry"} if config_cls is RobustRewardConfig else {}
    robust = loss_grads_metrics(
        RobustRewardTrainer,
        tiny_model_path,
        dataset,
        reward_args(tmp_path, config_cls, center_rewards_coefficient=center, **robust_overrides),
    )
    (stock_loss, stock_grads, stock_metrics, stock_batch), (loss, grads, metrics, batch) = stock, robust
    assert ("margin" in stock_batch) == with_margin  # the column really reached the loss
    assert stock_batch.keys() == batch.keys() and all(torch.equal(stock_batch[k], batch[k]) for k in batch)
    assert stock_loss.item() != 0.0
    assert torch.equal(stock_loss, loss), (stock_loss.item(), loss.item())
    assert stock_grads.keys() == grads.keys() and len(grads) > 0
    for name in stock_grads:
        assert torch.equal(stock_grads[name], grads[name]), name
    assert stock_metrics == metrics  # TRL's metrics, and no extra ones for TRL's loss


def test_a_robust_loss_changes_the_loss_but_keeps_trls_metrics(tiny_model_path, reward_dataset, tmp_path):
    _, _, stock_metrics, _ = loss_grads_metrics(
        trl.RewardTrainer, tiny_model_path, reward_dataset, reward_args(tmp_path, trl.RewardConfig)
    )
    loss, _, metrics, _ = loss_grads_metrics(
        RobustRewardTrainer, tiny_model_path, reward_dataset, reward_args(tmp_path, loss_type="sympo_sigmoid")
    )
    # TRL's own metrics of the same batch are untouched (computed by TRL from the same unclipped rewards) ...
    assert {k: v for k, v in metrics.items() if "/" not in k} == stock_metrics
    # ... and the loss is SymPO's σ(−z), not TRL's: in (0, 1), where −log σ(z) at these small margins is about ln 2.
    assert 0.0 < loss.item() < 1.0 and abs(loss.item() - math.log(2)) > 0.1
    assert {"sympo_sigmoid/grad_weight", "sympo_sigmoid/clipped_frac"} <= metrics.keys()


# --- the loss values, by hand, on fixed rewards --------------------------------------------------------------------------


class FixedRewards(torch.nn.Module):
    """A reward model that returns the given rewards (chosen then rejected, as TRL's collator stacks them)."""

    def __init__(self, chosen, rejected):
        super().__init__()
        self.rewards = torch.nn.Parameter(torch.tensor([*chosen, *rejected]).unsqueeze(-1))

    def forward(self, **inputs):
        return SequenceClassifierOutput(logits=self.rewards * 1.0)


# Pair 4's chosen reward 12 and rejected −11 lie outside the default clip 10; pair 3 is a tie.
CHOSEN, REJECTED = [2.0, -1.0, 0.5, 12.0], [0.5, 1.0, 0.5, -11.0]
RAW_Z = [1.5, -2.0, 0.0, 23.0]  # r_c − r_r
CLIPPED_Z = [1.5, -2.0, 0.0, 20.0]  # 10 − (−10) for pair 4
MARGIN = [0.5, 0.0, -1.0, 0.0]


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def softplus(x):  # (test_reward_filter.py uses it too)
    return math.log1p(math.exp(x))


def mean(values):
    return sum(values) / len(values)


@pytest.fixture
def tiny_trainer(tiny_model_path, reward_dataset, tmp_path):
    def build(**config):
        return RobustRewardTrainer(model=tiny_model_path, args=reward_args(tmp_path, **config), train_dataset=reward_dataset)

    return build


def loss_on_fixed_rewards(trainer, margin=None):
    model = FixedRewards(CHOSEN, REJECTED)
    inputs = {"input_ids": torch.zeros(8, 3, dtype=torch.long), "attention_mask": torch.ones(8, 3, dtype=torch.long)}
    if margin is not None:
        inputs["margin"] = torch.tensor(margin)
    trainer.model.train()
    loss = trainer.compute_loss(model, inputs)
    loss.backward()
    return loss.item(), model.rewards.grad.squeeze(-1).tolist()


def test_sympo_losses_on_fixed_rewards_by_hand(tiny_trainer):
    # clip((1 − z)/2, 0, 1) at the clipped margins: 1.5 → 0, −2 → 1 (capped from 1.5), 0 → 1/2, 20 → 0.
    assert loss_on_fixed_rewards(tiny_trainer(loss_type="sympo_ramp"))[0] == pytest.approx((0 + 1 + 0.5 + 0) / 4)
    # 1 − z: 1 − (1.5 − 2 + 0 + 20)/4 = 1 − 4.875.
    assert loss_on_fixed_rewards(tiny_trainer(loss_type="sympo_unhinged"))[0] == pytest.approx(-3.875)


@pytest.mark.parametrize(
    "loss_type, defaults",
    [(name, True) for name in ROBUST_REWARD_LOSSES] + [(name, False) for name in ROBUST_REWARD_LOSSES if REFERENCE[name].extra],
)
def test_robust_loss_values_on_fixed_rewards(tiny_trainer, loss_type, defaults):
    # The mean of the loss's reference formula (loss_reference.py) over the margins the trainer must form: clipped
    # (pair 4: 20, not 23) for a loss that clips rewards, the raw differences otherwise.
    spec = get_loss_spec(loss_type)
    kwargs = {} if defaults else REFERENCE[loss_type].extra
    config = {spec.hyperparameters[kwarg].attribute: value for kwarg, value in kwargs.items()}
    z = torch.tensor(CLIPPED_Z if spec.uses_reward_clip else RAW_Z, dtype=torch.float64)
    expected = reference_loss(loss_type, z, **kwargs).mean().item()
    loss, _ = loss_on_fixed_rewards(tiny_trainer(loss_type=loss_type, **config))
    assert loss == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_the_dataset_margin_is_subtracted_from_the_reward_difference(tiny_trainer):
    # As TRL's loss does: z = r_c − r_r − margin → [1.0, −2.0, 1.0, 20.0] after the clip.
    loss, _ = loss_on_fixed_rewards(tiny_trainer(loss_type="sympo_sigmoid"), margin=MARGIN)
    assert loss == pytest.approx(mean([sigmoid(-z) for z in [1.0, -2.0, 1.0, 20.0]]), rel=1e-6)


def test_center_rewards_coefficient_adds_trls_centring_term_to_a_robust_loss(tiny_trainer):
    # 0.01 · mean((r_c + r_r)²) over the unclipped rewards: sums 2.5, 0, 1, 1 → (6.25 + 0 + 1 + 1)/4 = 2.0625.
    loss, _ = loss_on_fixed_rewards(tiny_trainer(loss_type="sympo_unhinged", center_rewards_coefficient=0.01))
    assert loss == pytest.approx(-3.875 + 0.01 * 2.0625, rel=1e-6)


def test_a_clipped_reward_gets_no_gradient(tiny_trainer):
    # Unhinged: ∂/∂r_c of mean(1 − (r_c − r_r)) is −1/4 and ∂/∂r_r is +1/4, except on pair 4, clipped on both sides.
    _, grad = loss_on_fixed_rewards(tiny_trainer(loss_type="sympo_unhinged"))
    assert grad == pytest.approx([-0.25, -0.25, -0.25, 0.0, 0.25, 0.25, 0.25, 0.0])


def test_without_the_clip_sympo_uses_the_raw_reward_difference(tiny_trainer):
    loss, _ = loss_on_fixed_rewards(tiny_trainer(loss_type="sympo_ramp", sympo_reward_clip=None))
    assert loss == pytest.approx(0.375)  # the same ramp values: the clip only moved pair 4 from 23 to 20
    loss, _ = loss_on_fixed_rewards(tiny_trainer(loss_type="sympo_sigmoid", sympo_reward_clip=None))
    assert loss == pytest.approx(mean([sigmoid(-z) for z in RAW_Z]), rel=1e-6)


def test_robust_loss_metrics_on_fixed_rewards(tiny_trainer):
    trainer = tiny_trainer(loss_type="sympo_ramp")
    loss_on_fixed_rewards(trainer)
    metrics = {key: values[-1] for key, values in trainer._metrics["train"].items()}
    assert metrics["sympo_ramp/clipped_frac"] == 0.25  # pair 4
    assert metrics["sympo_ramp/negative_margin_frac"] == 0.25  # pair 2
    # Ramp weight 1/2 inside |z| < 1 (only the tie), 0 outside: mean 1/8; three of four saturated.
    assert metrics["sympo_ramp/grad_weight"] == pytest.approx(0.125)
    assert metrics["sympo_ramp/saturated_frac"] == 0.75
    # Against Bradley–Terry's σ(−z) on the same (clipped) margins.
    assert metrics["sympo_ramp/grad_weight_vs_logistic"] == pytest.approx(0.5 / sum(sigmoid(-z) for z in CLIPPED_Z), rel=1e-5)
    assert metrics["accuracy"] == 0.5  # TRL's own metric, from the same rewards: pairs 1 and 4


# --- training runs ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_type", trl_robust.reward_loss_types())
def test_every_reward_loss_type_trains_the_builtin_tiny_model(tmp_path, loss_type):
    dataset = load_dataset(builtin.dataset_path("builtin:tiny"))["train"].select(range(16))
    config = off_default_config(loss_type)
    trainer = RewardTrainer(model="builtin:tiny", args=reward_args(tmp_path, RewardConfig, loss_type=loss_type, **config),
                            train_dataset=dataset)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    logs = trainer.state.log_history[0]
    assert math.isfinite(logs["loss"])
    assert {"accuracy", "margin", "mean_reward", "num_tokens"} <= logs.keys()  # TRL's metrics
    if loss_type != "bradley_terry":
        assert {f"{loss_type}/grad_weight", f"{loss_type}/saturated_frac"} <= logs.keys()
    assert not torch.equal(before["score.weight"], trainer.model.get_parameter("score.weight").detach())


def test_the_model_card_names_the_loss_and_cites_its_paper(tiny_model_path, reward_dataset, tmp_path):
    trainer = RobustRewardTrainer(
        model=tiny_model_path, args=reward_args(tmp_path, loss_type="sympo_sigmoid"), train_dataset=reward_dataset
    )
    trainer.create_model_card(model_name="tiny-rm")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "sympo_sigmoid loss (trl-robust)" in card and "nishimori2025sympo" in card
    assert "trl-robust" in trainer.model.model_tags


# --- bad input: clear errors before any model is loaded ------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, message",
    [
        ({"loss_type": "sympo_sigmod"}, "Did you mean 'sympo_sigmoid'"),
        ({"loss_type": "sigmoid"}, "called 'bradley_terry' here"),
        ({"loss_type": "drdpo"}, "one objective over a batch"),
        ({"loss_type": ["ropo"]}, "one name"),
        ({"loss_type": "sympo_unhinged", "sympo_reward_clip": None}, "unbounded below"),
        ({"sympo_reward_clip": -1.0}, r"must be > 0"),
        ({"sympo_reward_clip": "ten"}, "positive number or none"),
        ({"ropo_alpha": 0.0}, "ropo_alpha"),
        ({"ropo_alpha": float("nan")}, "finite"),
        ({"loss_type": "cdpo", "label_smoothing": 0.5}, r"in \[0, 0.5\)"),
        ({"center_rewards_coefficient": float("inf")}, "center_rewards_coefficient"),
    ],
)
def test_bad_settings_are_refused_at_config_construction(tmp_path, config, message):
    with pytest.raises(ValueError, match=message):
        RobustRewardConfig(output_dir=str(tmp_path), **config)


@pytest.fixture
def no_reward_model_loading(monkeypatch, no_model_loading):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", refuse)


def test_the_trainer_checks_the_config_again_before_loading_the_model(
    tiny_model_path, reward_dataset, tmp_path, no_reward_model_loading
):
    args = reward_args(tmp_path)
    args.loss_type = "ropoo"  # set after construction, so only the trainer can catch it
    with pytest.raises(ValueError, match="Did you mean 'ropo'"):
        RobustRewardTrainer(model=tiny_model_path, args=args, train_dataset=reward_dataset)


def test_label_smoothing_without_cdpo_warns_that_it_has_no_effect(tmp_path):
    cpu = {"output_dir": str(tmp_path), "use_cpu": True, "bf16": False}
    with pytest.warns(UserWarning, match="no effect with loss_type 'sympo_sigmoid'"):
        RobustRewardConfig(loss_type="sympo_sigmoid", label_smoothing=0.1, **cpu)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        RobustRewardConfig(loss_type="cdpo", label_smoothing=0.1, **cpu)
    assert not [w for w in caught if "label_smoothing" in str(w.message)]


def label_smoothing_warnings(caught, loss_type="sympo_sigmoid"):
    return [w for w in caught if f"has no effect with loss_type {loss_type!r}" in str(w.message)]


def test_label_smoothing_without_cdpo_warns_once_for_a_config_and_its_trainer(
    tiny_model_path, reward_dataset, tmp_path, monkeypatch
):
    # The config checks at construction and the trainer again (issue 19, fault 14a: three warnings per command).
    monkeypatch.setenv("PYTHONWARNINGS", "")  # restored after the test
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # not Python's once-per-location default: count every call
        args = reward_args(tmp_path, loss_type="sympo_sigmoid", label_smoothing=0.1)
        RobustRewardTrainer(model=tiny_model_path, args=args, train_dataset=reward_dataset)
    assert len(label_smoothing_warnings(caught)) == 1


def test_label_smoothing_warning_is_not_repeated_by_the_training_processes(tmp_path, monkeypatch):
    # `trl-robust reward` builds the config, then launches training processes that build it again; they inherit
    # PYTHONWARNINGS. Its rules are applied here as Python applies `-W action:message:category` (the message matched
    # literally at the start), to a config built anew as in such a process.
    monkeypatch.setenv("PYTHONWARNINGS", "")
    cpu = {"output_dir": str(tmp_path), "use_cpu": True, "bf16": False, "loss_type": "sympo_sigmoid"}
    with pytest.warns(UserWarning, match="no effect with loss_type 'sympo_sigmoid'"):
        RobustRewardConfig(label_smoothing=0.1, **cpu)
    rules = [rule.split(":") for rule in os.environ["PYTHONWARNINGS"].split(",") if rule]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for action, message, category, *_ in rules:
            warnings.filterwarnings(action, re.escape(message), getattr(builtins, category))
        RobustRewardConfig(label_smoothing=0.1, **cpu)  # the same message: not shown again
        RobustRewardConfig(label_smoothing=0.2, **cpu)  # another value is another message
    assert [str(w.message).split(" has")[0] for w in label_smoothing_warnings(caught)] == ["`label_smoothing=0.2`"]


def test_the_reward_loss_types_are_bradley_terry_and_the_per_pair_registered_losses():
    # Every registered loss in registration order, but those that couple a batch (one objective, no per-pair value).
    per_pair = [name for name in registered_loss_types() if not get_loss_spec(name).couples_batch]
    assert trl_robust.reward_loss_types() == ["bradley_terry", *per_pair]
    assert len(per_pair) < len(registered_loss_types())  # the package has one such loss (Dr. DPO): it is left out


# --- the probe of what the reward trainer relies on ------------------------------------------------------------------


@pytest.fixture
def fresh_probe():
    """Run the probe anew in this test, and again afterwards with TRL as it really is."""
    from trl_robust import compat

    compat.reset_integration_check()
    yield
    compat.reset_integration_check()


def test_a_trl_whose_compute_loss_returns_no_outputs_is_refused_before_any_model_loads(
    fresh_probe, monkeypatch, tiny_model_path, reward_dataset, tmp_path, no_reward_model_loading
):
    def compute_loss(self, model, inputs, num_items_in_batch=None):  # a TRL that dropped `return_outputs`
        raise AssertionError("never called")

    monkeypatch.setattr(trl.RewardTrainer, "compute_loss", compute_loss)
    with pytest.raises(trl_robust.IncompatibleTRLError, match="no longer takes `return_outputs`"):
        RobustRewardTrainer(model=tiny_model_path, args=reward_args(tmp_path), train_dataset=reward_dataset)
    with pytest.raises(trl_robust.IncompatibleTRLError, match="no longer takes `return_outputs`"):
        trl_robust.patch_trl()
    assert not trl_robust.is_trl_patched()
