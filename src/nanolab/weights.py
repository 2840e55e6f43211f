"""The one loader of trained weights, for `init_from=` and for `checkpoint=` of nanolab.evaluate,
nanolab.sample and nanolab.prune: a nanolab run, a nanoGPT checkpoint, or a Hugging Face GPT-2
directory, each read into nanolab's parameter names and shapes (`read_weights`), then put into a
model of their shape (`model_from_weights`) or into a configured one (`load_into`).

- a nanolab run directory (its best.pt, else last.pt) or checkpoint file;
- nanoGPT's `ckpt.pt` (train.py's keys `model_args` and `model`; the `_orig_mod.` prefix of a
  compiled model is dropped); nanoGPT's model is nanolab's with the default options;
- a local directory holding a GPT2LMHeadModel's `config.json` and `model.safetensors` (or
  `pytorch_model.bin`): its Conv1D weights (in × out) are transposed, the attention-mask
  buffers dropped, a `transformer.` prefix optional, the head tied; it needs `model.gelu=tanh`
  and `model.bias=true`, as GPT-2 was trained with.

The weights must fit the configured model: a shape or vocabulary that differs is one error
naming both sides. Only the weights are taken: the new run has its own optimizer, data and lr.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from safetensors.torch import load_file as load_safetensors

from nanolab import ConfigError
from nanolab.checkpoint import checkpoint_file, load_checkpoint, run_config
from nanolab.model import GPT, GPTConfig
from nanolab.tokenizer import GPT2_VOCAB

# stored in × out by transformers
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


@dataclass
class TrainedRun:
    """What a nanolab checkpoint records of the run that trained its weights."""

    config: DictConfig  # its config, as data (checkpoint.run_config)
    data_meta: dict[str, Any]  # its prepared data's meta.json
    data_dir: str | None  # where that data was prepared (data.trained_data looks there)


@dataclass(kw_only=True)
class Weights:
    """Weights in nanolab's names, and what is known of the model they belong to."""

    source: str  # what they are, for messages: "nanolab checkpoint x.pt", ...
    path: Path  # the file read, or the Hugging Face directory
    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any]  # GPTConfig fields the source fixes (shapes, options)
    tokenizer: str  # "gpt2" or "char"
    chars: list[str] | None = None  # a nanolab character vocabulary, when the source holds it
    step: int | None = None  # the training step, when the source records it
    run: TrainedRun | None = None  # a nanolab checkpoint's run; None for nanoGPT's and GPT-2's


def read_weights(location: str, key: str = "init_from") -> Weights:
    """The weights at `location`: a nanolab run or checkpoint, a nanoGPT ckpt.pt, or a Hugging
    Face GPT-2 directory; `key` is the config key that named it, for messages."""
    foreign = foreign_weights(location, key)
    if foreign is not None:
        return foreign
    file = checkpoint_file(location, key)
    state = load_checkpoint(file)
    meta = state["data_meta"]
    return Weights(
        source=f"nanolab checkpoint {file}",
        path=file,
        state_dict=state["model"],
        config=state["model_config"],
        tokenizer=meta["tokenizer"],
        chars=meta.get("chars"),
        step=state["step"],
        run=TrainedRun(run_config(state), meta, state["data_dir"]),
    )


def foreign_weights(location: str, key: str) -> Weights | None:
    """The weights at `location` when nanoGPT or Hugging Face wrote them; None for a nanolab
    run or checkpoint."""
    path = Path(location)
    if not path.exists():
        raise ConfigError(
            f"{key}={location} does not exist: give a nanolab run directory or .pt "
            "file, a nanoGPT ckpt.pt or a local Hugging Face GPT-2 directory (a model "
            "name such as gpt2 needs the hub: download it and give its directory)"
        )
    if path.is_dir() and (path / "config.json").is_file():
        return _huggingface(path, key)
    file = checkpoint_file(path, key)
    try:
        raw = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    # not a plain-tensor file: a nanolab checkpoint with optimizer classes, or damaged
    # (load_checkpoint says)
    except Exception:
        raw = None
    if isinstance(raw, dict) and "model_args" in raw and "model" in raw and "format" not in raw:
        return _nanogpt(file, raw)
    return None


def _nanogpt(file: Path, raw: dict) -> Weights:
    args = raw["model_args"]
    state = {k.removeprefix("_orig_mod."): v for k, v in raw["model"].items()}
    # old nanoGPT's causal-mask buffer
    state = {k: v for k, v in state.items() if not k.endswith(".attn.bias")}
    config = {
        k: args[k]
        for k in ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size")
        if k in args
    }
    step = raw.get("iter_num")
    return Weights(
        source=f"nanoGPT checkpoint {file}",
        path=file,
        state_dict=state,
        config=config,
        tokenizer="gpt2" if args.get("vocab_size", 0) >= GPT2_VOCAB else "char",
        step=step,
    )


