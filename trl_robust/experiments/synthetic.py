"""A small, fully offline preference task with a known true reward, for the demo and the benchmark.

Prompts and responses are short sequences over the built-in word vocabulary (`trl_robust.tiny.WORDS`). Every word
has a hidden score s(w) ∈ {−1, +1}, and words the prompt mentions count double ("stay on topic"). The true reward
of a response y to prompt x is

    r(x, y) = mean_{w ∈ y} s(w) · (2 if w ∈ x else 1)        ∈ [−2, 2]

It does not depend on the response's length, so a length bias in the labels is pure noise. The reference policy is a tiny Llama fitted (plain
next-token training, a set-up step) to answer any prompt with a random 3–6-word response: diverse, and indifferent
to the reward. Preference pairs are two responses sampled from it, labelled by the true reward (deterministic: the
higher reward is chosen; ties are redrawn). Label noise is then injected with `trl_robust.data.flip_preferences`.

Metrics on held-out prompts:
- clean preference accuracy of the implicit reward β·log πθ/πref on held-out *clean* pairs (TRL's
  `rewards/accuracies` on an eval split, the papers' "reward accuracy");
- policy improvement: mean true reward of responses sampled from the trained policy minus the reference's.
"""

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..tiny import WORDS, make_tiny_model, make_tokenizer


REWARD_KINDS = ("topic", "graded", "sum", "stance")


@dataclass(frozen=True)
class RewardModel:
    """The hidden word scores that define the true reward.

    Three kinds (`from_seed`): `topic`, the module's reward (scores ±1, prompt words count double), and `graded`, scores
    drawn uniformly from [−1, 1] with no topic bonus: many pairs then differ by little, so the task has hard,
    near-tied pairs that `topic` lacks. Neither depends on the response's length. `sum`: scores ±1, no topic bonus,
    summed over the response's words instead of averaged: exactly the form of DPO's implicit reward (a sum over
    tokens of β·log πθ/πref), so a policy can fit it and DPO reaches a high clean accuracy (the easy end of the
    range a default must hold at). `stance`: like `sum`, plus a second set of ±1 scores t(w) whose sign the prompt
    sets, r(x, y) = Σ_{w ∈ y} [s(w) + c(x)·t(w)] with c(x) = +1 if the prompt's first word is in a seeded half of
    the vocabulary, else −1 ("the same answer is right for one question and wrong for another"). Still a sum over the
    response's tokens given the prompt, so a policy can fit it; but only half of it is a function of the response's
    words alone, so a model that does not read the prompt (a bag of the response's tokens) sees only half the reward.
    """

    scores: dict[str, float]
    topic_weight: float = 2.0
    total: bool = False  # sum the word scores rather than average them
    stance_scores: dict[str, float] | None = None  # t(w), signed by the prompt's stance (kind `stance`)
    stance_words: frozenset[str] = frozenset()  # a prompt whose first word is one of these has stance c(x) = +1

    @classmethod
    def from_seed(cls, seed: int, kind: str = "topic") -> "RewardModel":
        rng = random.Random(f"reward-{seed}")
        words = list(WORDS)
        rng.shuffle(words)
        if kind == "topic":
            half = len(words) // 2
            return cls({w: (1 if i < half else -1) for i, w in enumerate(words)})
        if kind == "graded":
            return cls({w: rng.uniform(-1.0, 1.0) for w in words}, topic_weight=1.0)
        if kind == "sum":
            half = len(words) // 2
            return cls({w: (1 if i < half else -1) for i, w in enumerate(words)}, topic_weight=1.0, total=True)
        if kind == "stance":
            half = len(words) // 2
            stance_order, prompt_order = list(WORDS), list(WORDS)
            rng.shuffle(stance_order)
            rng.shuffle(prompt_order)
            return cls({w: (1 if i < half else -1) for i, w in enumerate(words)}, topic_weight=1.0, total=True,
                       stance_scores={w: (1 if i < half else -1) for i, w in enumerate(stance_order)},
                       stance_words=frozenset(prompt_order[:half]))
        raise ValueError(f"reward kind must be one of {REWARD_KINDS}, got {kind!r}")

    def stance(self, prompt: str) -> int:
        """c(x) of kind `stance`: +1 if the prompt's first word is one of `stance_words`, else −1."""
        words = prompt.split()
        return 1 if words and words[0] in self.stance_words else -1

    def __call__(self, prompt: str, response: str) -> float:
        prompt_words, response_words = prompt.split(), response.split()
        if not prompt_words or not response_words:
            return 0.0
        topic = set(prompt_words)
        weights = [self.topic_weight if w in topic else 1 for w in response_words]
        total = sum(self.scores.get(w, 0) * k for w, k in zip(response_words, weights))
        if self.stance_scores is not None:
            total += self.stance(prompt) * sum(self.stance_scores.get(w, 0) for w in response_words)
        return total if self.total else total / len(response_words)


