"""check_preference_dataset: bad preference data fails early, naming the split, the column and the rows.

Every dataset here is built by hand, so the offending rows and counts in the expected messages are known without
running the code under test. The last tests go through the real `RobustDPOTrainer`, where TRL on its own would
fail later with an unrelated error (None, an empty conversation) or not at all (an empty string).
"""

import re
import warnings

import pytest
from datasets import Dataset, DatasetDict, IterableDataset
from trl import DPOTrainer

from trl_robust import RobustDPOTrainer
from trl_robust.dataset_checks import check_preference_dataset, check_trainer_datasets
from trl_robust.tiny import make_tokenizer

from .conftest import train_args


def user(text):
    return [{"role": "user", "content": text}]


def assistant(text):
    return [{"role": "assistant", "content": text}]


def standard_pairs(n):
    return [{"prompt": f"question {i}", "chosen": f"right {i}", "rejected": f"wrong {i}"} for i in range(n)]


def conversational_pairs(n):
    return [
        {"prompt": user(f"question {i}"), "chosen": assistant(f"right {i}"), "rejected": assistant(f"wrong {i}")}
        for i in range(n)
    ]


def check_without_warning(dataset, name="train_dataset"):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        return check_preference_dataset(dataset, name)


# --- columns ---------------------------------------------------------------------------------------------------


def test_missing_chosen_column_lists_the_columns_and_suggests_the_rename():
    records = [
        {"prompt": f"q{i}", "chosen_response": f"a{i}", "score_chosen": float(i), "rejected": f"b{i}"}
        for i in range(3)
    ]
    with pytest.raises(ValueError) as error:
        check_preference_dataset(Dataset.from_list(records), "train_dataset")
    message = str(error.value)
    assert message.startswith("train_dataset has no 'chosen' column;")
    assert "['prompt', 'chosen_response', 'score_chosen', 'rejected']" in message
    # The text column is suggested, not the numeric one whose name also contains "chosen".
    assert "`dataset = dataset.rename_column('chosen_response', 'chosen')`" in message
    assert "rename_column('score_chosen'" not in message


def test_misspelled_columns_are_each_matched_to_the_missing_name():
    dataset = Dataset.from_dict({"question": ["q"], "choosen": ["a"], "Rejected": ["b"]})
    with pytest.raises(ValueError, match=r"^dataset has no 'chosen' or 'rejected' column") as error:
        check_preference_dataset(dataset)
    assert "rename_column('choosen', 'chosen')" in str(error.value)
    assert "rename_column('Rejected', 'rejected')" in str(error.value)


def test_missing_column_without_a_lookalike_suggests_nothing():
    dataset = Dataset.from_dict({"prompt": ["q"], "completion": ["a"], "label": [True]})
    with pytest.raises(ValueError) as error:
        check_preference_dataset(dataset)
    assert "rename_column" not in str(error.value)
    assert "unpaired preference dataset" in str(error.value)  # KTO's format


@pytest.mark.parametrize("conversational", [False, True])
def test_implicit_prompt_dataset_is_accepted(conversational):
    # No 'prompt' column: TRL takes the shared start of chosen and rejected as the prompt.
    if conversational:
        records = [
            {"chosen": user(f"q{i}") + assistant(f"right {i}"), "rejected": user(f"q{i}") + assistant(f"wrong {i}")}
            for i in range(4)
        ]
    else:
        records = [{"chosen": f"q{i} right", "rejected": f"q{i} wrong"} for i in range(4)]
    result = check_without_warning(Dataset.from_list(records))
    expected_format = "conversational" if conversational else "standard"
    assert result == {"rows": 4, "identical_pairs": 0, "format": expected_format, "skipped": None}


