"""Files from elsewhere are data (issue 33): a downloaded checkpoint, a Hugging Face directory
or a sweep folder never decides what is fetched, written or deleted; resumes with allowed
changes apply them; bad values and full disks are one clear line. All in-process (fast tier)."""

from __future__ import annotations

import base64
import csv
import errno
import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TINY, compose_train
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from nanolab import Abandoned, ConfigError, DataError, StorageError, config_as_data
from nanolab.checkpoint import load_checkpoint
from nanolab.compare import compare, offline_run_folders
from nanolab.config import check_config
from nanolab.data import TokenData, prepare
from nanolab.evaluate import run as evaluate_run
from nanolab.launch import RunInfo
from nanolab.metrics import evaluate_batches
from nanolab.model import GPT, GPTConfig
from nanolab.prune import prune_run
from nanolab.sharpness import lanczos, stability_threshold
from nanolab.train import train
from nanolab.weights import read_weights

RUN = [*TINY, "trainer.max_iters=2", "trainer.eval_interval=2", "logger.mode=disabled"]


def compose_entry(name: str, *overrides: str):
    with initialize_config_module("nanolab.configs", version_base="1.3"):
        return compose(name, overrides=list(overrides))


def train_in_process(run_dir: Path, *overrides: str) -> None:
    train(compose_train(*RUN, *overrides), RunInfo(dir=run_dir, group=None, name=None))


def snapshot(directory: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under `directory` with its modification time and bytes."""
    return {
        str(p): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny run on shakespeare_char, its data prepared under NANOLAB_DATA_DIR."""
    run_dir = tmp_path_factory.mktemp("trained")
    train_in_process(run_dir)
    return run_dir


def crafted(trained: Path, path: Path, config: dict, **state: object) -> Path:
    """The trained run's checkpoint with parts of its saved config (and state) replaced."""
    checkpoint = torch.load(trained / "last.pt", map_location="cpu", weights_only=True)
    for dotted, value in config.items():
        *parents, key = dotted.split(".")
        node = checkpoint["config"]
        for parent in parents:
            node = node[parent]
        node[key] = value
    checkpoint |= state
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_a_checkpoints_url_and_raw_path_are_never_fetched_or_written(
    tmp_path, trained, no_network, data_root
):
    """The held-out probe's payload: a data: URL and a raw_path into site-packages."""
    payload = base64.b64encode(b"import os; os.system('touch PWNED')").decode()
    site = tmp_path / "site-packages"
    victim = tmp_path / "victim"
    checkpoint = crafted(
        trained,
        tmp_path / "evil" / "last.pt",
        {
            "data.url": f"data:text/plain;base64,{payload}",
            "data.raw_path": str(site / "x.pth"),
            "data.dir": str(victim),
            "data.name": "shakespeare_char",
        },
        data_dir=str(victim),
    )
    before = snapshot(data_root)
    metrics = evaluate_run(
        compose_entry("evaluate", f"checkpoint={checkpoint}", "batch_tokens=4096")
    )
    prune_run(
        compose_entry(
            "prune",
            f"checkpoint={checkpoint}",
            "amounts=[0]",
            f"out={tmp_path / 'report'}",
            "device=cpu",
        )
    )
    assert metrics["tokens"] > 0 and (tmp_path / "report" / "prune.md").is_file()
    assert not site.exists() and not victim.exists()  # nothing fetched into them, nothing prepared
    assert snapshot(data_root) == before  # the prepared data was read, not prepared again


def test_a_checkpoints_data_dir_with_other_files_is_left_alone(tmp_path, trained, no_network):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "train.bin").write_bytes(b"someone else's tokens")
    (victim / "notes.txt").write_text("keep me")
    checkpoint = crafted(
        trained,
        tmp_path / "evil" / "last.pt",
        {"data.dir": str(victim), "data.source": "text", "data.path": str(victim)},
        data_dir=str(victim),
    )
    before = snapshot(victim)
    evaluate_run(compose_entry("evaluate", f"checkpoint={checkpoint}"))
    prune_run(compose_entry("prune", f"checkpoint={checkpoint}", "amounts=[0]", "device=cpu"))
    assert snapshot(victim) == before


def test_a_data_name_that_is_a_path_is_not_followed(tmp_path, trained, monkeypatch):
    outside = tmp_path / "outside"
    checkpoint = crafted(
        trained,
        tmp_path / "evil" / "last.pt",
        {},
        data_dir=None,
        data_meta=load_checkpoint(trained / "last.pt")["data_meta"] | {"name": f"../../{outside}"},
    )
    with pytest.raises(ConfigError, match="no prepared data for checkpoint="):
        evaluate_run(compose_entry("evaluate", f"checkpoint={checkpoint}"))
    assert not outside.exists()


