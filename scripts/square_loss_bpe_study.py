"""The loss comparison at GPT-2's 50,257 classes over 2,000 steps (docs/square_loss.md §2.4):
cross-entropy against the rescaled square loss at its (k, M) = (10,000, 30), the nano model on
tiny Shakespeare in GPT-2 tokens, batch 12 x 64 (1.5M tokens, five epochs).

    python scripts/square_loss_bpe_study.py [--root multirun/square_loss_bpe]

Each loss's lr is searched at this budget (seed 1337; factors of 3, extended past an end while
the best lies there, nanolab.study), scored by the calibrated val/ce of the final model on the
whole val split (nanolab.evaluate). The best lr then runs more seeds: three in all for
cross-entropy, five for the square loss, whose collapse rate (seeds whose val accuracy falls to
that of always predicting the commonest training token) they measure. Two one-thread runs at a
time; the two losses' searches share them. Writes docs/square_loss/bpe_2000 (the seeds' report,
lr_search.md, seeds.md) and docs/square_loss/bpe_2000/lr_sweep (every run of the searches).
"""

from __future__ import annotations

import argparse
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from nanolab.data import TokenData, data_root
from nanolab.report import mean_std, table_markdown
from nanolab.study import Study, compare, evaluated, run_name

COMMON = [
    "experiment=loss_comparison_bpe",
    "hydra.mode=RUN",
    "trainer.max_iters=2000",
    "trainer.eval_interval=200",
]
# each loss: its config, the first lr grid (around its best at 300 steps) and its further seeds
LOSSES = {
    "ce": ("ce", [1e-3, 3e-3, 1e-2], [1338, 1339]),
    "square loss (10,000, 30)": ("mse_rescaled_bpe", [1e-4, 3e-4, 1e-3], [1338, 1339, 1340, 1341]),
}


def commonest_token_accuracy() -> float:
    """Val accuracy of always predicting the commonest token of the training split."""
    data = TokenData.read(data_root() / "shakespeare")
    return float(np.mean(np.asarray(data.val[1:]) == data.train_counts().argmax()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("multirun/square_loss_bpe"))
    parser.add_argument("--out", type=Path, default=Path("docs/square_loss/bpe_2000"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    study = Study(args.root, common=COMMON, score=evaluated)

    def tune_then_seed(name: str) -> tuple[list[str], list[Path]]:
        """One loss's lr search (seed 1337), then its further seeds at the best lr: its row of
        lr_search.md and its seeds' runs."""
        loss, lrs, seeds = LOSSES[name]
        found = study.search(
            "lr_search", lambda lr: {"loss": loss, "optim.lr": lr, "seed": 1337}, lrs, factor=3
        )
        runs = [study.root / "lr_search" / run_name(found.settings)]
        runs += study.grid("seeds", [found.settings | {"seed": s} for s in seeds])
        for run in runs:
            evaluated(run)
        return [name, found.cells(), f"{found.best:.3g}"], runs

    with ThreadPoolExecutor(len(LOSSES)) as pool:
        done = dict(zip(LOSSES, pool.map(tune_then_seed, LOSSES)))
    args.out.mkdir(parents=True, exist_ok=True)
    head = ["loss", "lr: calibrated val/ce (seed 1337, whole val split)", "chosen lr"]
    (args.out / "lr_search.md").write_text(
        table_markdown(head, [row for row, _ in done.values()]) + "\n"
    )
    (args.out / "seeds.md").write_text(seeds_table({n: runs for n, (_, runs) in done.items()}))
    print((args.out / "lr_search.md").read_text(), (args.out / "seeds.md").read_text())
    compare([run for _, runs in done.values() for run in runs], args.out, "--evaluated")
    compare([study.root / "lr_search"], args.out / "lr_sweep", "--evaluated")


def seeds_table(runs: dict[str, list[Path]]) -> str:
    """Each seed's calibrated val/ce and accuracy on the whole val split, the mean and standard
    deviation over seeds, and how many collapsed: val accuracy less than 0.01 above that of always
    predicting the commonest training token."""
    floor = commonest_token_accuracy()
    rows = []
    for name, seeds in runs.items():
        ce = [evaluated(run) for run in seeds]
        acc = [evaluated(run, "acc") for run in seeds]
        collapsed = sum(a < floor + 0.01 for a in acc)
        rows.append(
            [
                name,
                ", ".join(f"{c:.3f} / {a:.3f}" for c, a in zip(ce, acc)),
                mean_std(ce),
                mean_std(acc),
                f"{collapsed} of {len(seeds)}",
            ]
        )
    head = ["loss", "seeds: calibrated val/ce / val/acc", "val/ce", "val/acc", "collapsed"]
    note = f"\nAlways predicting the commonest training token: val accuracy {floor:.4f}.\n"
    return table_markdown(head, rows) + "\n" + note


if __name__ == "__main__":
    main()