@pytest.mark.parametrize(
    "columns",
    [("prompt_ids", "chosen_ids", "rejected_ids"), ("prompt_input_ids", "chosen_input_ids", "rejected_input_ids")],
)
def test_tokenized_dataset_is_skipped(columns):
    # Token ids only, or next to text that would fail every check (None, empty): the text is not what is trained on.
    ids = {column: [[1, 2], [3]] for column in columns}
    for dataset in (Dataset.from_dict(ids), Dataset.from_dict({**ids, "chosen": [None, ""], "rejected": ["", ""]})):
        assert check_without_warning(dataset) == {
            "rows": 2,
            "identical_pairs": None,
            "format": None,
            "skipped": "tokenized",
        }


def test_iterable_dataset_is_skipped_without_being_read():
    reads = []

    def rows():
        reads.append(1)
        yield {"prompt": "q", "chosen": None, "rejected": ""}

    dataset = IterableDataset.from_generator(rows)
    assert check_without_warning(dataset)["skipped"] == "iterable"
    assert reads == []


def test_empty_dataset_is_an_error():
    dataset = Dataset.from_dict({"prompt": [], "chosen": [], "rejected": []})
    with pytest.raises(ValueError, match=r"^train_dataset has no rows"):
        check_preference_dataset(dataset, "train_dataset")


# --- types -----------------------------------------------------------------------------------------------------


def test_none_in_standard_format_names_the_row_and_column():
    records = standard_pairs(5)
    records[2]["chosen"] = None
    with pytest.raises(ValueError) as error:
        check_preference_dataset(Dataset.from_list(records), "train_dataset")
    message = str(error.value)
    assert message.startswith("train_dataset: 1 row has a value of the wrong type (row 2):\n")
    assert "  row 2, column 'chosen': got NoneType (None)\n" in message
    assert "in the standard format, prompt, chosen and rejected are strings" in message.lower()
    assert "dataset.filter(" in message


def test_int_in_standard_format_names_every_row():
    # A column of ints: every row is wrong, and rejected (strings) is fine.
    dataset = Dataset.from_dict({"prompt": ["a", "b", "c"], "chosen": [7, 8, 9], "rejected": ["x", "y", "z"]})
    with pytest.raises(ValueError) as error:
        check_preference_dataset(dataset, "train_dataset")
    message = str(error.value)
    assert message.startswith("train_dataset: 3 rows have a value of the wrong type (rows 0, 1, 2):\n")
    assert [line.strip() for line in message.splitlines()[1:4]] == [
        "row 0, column 'chosen': got int (7)",
        "row 1, column 'chosen': got int (8)",
        "row 2, column 'chosen': got int (9)",
    ]
    assert "'rejected'" not in message.splitlines()[1] + message.splitlines()[2] + message.splitlines()[3]


def test_many_bad_rows_show_the_first_five_and_the_total():
    records = standard_pairs(30)
    bad_rows = list(range(1, 30, 2))  # 15 rows: 1, 3, ..., 29
    for row in bad_rows:
        records[row]["rejected"] = None
    with pytest.raises(ValueError) as error:
        check_preference_dataset(Dataset.from_list(records), "train_dataset")
    message = str(error.value)
    assert message.startswith(
        "train_dataset: 15 rows have a value of the wrong type (rows 1, 3, 5, 7, 9, ... (15 in total)):"
    )
    shown = re.findall(r"^  row (\d+), column 'rejected'", message, flags=re.MULTILINE)
    assert shown == ["1", "3", "5", "7", "9"]
    assert "  ... and 10 more" in message


@pytest.mark.parametrize(
    ("bad_chosen", "expected"),
    [
        (["right"], "message 0 is a str ('right'), not a dict with 'role' and 'content'"),
        ([{"role": None, "content": "right"}], "message 0 has role None (NoneType), not a str"),
        ([{"role": "assistant", "content": 3}], "message 0 has content 3 (int), not a str, a list of parts or None"),
    ],
)
def test_bad_message_in_conversational_format(bad_chosen, expected):
    records = conversational_pairs(4)
    for record in records:  # every row alike: an Arrow column has one type
        record["chosen"] = bad_chosen
    with pytest.raises(ValueError) as error:
        check_preference_dataset(Dataset.from_list(records), "train_dataset")
    message = str(error.value)
    assert message.startswith("train_dataset: 4 rows have a value of the wrong type (rows 0, 1, 2, 3):\n")
    assert f"  row 0, column 'chosen': {expected}\n" in message
    assert "in the conversational format" in message.lower()