def test_data_of_another_vocabulary_is_refused_and_left_as_it_is(tmp_path, trained):
    """evaluate checkpoint=<a run on other text> data.dir=<prepared Shakespeare> used to
    overwrite the Shakespeare bins with the other corpus."""
    corpus = tmp_path / "other.txt"
    corpus.write_text("abc abc cab\n" * 400)
    other = tmp_path / "other"
    prepare(
        compose_train(
            "data=text", f"data.path={corpus}", f"data.dir={other}", "data.name=other"
        ).data
    )
    before = snapshot(other)
    with pytest.raises(
        DataError,
        match=rf"data.dir={other} does not fit checkpoint=.*: "
        r"another character set \(5 characters, the model's 65\)",
    ):
        evaluate_run(compose_entry("evaluate", f"checkpoint={trained}", f"data.dir={other}"))
    with pytest.raises(DataError, match="does not fit"):
        prune_run(
            compose_entry(
                "prune", f"checkpoint={trained}", "amounts=[0]", f"data.dir={other}", "device=cpu"
            )
        )
    assert snapshot(other) == before


def test_a_runs_own_data_is_found_from_any_directory_without_the_data_root(
    tmp_path, trained, monkeypatch
):
    monkeypatch.delenv("NANOLAB_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    metrics = evaluate_run(compose_entry("evaluate", f"checkpoint={trained}"))
    assert metrics["tokens"] == (111_540 - 1) // 32 * 32
    assert list(tmp_path.iterdir()) == []  # nothing written where it ran


def test_checkpoint_config_interpolations_are_text(tmp_path, trained, monkeypatch):
    monkeypatch.setenv("NANOLAB_TEST_SECRET", "leaked")
    checkpoint = crafted(
        trained, tmp_path / "evil" / "last.pt", {"loss.name": "${oc.env:NANOLAB_TEST_SECRET}"}
    )
    with pytest.raises(ConfigError, match=r"loss.name='\$\{oc.env:NANOLAB_TEST_SECRET\}'"):
        evaluate_run(compose_entry("evaluate", f"checkpoint={checkpoint}"))


def test_config_as_data_keeps_every_value_as_written():
    tree = {
        "a": "${oc.env:HOME}",
        "b": "\\${oc.env:HOME}",
        "c": "\\\\${oc.env:HOME}",
        "ref": "${x.y}",
        "x": {"y": 3},
    }
    assert OmegaConf.to_container(OmegaConf.create(config_as_data(tree)), resolve=True) == tree
    resolved = OmegaConf.to_container(
        OmegaConf.create(config_as_data(tree, references=True)), resolve=True
    )
    assert resolved == tree | {"ref": 3}


def test_compare_does_not_resolve_the_environment_from_a_downloaded_sweep(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOLAB_TEST_SECRET", "leaked")
    for number, lr in enumerate(["${oc.env:NANOLAB_TEST_SECRET}", "${tuned.lr}"]):
        job = tmp_path / "sweep" / f"{number}_x"
        (job / ".hydra").mkdir(parents=True)
        overrides = ["seed=1"] if number == 0 else ["seed=1", "loss=mse"]
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        (job / ".hydra" / "config.yaml").write_text(
            yaml.safe_dump(
                {"seed": 1, "loss": {"name": "ce"}, "optim": {"lr": lr}, "tuned": {"lr": 0.5}}
            )
        )
        records = [{"step": 0, "tokens": 0, "time_s": 1.0, "val/ce": 4.0, "val/acc": 0.1}]
        (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (job / "summary.json").write_text(json.dumps({"status": "finished"}))
    (tmp_path / "sweep" / "1_x" / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump(["seed=1", "optim.lr=0.5"])
    )
    compare([str(tmp_path / "sweep")])
    report = (tmp_path / "sweep" / "report.md").read_text()
    assert "leaked" not in report and "${oc.env:NANOLAB_TEST_SECRET}" in report


def test_compare_skips_what_is_not_a_run_with_a_warning(tmp_path, caplog):
    sweep = tmp_path / "sweep"
    good = sweep / "0_good"
    good.mkdir(parents=True)
    lines = [
        {"step": 0, "tokens": 0, "time_s": 1.0, "val/ce": 4.0, "val/acc": 0.1},
        {"step": 5, "tokens": 10, "time_s": 2.0, "val/ce": 3.0, "val/acc": 0.2},
    ]
    bad_lines = [
        "[1, 2]",
        '{"step": "five", "tokens": 0, "time_s": 1, "val/ce": 1}',
        '{"step": 6, "tokens": 0, "time_s": 1, "val/ce": "low"}',
        # the last without time_s
        "\x00\x00\x00",
        '{"step": 7, "tokens": 20, "val/ce": 2.0, "val/acc": 0.3}',
    ]
    (good / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in lines) + "\n".join(bad_lines) + "\n"
    )
    (good / "summary.json").write_text(json.dumps({"status": "finished"}))  # no wall_time_s
    odd = sweep / "1_odd"
    odd.mkdir()
    (odd / "metrics.jsonl").write_text(json.dumps(lines[0]) + "\n")
    (odd / "summary.json").write_text("[1, 2, 3]")
    compare([str(sweep)])
    for number in (3, 4, 5, 6, 7):
        assert f"{good / 'metrics.jsonl'} line {number} is torn or not a record" in caplog.text
    assert f"{odd / 'summary.json'} is not a run's summary" in caplog.text
    runs = {row["run_dir"]: row for row in csv.DictReader((sweep / "runs.csv").open())}
    # the last whole record's
    assert float(runs[str(good)]["val/ce"]) == 3.0 and runs[str(good)]["wall_time_s"] == "2.0"


# --- resume with changes ---------------------------------------------------------------------

PAIRS = [
    ("adamw", "sgd"),
    ("sgd", "adamw"),
    ("adamw", "muon"),
    ("muon", "adamw"),
    ("adamw", "schedulefree_adamw"),
    ("schedulefree_adamw", "adamw"),
]


def refused_keys(error: ConfigError) -> str:
    return str(error).rsplit("allow_changes=", 1)[1]


@pytest.mark.parametrize("before,after", PAIRS, ids=[f"{a}->{b}" for a, b in PAIRS])
def test_an_optimizer_change_is_refused_in_one_line_and_touches_nothing(tmp_path, before, after):
    train_in_process(tmp_path, f"optim={before}")
    kept = snapshot(tmp_path)
    resume = [f"optim={after}", "resume=true", "trainer.max_iters=4"]
    with pytest.raises(ConfigError) as listed:
        train_in_process(tmp_path, *resume)
    allowed = f"allow_changes={refused_keys(listed.value)}"
    with pytest.raises(
        ConfigError,
        match=f"add fresh_optimizer=true to start its state afresh, or resume with optim={before}",
    ):
        train_in_process(tmp_path, *resume, allowed)
    # summary.json, metrics.jsonl and the checkpoints as they were
    assert snapshot(tmp_path) == kept


def test_fresh_optimizer_resumes_with_another_optimizer_and_says_so(tmp_path):
    train_in_process(tmp_path, "optim=adamw")
    with pytest.raises(ConfigError) as listed:
        train_in_process(tmp_path, "optim=sgd", "resume=true", "trainer.max_iters=4")
    train_in_process(
        tmp_path,
        "optim=sgd",
        "resume=true",
        "trainer.max_iters=4",
        f"allow_changes={refused_keys(listed.value)}",
        "fresh_optimizer=true",
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (
        summary["status"] == "finished"
        and "step 2: the optimizer state started afresh (fresh_optimizer=true)"
        in summary["resume/changes"]
    )
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 4


@pytest.mark.parametrize(
    "optim,change,group,key,value",
    [
        ("adamw", "optim.weight_decay=0.5", 0, "weight_decay", 0.5),
        ("muon", "optim.adamw_lr=0.004", 1, "lr_scale", 0.004 / 0.01),  # TINY sets optim.lr=1e-2
        ("muon", "optim.adamw_weight_decay=0.3", 1, "weight_decay", 0.3),
    ],
)
def test_an_allowed_hyperparameter_change_reaches_the_loaded_optimizer(
    tmp_path, optim, change, group, key, value
):
    train_in_process(tmp_path, f"optim={optim}")
    name = change.split("=")[0]
    train_in_process(
        tmp_path,
        f"optim={optim}",
        change,
        "resume=true",
        "trainer.max_iters=4",
        f"allow_changes=[{name}]",
    )
    saved = load_checkpoint(tmp_path / "last.pt")["optimizer"]
    groups = saved["optimizers"][1]["param_groups"] if optim == "muon" else saved["param_groups"]
    assert groups[group if optim != "muon" else 0][key] == pytest.approx(value)


def test_a_resume_on_changed_text_warns_with_the_data_hashes(tmp_path, caplog):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat\n" * 300)
    data = ["data=text", f"data.path={corpus}", f"data.dir={tmp_path / 'prepared'}"]
    run_dir = tmp_path / "run"
    train_in_process(run_dir, *data)
    saved = load_checkpoint(run_dir / "last.pt")["data_meta"]["source_hash"]
    corpus.write_text("the mat sat on the cat\n" * 300)  # the same characters, other text
    train_in_process(run_dir, *data, "resume=true", "trainer.max_iters=4")
    assert f"data hash {saved[:12]} in the checkpoint" in caplog.text
    changes = json.loads((run_dir / "summary.json").read_text())["resume/changes"]
    assert any("the training data changed" in c for c in changes)


# --- values that would train wrong --------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["schedule=wsd", "schedule.total_iters=0"], "schedule.total_iters=0 must be > 0"),
        (["schedule=wsd", "schedule.total_iters=-3"], "schedule.total_iters=-3 must be > 0"),
        (["schedule.min_lr=-1e-4"], "schedule.min_lr=-0.0001 must be >= 0"),
        (["trainer.early_stop.min_delta=nan"], "min_delta=nan must be >= 0"),
        (["trainer.early_stop.min_delta=-0.1"], "min_delta=-0.1 must be >= 0"),
    ],
)
def test_values_that_silently_train_wrong_are_refused(overrides, message):
    with pytest.raises(
        ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")
    ):
        check_config(compose_train(*overrides))


def test_label_noise_on_a_one_token_vocabulary_is_refused():
    data = TokenData(
        train=np.zeros(100, dtype=np.uint16),
        val=np.zeros(100, dtype=np.uint16),
        meta={"name": "ones", "vocab_size": 1},
    )
    with pytest.raises(DataError, match="data.label_noise=0.1 needs at least two tokens"):
        data.add_label_noise(0.1, seed=0)


def test_sharpness_at_learning_rate_zero_has_no_threshold():
    cfg = OmegaConf.create({"name": "sgd", "momentum": 0.9, "nesterov": False})
    assert stability_threshold(cfg, 0.0) is None and stability_threshold(cfg, 0.1) == pytest.approx(
        38.0
    )
    adam = OmegaConf.create({"name": "adamw", "betas": [0.9, 0.95]})
    assert stability_threshold(adam, 0.0) is None


def test_a_run_whose_schedule_decays_to_zero_measures_sharpness_to_the_end(tmp_path):
    train_in_process(
        tmp_path,
        "sharpness.every=1",
        "sharpness.probe_tokens=64",
        "sharpness.lanczos_iters=3",
        "schedule.min_lr=0",
        "schedule.warmup_iters=0",
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    last = [
        json.loads(line)
        for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
        if "sharpness/top1" in line
    ][-1]
    assert summary["status"] == "finished" and load_checkpoint(tmp_path / "last.pt")["step"] == 2
    assert last["step"] == 2 and "sharpness/threshold" not in last


# --- stop requests abandon measurements ----------------------------------------------------------


def test_a_stop_request_abandons_an_evaluation_and_a_lanczos_run():
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=10))
    tokens = np.arange(200, dtype=np.uint16) % 10
    data = TokenData(train=tokens, val=tokens, meta={"vocab_size": 10})
    cfg = OmegaConf.create({"name": "ce", "ignore_index": -1, "z_loss": 0.0})
    from nanolab.losses import get_loss

    with pytest.raises(Abandoned, match="signal 15 arrived during an evaluation"):
        evaluate_batches(
            model,
            data,
            loss_fn=get_loss(cfg),
            loss_cfg=cfg,
            batch_size=2,
            eval_iters=3,
            autocast=torch.autocast("cpu", enabled=False),
            stop=[15],
        )
    assert model.training  # put back in training mode
    with pytest.raises(Abandoned, match="sharpness"):
        lanczos(lambda v: v, 5, 1, 5, torch.Generator().manual_seed(0), stop=[15])


