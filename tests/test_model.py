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
    assert model.transformer.h[0].attn.c_proj.weight.std().item() == pytest.approx(
        expected, rel=0.05
    )
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
    [
        ({"n_embd": 30, "n_head": 4}, "divisible"),
        ({"n_layer": 0}, "model.n_layer"),
        ({"dropout": 1.0}, "model.dropout"),
    ],
)
def test_bad_model_configs_are_refused(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        GPTConfig(
            **{
                "block_size": 16,
                "vocab_size": 50,
                "n_layer": 2,
                "n_head": 2,
                "n_embd": 32,
                **kwargs,
            }
        )


def test_logit_softcap_bounds_logits_smoothly(model):
    torch.manual_seed(0)
    capped = GPT(
        GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=32, logit_softcap=0.01)
    ).eval()
    capped.load_state_dict(model.state_dict())
    x = torch.randint(50, (2, 16))
    torch.testing.assert_close(capped(x), 0.01 * torch.tanh(model(x) / 0.01))
    assert capped(x).abs().max() <= 0.01  # tanh saturates to exactly 1 in float32
    assert capped.generate(x[:, :4], 5, temperature=0).shape == (2, 9)
    with pytest.raises(ConfigError, match="model.logit_softcap"):
        GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=32, logit_softcap=0.0)


# --- architecture options (modded-nanogpt / nanochat); the defaults are GPT-2's ---------------

from nanolab.model import ReLUSquared, RMSNorm, Rotary  # noqa: E402

ALL_OPTIONS = dict(
    position="rope",
    qk_norm=True,
    mlp="relu2",
    norm="rmsnorm",
    bias=False,
    tie_embeddings=False,
    zero_init_proj=True,
    logit_softcap=15.0,
)


def test_rope_is_the_identity_at_position_0_preserves_norms_and_sees_only_offsets():
    rotary = Rotary(head_dim=8, block_size=16, base=10000.0)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 16, 8, generator=g)
    torch.testing.assert_close(rotary(q)[..., 0, :], q[..., 0, :])
    torch.testing.assert_close(rotary(q).norm(dim=-1), q.norm(dim=-1))
    # The same q at position 5 and k at 3 score like q at 12 and k at 10: only the offset counts.
    same = torch.randn(8, generator=g)
    qs, ks = same.expand(1, 1, 16, 8), torch.randn(8, generator=g).expand(1, 1, 16, 8)
    rq, rk = rotary(qs)[0, 0], rotary(ks)[0, 0]
    torch.testing.assert_close(rq[5] @ rk[3], rq[12] @ rk[10])
    # A known value: the first pair of position 1 turns by exactly 1 radian (frequency base^0).
    x = torch.zeros(1, 1, 2, 8)
    x[..., 1, 0] = 1.0
    torch.testing.assert_close(
        rotary(x)[0, 0, 1, [0, 4]], torch.tensor([math.cos(1.0), math.sin(1.0)])
    )


def test_rmsnorm_relu2_and_qk_norm_have_their_definitions():
    x = torch.randn(3, 5, 8)
    norm = RMSNorm(8)
    norm.weight.data = torch.arange(1.0, 9.0)
    torch.testing.assert_close(
        norm(x), x / x.pow(2).mean(-1, keepdim=True).add(1e-5).sqrt() * torch.arange(1.0, 9.0)
    )
    torch.testing.assert_close(
        ReLUSquared()(torch.tensor([-2.0, 0.5, 3.0])), torch.tensor([0.0, 0.25, 9.0])
    )


def test_every_option_builds_a_causal_model_of_the_right_size():
    torch.manual_seed(0)
    config = GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=32, **ALL_OPTIONS)
    model = GPT(config).eval()
    assert (
        "wpe" not in model.transformer and model.lm_head.weight is not model.transformer.wte.weight
    )
    assert not any(p.dim() == 1 and "bias" in n for n, p in model.named_parameters())
    default = GPT(
        GPTConfig(block_size=16, vocab_size=50, n_layer=2, n_head=2, n_embd=32, bias=False)
    )
    # untied head: + V*C; no position embedding: - T*C; RMSNorm has no bias either way
    assert (
        model.num_params(non_embedding=False)
        == default.num_params(non_embedding=False) + 64 * 32 - 16 * 32
    )
    x = torch.randint(50, (2, 16))
    assert torch.count_nonzero(model(x)) == 0  # zero-initialised head: every logit starts at 0
    model.lm_head.weight.data.normal_()
    changed = x.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 50
    torch.testing.assert_close(model(x)[:, :9], model(changed)[:, :9])


def test_zero_initialised_projections_make_every_block_the_identity():
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(block_size=16, vocab_size=50, n_layer=3, n_head=2, n_embd=32, zero_init_proj=True)
    ).eval()
    x = torch.randint(50, (2, 16))
    embedded = model.transformer.wte(x) + model.transformer.wpe(torch.arange(16))
    torch.testing.assert_close(model.hidden_states(x), model.transformer.ln_f(embedded))
    torch.manual_seed(0)
    default = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=3, n_head=2, n_embd=32))
    # the option draws the same random numbers: every other weight is the default's
    for (name, p), q in zip(model.named_parameters(), default.parameters()):
        assert torch.equal(p, q) or name.endswith("c_proj.weight"), name


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"position": "alibi"}, "model.position"),
        ({"mlp": "swiglu"}, "model.mlp"),
        ({"norm": "batchnorm"}, "model.norm"),
        ({"position": "rope", "n_embd": 30, "n_head": 10}, "even head size"),
    ],
)
def test_bad_options_are_refused(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        GPTConfig(
            **{"block_size": 16, "vocab_size": 50, "n_layer": 2, "n_head": 2, "n_embd": 32} | kwargs
        )


def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys():
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(block_size=16, vocab_size=50, n_layer=1, n_head=2, n_embd=32, qk_norm=True)
    ).eval()
    x = torch.randint(50, (2, 16))
    before = model(x)
    attn = model.transformer.h[0].attn
    with torch.no_grad():  # q and k are the first 2 * n_embd outputs of c_attn
        attn.c_attn.weight[:64] *= 100.0
        attn.c_attn.bias[:64] *= 100.0
    torch.testing.assert_close(model(x), before, rtol=1e-4, atol=1e-4)
    model.config.qk_norm = attn.qk_norm = False  # without it the same scaling changes everything
    assert not torch.allclose(model(x), before, atol=1e-2)
