"""The shape of the code that users and later features rely on: entry points that import only
library modules, a short loop, typed configs that refuse wrong types in one line, and
checkpoints of earlier versions that still resume, sample and evaluate."""

from __future__ import annotations

import ast
import json
import os
import shutil
from pathlib import Path

import pytest
import tomllib
import torch
from conftest import REPO, TINY, compose_train, run_cli

from nanolab import ConfigError
from nanolab.bench import WorkerFailed, run_worker
from nanolab.checkpoint import upgrade
from nanolab.config import check_config

SRC = REPO / "src" / "nanolab"
OLD_CHECKPOINT = Path(__file__).with_name("data") / "checkpoint_507db7a.pt"
# The overrides the old checkpoint was trained with (tests/data/README.md).
OLD_RUN = [
    "model.n_layer=1",
    "model.n_head=2",
    "model.n_embd=16",
    "model.block_size=16",
    "trainer.batch_size=4",
    "trainer.eval_iters=2",
    "trainer.log_interval=1",
    "schedule.warmup_iters=2",
    "optim.lr=1e-2",
    "logger.mode=disabled",
]


def entry_points() -> set[str]:
    """Modules behind the console scripts, plus nanolab.bench (run as python -m)."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    return {target.split(":")[0].removeprefix("nanolab.") for target in scripts.values()} | {
        "bench"
    }


def imported_nanolab_modules(path: Path) -> set[str]:
    """Every nanolab module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nanolab"):
            if node.module == "nanolab":
                found |= {alias.name for alias in node.names}
            else:
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("nanolab.")}
    return found


def test_entry_points_import_library_modules_never_each_other():
    entries = entry_points()
    assert {"train", "evaluate", "sample", "compare", "bench"} <= entries
    for path in sorted(SRC.glob("*.py")):
        module = path.stem
        others = imported_nanolab_modules(path) & entries - {module}
        assert not others, f"nanolab.{module} imports the entry point(s) {sorted(others)}"


def _nanolab_modules(node: ast.Import | ast.ImportFrom) -> set[str]:
    """The nanolab modules an import statement names (not `from nanolab import ConfigError`)."""
    if isinstance(node, ast.ImportFrom):
        if node.module == "nanolab":
            return {a.name for a in node.names if (SRC / f"{a.name}.py").exists()}
        return (
            {node.module.split(".")[1]}
            if node.module and node.module.startswith("nanolab.")
            else set()
        )
    return {a.name.split(".")[1] for a in node.names if a.name.startswith("nanolab.")}


