"""The GPT: causality, the KV cache, tied weights, sampling controls."""

import pytest
import torch

from train.models.gpt import GPT, GPTConfig, pick_next_token

VOCAB = "abcdefghijklmnop"


def tiny(pre_ln=True, block_size=12) -> GPT:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab=VOCAB, block_size=block_size, n_layer=2, n_head=2, n_embd=16, pre_ln=pre_ln)
    model = GPT(cfg).eval()
    with torch.no_grad():  # wider than the training init, so logits are far from ties
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


@pytest.mark.parametrize("pre_ln", [True, False])
def test_future_tokens_do_not_change_earlier_logits(pre_ln):
    model = tiny(pre_ln)
    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(len(VOCAB), (2, 10), generator=gen)
    changed = idx.clone()
    changed[:, 6:] = torch.randint(len(VOCAB), (2, 4), generator=gen)
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 6:], b[:, 6:])


@pytest.mark.parametrize("pre_ln", [True, False])
def test_cached_step_logits_equal_a_full_forward(pre_ln):
    model = tiny(pre_ln)
    idx = torch.randint(len(VOCAB), (3, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full, _ = model(idx)
        _, cache = model(idx[:, :5])
        steps = []
        for t in range(5, 9):
            logits, cache = model(idx[:, t : t + 1], cache)
            steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full[:, 5:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("new_tokens", [5, 30])  # inside the block, and past it
def test_generation_is_identical_with_and_without_cache(new_tokens):
    model = tiny()
    prompt = model.encode("abcab")[None, :].repeat(2, 1)
    greedy = [model.generate(prompt, new_tokens, use_cache=c) for c in (True, False)]
    assert torch.equal(greedy[0], greedy[1])
    sampled = [
        model.generate(prompt, new_tokens, 0.9, 5, torch.Generator().manual_seed(4), use_cache=c)
        for c in (True, False)
    ]
    assert torch.equal(sampled[0], sampled[1])
    assert sampled[0].shape == (2, 5 + new_tokens)


def test_lm_head_is_tied_to_the_token_embedding():
    model = tiny()
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


def test_top_k_only_draws_from_the_k_best():
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0, 3.0]])
    gen = torch.Generator().manual_seed(0)
    drawn = {pick_next_token(logits, 1.0, 2, gen).item() for _ in range(200)}
    assert drawn == {1, 2}
    assert pick_next_token(logits, 0.0, None, gen).item() == 1


def test_same_seed_same_sample():
    model = tiny()
    prompt = model.encode("abc")[None, :]
    a = model.generate(prompt, 10, 1.0, None, torch.Generator().manual_seed(9))
    b = model.generate(prompt, 10, 1.0, None, torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


def test_encode_rejects_unknown_characters():
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tiny().encode("abz")
