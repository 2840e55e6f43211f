"""Typed configs: a dataclass schema for each config group, kept in Hydra's ConfigStore under
`schema/<group>/<option>`, and `check_config`, which holds a composed config to them.

The yaml files in configs/ are the only source of default values: every schema field is
MISSING, so a schema states types and fixed choices (enums), never numbers. The yamls do not
list the schemas in their defaults, because Hydra would then report a wrong type as a
multi-line error with exit code 1; `check_config` reports it as every other bad value is
reported: one line naming the key and what it must be, exit code 2, before a file is written
(it runs in the run's `on_run_start` callback, and again when training starts).
"""

from __future__ import annotations

import enum
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

from nanolab import ConfigError
from nanolab.dataloader import full_batch_windows
from nanolab.flops import budget_iters
from nanolab.frequency import check_token_freq
from nanolab.losses import check_loss, head_chunk_tokens
from nanolab.model import GPTConfig
from nanolab.mup import check_mup
from nanolab.noise import check_noise_scale
from nanolab.optim import build_schedule, check_optim
from nanolab.runtime import thread_count, use_compile
from nanolab.sharpness import check_sharpness
from nanolab.sparsity import check_sparsity


class Dtype(enum.Enum):
    auto = enum.auto()
    float32 = enum.auto()
    bfloat16 = enum.auto()
    float16 = enum.auto()


class OnNonfinite(enum.Enum):
    stop = enum.auto()
    skip_step = enum.auto()


class LoggerMode(enum.Enum):
    auto = enum.auto()
    online = enum.auto()
    offline = enum.auto()
    disabled = enum.auto()


class DataSource(enum.Enum):
    shakespeare = enum.auto()
    text = enum.auto()
    hf = enum.auto()


class TokenizerName(enum.Enum):
    char = enum.auto()
    gpt2 = enum.auto()


@dataclass
class TrainKeys:
    """The top-level keys of train.yaml. `compile`, `head_chunk_tokens` and `resume` mix words
    and numbers or paths; their own checks name the allowed values."""

    seed: int = MISSING
    device: str = MISSING
    dtype: Dtype = MISSING
    compile: Any = MISSING
    cpu_keep_freed_memory: bool = MISSING
    threads: Any = MISSING
    head_chunk_tokens: Any = MISSING
    init_from: str | None = MISSING
    resume: Any = MISSING
    allow_changes: list[str] = field(default_factory=lambda: MISSING)
    fresh_optimizer: bool = MISSING
    objective: str = MISSING


@dataclass
class SampleKeys:
    """sample.yaml's keys."""

    checkpoint: str = MISSING
    prompt: str = MISSING
    num_samples: int = MISSING
    max_new_tokens: int = MISSING
    temperature: float = MISSING
    top_k: int | None = MISSING
    seed: int = MISSING
    device: str = MISSING
    quantize: str | None = MISSING  # null | int8, checked by quantize.py
    data: Any = MISSING  # {dir}: a string or null


@dataclass
class PruneKeys:
    """prune.yaml's keys."""

    checkpoint: str = MISSING
    method: str = MISSING  # magnitude | imp | structured, checked by prune.py
    amounts: list[float] = field(default_factory=lambda: MISSING)
    scope: str = MISSING
    finetune_steps: int = MISSING
    finetune_lr: float = MISSING
    rewind_step: int = MISSING
    prune_embeddings: bool = MISSING
    int8: bool = MISSING
    measure: bool = MISSING
    measure_batch: int = MISSING
    measure_tokens: int = MISSING
    out: str | None = MISSING
    device: str = MISSING
    data: Any = MISSING  # {dir}: a string or null


@dataclass
class EvaluateKeys:
    """evaluate.yaml's keys."""

    checkpoint: str = MISSING
    split: str = MISSING
    batch_tokens: int = MISSING
    device: str = MISSING
    dtype: Dtype = MISSING
    quantize: str | None = MISSING  # null | int8, checked by quantize.py
    cpu_keep_freed_memory: bool = MISSING
    data: Any = MISSING  # {dir}: a string or null
    token_freq: Any = MISSING  # {bins, scheme}, checked by frequency.py


