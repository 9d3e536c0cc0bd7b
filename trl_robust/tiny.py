"""A tiny causal LM, tokenizer and preference dataset built locally: no download, seconds on a CPU.

Used by the tests, the offline recipe and the demo, so everything can run with `HF_HUB_OFFLINE=1`.
The model is a 2-layer Llama with hidden size 32 over a small word-level vocabulary; it is saved to a
directory because TRL reloads the reference model from `config._name_or_path`.
"""

import random
from pathlib import Path

WORDS = (
    "the a cat dog bird fish sees likes eats finds big small red blue green happy sad fast slow and or not "
    "good bad yes no one two three four five hello please thanks why how what answer question"
).split()
SPECIAL_TOKENS = ["<pad>", "<eos>", "<unk>", "<user>", "<assistant>", "<system>"]
# Minimal chat template: role tag, content, end of turn. Every conversational prefix renders as a prefix of
# the longer conversation, which TRL relies on to split prompt from completion.
CHAT_TEMPLATE = (
    "{% for message in messages %}<{{ message['role'] }}> {{ message['content'] }} <eos> {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


def make_tokenizer():
    """A `PreTrainedTokenizerFast` over `WORDS` with pad/eos/unk tokens and a tiny chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_tiny_model(path, seed: int = 0, hidden_size: int = 32, num_layers: int = 2):
    """Build a randomly initialised tiny Llama causal LM and its tokenizer, save both to `path`, return the path."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = make_tokenizer()
    # Llama, not Qwen2: transformers 5 loads a Qwen2 checkpoint's tokenizer as its own BPE class, ignoring the
    # saved word-level tokenizer.json; for Llama it loads what was saved.
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def tiny_preference_records(n: int = 16, seed: int = 0, conversational: bool = False) -> list[dict]:
    """`n` prompt/chosen/rejected records over `WORDS` (standard text, or chat messages if `conversational`)."""
    rng = random.Random(seed)

    def sentence(k):
        return " ".join(rng.choice(WORDS) for _ in range(k))

    records = []
    for _ in range(n):
        prompt, chosen, rejected = sentence(rng.randint(2, 5)), sentence(rng.randint(1, 4)), sentence(rng.randint(1, 4))
        if conversational:
            records.append(
                {
                    "prompt": [{"role": "user", "content": prompt}],
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": rejected}],
                }
            )
        else:
            records.append({"prompt": prompt, "chosen": " " + chosen, "rejected": " " + rejected})
    return records
