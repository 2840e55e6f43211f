"""The GPT model: shapes, causality, weight tying, initialisation and generation."""

import math

import pytest
import torch

from nanolab import ConfigError
from nanolab.model import GPT, GPTConfig


@pytest.fixture
def model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=32)).eval()


def test_logits_cover_exactly_the_true_vocabulary(model):
    assert model(torch.randint(50, (3, 16))).shape == (3, 16, 50)
    assert model.config.padded_vocab_size == 64


def test_changing_a_token_never_changes_earlier_logits(model):
    x = torch.randint(50, (2, 16))
    for t in (0, 7, 15):
        changed = x.clone()
        changed[:, t] = (changed[:, t] + 1) % 50
        a, b = model(x), model(changed)
        torch.testing.assert_close(a[:, :t], b[:, :t])
        assert not torch.allclose(a[:, t:], b[:, t:])


def test_input_and_output_embeddings_are_one_tensor(model):
    assert model.lm_head.weight is model.transformer.wte.weight
    assert sum(p.numel() for p in model.parameters()) == model.num_params(non_embedding=False)


def test_gpt2_initialisation_scales_residual_projections():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=8, n_head=4, n_embd=256))
    expected = 0.02 / math.sqrt(2 * 8)
    assert model.transformer.h[0].attn.c_proj.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert model.transformer.h[0].mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_generate_extends_prompts_and_respects_top_k(model):
    prompt = torch.randint(50, (2, 5))
    out = model.generate(prompt, max_new_tokens=20, temperature=1.0, top_k=5)
    assert out.shape == (2, 25) and torch.equal(out[:, :5], prompt)
    assert out.max() < 50
    greedy = model.generate(prompt, 20, temperature=0)
    torch.testing.assert_close(model.generate(prompt, 20, temperature=1.0, top_k=1), greedy)


def test_generate_beyond_the_context_crops_the_window(model):
    out = model.generate(torch.zeros(1, 1, dtype=torch.long), max_new_tokens=40, temperature=0)
    assert out.shape == (1, 41)


@pytest.mark.parametrize(
    "kwargs,key",
    [({"n_embd": 30, "n_head": 4}, "divisible"), ({"n_layer": 0}, "model.n_layer"), ({"dropout": 1.0}, "model.dropout")],
)
def test_bad_model_configs_are_refused(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        GPTConfig(**{"block_size": 16, "vocab_size": 50, "n_layer": 2, "n_head": 2, "n_embd": 32, **kwargs})


def test_logit_softcap_bounds_logits_smoothly(model):
    torch.manual_seed(0)
    capped = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=32, logit_softcap=0.01)).eval()
    capped.load_state_dict(model.state_dict())
    x = torch.randint(50, (2, 16))
    torch.testing.assert_close(capped(x), 0.01 * torch.tanh(model(x) / 0.01))
    assert capped(x).abs().max() <= 0.01  # tanh saturates to exactly 1 in float32
    assert capped.generate(x[:, :4], 5, temperature=0).shape == (2, 9)
    with pytest.raises(ConfigError, match="model.logit_softcap"):
        GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=32, logit_softcap=0.0)