@dataclass
class TrainerKeys:
    max_iters: int = MISSING
    flops_budget: float | None = MISSING
    batch_size: int = MISSING
    grad_accum: int = MISSING
    fix_global_batch: bool = MISSING
    grad_clip: float = MISSING
    eval_interval: int = MISSING
    eval_iters: int = MISSING
    log_interval: int = MISSING
    save_checkpoints: bool = MISSING
    on_nonfinite: OnNonfinite = MISSING
    full_batch: bool = MISSING
    early_stop: Any = MISSING  # held to EarlyStop


@dataclass
class EarlyStop:
    patience: int = MISSING
    min_delta: float = MISSING
    target: float | None = MISSING


@dataclass
class Sharpness:
    every: int = MISSING
    k: int = MISSING
    probe_tokens: int = MISSING
    lanczos_iters: int = MISSING


@dataclass
class NoiseScaleKeys:
    enabled: bool = MISSING
    ema: float = MISSING


@dataclass
class SparsityKeys:
    final: float = MISSING
    start: int = MISSING
    end: int | None = MISSING
    every: int = MISSING
    scope: str = MISSING  # global | layer, checked by sparsity.py
    embeddings: bool = MISSING
    l1: float = MISSING
    group_lasso: float = MISSING


@dataclass
class TokenFreq:
    bins: int = MISSING
    scheme: str = MISSING  # equal_mass | log, checked by frequency.py


@dataclass
class Model:
    name: str = MISSING
    n_layer: int = MISSING
    n_head: int = MISSING
    n_embd: int = MISSING
    block_size: int = MISSING
    dropout: float = MISSING
    bias: bool = MISSING
    logit_softcap: float | None = MISSING
    position: str = MISSING  # learned | rope, checked by GPTConfig
    rope_base: float = MISSING
    qk_norm: bool = MISSING
    mlp: str = MISSING  # gelu | relu2
    gelu: str = MISSING  # exact | tanh
    norm: str = MISSING  # layernorm | rmsnorm
    tie_embeddings: bool = MISSING
    zero_init_proj: bool = MISSING
    head_dim: int | None = MISSING
    mlp_hidden: int | None = MISSING
    init_std: float = MISSING
    parametrization: str = MISSING  # sp | mup, checked by GPTConfig
    mup_base_width: int | None = MISSING
    mup_base_head_dim: int | None = MISSING
    input_mult: float = MISSING
    output_mult: float = MISSING
    depth_alpha: float = MISSING
    mup_base_depth: int | None = MISSING


@dataclass
class Optim:
    name: str = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING


@dataclass
class AdamW(Optim):
    betas: list[float] = field(default_factory=lambda: MISSING)
    eps: float = MISSING
    fused: Any = MISSING  # auto | true | false, checked by optim.py


@dataclass
class SGD(Optim):
    momentum: float = MISSING
    nesterov: bool = MISSING


@dataclass
class Adafactor(Optim):
    beta2_decay: float = MISSING
    eps1: float | None = MISSING
    eps2: float = MISSING
    clip_threshold: float = MISSING


@dataclass
class Muon(Optim):
    momentum: float = MISSING
    nesterov: bool = MISSING
    ns_steps: int = MISSING
    adjust_lr_fn: str | None = MISSING  # null | original | match_rms_adamw, checked by optim.py
    adamw_lr: float = MISSING
    adamw_weight_decay: float = MISSING
    adamw_betas: list[float] = field(default_factory=lambda: MISSING)
    adamw_eps: float = MISSING


@dataclass
class Lion(Optim):
    betas: list[float] = field(default_factory=lambda: MISSING)


@dataclass
class Shampoo(Optim):
    betas: list[float] = field(default_factory=lambda: MISSING)
    graft: str = MISSING  # adagrad | rmsprop | sgd, checked by optim.py
    start_preconditioning_step: int = MISSING
    preconditioning_compute_steps: int = MISSING


@dataclass
class SOAP(Optim):
    betas: list[float] = field(default_factory=lambda: MISSING)
    eps: float = MISSING
    precondition_frequency: int = MISSING


@dataclass
class ScheduleFreeAdamW(Optim):
    betas: list[float] = field(default_factory=lambda: MISSING)
    eps: float = MISSING
    warmup_steps: int = MISSING


@dataclass
class Schedule:
    name: str = MISSING
    warmup_iters: int = MISSING


@dataclass
class Cosine(Schedule):
    decay_iters: int = MISSING
    min_lr: float = MISSING


@dataclass
class WSD(Schedule):
    total_iters: int = MISSING
    decay_frac: float = MISSING
    decay_shape: str = MISSING  # linear | cosine | 1-sqrt (not a Python name), checked by optim.py
    final_frac: float = MISSING