def random_prompts(n: int, rng: random.Random) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 4))) for _ in range(n)]


def fit_reference_policy(path, seed: int = 0, steps: int = 300, hidden_size: int = 32, on_step=None) -> str:
    """Create the tiny model at `path` and fit it to answer prompts with random 3–6-word responses; return the path.

    A short plain next-token loop on the completion tokens: this is set-up, not the method under test. `on_step()`,
    where given, is called after each step (a progress bar: the fit takes most of a task's minute on a small CPU).
    """
    path = Path(path)
    make_tiny_model(path, seed=seed, hidden_size=hidden_size)
    from transformers import AutoModelForCausalLM

    tokenizer = make_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(path)
    rng = random.Random(f"sft-{seed}")
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        prompts = random_prompts(32, rng)
        responses = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 6))) for _ in prompts]
        prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
        full_ids = [p + tokenizer(r)["input_ids"] + [tokenizer.eos_token_id] for p, r in zip(prompt_ids, responses)]
        length = max(map(len, full_ids))
        input_ids = torch.full((len(full_ids), length), tokenizer.pad_token_id)
        labels = torch.full_like(input_ids, -100)
        attention = torch.zeros_like(input_ids)
        for i, (p, ids) in enumerate(zip(prompt_ids, full_ids)):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention[i, : len(ids)] = 1
            labels[i, len(p) : len(ids)] = torch.tensor(ids[len(p) :])  # learn the response and its end
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if on_step is not None:
            on_step()
    model.save_pretrained(path)
    return str(path)


@torch.no_grad()
def sample_responses(model, prompts: list[str], seed: int, max_new_tokens: int = 8, batch_size: int = 256) -> list[str]:
    """Sample one response per prompt (temperature 1), decoded to words without special tokens."""
    tokenizer = make_tokenizer()
    tokenizer.padding_side = "left"
    model.eval()
    torch.manual_seed(seed)
    responses = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True)
        out = model.generate(
            **batch,
            do_sample=True,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            top_k=0,
        )
        responses += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    return [" ".join(r.split()) for r in responses]


def make_preference_pairs(model, reward: RewardModel, n: int, seed: int, max_redraws: int = 8) -> list[dict]:
    """`n` clean pairs: a fresh prompt, two responses sampled from `model`, the higher true reward chosen."""
    rng = random.Random(f"pairs-{seed}")
    pairs, draw = [], 0
    while len(pairs) < n and draw < max_redraws:
        prompts = random_prompts(2 * (n - len(pairs)), rng)
        first = sample_responses(model, prompts, seed=seed * 1000 + 2 * draw)
        second = sample_responses(model, prompts, seed=seed * 1000 + 2 * draw + 1)
        for prompt, a, b in zip(prompts, first, second):
            ra, rb = reward(prompt, a), reward(prompt, b)
            if a and b and ra != rb and len(pairs) < n:
                chosen, rejected = (a, b) if ra > rb else (b, a)
                pairs.append({"prompt": prompt, "chosen": " " + chosen, "rejected": " " + rejected})
        draw += 1
    if len(pairs) < n:
        raise RuntimeError(f"could only draw {len(pairs)} untied pairs of the {n} asked for")
    return pairs


def mean_true_reward(model, reward: RewardModel, prompts: list[str], seed: int) -> float:
    """Mean true reward of responses sampled from `model` for `prompts` (the policy-improvement metric)."""
    responses = sample_responses(model, prompts, seed=seed)
    return sum(reward(p, r) for p, r in zip(prompts, responses)) / len(prompts)
