"""Every run behind docs/finetune.md, then its report: a nano model pretrained on other English
(the Debian license texts, 300 steps) and fine-tuned on tiny Shakespeare in GPT-2 tokens for 200
steps, against training from scratch matched in fine-tuning steps (200) and in total tokens
(500 steps: 300 + 200, warmup 50).

    python scripts/finetune_study.py [--root multirun/finetune]

Each arm's lr is searched on its own schedule (seed 1337; factors of 3, extended past an end
while the best lies there, nanolab.study), scored by the calibrated val/ce on the whole val
split (nanolab.evaluate). The best lr of each arm then runs seeds 1338 and 1339. Two one-thread
runs at a time (the pretraining: the config's threads). The reports go to docs/finetune (the
three seeds at each arm's lr; lr_search.md, each arm's search) and docs/finetune/lr_sweep (every
lr).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from nanolab.report import table_markdown
from nanolab.study import Study, compare, evaluated, run_name

PRETRAIN = [
    "data=text",
    "data.name=licenses",
    "data.path=/usr/share/common-licenses",
    "data.tokenizer=gpt2",
    "trainer.max_iters=300",
]
LONG = ["trainer.max_iters=500", "schedule.warmup_iters=50", "trainer.eval_interval=100"]
SEEDS = [1338, 1339]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("multirun/finetune"))
    parser.add_argument("--out", type=Path, default=Path("docs/finetune"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    pretrained = args.root.resolve() / "pretrained_licenses"
    Study(args.root, threads=None).train(pretrained, dict(p.split("=", 1) for p in PRETRAIN))

    # the experiment is a multirun preset; each run here is one run in its own folder
    shakespeare = ["experiment=finetune_shakespeare", "hydra.mode=RUN"]
    arms = {
        "finetune": (shakespeare + [f"pretrained={pretrained}"], [3e-4, 1e-3, 3e-3]),
        "scratch_200": (shakespeare + ["pretrained=null"], [1e-3, 3e-3, 1e-2]),
        "scratch_500": (shakespeare + ["pretrained=null", *LONG], [1e-3, 3e-3, 1e-2]),
    }
    seeds, table = [], []
    for arm, (common, lrs) in arms.items():
        study = Study(args.root, common=[*common, "seed=1337"], score=evaluated)
        found = study.search(arm, lambda lr: {"optim.lr": lr}, lrs, factor=3)
        table.append([arm, found.cells()])
        seeds.append((Study(args.root, common=common, score=evaluated), arm, found.best))
    args.out.mkdir(parents=True, exist_ok=True)
    lr_table = table_markdown(["arm", "lr: calibrated val/ce (seed 1337)"], table)
    (args.out / "lr_search.md").write_text(lr_table + "\n")
    print(lr_table)
    runs = []
    for study, arm, lr in seeds:
        grid = study.grid(f"{arm}_seeds", [{"optim.lr": lr, "seed": s} for s in SEEDS])
        runs += [study.root / arm / run_name({"optim.lr": lr}), *grid]
        for run in grid:
            evaluated(run)
    root = args.root.resolve()
    compare(runs, args.out, "--evaluated")
    compare([root / arm for arm in arms], args.out / "lr_sweep", "--evaluated")


if __name__ == "__main__":
    main()
