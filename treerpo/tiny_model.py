"""Small Qwen2-architecture models with a byte-level BPE tokenizer and a chat template, offline.

Used by the test fixtures, the benchmarks and the built-in demo: real `transformers` code paths,
no hub. The tokenizer is trained with the `tokenizers` library on a small built-in corpus of
arithmetic and math text, so digits, `\\boxed{}` and the chat markers are cheap to encode.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many in May.",
    "How many clips did Natalia sell altogether in April and May?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting.",
    "First, compute 48 / 2 = 24. Then 48 + 24 = 72. So the answer is \\boxed{72}.",
    "Step 1: 3 * 4 = 12. Step 2: 12 - 5 = 7; therefore the result is \\boxed{7}.",
    "Let x be the number. Then 2x + 3 = 11, so x = 4. The answer is \\boxed{4}!",
    "Is it true? Yes: 10% of 250 is 25. The total is \\boxed{275}.",
    "We have \\frac{1}{2} + \\frac{1}{3} = \\frac{5}{6}. Thus \\boxed{\\frac{5}{6}}.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000 + - * / = ( ) [ ] { } , . ; : ? ! $ % \\n",
    "Please reason step by step, and put your final answer within \\boxed{}.",
    "The sum of the numbers is 1,234 and the product is 5,678. What is the difference?",
    "Compute (7 + 8) * 2 - 6 = 24. Answer: \\boxed{24}",
]


def build_tokenizer(*, vocab_size: int = 400):
    """A byte-level BPE `PreTrainedTokenizerFast` with Qwen-style chat markers and template."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return train_chat_tokenizer(backend, corpus=_CORPUS * 4, vocab_size=vocab_size)


def train_chat_tokenizer(backend, *, corpus, vocab_size: int):
    """Train the byte-level BPE `backend` (its normalizer and pre-tokenizer already set) on
    `corpus`, and wrap it with the chat markers (EOS `<|im_end|>`) and the chat template."""
    from tokenizers import decoders, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_random_model(
    tokenizer,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 64,
    max_position_embeddings: int = 4096,
    vocab_size: int | None = None,
    seed: int = 0,
):
    """A randomly initialised `Qwen2ForCausalLM` sized for `tokenizer` (float32, eval mode).

    `vocab_size` widens the vocabulary beyond the tokenizer's (benchmarks that feed random token
    ids and want a realistic LM head)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size or len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def save_tiny_model(directory: str | Path, *, seed: int = 0, **model_kwargs) -> Path:
    """Build a tokenizer and a random model and save both (safetensors) into `directory`."""
    directory = Path(directory)
    tokenizer = build_tokenizer()
    model = build_random_model(tokenizer, seed=seed, **model_kwargs)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory
