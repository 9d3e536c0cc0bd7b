"""flip_preferences: exactly the asked-for pairs are swapped, reproducibly, and nothing else changes.

Expectations come from how the datasets are built (which rows have the longer rejected response, which
text is the right answer), never from the code under test. Flipped rows are detected from the content
("wrong ..." in `chosen`), not only from the record column, so a wrong record cannot hide a wrong swap.
"""

import doctest
import math

import pytest
from datasets import Dataset, DatasetDict

import trl_robust.data
from trl_robust.data import flip_preferences


def standard_pairs(n, longer_rejected=()):
    """n pairs whose chosen text starts with "right" and rejected with "wrong".

    Rejected is shorter than chosen except in the rows listed in `longer_rejected`.
    """
    records = []
    for i in range(n):
        rejected = f"wrong answer {i} that rambles on and on" if i in longer_rejected else f"wrong {i}"
        records.append({"prompt": f"question {i}", "chosen": f"right answer {i}", "rejected": rejected})
    return records


def flipped_rows(original_records, noisy):
    """Row indices whose chosen/rejected are swapped relative to the original, checking every row on the way."""
    rows = noisy.to_list()
    assert len(rows) == len(original_records)
    swapped = []
    for i, (before, after) in enumerate(zip(original_records, rows)):
        after = {k: v for k, v in after.items() if k != "label_flipped"}
        if after != before:
            swapped.append(i)
            # The only change allowed is the swap; every other column must be as it was.
            assert after == {**before, "chosen": before["rejected"], "rejected": before["chosen"]}, f"row {i}"
    # The record column must agree with what actually happened to the data.
    assert [i for i, flag in enumerate(noisy["label_flipped"]) if flag] == swapped
    return swapped


@pytest.mark.parametrize(("rate", "expected_count"), [(0.1, 4), (0.25, 10), (0.4, 16), (0.5, 20), (0.9, 36)])
def test_symmetric_flips_exactly_rate_times_n_rows(rate, expected_count):
    records = standard_pairs(40)
    noisy = flip_preferences(Dataset.from_list(records), rate, seed=3)
    assert len(flipped_rows(records, noisy)) == expected_count


@pytest.mark.parametrize(("n", "rate", "expected_count"), [(7, 0.3, 2), (13, 0.2, 3)])
def test_flip_count_is_rounded_to_the_nearest_row(n, rate, expected_count):
    # 0.3 · 7 = 2.1 → 2 rows; 0.2 · 13 = 2.6 → 3 rows.
    records = standard_pairs(n)
    assert len(flipped_rows(records, flip_preferences(Dataset.from_list(records), rate))) == expected_count


def test_same_seed_same_rows_different_seed_different_rows():
    records = standard_pairs(100)
    dataset = Dataset.from_list(records)
    first = flipped_rows(records, flip_preferences(dataset, 0.2, seed=7))
    again = flipped_rows(records, flip_preferences(dataset, 0.2, seed=7))
    other = flipped_rows(records, flip_preferences(dataset, 0.2, seed=8))
    assert first == again
    assert first != other
    assert len(other) == 20


def test_higher_rate_with_same_seed_flips_a_superset():
    records = standard_pairs(50)
    dataset = Dataset.from_list(records)
    low = set(flipped_rows(records, flip_preferences(dataset, 0.1, seed=5)))
    high = set(flipped_rows(records, flip_preferences(dataset, 0.3, seed=5)))
    assert len(low) == 5 and len(high) == 15
    assert low < high


def test_flipped_rows_are_spread_over_the_dataset():
    # A uniform choice of 100 of 1000 rows essentially never falls entirely in one half (p ≈ 2 · 0.5^100).
    records = standard_pairs(1000)
    rows = flipped_rows(records, flip_preferences(Dataset.from_list(records), 0.1, seed=0))
    assert any(i < 500 for i in rows) and any(i >= 500 for i in rows)


def test_rate_zero_flips_nothing_but_adds_the_record_column():
    records = standard_pairs(12)
    noisy = flip_preferences(Dataset.from_list(records), 0.0)
    assert noisy.column_names == ["prompt", "chosen", "rejected", "label_flipped"]
    assert noisy["label_flipped"] == [False] * 12
    assert flipped_rows(records, noisy) == []


def test_empty_dataset_gets_the_record_column():
    empty = Dataset.from_dict({"prompt": [], "chosen": [], "rejected": []})
    noisy = flip_preferences(empty, 0.3)
    assert len(noisy) == 0
    assert noisy.column_names == ["prompt", "chosen", "rejected", "label_flipped"]
    assert noisy.features["label_flipped"].dtype == "bool"


