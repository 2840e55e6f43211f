"""Every run behind docs/double_descent.md, then its tables: model-wise double descent of a
one-layer GPT on 8,192 characters of tiny Shakespeare with 10% noisy targets, without
regularization and with weight decay or dropout (Nakkiran et al. 2020, arXiv 2003.01897:
optimally tuned l2 regularization removes the peak), three seeds per point, beside the unigram
and bigram count tables of the same training set.

    python scripts/double_descent_study.py [--root multirun/double_descent]

Every run is experiment=double_descent (full-batch Adam at a constant lr, no regularization,
2,000 steps: configs/experiment/double_descent.yaml) at one width, arm and seed, scored at its
last step by nanolab.evaluate on the whole val split. Two one-thread runs at a time. Writes
docs/double_descent/study.md (val accuracy and calibrated val/ce per width and arm, the
baselines, each arm's interpolation point) and the compare reports docs/double_descent/<arm>.
"""

from __future__ import annotations

import argparse
import logging
import statistics
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from nanolab.data import TokenData, data_root
from nanolab.ngram import baselines
from nanolab.report import human, mean_std, table_markdown
from nanolab.study import Study, compare, evaluated, final_score, run_name

TRAIN_ACC = "final/train_eval/acc"  # the last evaluation's, on the (noisy) training set
PRESET = Path(__file__).resolve().parents[1] / "configs/experiment/double_descent.yaml"
WIDTHS = [4, 8, 16, 24, 32, 48, 64, 128]
SEEDS = [1337, 1338, 1339]
# the regularized arms: decoupled weight decay (AdamW, on the matrices) and dropout
ARMS = {
    "none": {},
    "wd 0.1": {"optim": "adamw", "optim.weight_decay": 0.1},
    "wd 1": {"optim": "adamw", "optim.weight_decay": 1.0},
    "wd 3": {"optim": "adamw", "optim.weight_decay": 3.0},
    "dropout 0.1": {"model.dropout": 0.1},
    "dropout 0.3": {"model.dropout": 0.3},
}


def arm_folder(arm: str) -> str:
    """An arm's folder name: "wd 0.1" -> wd0_1."""
    return arm.replace(" ", "").replace(".", "_")


def run_dir(root: Path, arm: str, width: int, seed: int) -> Path:
    return root / arm_folder(arm) / run_name({"model.n_embd": width, "seed": seed})


def count_baselines() -> dict[str, dict[str, float]]:
    """The unigram and bigram models of the runs' training set (the preset's first train_tokens
    characters, the same noisy targets: label_noise_seed 0) on the whole val split."""
    preset = OmegaConf.load(PRESET).data
    data = TokenData.read(data_root() / "shakespeare_char")
    data.limit_train(preset.train_tokens)
    data.add_label_noise(preset.label_noise, seed=0)
    inputs = np.asarray(data.train, dtype=np.int64)
    targets = inputs if data.train_targets is None else np.asarray(data.train_targets, np.int64)
    val = np.asarray(data.val, dtype=np.int64)
    return baselines(inputs[:-1], targets[1:], val, data.vocab_size)


def interpolation_width(runs: dict[int, list[Path]]) -> int:
    """The smallest width whose mean train accuracy is within 0.01 of the arm's best."""
    train = {w: statistics.mean(final_score(r, TRAIN_ACC) for r in rs) for w, rs in runs.items()}
    return min(w for w, a in train.items() if a >= max(train.values()) - 0.01)


def tables(arms: dict[str, dict[int, list[Path]]], counts: dict) -> str:
    """study.md: val accuracy (train accuracy) and calibrated val/ce per width and arm, mean ±
    std over seeds; the best arm per width; the count baselines; each arm's interpolation
    width."""
    head = ["width (params)"] + list(arms) + ["best arm"]
    acc_rows, ce_rows = [], []
    for w in WIDTHS:
        accs = {a: [evaluated(r, "acc") for r in arms[a][w]] for a in arms}
        ces = {a: [evaluated(r) for r in arms[a][w]] for a in arms}
        best = max(accs, key=lambda a: statistics.mean(accs[a]))
        train = {a: statistics.mean(final_score(r, TRAIN_ACC) for r in arms[a][w]) for a in arms}
        name = f"{w} ({human(final_score(next(iter(arms.values()))[w][0], 'params'))})"
        acc_rows.append([name] + [f"{mean_std(accs[a])} ({train[a]:.2f})" for a in arms] + [best])
        best_ce = min(ces, key=lambda a: statistics.mean(ces[a]))
        ce_rows.append([name] + [mean_std(ces[a]) for a in arms] + [best_ce])
    base = "\n".join(
        f"- {name} count table of the same noisy training set: val accuracy {m['acc']:.3f}, "
        f"val/ce {m['ce']:.3f}" + (f" (prior strength {m['beta']:g})" if "beta" in m else "")
        for name, m in counts.items()
    )
    points = ", ".join(f"{a}: width {interpolation_width(arms[a])}" for a in arms)
    return (
        "Val accuracy on the whole val split, mean ± std over seeds "
        f"{', '.join(map(str, SEEDS))} (train accuracy on the noisy training set):\n\n"
        + table_markdown(head, acc_rows)
        + "\n\nCalibrated val/ce on the whole val split:\n\n"
        + table_markdown(head, ce_rows)
        + f"\n\nBaselines:\n{base}\n\nInterpolation point (smallest width whose train "
        f"accuracy is within 0.01 of the arm's best): {points}.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("multirun/double_descent"))
    parser.add_argument("--out", type=Path, default=Path("docs/double_descent"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    study = Study(args.root, common=["experiment=double_descent", "hydra.mode=RUN"])
    arms = {a: {w: [run_dir(study.root, a, w, s) for s in SEEDS] for w in WIDTHS} for a in ARMS}
    # arm by arm (a study cut short has whole arms), each arm's widest models first
    study.train_all(
        [
            (run_dir(study.root, a, w, s), ARMS[a] | {"model.n_embd": w, "seed": s})
            for a in ARMS
            for w in reversed(WIDTHS)
            for s in SEEDS
        ]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "study.md").write_text(tables(arms, count_baselines()))
    print((args.out / "study.md").read_text())
    for a in ARMS:
        folder = arm_folder(a)
        compare([study.root / folder], args.out / folder, "--evaluated")


if __name__ == "__main__":
    main()
