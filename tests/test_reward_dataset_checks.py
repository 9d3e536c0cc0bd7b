"""The reward trainer checks its datasets as DPO's does, before the model is loaded: each fault a red-team pass found
(issue 19, fault 4) gets an error naming the split, column and row instead of TRL's KeyError, AttributeError, bare
StopIteration or DataLoader crash, all after the model had loaded; and a `max_length` that drops every pair is named
when training starts instead of as `num_samples=0` from the sampler."""

import pytest
import transformers
from datasets import Dataset

from trl_robust import RobustRewardConfig, RobustRewardTrainer
from trl_robust.tiny import tiny_preference_records

from .conftest import train_args

RECORDS = tiny_preference_records(n=8, seed=0)


def reward_args(tmp_path, **overrides):
    return train_args(tmp_path, config_cls=RobustRewardConfig, **{"max_steps": 2, **overrides})


@pytest.fixture
def no_reward_model_loading(monkeypatch, no_model_loading):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)


def with_row(index, **values):
    return Dataset.from_list([{**record, **values} if row == index else record for row, record in enumerate(RECORDS)])


BAD_DATASETS = {
    # TRL: a string in the DataLoader's collation ("too many dimensions 'str'"), after the model loaded
    "label_flipped strings": (
        lambda: Dataset.from_list(RECORDS).add_column("label_flipped", ["yes", "no"] * (len(RECORDS) // 2)),
        ["train_dataset: 8 rows have a 'label_flipped' value that is not True or False", "row 0, column "
         "'label_flipped': got str ('yes')"],
    ),
    # TRL: KeyError: 'chosen'
    "no chosen column": (
        lambda: Dataset.from_list(RECORDS).rename_column("chosen", "chosen_response"),
        ["train_dataset has no 'chosen' column", "A reward model needs a 'chosen' (preferred) and a 'rejected'",
         "'chosen_response' looks like 'chosen'"],
    ),
    # TRL: AttributeError: 'NoneType' object has no attribute 'endswith'
    "a None": (lambda: with_row(3, rejected=None), ["1 row has a value of the wrong type (row 3)", "got NoneType"]),
    # TRL: a bare StopIteration from `next(iter(dataset))`
    "no rows": (lambda: Dataset.from_list(RECORDS).select([]), ["train_dataset has no rows; a reward model needs"]),
    # TRL: trains on the end-of-sequence token alone, without a word
    "empty chosen": (lambda: with_row(5, chosen=""), ["1 row has an empty response (row 5)", "'chosen': empty string"]),
}


@pytest.mark.parametrize("fault", list(BAD_DATASETS))
def test_a_bad_training_set_is_refused_by_row_before_the_model_loads(tmp_path, no_reward_model_loading, fault):
    make, expected = BAD_DATASETS[fault]
    with pytest.raises(ValueError) as error:
        RobustRewardTrainer(model="unused-model-path", args=reward_args(tmp_path), train_dataset=make())
    for fragment in expected:
        assert fragment in str(error.value)


def test_a_bad_eval_split_is_named_as_such(tmp_path, no_reward_model_loading):
    good, bad = Dataset.from_list(RECORDS), with_row(1, chosen=None)
    with pytest.raises(ValueError, match=r"eval_dataset\['noisy'\]: 1 row has a value of the wrong type \(row 1\)"):
        RobustRewardTrainer(
            model="unused-model-path",
            args=reward_args(tmp_path, eval_strategy="steps", eval_steps=1),
            train_dataset=good,
            eval_dataset={"clean": good, "noisy": bad},
        )


def test_a_max_length_that_drops_every_pair_is_named_when_training_starts(tiny_model_path, tmp_path):
    # TRL drops (does not truncate) a pair longer than max_length: at 2 tokens none of the 8 is left, and TRL's sampler
    # failed with `num_samples=0`. (Every pair has a prompt of 2 words or more, plus a response and EOS.) Not refused
    # at construction: the audit builds this trainer to score pairs and names the rows it cannot score itself.
    trainer = RobustRewardTrainer(
        model=tiny_model_path, args=reward_args(tmp_path, max_length=2), train_dataset=Dataset.from_list(RECORDS)
    )
    with pytest.raises(ValueError) as error:
        trainer.train()
    message = str(error.value)
    assert "train_dataset: all 8 pairs are longer than `max_length=2` tokens" in message
    assert "drops such pairs rather than truncating them" in message and "Raise `max_length`" in message