def test_record_column_is_bool_and_its_name_is_configurable():
    records = standard_pairs(10)
    noisy = flip_preferences(Dataset.from_list(records), 0.3, column="is_noisy")
    assert noisy.features["is_noisy"].dtype == "bool"
    assert sum(noisy["is_noisy"]) == 3
    assert "label_flipped" not in noisy.column_names


def test_input_dataset_is_not_modified():
    records = standard_pairs(20)
    dataset = Dataset.from_list(records)
    flip_preferences(dataset, 0.5, seed=1)
    assert dataset.column_names == ["prompt", "chosen", "rejected"]
    assert dataset.to_list() == records


def test_prefer_longer_flips_only_pairs_with_a_longer_rejected_response():
    eligible = {1, 4, 6, 9, 13, 17, 22, 28, 31, 35}  # 10 of 40
    records = standard_pairs(40, longer_rejected=eligible)
    noisy = flip_preferences(Dataset.from_list(records), 0.15, seed=0, mode="prefer_longer")
    rows = flipped_rows(records, noisy)
    assert len(rows) == 6  # 0.15 of the whole dataset, not of the eligible pairs
    assert set(rows) <= eligible
    for i in rows:
        assert len(noisy[i]["chosen"]) > len(noisy[i]["rejected"])


def test_prefer_longer_at_its_maximum_rate_flips_every_eligible_pair():
    eligible = {0, 3, 5, 11}
    records = standard_pairs(16, longer_rejected=eligible)
    noisy = flip_preferences(Dataset.from_list(records), 0.25, mode="prefer_longer")
    assert set(flipped_rows(records, noisy)) == eligible
    # Afterwards the dataset consistently prefers the longer response.
    assert all(len(row["chosen"]) > len(row["rejected"]) for row in noisy)


def test_prefer_longer_does_not_flip_pairs_of_equal_length():
    records = [{"prompt": "p", "chosen": "abc", "rejected": "xyz"}] * 4
    with pytest.raises(ValueError, match="only 0 of 4 pairs are eligible"):
        flip_preferences(Dataset.from_list(records), 0.25, mode="prefer_longer")


def test_prefer_longer_with_too_few_eligible_pairs_says_how_many_and_the_maximum_rate():
    records = standard_pairs(40, longer_rejected={2, 5, 7, 11, 19})  # 5 eligible: max rate 5/40 = 0.125
    with pytest.raises(ValueError, match=r"only 5 of 40 pairs are eligible.*maximum achievable rate is 0\.125"):
        flip_preferences(Dataset.from_list(records), 0.2, mode="prefer_longer")


def test_callable_mode_flips_only_rows_it_accepts_and_sees_every_column():
    records = [{**pair, "topic": "math" if i % 4 == 0 else "chat"} for i, pair in enumerate(standard_pairs(40))]
    seen_columns = set()

    def math_annotator_is_sloppy(example):
        seen_columns.update(example)
        return example["topic"] == "math"

    noisy = flip_preferences(Dataset.from_list(records), 0.2, seed=2, mode=math_annotator_is_sloppy)
    rows = flipped_rows(records, noisy)
    assert len(rows) == 8
    assert all(i % 4 == 0 for i in rows)
    assert seen_columns == {"prompt", "chosen", "rejected", "topic"}


def test_callable_mode_error_names_the_callable():
    def never(example):
        return False

    with pytest.raises(ValueError, match="mode='never': only 0 of 40"):
        flip_preferences(Dataset.from_list(standard_pairs(40)), 0.1, mode=never)


def conversational_pairs():
    """Chat-format pairs; row lengths (total characters of message contents) are written out per row."""
    user = {"role": "user", "content": "tell me a story"}
    return [
        # 0: rejected 12 chars > chosen 10 → eligible
        {"prompt": [user], "chosen": [{"role": "assistant", "content": "ten chars!"}],
         "rejected": [{"role": "assistant", "content": "twelve chars"}]},
        # 1: rejected has more messages (2 > 1) but fewer characters (3 + 3 = 6 < 10) → not eligible
        {"prompt": [user], "chosen": [{"role": "assistant", "content": "ten chars!"}],
         "rejected": [{"role": "assistant", "content": "abc"}, {"role": "assistant", "content": "def"}]},
        # 2: rejected 6 + 6 = 12 characters > 10 over two messages → eligible
        {"prompt": [user], "chosen": [{"role": "assistant", "content": "ten chars!"}],
         "rejected": [{"role": "assistant", "content": "abcdef"}, {"role": "assistant", "content": "ghijkl"}]},
        # 3: rejected 4 < chosen 10 → not eligible
        {"prompt": [user], "chosen": [{"role": "assistant", "content": "ten chars!"}],
         "rejected": [{"role": "assistant", "content": "four"}]},
    ]