def test_conversational_format_allows_parts_tool_calls_and_extra_keys():
    tool_call = [{"type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}]
    records = [
        {
            "prompt": [{"role": "user", "content": [{"type": "text", "text": "what is 1+2?"}], "tool_calls": None}],
            "chosen": [
                {"role": "assistant", "content": None, "tool_calls": tool_call},
                {"role": "tool", "content": "3", "tool_calls": None},
            ],
            "rejected": [{"role": "assistant", "content": "4", "tool_calls": None}],
        }
    ]
    assert check_without_warning(Dataset.from_list(records))["format"] == "conversational"


def test_mixed_formats_suggest_dropping_a_redundant_prompt():
    # A string prompt next to conversations that already contain it: TRL would concatenate str + list.
    records = [
        {"prompt": f"q{i}", "chosen": user(f"q{i}") + assistant("yes"), "rejected": user(f"q{i}") + assistant("no")}
        for i in range(3)
    ]
    with pytest.raises(ValueError) as error:
        check_preference_dataset(Dataset.from_list(records), "train_dataset")
    message = str(error.value)
    assert message.startswith("train_dataset: its columns mix the standard and the conversational format")
    assert "'prompt' is standard, 'chosen' is conversational, 'rejected' is conversational" in message
    assert "dataset.remove_columns('prompt')" in message


# --- empty responses -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("chosen", "", "empty string"),
        ("rejected", " \n\t", r"whitespace only (' \n\t')"),
    ],
)
def test_empty_standard_response(column, value, expected):
    records = standard_pairs(6)
    records[4][column] = value
    with pytest.raises(ValueError) as error:
        check_preference_dataset(Dataset.from_list(records), "train_dataset")
    message = str(error.value)
    assert message.startswith("train_dataset: 1 row has an empty response (row 4):\n")
    assert f"  row 4, column {column!r}: {expected}\n" in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([], "no messages"),
        (assistant(""), "1 message, none with content"),
        (assistant("  ") + [{"role": "assistant", "content": None}], "2 messages, none with content"),
    ],
)
def test_empty_conversation(value, expected):
    records = conversational_pairs(5)
    records[0]["rejected"] = value
    records[3]["chosen"] = value
    with pytest.raises(ValueError) as error:
        check_preference_dataset(Dataset.from_list(records), "train_dataset")
    message = str(error.value)
    assert message.startswith("train_dataset: 2 rows have an empty response (rows 0, 3):\n")
    assert f"  row 0, column 'rejected': {expected}\n  row 3, column 'chosen': {expected}\n" in message


def test_wrong_types_and_empty_responses_are_reported_together():
    records = standard_pairs(4)
    records[1]["chosen"] = None
    records[3]["rejected"] = ""
    with pytest.raises(ValueError) as error:
        check_preference_dataset(Dataset.from_list(records), "train_dataset")
    message = str(error.value)
    assert "1 row has a value of the wrong type (row 1)" in message
    assert "1 row has an empty response (row 3)" in message


# --- identical pairs -------------------------------------------------------------------------------------------


def test_identical_pairs_warn_with_their_count_and_rows():
    records = standard_pairs(16)
    for row in (2, 5, 11):
        records[row]["rejected"] = records[row]["chosen"]
    with pytest.warns(UserWarning, match=r"^train_dataset: 3 of 16 pairs have chosen identical to rejected") as record:
        result = check_preference_dataset(Dataset.from_list(records), "train_dataset")
    assert result == {"rows": 16, "identical_pairs": 3, "format": "standard", "skipped": None}
    message = str(record[0].message)
    assert "(rows 2, 5, 11)" in message
    assert "no preference signal" in message
    assert "dataset.filter(lambda ex: ex[\"chosen\"] != ex[\"rejected\"])" in message


