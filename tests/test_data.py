import json
import random

import pytest
import torch
from omegaconf import OmegaConf

from saes.data import DataError, iter_documents, load_corpus, pack_contexts, pydocs_corpus_file
from saes.models import load_tokenizer

from tests.conftest import DEFAULT_MODEL


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(DEFAULT_MODEL)


def _cfg(**kw):
    base = {"source": "pydocs", "path": None, "subset": None, "split": "train", "text_column": "text",
            "context_size": 64, "holdout_tokens": 5000, "shuffle_seed": 0, "exclude_special": True}
    return OmegaConf.create({**base, **kw})


def test_pack_contexts_start_with_bos_and_keep_every_token():
    docs = [[7, 1, 2, 3], [7, 4, 5], [7, 6, 8, 9, 10]]
    contexts = list(pack_contexts(docs, context_size=4, bos_id=7))
    assert all(c[0] == 7 and c.shape == (4,) for c in contexts)
    body = torch.cat([c[1:] for c in contexts]).tolist()
    stream = [t for d in docs for t in d]
    assert body == stream[: len(body)] and len(stream) - len(body) < 3


def test_default_corpus_is_real_offline_text():
    texts = [json.loads(line)["text"] for line in pydocs_corpus_file().open()]
    assert len(texts) > 1000
    assert sum(map(len, texts)) > 1_000_000
    assert any("Return" in t for t in texts)


def _ngrams(ids: list[int], n: int) -> set[tuple[int, ...]]:
    return {tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)}


def test_heldout_documents_never_appear_in_training(tmp_path, tokenizer):
    """Document level: no training document, nor any 16-token run of one, is in the held-out set.
    The corpus's documents are distinct by construction (random words), so a shared 16-gram can
    only be a document on both sides of the split."""
    rng = random.Random(0)
    words = [f"{rng.choice('bdfgklmnprstvz')}{rng.choice('aeiou')}{rng.choice('bdfgklmnprstvz')}" for _ in range(300)]
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": " ".join(rng.choices(words, k=rng.randint(40, 120)))}) + "\n"
                            for _ in range(200)))
    cfg = _cfg(source="files", path=str(path), holdout_tokens=3000)
    n = 16
    doc_grams = [_ngrams(tokenizer(doc, add_special_tokens=False).input_ids, n) for doc in iter_documents(cfg)]
    assert len(doc_grams) == 200 and all(doc_grams)

    corpus = load_corpus(cfg, tokenizer, "<|endoftext|>")
    held = corpus.heldout_contexts()
    assert (held[:, 0] == corpus.bos_id).all()
    train = []
    for epoch, context in corpus.train_contexts():
        if epoch:
            break
        train.append(context)
    # the bodies after each context's BOS, joined, are the packed token stream (documents BOS-separated)
    held_grams = _ngrams(held[:, 1:].reshape(-1).tolist(), n)
    train_grams = _ngrams(torch.stack(train)[:, 1:].reshape(-1).tolist(), n)
    in_held = {i for i, grams in enumerate(doc_grams) if grams & held_grams}
    in_train = {i for i, grams in enumerate(doc_grams) if grams & train_grams}
    assert len(in_held) >= 20 and len(in_train) >= 150  # both sides hold real documents
    assert len(in_held | in_train) >= 198  # every document is somewhere (a packing remainder may drop one per side)
    assert not in_held & in_train, f"documents both held out and trained on: {sorted(in_held & in_train)}"
    # resuming skips exactly the contexts already used
    resumed = next(corpus.train_contexts(skip=10))[1]
    assert torch.equal(resumed, train[10])


def test_local_jsonl_and_missing_text_column(tmp_path, tokenizer):
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps({"content": f"document number {i} " * 20}) for i in range(50)))
    with pytest.raises(DataError, match=r"columns found: \['content'\]"):
        list(iter_documents(_cfg(source="files", path=str(path))))
    docs = list(iter_documents(_cfg(source="files", path=str(path), text_column="content")))
    assert len(docs) == 50 and docs[0].startswith("document number")
    corpus = load_corpus(_cfg(source="files", path=str(path), text_column="content", holdout_tokens=500), tokenizer, None)
    assert corpus.heldout_contexts().shape[1] == 64


def test_missing_files_and_unknown_source_fail_by_key():
    with pytest.raises(DataError, match="matches no file"):
        list(iter_documents(_cfg(source="files", path="/nonexistent/*.jsonl")))
    with pytest.raises(DataError, match="data.source='s3'"):
        list(iter_documents(_cfg(source="s3")))