@dataclass
class Loss:
    name: str = MISSING
    ignore_index: int = MISSING
    z_loss: float = MISSING


@dataclass
class LabelSmoothing(Loss):
    epsilon: float = MISSING


@dataclass
class SquareLoss(Loss):
    k: float = MISSING
    M: float = MISSING


@dataclass
class Focal(Loss):
    gamma: float = MISSING


@dataclass
class LogitAdjusted(Loss):
    tau: float = MISSING
    class_counts: str | None = MISSING


@dataclass
class ClassBalanced(Loss):
    beta: float = MISSING
    class_counts: str | None = MISSING


@dataclass
class Data:
    name: str = MISSING
    source: DataSource = MISSING
    tokenizer: TokenizerName = MISSING
    val_fraction: float = MISSING
    shard_gb: float = MISSING
    dir: str = MISSING
    shared_filesystem: bool = MISSING
    train_tokens: int | None = MISSING
    label_noise: float = MISSING
    label_noise_seed: int = MISSING


@dataclass
class ShakespeareData(Data):
    raw_path: str = MISSING
    url: str = MISSING


@dataclass
class TextData(Data):
    path: str | None = MISSING


@dataclass
class HFData(Data):
    hf_path: str = MISSING
    hf_name: str | None = MISSING
    data_files: Any = MISSING
    text_field: str = MISSING
    val_split: str | None = MISSING
    num_proc: int = MISSING


@dataclass
class Logger:
    project: str = MISSING
    entity: str | None = MISSING
    mode: LoggerMode = MISSING
    group: str | None = MISSING
    name: str | None = MISSING
    tags: list[str] = field(default_factory=lambda: MISSING)
    init_timeout: float = MISSING
    log_checkpoints: bool = MISSING


# group -> (the key whose value picks the schema, {value: schema}); a group with one schema
# has no selecting key. Options are stored as schema/<group>/<option>.
SCHEMAS: dict[str, tuple[str | None, dict[str, type]]] = {
    "trainer": (None, {"default": TrainerKeys}),
    "sharpness": (None, {"default": Sharpness}),
    "noise_scale": (None, {"default": NoiseScaleKeys}),
    "token_freq": (None, {"default": TokenFreq}),
    "sparsity": (None, {"default": SparsityKeys}),
    "model": (None, {"gpt": Model}),
    "logger": (None, {"wandb": Logger}),
    "optim": (
        "name",
        {
            "adamw": AdamW,
            "adam": AdamW,
            "sgd": SGD,
            "adafactor": Adafactor,
            "muon": Muon,
            "lion": Lion,
            "shampoo": Shampoo,
            "soap": SOAP,
            "schedulefree_adamw": ScheduleFreeAdamW,
        },
    ),
    "schedule": ("name", {"cosine": Cosine, "constant": Schedule, "wsd": WSD}),
    "loss": (
        "name",
        {
            "ce": Loss,
            "squentropy": Loss,
            "brier": Loss,
            "label_smoothing": LabelSmoothing,
            "mse": SquareLoss,
            "focal": Focal,
            "logit_adjusted": LogitAdjusted,
            "class_balanced": ClassBalanced,
        },
    ),
    "data": ("source", {"shakespeare": ShakespeareData, "text": TextData, "hf": HFData}),
}


def register_schemas() -> None:
    store = ConfigStore.instance()
    store.store(group="schema", name="train", node=TrainKeys)
    store.store(group="schema", name="sample", node=SampleKeys)
    store.store(group="schema", name="evaluate", node=EvaluateKeys)
    for group, (_, options) in SCHEMAS.items():
        for option, schema in options.items():
            store.store(group=f"schema/{group}", name=option, node=schema)


register_schemas()


def _schema_class(group: str, node: DictConfig) -> type | None:
    """The schema of `node` (a group of the composed config), or None for an option nanolab
    does not know (a user's own loss or optimizer: its own checks apply)."""
    key, options = SCHEMAS[group]
    option = next(iter(options)) if key is None else node.get(key)
    if isinstance(option, str) and option in options:
        return options[option]
    if key == "source":  # data sources are a fixed set
        raise ConfigError(f"data.source={option!r} must be one of {', '.join(options)}")
    return None


def _expectation(field_type: Any) -> str:
    """What a key must be, in the words of the config: 'an integer', 'one of a, b'."""
    if isinstance(field_type, type) and issubclass(field_type, enum.Enum):
        return "one of " + ", ".join(field_type.__members__)
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return words.get(field_type, f"of type {field_type}")


