"""Text corpora -> fixed-length token contexts, with a held-out split.

Every context is ``[BOS] + (context_size - 1)`` tokens cut from one stream in which documents are
joined by BOS, so a context may span a document boundary (as in SAELens and sparsify). The held-out
split is made of whole documents taken from the start of the (seeded, shuffled) document stream
until ``holdout_tokens`` tokens are reached; training reads only the documents after them.
"""

from __future__ import annotations

import ast
import glob
import json
import os
import random
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import torch

from saes.atomic import atomic_write_text
from saes.errors import ConfigError
from saes.paths import cache_dir

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from saes.config import DataConfig

TOKENIZE_CHUNK = 64  # documents per tokenizer call
STDLIB_SKIP = {"site-packages", "test", "tests", "idlelib", "lib2to3", "tkinter", "turtledemo"}
MIN_DOC_CHARS = 200


class DataError(ConfigError):
    """The dataset config or the data itself is unusable; the message names the key to fix."""


def pydocs_corpus_file() -> Path:
    """JSONL of the offline default corpus (built once, ~4 s): the Python language reference
    (``pydoc_data.topics``) and the standard library's docstrings longer than 200 characters,
    one document per line as ``{"text": ...}``."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    path = cache_dir() / "corpora" / f"pydocs-{version}.jsonl"
    if path.exists():
        return path
    from pydoc_data.topics import topics

    docs = [text for _, text in sorted(topics.items()) if len(text) > MIN_DOC_CHARS]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for file in sorted(stdlib.rglob("*.py")):
        if STDLIB_SKIP.intersection(file.relative_to(stdlib).parts):
            continue
        try:
            tree = ast.parse(file.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > MIN_DOC_CHARS:
                    docs.append(doc)
    return atomic_write_text(path, "".join(json.dumps({"text": doc}) + "\n" for doc in docs))


def iter_documents(cfg: "DataConfig") -> Iterator[str]:
    """Yield raw documents of ``cfg`` in a seeded shuffled order (streamed for hub datasets)."""
    if cfg.source == "pydocs":
        docs = [json.loads(line)["text"] for line in pydocs_corpus_file().open(encoding="utf-8")]
        random.Random(cfg.shuffle_seed).shuffle(docs)
        yield from docs
        return
    dataset = _open_dataset(cfg)
    first = True
    for row in dataset:
        if first:
            if cfg.text_column not in row:
                raise DataError(
                    f"data.text_column={cfg.text_column!r} is not a column of {cfg.path!r}; "
                    f"columns found: {sorted(row)}. Set data.text_column=<one of them>."
                )
            first = False
        text = row[cfg.text_column]
        if isinstance(text, str) and text:
            yield text


def _open_dataset(cfg: "DataConfig") -> Iterable[dict]:
    import datasets

    if cfg.source == "hub":
        if not cfg.path:
            raise DataError("data.source=hub needs data.path=<hub dataset id>")
        try:
            ds = datasets.load_dataset(cfg.path, cfg.subset, split=cfg.split, streaming=True)
        except Exception as err:  # datasets raises many types for offline/missing datasets
            offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
            hint = " (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set)" if offline else ""
            raise DataError(f"could not open hub dataset data.path={cfg.path!r}{hint}: {err}") from err
        return ds.shuffle(seed=cfg.shuffle_seed, buffer_size=10_000)
    if cfg.source == "files":
        if not cfg.path:
            raise DataError("data.source=files needs data.path=<file or glob>")
        files = sorted(glob.glob(os.path.expanduser(cfg.path), recursive=True))
        if not files:
            raise DataError(f"data.path={cfg.path!r} matches no file")
        suffix = Path(files[0]).suffix.lower()
        kind = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}.get(suffix)
        if kind is None:
            raise DataError(f"data.path={cfg.path!r}: unsupported extension {suffix!r} (use .txt, .jsonl, .json or .parquet)")
        ds = datasets.load_dataset(kind, data_files=files, split="train", streaming=True)
        return ds.shuffle(seed=cfg.shuffle_seed, buffer_size=10_000)
    raise DataError(f"data.source={cfg.source!r} is unknown; use pydocs, hub or files")


def bos_token_id(tokenizer: "PreTrainedTokenizerBase", bos_token: str | None) -> int:
    """Id of the token that starts every context and separates documents."""
    if bos_token is not None:
        vocab = tokenizer.get_vocab()
        if bos_token not in vocab:
            raise DataError(f"model.bos_token={bos_token!r} is not in the tokenizer's vocabulary")
        return int(vocab[bos_token])
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise DataError("the tokenizer has neither BOS nor EOS: set model.bos_token=<token>")


def iter_token_stream(docs: Iterable[str], tokenizer: "PreTrainedTokenizerBase", bos_id: int) -> Iterator[list[int]]:
    """Token ids of each document, BOS-prefixed."""
    chunk: list[str] = []
    for doc in docs:
        chunk.append(doc)
        if len(chunk) == TOKENIZE_CHUNK:
            yield from ([bos_id] + ids for ids in tokenizer(chunk, add_special_tokens=False).input_ids)
            chunk = []
    if chunk:
        yield from ([bos_id] + ids for ids in tokenizer(chunk, add_special_tokens=False).input_ids)


def pack_contexts(token_docs: Iterable[list[int]], context_size: int, bos_id: int) -> Iterator[torch.Tensor]:
    """Cut the joined stream into ``[context_size]`` LongTensors, each starting with BOS."""
    body = context_size - 1
    buffer: list[int] = []
    for ids in token_docs:
        buffer.extend(ids)
        while len(buffer) >= body:
            yield torch.tensor([bos_id] + buffer[:body], dtype=torch.long)
            del buffer[:body]


@dataclass
class Corpus:
    """A tokenized corpus split into held-out contexts and a restartable training stream."""

    cfg: "DataConfig"
    tokenizer: "PreTrainedTokenizerBase"
    bos_id: int

    def special_ids(self) -> torch.Tensor:
        """Ids excluded from training/evaluation when ``data.exclude_special`` is set."""
        ids = set(self.tokenizer.all_special_ids) | {self.bos_id}
        return torch.tensor(sorted(ids), dtype=torch.long)

    def _split_docs(self) -> tuple[list[list[int]], Iterator[list[int]]]:
        stream = iter_token_stream(iter_documents(self.cfg), self.tokenizer, self.bos_id)
        heldout, count = [], 0
        for ids in stream:
            if count >= self.cfg.holdout_tokens:
                return heldout, _chain_first(ids, stream)
            heldout.append(ids)
            count += len(ids)
        raise DataError(
            f"the corpus has only {count} tokens, not more than data.holdout_tokens="
            f"{self.cfg.holdout_tokens}; lower data.holdout_tokens or use a larger dataset"
        )

    def heldout_contexts(self, max_tokens: int | None = None) -> torch.Tensor:
        """Held-out contexts ``[N, context_size]`` (at most ``max_tokens`` tokens' worth)."""
        docs, _ = self._split_docs()
        contexts = list(pack_contexts(docs, self.cfg.context_size, self.bos_id))
        if max_tokens is not None:
            contexts = contexts[: max(1, max_tokens // self.cfg.context_size)]
        return torch.stack(contexts)

    def train_contexts(self, skip: int = 0) -> Iterator[tuple[int, torch.Tensor]]:
        """Endless ``(epoch, context)`` stream over the training documents, restarting at the end;
        the first ``skip`` contexts are skipped (resume)."""
        epoch, seen = 0, 0
        while True:
            _, docs = self._split_docs()
            produced = False
            for context in pack_contexts(docs, self.cfg.context_size, self.bos_id):
                produced = True
                if seen >= skip:
                    yield epoch, context
                seen += 1
            if not produced:
                raise DataError("no training text after the held-out split; lower data.holdout_tokens")
            epoch += 1


def _chain_first(first: list[int], rest: Iterator[list[int]]) -> Iterator[list[int]]:
    yield first
    yield from rest


def load_corpus(cfg: "DataConfig", tokenizer: "PreTrainedTokenizerBase", bos_token: str | None) -> Corpus:
    """Build the corpus object for ``cfg`` with the model's tokenizer and BOS convention."""
    if cfg.context_size < 2:
        raise DataError(f"data.context_size={cfg.context_size} must be at least 2")
    return Corpus(cfg, tokenizer, bos_token_id(tokenizer, bos_token))