def test_nanolab_modules_import_each_other_at_the_top_only_and_without_a_cycle():
    graph, hidden = {}, []
    for path in sorted(SRC.glob("*.py")):
        tree = ast.parse(path.read_text())
        graph[path.stem] = {
            m
            for n in tree.body
            if isinstance(n, (ast.Import, ast.ImportFrom))
            for m in _nanolab_modules(n)
        }
        for node in ast.walk(tree):
            inside = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or (
                isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            )
            if inside:
                hidden += [
                    f"{path.name}:{i.lineno}"
                    for i in ast.walk(node)
                    if isinstance(i, (ast.Import, ast.ImportFrom)) and _nanolab_modules(i)
                ]
    assert not hidden, f"nanolab imported inside a function or under TYPE_CHECKING at {hidden}"
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for other in sorted(graph.get(module, set()) - {module}):
            assert state.get(other) != "open", f"import cycle: {' -> '.join([*path, other])}"
            if other not in state:
                visit(other, [*path, other])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_no_function_of_the_loop_is_longer_than_60_lines():
    for name in ("train.py", "trainer.py", "run.py"):
        for node in ast.walk(ast.parse((SRC / name).read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= 60, f"{name}: {node.name} has {length} lines"


WRONG_TYPES = [
    ("trainer.max_iters=abc", "trainer.max_iters='abc' must be an integer"),
    ("trainer.batch_size=1.5", "trainer.batch_size=1.5 must be an integer"),
    ("optim.lr=abc", "optim.lr='abc' must be a number"),
    ("trainer.on_nonfinite=maybe", "trainer.on_nonfinite='maybe' must be one of stop, skip_step"),
    ("model.n_embd=12.5", "model.n_embd=12.5 must be an integer"),
    ("seed=1.5", "seed=1.5 must be an integer"),
    ("model.bias=sometimes", "model.bias='sometimes' must be true or false"),
    ("data.tokenizer=bytes", "data.tokenizer='bytes' must be one of char, gpt2"),
]


@pytest.mark.parametrize("override,message", WRONG_TYPES, ids=[o for o, _ in WRONG_TYPES])
def test_a_wrong_type_is_one_clear_message(override, message):
    with pytest.raises(ConfigError) as error:
        check_config(compose_train(override))
    assert str(error.value) == message


def test_a_wrong_type_on_the_command_line_is_one_line_exit_2_and_nothing_written(tmp_path):
    override, message = WRONG_TYPES[0]
    proc = run_cli(override, cwd=tmp_path, check=False)  # the default run directory, under tmp_path
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert proc.returncode == 2 and lines == [message], lines
    assert list(tmp_path.iterdir()) == [], "a refused run wrote files"


def test_values_the_schema_converts_reach_the_run():
    # A word for a boolean and a quoted number are what the user meant; an integer is a number.
    cfg = compose_train(
        *TINY, "optim.lr=1", "trainer.save_checkpoints=no", "trainer.max_iters='12'"
    )
    check_config(cfg)
    assert (cfg.optim.lr, cfg.trainer.save_checkpoints, cfg.trainer.max_iters) == (1, False, 12)
    assert type(cfg.trainer.max_iters) is int


def test_upgrade_fills_every_key_added_since_the_first_checkpoints():
    state = torch.load(OLD_CHECKPOINT, weights_only=True)
    for key in ("rng_ranks", "skipped_steps"):
        del state[key]
    del (
        state["config"]["loss"]["z_loss"],
        state["config"]["data"]["shard_gb"],
        state["config"]["head_chunk_tokens"],
    )
    del state["config"]["optim"]["fused"], state["model_config"]["logit_softcap"]
    state["config"]["trainer"]["grad_accum"] = 3
    state["sampler"] = {"generator": state["sampler"]["streams"][0]}
    upgrade(state)
    config = state["config"]
    assert (
        config["loss"]["z_loss"],
        config["data"]["shard_gb"],
        config["head_chunk_tokens"],
        config["optim"]["fused"],
    ) == (0.0, 4, "auto", "auto")
    assert (
        state["skipped_steps"] == 0
        and state["rng_ranks"] == [state["rng"]]
        and state["model_config"]["logit_softcap"] is None
    )
    # streams 1 and 2 start afresh, 0 continues
    assert sorted(state["sampler"]["streams"]) == [0, 1, 2]


def test_a_checkpoint_of_commit_507db7a_resumes_exactly_samples_and_evaluates(tmp_path, data_root):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(OLD_CHECKPOINT, run_dir / "last.pt")
    run_cli(
        *OLD_RUN,
        "trainer.max_iters=9",
        "trainer.eval_interval=3",
        "resume=true",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    got = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    want = json.loads(OLD_CHECKPOINT.with_name("checkpoint_507db7a_resumed.json").read_text())
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for g, w in zip(got, want):
        assert {k: g[k] for k in w} == pytest.approx(w, abs=1e-6), w["step"]

    out = run_cli(
        f"checkpoint={OLD_CHECKPOINT}",
        "num_samples=1",
        "max_new_tokens=20",
        cwd=tmp_path,
        module="nanolab.sample",
    )
    assert len(out.stdout.split("-" * 40)[0]) >= 20
    # The checkpoint's data paths are relative (data/shakespeare_char), as it was written.
    (tmp_path / "data").symlink_to(data_root)
    shutil.copy(OLD_CHECKPOINT, tmp_path / "old.pt")
    run_cli("checkpoint=old.pt", "split=val", cwd=tmp_path, module="nanolab.evaluate")
    result = json.loads((tmp_path / "evaluation_val.json").read_text())
    assert result["step"] == 6 and result["tokens"] == (111_540 - 1) // 16 * 16
    assert 3.0 < result["ce"] < 4.2 and result["ce_calibrated"] <= result["ce"] + 0.01


def _dies(spec: dict, out: object) -> None:
    os._exit(3)


def _raises(spec: dict, out: object) -> None:
    out.put({"error": "RuntimeError: no kernel for this dtype"})


def test_a_worker_that_dies_or_fails_ends_the_benchmark_with_its_error():
    with pytest.raises(WorkerFailed, match="the test worker died with exit code 3"):
        run_worker(_dies, {}, "test worker")
    with pytest.raises(WorkerFailed, match="the test worker failed: RuntimeError: no kernel"):
        run_worker(_raises, {}, "test worker")


def test_functions_of_seven_or_more_arguments_take_them_by_keyword():
    """A call with 7 or more arguments names them: such a function takes at most 4
    positionally, and such a dataclass is kw_only (config.py's schemas, never called, aside;
    an autograd Function's forward, called by torch, too)."""
    for path in sorted(SRC.glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                fields = [s for s in node.body if isinstance(s, ast.AnnAssign)]
                dataclass = [
                    ast.unparse(d) for d in node.decorator_list if "dataclass" in ast.unparse(d)
                ]
                if dataclass and len(fields) >= 7 and path.name != "config.py":
                    assert "kw_only=True" in dataclass[0], f"{path.name}: {node.name}"
                autograd = any("autograd.Function" in ast.unparse(b) for b in node.bases)
                for method in node.body:
                    if autograd and isinstance(method, ast.FunctionDef):
                        method.autograd = True
            if isinstance(node, ast.FunctionDef) and not getattr(node, "autograd", False):
                positional = [a for a in node.args.posonlyargs + node.args.args if a.arg != "self"]
                if len(positional) + len(node.args.kwonlyargs) >= 7:
                    assert len(positional) <= 4, f"{path.name}: {node.name}"


def test_the_slow_tier_is_the_folder_tests_slow():
    """conftest marks every test under tests/slow/ slow; no test is marked by hand."""
    for path in (REPO / "tests").rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            marks = node.decorator_list if isinstance(node, ast.FunctionDef) else []
            if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "pytestmark":
                marks = [node.value]
            assert not [m for m in marks if "mark.slow" in ast.unparse(m)], (path, node)


def test_a_run_reads_its_checkpoint_and_checks_its_config_once(tmp_path, data_root, monkeypatch):
    import nanolab.config
    import nanolab.resume
    from nanolab.launch import RunInfo
    from nanolab.resume import prepare_resume
    from nanolab.trainer import train

    run = [*TINY, "trainer.max_iters=2", "trainer.eval_interval=2", "logger.mode=disabled"]
    train(compose_train(*run), RunInfo(dir=tmp_path, group=None, name=None))
    reads, checks = [], []
    real_load, real_types = nanolab.resume.load_checkpoint, nanolab.config.check_types
    monkeypatch.setattr(
        nanolab.resume, "load_checkpoint", lambda p: reads.append(p) or real_load(p)
    )
    monkeypatch.setattr(nanolab.config, "check_types", lambda c: checks.append(1) or real_types(c))
    # the configs earlier tests in this process checked are not known to pass here
    monkeypatch.setattr(nanolab.config, "_checked", set())
    cfg = compose_train(*run, "trainer.max_iters=3", "resume=true")
    # the Hydra callback's checks, then the Trainer's, in one process
    check_config(cfg)
    kept = prepare_resume(cfg, tmp_path, keep=True)
    check_config(cfg)
    assert prepare_resume(cfg, tmp_path) is kept and len(reads) == 1 and len(checks) == 1
    # taken: a later call reads the file again, and another config is checked again
    assert prepare_resume(cfg, tmp_path) is not kept and len(reads) == 2
    check_config(compose_train(*run, "trainer.max_iters=4", "resume=true"))
    assert len(checks) == 2
