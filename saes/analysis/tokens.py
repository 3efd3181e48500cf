"""Token ids -> the exact text of each token, as stored with every example.

Each token is decoded after an anchor token and the anchor's text is cut off, so a leading space is
kept even by SentencePiece tokenizers (which drop it when a token is decoded alone); whitespace
and newlines are kept as they are (concatenating a window's strings gives its text), and the UI
decides how to show them. A byte-level token holding part of a multi-byte character decodes to
U+FFFD. Special tokens keep their name (``<|endoftext|>``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DECODE_BATCH = 4096


class TokenStrings:
    """Cached id -> string lookup for one tokenizer."""

    def __init__(self, tokenizer: "PreTrainedTokenizerBase"):
        self.tokenizer = tokenizer
        anchor = tokenizer.encode("a", add_special_tokens=False)
        self.anchor = anchor[:1]
        self.prefix = self._decode([self.anchor])[0] if self.anchor else ""
        self.cache: dict[int, str] = {}

    def _decode(self, seqs: list[list[int]]) -> list[str]:
        return self.tokenizer.batch_decode(seqs, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def prefetch(self, ids: Iterable[int]) -> None:
        """Decode every id not yet cached (in batches: one tokenizer call per 4,096 ids)."""
        missing = sorted({int(i) for i in ids if int(i) >= 0} - self.cache.keys())
        for start in range(0, len(missing), DECODE_BATCH):
            part = missing[start : start + DECODE_BATCH]
            texts = self._decode([self.anchor + [i] for i in part])
            for i, text in zip(part, texts):
                self.cache[i] = text[len(self.prefix) :] if text.startswith(self.prefix) else self._decode([[i]])[0]

    def __call__(self, ids: Iterable[int]) -> list[str]:
        """The strings of ``ids`` (decoded on first use)."""
        ids = [int(i) for i in ids]
        self.prefetch(i for i in ids if i not in self.cache)
        return [self.cache[i] for i in ids]