def _typed(path: str, node: DictConfig, schema: type) -> None:
    """Check the values of `node` (at `path`, '' for the top level) against `schema` and write
    the values it converts ('yes' for a bool, '12' for an int) back into `node`."""
    prefix = f"{path}." if path else ""
    hints = typing.get_type_hints(schema)
    if path and set(node) - set(hints):
        unknown = sorted(set(node) - set(hints))[0]
        raise ConfigError(
            f"{prefix}{unknown} is not a key of {path}; its keys are {', '.join(hints)}"
        )
    # Scalars only, as given (interpolations unresolved: a schedule follows trainer.max_iters).
    # noqa: SLF001
    given = {
        k: node._get_node(k)._value()
        for k in hints
        if k in node and not OmegaConf.is_config(node[k])
    }
    try:
        typed = OmegaConf.to_container(
            OmegaConf.merge(OmegaConf.structured(schema), given), enum_to_str=True
        )
    except ValidationError as e:
        hint = hints[e.key]
        expected = _expectation(
            typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Union else hint
        )
        raise ConfigError(f"{prefix}{e.key}={given.get(e.key)!r} must be {expected}") from None
    for key, value in given.items():
        converted = typed[key]
        widened = (
            isinstance(value, int) and not isinstance(value, bool) and isinstance(converted, float)
        )
        if (
            value is not None
            and not widened
            and not OmegaConf.is_interpolation(node, key)
            and type(converted) is not type(value)
        ):
            # an int stays an int where a float is expected: messages quote what was given
            node[key] = converted


# Keys that do not change what a run computes, with their sub-keys: where it resumes from and
# what the resume may change, the device and kernels that run it, what it measures besides
# (the gradient noise scale reads gradients, never changes them), how it is logged, Hydra's
# own. Run and sweep-job names leave them out, nanolab.compare does not group by them, the W&B
# config holds what setup made of them, and a resume may change them.
CHANGES_NOTHING = (
    "resume",
    "allow_changes",
    "fresh_optimizer",
    "device",
    "compile",
    "optim.fused",
    "noise_scale",
    "token_freq",
    "logger",
    "hydra",
)


def changes_nothing(key: str) -> bool:
    """Whether the dotted config key (or an override's key: `+`, `~` and `++` are ignored) is
    one of CHANGES_NOTHING or below one."""
    key = key.lstrip("+~")
    return any(key == k or key.startswith(k + ".") for k in CHANGES_NOTHING)