# what a GPT-2 config.json must give
HF_CONFIG_KEYS = ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size")


def _huggingface(directory: Path, key: str) -> Weights:
    config_file = directory / "config.json"
    try:
        hf = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(
            f"{key}={directory}: {config_file} is unreadable or not JSON ({e}); download it again"
        ) from None
    if not isinstance(hf, dict) or hf.get("model_type", "gpt2") != "gpt2":
        kind = hf.get("model_type") if isinstance(hf, dict) else type(hf).__name__
        raise ConfigError(
            f"{key}={directory} holds a {kind} model; nanolab "
            "reads GPT-2 (GPT2LMHeadModel) directories"
        )
    lacking = [k for k in HF_CONFIG_KEYS if not isinstance(hf.get(k), int)]
    if lacking:
        raise ConfigError(
            f"{key}={directory}: {config_file} lacks {', '.join(lacking)} "
            "(a whole number each); download it again"
        )
    raw = _hf_weights(directory, key)
    eps = hf.get("layer_norm_epsilon", 1e-5)
    if not isinstance(eps, (int, float)) or abs(eps - 1e-5) > 1e-12:
        raise ConfigError(f"{key}={directory} uses LayerNorm eps {eps}; nanolab's is 1e-5")
    state = {}
    for stored, tensor in raw.items():
        name = (
            stored if stored.startswith(("transformer.", "lm_head.")) else f"transformer.{stored}"
        )
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers, not weights
        state[name] = tensor.t().contiguous() if name.endswith(CONV1D) else tensor
    state.setdefault("lm_head.weight", state["transformer.wte.weight"])  # tied: often not saved
    config = {
        "n_layer": hf["n_layer"],
        "n_head": hf["n_head"],
        "n_embd": hf["n_embd"],
        "block_size": hf["n_positions"],
        "vocab_size": hf["vocab_size"],
        "bias": True,
        "gelu": "tanh" if hf.get("activation_function", "gelu_new") != "gelu" else "exact",
    }
    return Weights(
        source=f"Hugging Face GPT-2 {directory}",
        path=directory,
        state_dict=state,
        config=config,
        tokenizer="gpt2",
    )


def _hf_weights(directory: Path, key: str) -> dict[str, torch.Tensor]:
    """The tensors of a Hugging Face directory's weights file, or one ConfigError naming it."""
    safetensors, pickled = directory / "model.safetensors", directory / "pytorch_model.bin"
    if not safetensors.is_file() and not pickled.is_file():
        raise ConfigError(
            f"{key}={directory} has config.json but neither model.safetensors nor pytorch_model.bin"
        )
    file = safetensors if safetensors.is_file() else pickled
    try:
        if file is safetensors:
            raw = load_safetensors(file)
        else:
            raw = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors and torch raise many types for a damaged file
        raise ConfigError(
            f"{key}={directory}: {file} is unreadable (truncated or damaged: "
            f"{str(e).splitlines()[0]}); download it again"
        ) from None
    if not isinstance(raw, dict) or "wte.weight" not in {
        k.removeprefix("transformer.") for k in raw
    }:
        raise ConfigError(f"{key}={directory}: {file} holds no GPT-2 weights (no wte.weight)")
    return raw


def foreign_data_dir(weights: Weights, data_dir: str | None, location: str) -> Path:
    """`data.dir` of nanolab.evaluate or nanolab.sample for weights from outside nanolab, which
    record neither their data nor (nanoGPT's character models: meta.pkl) their vocabulary."""
    if data_dir is None:
        raise ConfigError(
            f"checkpoint={location}: {weights.source} records neither its data nor its "
            "vocabulary; give data.dir=<a folder a nanolab run "
            "prepared with the same tokens>, e.g. data.dir=data/shakespeare_char for nanoGPT's "
            "shakespeare_char (the same sorted characters)"
        )
    return Path(data_dir)


def model_from_weights(weights: Weights, data_meta: dict[str, Any], key: str) -> GPT:
    """A model of the weights' own shape and options (nanoGPT's are nanolab's defaults) holding
    them, for data with `data_meta`; `key` names the weights in messages."""
    known = {f.name for f in dataclasses.fields(GPTConfig)} - {"vocab_size"}
    model = GPT(
        GPTConfig(
            **{k: v for k, v in weights.config.items() if k in known},
            vocab_size=data_meta["vocab_size"],
        )
    )
    load_into(model, weights, data_meta, key)
    return model