def test_identical_conversations_warn():
    records = conversational_pairs(8)
    records[7]["rejected"] = assistant("right 7")
    with pytest.warns(UserWarning, match=r"1 of 8 pairs have chosen identical to rejected \(row 7\)"):
        result = check_preference_dataset(Dataset.from_list(records))
    assert result["identical_pairs"] == 1


# --- valid data, no side effects ---------------------------------------------------------------------------------


def test_valid_datasets_pass_without_warning(preference_dataset, conversational_dataset):
    assert check_without_warning(preference_dataset) == {
        "rows": 16,
        "identical_pairs": 0,
        "format": "standard",
        "skipped": None,
    }
    assert check_without_warning(conversational_dataset) == {
        "rows": 16,
        "identical_pairs": 0,
        "format": "conversational",
        "skipped": None,
    }


@pytest.mark.parametrize("bad", [False, True])
def test_the_input_dataset_is_not_modified(bad):
    records = standard_pairs(10)
    if bad:
        records[3]["chosen"] = None
    dataset = Dataset.from_list(records).with_format("numpy", columns=["chosen"], output_all_columns=True)
    before = (dataset._fingerprint, dict(dataset.format), dataset.column_names, len(dataset))
    if bad:
        with pytest.raises(ValueError):
            check_preference_dataset(dataset)
    else:
        check_without_warning(dataset)
    assert (dataset._fingerprint, dict(dataset.format), dataset.column_names, len(dataset)) == before
    assert dataset.with_format(None).to_list() == records


def test_check_preference_dataset_refuses_a_dataset_dict():
    with pytest.raises(TypeError, match=r"check each split"):
        check_preference_dataset(DatasetDict({"train": Dataset.from_list(standard_pairs(2))}))


# --- the trainer's datasets --------------------------------------------------------------------------------------


def empty_at_row_1():
    records = standard_pairs(3)
    records[1]["chosen"] = ""
    return Dataset.from_list(records)


@pytest.mark.parametrize("as_dataset_dict", [False, True])
def test_a_dict_eval_dataset_names_the_split(as_dataset_dict):
    good = Dataset.from_list(standard_pairs(3))
    eval_dataset = {"clean": good, "noisy": empty_at_row_1()}
    if as_dataset_dict:
        eval_dataset = DatasetDict(eval_dataset)
    with pytest.raises(ValueError, match=r"^eval_dataset\['noisy'\]: 1 row has an empty response \(row 1\)"):
        check_trainer_datasets(DPOTrainer.__init__, "model", train_dataset=good, eval_dataset=eval_dataset)
    results = check_trainer_datasets(DPOTrainer.__init__, "model", train_dataset=good, eval_dataset={"clean": good})
    assert list(results) == ["train_dataset", "eval_dataset['clean']"]


def test_datasets_passed_by_position_are_found():
    # DPOTrainer(model, ref_model, args, data_collator, train_dataset, eval_dataset, ...), in TRL 0.29 and 1.x.
    good = Dataset.from_list(standard_pairs(3))
    with pytest.raises(ValueError, match=r"^train_dataset: 1 row has an empty response"):
        check_trainer_datasets(DPOTrainer.__init__, "model", None, None, None, empty_at_row_1())
    with pytest.raises(ValueError, match=r"^eval_dataset: 1 row has an empty response"):
        check_trainer_datasets(DPOTrainer.__init__, "model", None, None, None, good, empty_at_row_1())


def test_a_call_that_does_not_fit_the_signature_is_left_to_the_trainer():
    good = Dataset.from_list(standard_pairs(3))
    # An unknown keyword: the trainer raises its own TypeError; the datasets passed by name are still checked.
    assert list(check_trainer_datasets(DPOTrainer.__init__, "model", train_dataset=good, not_an_arg=1)) == [
        "train_dataset"
    ]


def test_trainer_raises_before_training_on_an_empty_response(tiny_model_path, tmp_path):
    # TRL alone would train on this row (the chosen response would be the EOS token alone).
    with pytest.raises(ValueError, match=r"^train_dataset: 1 row has an empty response \(row 1\)"):
        RobustDPOTrainer(
            model=tiny_model_path,
            args=train_args(tmp_path, loss_type="ropo"),
            train_dataset=empty_at_row_1(),
            processing_class=make_tokenizer(),
        )


def test_trainer_raises_on_a_bad_eval_split_and_a_positional_train_dataset(tiny_model_path, tmp_path):
    records = standard_pairs(3)
    records[0]["rejected"] = None  # TRL alone: AttributeError 'NoneType' object has no attribute 'endswith'
    with pytest.raises(ValueError, match=r"^eval_dataset\['noisy'\]: 1 row has a value of the wrong type \(row 0\)"):
        RobustDPOTrainer(
            tiny_model_path,
            None,
            train_args(tmp_path),
            None,  # data_collator
            Dataset.from_list(standard_pairs(3)),  # train_dataset, by position
            eval_dataset={"clean": Dataset.from_list(standard_pairs(3)), "noisy": Dataset.from_list(records)},
            processing_class=make_tokenizer(),
        )


def test_trainer_warns_about_identical_pairs_and_still_builds(tiny_model_path, tmp_path, preference_dataset):
    records = preference_dataset.to_list()
    records[6]["rejected"] = records[6]["chosen"]
    with pytest.warns(UserWarning, match=r"^train_dataset: 1 of 16 pairs have chosen identical to rejected \(row 6\)"):
        trainer = RobustDPOTrainer(
            model=tiny_model_path,
            args=train_args(tmp_path),
            train_dataset=Dataset.from_list(records),
            processing_class=make_tokenizer(),
        )
    assert len(trainer.train_dataset) == 16


# --- the flip record ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags, rows, shown",
    [
        # e.g. read from a CSV file as text
        (["True", "False", "False", "True"], "rows 0, 1, 2, 3", ["row 0, column 'label_flipped': got str ('True')",
                                                                 "row 1, column 'label_flipped': got str ('False')"]),
        ([True, None, False, False], "row 1", ["row 1, column 'label_flipped': got NoneType (None)"]),
        ([0.5, 1.0, 0.0, 2], "rows 0, 3", ["row 0, column 'label_flipped': got float (0.5)",
                                           "row 3, column 'label_flipped': got float (2.0)"]),
    ],
)
def test_a_flip_record_that_is_not_true_or_false_is_named_by_column_and_row(flags, rows, shown):
    dataset = Dataset.from_list([{**pair, "label_flipped": flag} for pair, flag in zip(standard_pairs(4), flags)])
    with pytest.raises(ValueError) as error:
        check_preference_dataset(dataset, "train_dataset")
    message = str(error.value)
    assert message.startswith(f"train_dataset: {len(rows.split(','))} row")
    assert f"a 'label_flipped' value that is not True or False ({rows})" in message
    for line in shown:
        assert line in message
    assert "dataset.remove_columns('label_flipped')" in message


@pytest.mark.parametrize("flags", [[True, False, False, True], [1, 0, 0, 1]])
def test_a_flip_record_of_bools_or_zeros_and_ones_passes(flags):
    dataset = Dataset.from_list([{**pair, "label_flipped": flag} for pair, flag in zip(standard_pairs(4), flags)])
    assert check_without_warning(dataset)["rows"] == 4


def test_the_trainer_checks_the_flip_record_before_loading_a_model(no_model_loading, tmp_path):
    # Before this check the filter's collator failed inside the DataLoader with "too many dimensions 'str'".
    records = [{**pair, "label_flipped": "no"} for pair in standard_pairs(3)]
    args = train_args(tmp_path, loss_type="ropo", ropo_filter_ratio=0.2)
    with pytest.raises(ValueError, match=r"^train_dataset: 3 rows have a 'label_flipped' value that is not True"):
        RobustDPOTrainer(model="unused-model", args=args, train_dataset=Dataset.from_list(records))