def computing_keys(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A (resolved) config tree less the keys that change nothing the run computes."""
    return {
        k: computing_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else v
        for k, v in tree.items()
        if not changes_nothing(f"{prefix}{k}")
    }


# The configs check_config has passed in this process (as JSON): a single run's config is
# checked by the Hydra callback before Hydra writes anything, and is not checked again when
# training starts.
_checked: set[str] = set()


def resolved_tree(cfg: DictConfig) -> dict[str, Any]:
    """A run's config as plain values, resolved, without Hydra's node: the same for the Hydra
    callback's config and the task's."""
    return {
        k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
        for k, v in cfg.items()
        if k != "hydra"
    }


def _as_json(cfg: DictConfig) -> str | None:
    try:
        return json.dumps(resolved_tree(cfg), sort_keys=True, default=str)
    except OmegaConfBaseException:  # an interpolation that fails: the checks name it
        return None


def check_config(cfg: DictConfig) -> None:
    """Check a composed training config before anything runs or is written: types against the
    schemas (converting in place), then the values of every group. Raises one ConfigError
    naming the first bad key and what it must be."""
    if _as_json(cfg) in _checked:
        return
    missing = missing_keys(cfg)
    if missing:
        raise ConfigError(
            f"{', '.join(missing)}: no value given (the config has "
            f"???); set it on the command line, e.g. {missing[0]}=..."
        )
    check_types(cfg)
    check_values(cfg)
    _checked.add(_as_json(cfg))


def missing_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """The dotted keys left at ??? (without resolving interpolations, which may point at them),
    Hydra's own node left out: Hydra fills its ??? (job id, output dir) itself."""
    found = []
    for key in node:
        if not prefix and key == "hydra":
            continue
        if OmegaConf.is_missing(node, key):
            found.append(f"{prefix}{key}")
        elif isinstance(child := node._get_node(key), DictConfig):
            found += missing_keys(child, f"{prefix}{key}.")
    return found


# Validation metrics a run can return to a sweeper, all of them lower-is-better.
OBJECTIVES = ("val/ce", "val/ce_calibrated", "val/loss", "val/bpt", "val/brier", "val/ece")


def check_values(cfg: DictConfig) -> None:
    """Values that no type can express (positive counts, known names, each module's own
    parameter checks), all without touching data or devices."""
    trainer = cfg.trainer
    for key in (
        "max_iters",
        "batch_size",
        "grad_accum",
        "eval_interval",
        "eval_iters",
        "log_interval",
    ):
        if not trainer[key] > 0:
            raise ConfigError(f"trainer.{key}={trainer[key]} must be > 0")
    if trainer.grad_clip < 0:
        raise ConfigError(
            f"trainer.grad_clip={trainer.grad_clip} must be >= 0 (0 turns clipping off)"
        )
    if trainer.early_stop.patience < 0 or not trainer.early_stop.min_delta >= 0:  # NaN too
        raise ConfigError(
            f"trainer.early_stop.patience={trainer.early_stop.patience} and "
            f"min_delta={trainer.early_stop.min_delta} must be >= 0 (patience 0: off)"
        )
    target = trainer.early_stop.target
    if target is not None and not math.isfinite(target):
        raise ConfigError(
            f"trainer.early_stop.target={target} must be a number (the `objective` to reach) "
            "or null"
        )
    if cfg.data.train_tokens is not None and not cfg.data.train_tokens > cfg.model.block_size:
        raise ConfigError(
            f"data.train_tokens={cfg.data.train_tokens} must be null "
            f"(all) or more than model.block_size={cfg.model.block_size}"
        )
    if not 0 <= cfg.data.label_noise < 1:
        raise ConfigError(
            f"data.label_noise={cfg.data.label_noise} must be a fraction in [0, "
            "1): the share of training targets replaced by random wrong tokens"
        )
    if trainer.full_batch and cfg.data.train_tokens is not None:
        full_batch_windows(cfg.data.train_tokens, cfg.model.block_size, trainer.batch_size)
    check_sharpness(cfg.sharpness)
    check_noise_scale(cfg.noise_scale, trainer.full_batch)
    check_sparsity(cfg.sparsity, trainer.max_iters, cfg.optim.name)
    if cfg.objective not in OBJECTIVES:
        raise ConfigError(
            f"objective={cfg.objective!r} must be one of "
            f"{', '.join(OBJECTIVES)} (sweepers minimise it)"
        )
    use_compile(cfg.compile, torch.device("cpu"))
    thread_count(cfg.threads)
    head_chunk_tokens(cfg.head_chunk_tokens, vocab_size=0)
    check_loss(cfg.loss)
    check_token_freq(cfg.token_freq)
    check_optim(cfg.optim)
    build_schedule(cfg.schedule, cfg.optim.lr)
    model = GPTConfig.from_keys(cfg.model, vocab_size=1)
    check_mup(cfg.model, cfg.optim)
    if trainer.flops_budget is not None:
        # before the data is read: the head's share needs its vocabulary, so this is a lower
        # bound on a step's FLOPs; the trainer sets max_iters from the exact count
        tokens = trainer.batch_size * model.block_size * trainer.grad_accum
        budget_iters(trainer.flops_budget, model, tokens)


def check_entry_types(cfg: DictConfig, schema: type) -> None:
    """Hold an entry point's own config (sample.yaml, evaluate.yaml) to its schema, in place."""
    _typed("", cfg, schema)


def check_types(cfg: DictConfig) -> None:
    """Hold a composed training config to the schemas, in place: one ConfigError naming the
    first key whose value has the wrong type, is not one of its fixed choices, or cannot be
    resolved (an unset environment variable, say)."""
    _typed("", cfg, TrainKeys)
    for group in SCHEMAS:
        schema = _schema_class(group, cfg[group])
        if schema is not None:
            _typed(group, cfg[group], schema)
    _typed("trainer.early_stop", cfg.trainer.early_stop, EarlyStop)
    for key in cfg:
        if key == "hydra":
            continue
        try:
            OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(
                cfg[key]
            ) else cfg[key]
        except OmegaConfBaseException as e:
            raise ConfigError(
                f"{e.full_key or key} cannot be resolved: {str(e).splitlines()[0]}"
            ) from None
