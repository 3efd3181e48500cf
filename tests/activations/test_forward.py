import pytest
import torch

from saes.activations import ModelForwards, HookError, ShuffleBuffer, stop_at_layer, validate_hooks


def test_stop_layer_is_deepest_hooked_block_plus_one():
    assert stop_at_layer(["blocks.3.hook_resid_post", "blocks.1.hook_mlp_out"], 30) == 4
    assert stop_at_layer(["blocks.29.hook_resid_post"], 30) is None
    assert stop_at_layer(["ln_final.hook_normalized"], 30) is None


def test_pipeline_stops_after_deepest_hook_and_matches_hf(smollm, smollm_hf):
    calls = {3: 0, 4: 0, 10: 0}
    handles = [smollm.blocks[i].register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1)) for i in calls]
    try:
        source = ModelForwards(smollm, ["blocks.3.hook_resid_post", "blocks.1.hook_mlp_out"], excluded_ids=None)
        tokens = torch.randint(100, 20000, (2, 16))
        acts = source(tokens)
    finally:
        for h in handles:
            h.remove()
    assert calls == {3: 1, 4: 0, 10: 0}
    assert source.forwards == 1
    with torch.no_grad():
        hidden = smollm_hf(tokens, output_hidden_states=True).hidden_states
    torch.testing.assert_close(acts["blocks.3.hook_resid_post"], hidden[4].reshape(-1, 576))
    assert acts["blocks.1.hook_mlp_out"].shape == (32, 576)


def test_special_positions_are_excluded(smollm):
    source = ModelForwards(smollm, ["blocks.0.hook_resid_post"], excluded_ids=torch.tensor([0]))
    tokens = torch.randint(100, 20000, (2, 8))
    tokens[:, 0] = 0
    tokens[1, 5] = 0
    acts = source(tokens)["blocks.0.hook_resid_post"]
    full = ModelForwards(smollm, ["blocks.0.hook_resid_post"], excluded_ids=None)(tokens)["blocks.0.hook_resid_post"]
    keep = (tokens != 0).reshape(-1)
    assert acts.shape[0] == 13
    torch.testing.assert_close(acts, full[keep])


def test_bad_hook_names_list_close_valid_ones(smollm):
    with pytest.raises(HookError, match=r"hook_resid_post"):
        validate_hooks(["blocks.3.hook_resid_pots"], smollm.hook_dict.keys(), 30)
    with pytest.raises(HookError, match=r"30 layers"):
        validate_hooks(["blocks.31.hook_resid_post"], smollm.hook_dict.keys(), 30)


def _numbered_source(n_chunks: int, rows: int):
    for c in range(n_chunks):
        ids = torch.arange(c * rows, (c + 1) * rows, dtype=torch.float32)[:, None]
        yield {"a": ids.repeat(1, 3), "b": -ids}


def test_buffer_emits_every_row_once_aligned_and_bounded():
    buffer = ShuffleBuffer(capacity=64, batch_size=8, generator=torch.Generator().manual_seed(0))
    out = list(buffer.batches(_numbered_source(20, 10)))
    a = torch.cat([b["a"] for b in out])
    b = torch.cat([b["b"] for b in out])
    assert sorted(a[:, 0].tolist()) == list(range(200))
    torch.testing.assert_close(b[:, 0], -a[:, 0])  # rows of both hooks stay aligned
    assert all(t.shape[0] == 64 for t in buffer.store.values())  # memory bounded by capacity
    assert all(batch["a"].shape[0] == 8 for batch in out[:-1])


def test_buffer_mixes_rows_from_many_forwards():
    buffer = ShuffleBuffer(capacity=256, batch_size=32, generator=torch.Generator().manual_seed(0))
    first = next(buffer.batches(_numbered_source(100, 16)))
    chunks = set((first["a"][:, 0] // 16).long().tolist())
    assert len(chunks) >= 8  # 32 rows drawn from the 16 forwards in the buffer, not 2 neighbours


def test_buffer_state_dict_resumes_the_exact_same_sequence():
    def run(stop_after=None):
        buffer = ShuffleBuffer(capacity=50, batch_size=8, generator=torch.Generator().manual_seed(3))
        source = _numbered_source(30, 7)
        out = []
        while (batch := buffer.next_batch(source)) is not None:
            out.append(batch["a"][:, 0])
            if stop_after is not None and len(out) == stop_after:
                return out, buffer.state_dict(), source
        return out, None, None

    full, _, _ = run()
    head, state, source = run(stop_after=9)
    resumed = ShuffleBuffer(capacity=50, batch_size=8, generator=torch.Generator().manual_seed(99))
    resumed.load_state_dict(state)
    tail = [b["a"][:, 0] for b in resumed.batches(source)]
    assert len(head) + len(tail) == len(full)
    for got, want in zip(head + tail, full):
        assert torch.equal(got, want)
