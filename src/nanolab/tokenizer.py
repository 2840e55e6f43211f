"""Tokenizers: characters (the vocabulary of one corpus) and GPT-2's BPE, read from the files
shipped in nanolab/assets/gpt2 so that no network is needed."""

from __future__ import annotations

import functools
import os
from importlib import resources
from typing import Protocol

import tiktoken

from nanolab import DataError


class Tokenizer(Protocol):
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def decode(self, ids: list[int]) -> str: ...


class CharTokenizer:
    """One token per character; the vocabulary is the sorted set of characters in the corpus."""

    def __init__(self, chars: list[str]) -> None:
        self.chars = chars
        self.vocab_size = len(chars)
        self.stoi = {ch: i for i, ch in enumerate(chars)}

    def encode(self, text: str) -> list[int]:
        unknown = set(text) - self.stoi.keys()
        if unknown:
            raise DataError(f"characters {sorted(unknown)!r} are not in this dataset's vocabulary")
        return [self.stoi[c] for c in text]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)


class GPT2Tokenizer:
    """GPT-2's BPE through tiktoken, built from the files shipped with nanolab (no network)."""

    def __init__(self) -> None:
        self.encoding = gpt2_encoding()
        self.vocab_size = self.encoding.n_vocab
        self.eot = self.encoding.eot_token

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Each text encoded on tiktoken's thread pool (its Rust core releases the GIL)."""
        return self.encoding.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 1)

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(ids)


GPT2_VOCAB = 50257  # GPT-2's BPE tokens, <|endoftext|> last


@functools.cache
def gpt2_encoding() -> tiktoken.Encoding:
    """tiktoken's `gpt2` encoding from local files; the hashes are the ones tiktoken checks
    for its own download, so the result is identical to `tiktoken.get_encoding("gpt2")`."""
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str

    files = resources.files("nanolab") / "assets" / "gpt2"
    with (
        resources.as_file(files / "vocab.bpe") as bpe,
        resources.as_file(files / "encoder.json") as enc,
    ):
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(bpe),
            encoder_json_file=str(enc),
            vocab_bpe_hash="1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
            encoder_json_hash="196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
        )
    return tiktoken.Encoding(
        name="gpt2",
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={ENDOFTEXT: GPT2_VOCAB - 1},
        explicit_n_vocab=GPT2_VOCAB,
    )


def tokenizer_from_meta(meta: dict) -> Tokenizer:
    """The tokenizer a prepared dataset (or a checkpoint, which carries the meta) was made with."""
    if meta["tokenizer"] == "char":
        return CharTokenizer(meta["chars"])
    return GPT2Tokenizer()