def test_conversational_pairs_are_swapped_message_for_message():
    records = conversational_pairs() * 5  # 20 rows
    noisy = flip_preferences(Dataset.from_list(records), 0.5, seed=4)
    assert len(flipped_rows(records, noisy)) == 10
    assert noisy.features["chosen"] == Dataset.from_list(records).features["chosen"]


def test_prefer_longer_counts_characters_of_message_contents():
    records = conversational_pairs()
    noisy = flip_preferences(Dataset.from_list(records), 0.5, mode="prefer_longer")
    assert flipped_rows(records, noisy) == [0, 2]


def test_implicit_prompt_datasets_work():
    # No prompt column: the prompt is the shared start of chosen and rejected (standard and conversational).
    standard = [{"chosen": f"Q{i} right", "rejected": f"Q{i} wrong, and at length"} for i in range(10)]
    noisy = flip_preferences(Dataset.from_list(standard), 0.3, mode="prefer_longer")
    assert len(flipped_rows(standard, noisy)) == 3
    assert noisy.column_names == ["chosen", "rejected", "label_flipped"]

    chat = [
        {"chosen": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": "right"}],
         "rejected": [{"role": "user", "content": f"Q{i}"}, {"role": "assistant", "content": "wrong"}]}
        for i in range(10)
    ]
    assert len(flipped_rows(chat, flip_preferences(Dataset.from_list(chat), 0.4))) == 4


def test_extra_columns_are_kept_untouched():
    records = [
        {"id": i, "prompt": f"question {i}", "chosen": f"right {i}", "rejected": f"wrong {i}", "score": i / 10,
         "tags": ["a", str(i)]}
        for i in range(20)
    ]
    dataset = Dataset.from_list(records)
    noisy = flip_preferences(dataset, 0.5, seed=0)
    assert noisy.column_names == ["id", "prompt", "chosen", "rejected", "score", "tags", "label_flipped"]
    for name in ("id", "prompt", "score", "tags"):
        assert noisy.features[name] == dataset.features[name]
        assert noisy[name] == [r[name] for r in records]
    assert len(flipped_rows(records, noisy)) == 10


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, math.nan, "0.2", None, True])
def test_rates_outside_zero_to_one_are_rejected_before_any_row_is_read(rate):
    calls = []

    def spy(example):
        calls.append(example)
        return True

    with pytest.raises(ValueError, match=r"rate must be a number in \[0, 1\)"):
        flip_preferences(Dataset.from_list(standard_pairs(10)), rate, mode=spy)
    assert calls == []


@pytest.mark.parametrize("missing", ["chosen", "rejected"])
def test_missing_preference_column_is_named(missing):
    records = [{k: v for k, v in pair.items() if k != missing} for pair in standard_pairs(5)]
    with pytest.raises(ValueError, match=f"no '{missing}' column"):
        flip_preferences(Dataset.from_list(records), 0.2)


def test_existing_record_column_is_not_overwritten():
    once = flip_preferences(Dataset.from_list(standard_pairs(20)), 0.2, seed=0)
    with pytest.raises(ValueError, match="already has a 'label_flipped' column"):
        flip_preferences(once, 0.2, seed=1)
    # Under another name the earlier record survives unchanged next to the new one.
    twice = flip_preferences(once, 0.2, seed=1, column="label_flipped_again")
    assert twice["label_flipped"] == once["label_flipped"]
    assert sum(twice["label_flipped_again"]) == 4


@pytest.mark.parametrize("seed", [None, 1.5, "0"])
def test_seed_must_be_an_int_so_runs_are_reproducible(seed):
    # random.Random(None) would silently draw a fresh, unrecorded seed.
    with pytest.raises(ValueError, match="seed must be an int"):
        flip_preferences(Dataset.from_list(standard_pairs(5)), 0.2, seed=seed)


def test_docstring_example_runs():
    failures, tried = doctest.testmod(trl_robust.data, raise_on_error=False)[:2]
    assert tried > 0 and failures == 0


def test_unknown_mode_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown mode 'prefer_shorter'.*'symmetric', 'prefer_longer'"):
        flip_preferences(Dataset.from_list(standard_pairs(5)), 0.2, mode="prefer_shorter")


def test_dataset_dict_is_rejected_with_a_hint_to_flip_each_split():
    splits = DatasetDict(train=Dataset.from_list(standard_pairs(5)))
    with pytest.raises(TypeError, match=r"dataset\['train'\]"):
        flip_preferences(splits, 0.2)