# --- files ----------------------------------------------------------------------------------


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_earlier_checkpoint(
    tmp_path, monkeypatch
):
    import nanolab.checkpoint

    real_save, calls = torch.save, []

    def save(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) > 2:  # step 2's last.pt and best.pt are written; step 4's is not
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(nanolab.checkpoint.torch, "save", save)
    with pytest.raises(
        StorageError,
        match=rf"could not write the checkpoint {tmp_path / 'last.pt'} "
        r"\(.*No space left on device; \d+ MiB free there\)",
    ):
        train_in_process(tmp_path, "trainer.max_iters=4")
    monkeypatch.setattr(nanolab.checkpoint.torch, "save", real_save)
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 2  # intact
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "No space left on device" in summary["error"]
    assert not list(tmp_path.glob(".last.pt.tmp*"))


def test_prune_checks_its_output_folder_before_any_work(tmp_path, trained):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(
        ConfigError,
        match=f"the report cannot be written to {blocker / 'out'}"
        ".*choose a writable folder with out=",
    ):
        prune_run(compose_entry("prune", f"checkpoint={trained}", f"out={blocker / 'out'}"))


def test_evaluate_prints_its_metrics_when_the_run_directory_is_read_only(
    tmp_path, trained, monkeypatch, capsys, caplog
):
    import nanolab.evaluate

    monkeypatch.setattr(nanolab.evaluate, "unwritable", lambda directory: "Read-only file system")
    metrics = evaluate_run(
        compose_entry("evaluate", f"checkpoint={trained / 'last.pt'}", "split=train")
    )
    assert "train/ce_calibrated" in capsys.readouterr().out and metrics["ce"] > 0
    assert (
        "is not writable (Read-only file system): the metrics are printed, not saved" in caplog.text
    )
    assert not (trained / "evaluation_train.json").exists()