# The keys that set the multipliers a model computes with; weights without them (nanoGPT's,
# GPT-2's, a checkpoint from before μP) were trained with the defaults: SP, all ones.
PARAMETRIZATION_KEYS = (
    "parametrization",
    "mup_base_width",
    "mup_base_head_dim",
    "input_mult",
    "output_mult",
    "depth_alpha",
    "mup_base_depth",
)


def _multipliers(c: GPTConfig) -> tuple:
    return (c.width_mult, c.attn_scale, c.branch_mult, c.input_mult, c.output_mult)


def check_parametrization(weights: Weights, mine: GPTConfig, key: str) -> None:
    """Refuse weights trained with other multipliers (SP weights into a μP model at m != 1, or
    μP weights of another base): in this model they would compute another function. μP's
    scaling lives in the init and the forward pass, so fitting weights load as they are."""
    defaults = {f.name: f.default for f in dataclasses.fields(GPTConfig)}
    theirs = dataclasses.replace(
        mine, **{k: weights.config.get(k, defaults[k]) for k in PARAMETRIZATION_KEYS}
    )
    if _multipliers(theirs) != _multipliers(mine):
        raise ConfigError(
            f"{key}: {weights.source} was trained with parametrization={theirs.parametrization} "
            f"(width multiplier {theirs.width_mult:g}, depth multiplier {theirs.branch_mult:g}), "
            f"the configured model has parametrization={mine.parametrization} (width multiplier "
            f"{mine.width_mult:g}, depth multiplier {mine.branch_mult:g}): set model."
            f"{{{', '.join(PARAMETRIZATION_KEYS)}}} to the weights' values"
        )


def load_into(
    model: GPT, weights: Weights, data_meta: dict[str, Any], key: str = "init_from"
) -> None:
    """Copy `weights` into `model` (whose data has `data_meta`), or raise one ConfigError naming
    every difference; `key` names the weights in messages."""
    mine = model.config
    if weights.tokenizer != data_meta["tokenizer"] or (
        weights.chars is not None and weights.chars != data_meta.get("chars")
    ):
        raise ConfigError(
            f"{key}: {weights.source} was trained on {weights.tokenizer} tokens"
            + (
                f" of another character set ({len(weights.chars)} characters)"
                if weights.tokenizer == data_meta["tokenizer"]
                else ""
            )
            + f", this run's data on {data_meta['tokenizer']} tokens ({data_meta['vocab_size']}): "
            "choose data= to match"
        )
    diffs = [
        f"{k}: {weights.source} has {v}, model.{k}={getattr(mine, k)}"
        for k, v in weights.config.items()
        if k
        in (
            "n_layer",
            "n_head",
            "n_embd",
            "bias",
            "gelu",
            "mlp",
            "norm",
            "position",
            "qk_norm",
            "tie_embeddings",
            "head_dim",
            "mlp_hidden",
        )
        and getattr(mine, k) != v
    ]
    if weights.config.get("block_size", mine.block_size) < mine.block_size:
        diffs.append(
            f"block_size: {weights.source} has {weights.config['block_size']}, "
            f"model.block_size={mine.block_size} (at most that)"
        )
    source_vocab = weights.config.get("vocab_size")
    if source_vocab is not None and source_vocab not in (mine.vocab_size, mine.padded_vocab_size):
        diffs.append(
            f"vocabulary: {weights.source} has {source_vocab} "
            f"tokens, this run's data {mine.vocab_size}"
        )
    if diffs:
        raise ConfigError(
            f"{key}: the weights do not fit the configured model/data: " + "; ".join(diffs)
        )
    check_parametrization(weights, mine, key)
    target = model.state_dict()
    state = {}
    for name, tensor in weights.state_dict.items():
        if name not in target:
            raise ConfigError(
                f"{key}: {weights.source} has a parameter {name} that the configured model lacks"
            )
        want = target[name]
        if (
            name in ("transformer.wte.weight", "lm_head.weight")
            and tensor.shape[0] != want.shape[0]
        ):
            padded = want.clone()  # rows past the true vocabulary are padding: never read
            rows = min(tensor.shape[0], want.shape[0])
            padded[:rows] = tensor[:rows]
            tensor = padded
        elif name == "transformer.wpe.weight" and tensor.shape[0] > want.shape[0]:
            # a shorter context than the source's: its first positions
            tensor = tensor[: want.shape[0]]
        if tensor.shape != want.shape:
            raise ConfigError(
                f"{key}: {name} is {tuple(tensor.shape)} in {weights.source}, "
                f"{tuple(want.shape)} in the configured model"
            )
        state[name] = tensor.to(want.dtype)
    missing = sorted(
        set(target) - set(state) - ({"lm_head.weight"} if mine.tie_embeddings else set())
    )
    if missing:
        raise ConfigError(
            f"{key}: {weights.source} lacks "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )
    model.load_state_dict(state, strict=False)
