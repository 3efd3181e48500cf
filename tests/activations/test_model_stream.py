"""The training stream with its forwards prefetched in a background thread: same batches, exact
resume, producer errors surfaced, and a producer that stops when closed."""

import threading
import time

import pytest
import torch
from omegaconf import OmegaConf

from saes.activations import ModelForwards
from saes.data import load_corpus
from saes.activations.prefetch import Prefetcher
from saes.activations.model_stream import ModelActivationStream

HOOK = "blocks.1.hook_resid_post"


def test_prefetcher_keeps_order_and_reraises_the_producers_error_in_place():
    def numbers():
        yield from range(5)
        raise RuntimeError("corpus file vanished")

    got = []
    with pytest.raises(RuntimeError, match="corpus file vanished"):
        for item in Prefetcher(numbers(), depth=2):
            got.append(item)
    assert got == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="depth"):
        Prefetcher(iter([]), depth=0)


def test_prefetcher_runs_ahead_by_depth_only_and_stops_when_closed():
    made = []

    def counting():
        for i in range(1000):
            made.append(i)
            yield i

    prefetcher = Prefetcher(counting(), depth=2)
    assert next(prefetcher) == 0
    time.sleep(0.3)  # the producer fills the queue (2) and makes one more that waits to be queued
    assert len(made) <= 4
    prefetcher.close()
    assert not any(t.name == "saes-prefetch" and t.is_alive() for t in threading.enumerate())
    assert len(made) <= 4
    with pytest.raises(StopIteration):
        next(prefetcher)


@pytest.fixture(scope="module")
def parts(smollm):
    cfg = OmegaConf.create({"source": "pydocs", "path": None, "subset": None, "split": "train", "text_column": "text",
                            "context_size": 32, "holdout_tokens": 2000, "shuffle_seed": 0, "exclude_special": True})
    corpus = load_corpus(cfg, smollm.tokenizer, "<|endoftext|>")
    return corpus, ModelForwards(smollm, [HOOK], corpus.special_ids())


def _stream(parts, prefetch: int) -> ModelActivationStream:
    corpus, source = parts
    return ModelActivationStream(corpus, source, batch_contexts=4, buffer_rows=256, batch_size=64, max_rows=1200, seed=3,
                          prefetch=prefetch)


def _drain(stream: ModelActivationStream, n: int | None = None) -> list[torch.Tensor]:
    out = []
    while (n is None or len(out) < n) and (batch := stream.next_batch()) is not None:
        out.append(batch[HOOK])
    return out


def test_prefetched_stream_gives_the_same_batches_and_resumes_exactly(parts):
    plain = _stream(parts, prefetch=0)
    expected = _drain(plain)
    plain.close()
    assert sum(b.shape[0] for b in expected) >= 1200

    ahead = _stream(parts, prefetch=2)
    first = _drain(ahead, 7)
    time.sleep(0.5)  # let the producer run ahead of what the buffer has taken
    state = ahead.state_dict()
    reference = _stream(parts, prefetch=0)  # the state counts only forwards the buffer took
    _drain(reference, 7)
    assert (state["position"]["contexts_used"], state["rows_made"]) == (reference.contexts_used, reference.rows_made)
    reference.close()
    rest_here = _drain(ahead)
    ahead.close()

    resumed = _stream(parts, prefetch=2)
    resumed.load_state_dict(state)
    rest_resumed = _drain(resumed)
    resumed.close()
    assert len(first) + len(rest_here) == len(expected) == len(first) + len(rest_resumed)
    for got, want in zip(first + rest_here, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    for got, want in zip(rest_resumed, expected[7:]):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


class _ContextIds:
    """A stand-in for the model forwards that returns each context's tokens as its rows, so the
    test sees which contexts a stream forwarded (the real forwards are tested above)."""

    def __call__(self, tokens_NT: torch.Tensor) -> dict[str, torch.Tensor]:
        return {HOOK: tokens_NT.float()}


def test_ranks_forward_disjoint_shares_of_the_corpus_that_together_are_the_one_process_stream(parts):
    corpus, _ = parts
    n_rows = 24  # contexts (one row each here)

    def contexts(share: tuple[int, int], rows: int) -> set[tuple[int, ...]]:
        stream = ModelActivationStream(corpus, _ContextIds(), 4, rows, 4, rows, 0, share=share)
        return {tuple(row.long().tolist()) for batch in stream for row in batch[HOOK]}

    alone = contexts((0, 1), n_rows)
    rank0, rank1 = contexts((0, 2), n_rows // 2), contexts((1, 2), n_rows // 2)
    assert len(alone) == n_rows and len(rank0) == len(rank1) == n_rows // 2
    assert not rank0 & rank1  # no context seen twice
    assert rank0 | rank1 == alone  # together: the contexts one process reads