def test_evaluate_that_cannot_write_has_printed_its_metrics_first(
    tmp_path, trained, monkeypatch, capsys
):
    import nanolab.evaluate

    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nanolab.evaluate, "write_json", full)
    with pytest.raises(
        StorageError,
        match="evaluation_val.json \\(No space left on device\\); the metrics are printed above",
    ):
        evaluate_run(compose_entry("evaluate", f"checkpoint={trained}"))
    assert "val/ce_calibrated" in capsys.readouterr().out


def test_an_unwritable_data_dir_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(
        DataError,
        match=f"data.dir={blocker / 'data'} cannot be written .*give data.dir=<a writable folder>",
    ):
        prepare(compose_train(f"data.dir={blocker / 'data'}").data)


# --- foreign files ---------------------------------------------------------------------------


def hf_directory(path: Path) -> Path:
    transformers = pytest.importorskip(
        "transformers", reason="the transformers package (dev extra) writes the directory"
    )
    transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=16, vocab_size=50257)
    ).save_pretrained(path)
    return path


def test_a_damaged_hugging_face_directory_is_one_line_naming_the_file(tmp_path):
    directory = hf_directory(tmp_path / "gpt2")
    config = (directory / "config.json").read_text()
    (directory / "config.json").write_text(config[: len(config) // 2])
    with pytest.raises(
        ConfigError,
        match=f"init_from={directory}: {directory / 'config.json'} is unreadable or not JSON",
    ):
        read_weights(str(directory))
    (directory / "config.json").write_text(
        json.dumps({k: v for k, v in json.loads(config).items() if k != "n_embd"})
    )
    with pytest.raises(ConfigError, match=f"{directory / 'config.json'} lacks n_embd"):
        read_weights(str(directory))
    (directory / "config.json").write_text(config)
    weights = (directory / "model.safetensors").read_bytes()
    (directory / "model.safetensors").write_bytes(weights[: len(weights) // 3])
    with pytest.raises(ConfigError, match=f"{directory / 'model.safetensors'} is unreadable"):
        read_weights(str(directory), key="checkpoint")


def test_init_from_a_directory_with_weights_but_no_config_names_config_json(tmp_path):
    directory = hf_directory(tmp_path / "gpt2")
    (directory / "config.json").unlink()
    with pytest.raises(
        ConfigError, match=f"init_from={directory} holds model.safetensors but no config.json"
    ):
        read_weights(str(directory))
    with pytest.raises(
        ConfigError,
        match=f"init_from={tmp_path / 'empty'} is a directory without best.pt or last.pt",
    ):
        (tmp_path / "empty").mkdir()
        read_weights(str(tmp_path / "empty"))


def test_the_offline_workspace_hint_names_the_folders_wandb_sync_takes(tmp_path):
    jobs = [tmp_path / "sweep" / "0_a", tmp_path / "sweep" / "1_b"]
    assert offline_run_folders(jobs) == f"{tmp_path / 'sweep'}/*/wandb/offline-run-*"
    assert offline_run_folders([jobs[0]]) == f"{jobs[0]}/wandb/offline-run-*"
