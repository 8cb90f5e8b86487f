"""Build a tiny, randomly initialised causal LM plus a tokenizer, entirely offline.

Used by the tests, the benchmark and the offline demo. Nothing is downloaded: the tokenizer is a
byte-level BPE trained on the fly on a small built-in corpus (so it can encode *any* text), wrapped
in ``PreTrainedTokenizerFast`` with a ChatML chat template, and the model is a ``LlamaForCausalLM``
built from a small ``LlamaConfig``. Both are written with ``save_pretrained`` and are loaded back
through exactly the same code path as any user model (``AutoTokenizer`` / ``AutoModelForCausalLM``).
"""

from __future__ import annotations

import os

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]

_CORPUS = [
    "You are a helpful assistant.",
    "What is the capital of France? The capital of France is Paris.",
    "Translate 'hello' to Spanish: hola. Translate 'thank you' to German: danke.",
    "The quick brown fox jumps over the lazy dog.",
    "Write a haiku about the sea. Waves fold into foam, salt wind carries gull voices, the tide keeps its time.",
    "def add(a, b):\n    return a + b\n",
    "Sure! Here is the answer. I am sorry, I cannot help with that.",
    "system user assistant tool function developer",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 + - * / = ( ) [ ] { } : ; , . ! ? ' \"",
    "Marv is a factual chatbot that is also sarcastic.",
    "How far is the Moon? Around 384,400 kilometers, give or take a road trip.",
]


def build_tokenizer(vocab_size: int = 512):
    """Return a ``PreTrainedTokenizerFast`` (byte-level BPE, ChatML template) trained on a tiny corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        unk_token=None,
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.model_max_length = 512
    return fast


def build_tiny_model(
    path: str | os.PathLike[str],
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    vocab_size: int = 512,
    max_position_embeddings: int = 512,
    initializer_range: float = 0.1,
    seed: int = 0,
) -> str:
    """Write a tiny random-weight Llama-style causal LM and its tokenizer to ``path``; return the path.

    Defaults give ~150k parameters (hidden 64, 2 layers). The weights are random (seeded), so the model
    produces gibberish, but it trains, saves, loads and generates exactly like a real checkpoint.
    ``initializer_range`` is larger than Llama's 0.02 so that a frozen random ``lm_head`` can still
    express confident predictions, which lets LoRA visibly overfit a handful of examples in tests.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    tokenizer = build_tokenizer(vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=initializer_range,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
