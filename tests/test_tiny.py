"""The built-in tiny model and tokenizer load back from disk as they were saved (TRL reloads them by path)."""

from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_robust.tiny import make_tokenizer, tiny_preference_records


def test_saved_tokenizer_round_trips(tiny_model_path):
    loaded, built = AutoTokenizer.from_pretrained(tiny_model_path), make_tokenizer()
    for record in tiny_preference_records(n=8):
        text = record["prompt"] + record["chosen"]
        ids = loaded(text)["input_ids"]
        assert ids == built(text)["input_ids"]
        assert len(ids) == len(text.split()) and loaded.unk_token_id not in ids
    assert loaded.pad_token == "<pad>" and loaded.eos_token == "<eos>"


def test_chat_template_renders_prompt_as_a_prefix_of_the_conversation(tiny_model_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    record = tiny_preference_records(n=1, conversational=True)[0]
    prompt = tokenizer.apply_chat_template(record["prompt"], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(record["prompt"] + record["chosen"], tokenize=False)
    assert full.startswith(prompt) and len(full) > len(prompt)


def test_model_loads_with_a_vocabulary_matching_the_tokenizer(tiny_model_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    assert model.config.vocab_size == len(make_tokenizer())
    assert sum(p.numel() for p in model.parameters()) < 200_000
