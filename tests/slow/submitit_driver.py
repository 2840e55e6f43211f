"""Run nanolab-train inside submitit's own signal handling, as a SLURM job launched by
hydra/launcher=slurm runs: submitit's handler of its requeue signal (USR2) checkpoints the
job's callable and requeues it. Here `scontrol requeue` is replaced by writing requeued.json
(with the step of last.pt at that moment) into the run directory.

    python tests/slow/submitit_driver.py RUN_DIR [overrides...]
"""

import json
import sys
from pathlib import Path

import torch
from submitit.core.utils import DelayedSubmission, JobPaths
from submitit.slurm.slurm import SlurmJobEnvironment

run_dir = Path(sys.argv[1])


class Launcher:
    """Like hydra-submitit-launcher's: a callable that submitit can checkpoint."""

    def __call__(self) -> None:
        pass

    def checkpoint(self) -> DelayedSubmission:
        return DelayedSubmission(self)


def requeue(countdown: int) -> None:
    step = torch.load(run_dir / "last.pt", weights_only=True)["step"]
    (run_dir / "requeued.json").write_text(
        json.dumps({"countdown": countdown, "last_pt_step": step})
    )


env = SlurmJobEnvironment()
env._requeue = requeue
delayed = DelayedSubmission(Launcher())
delayed.set_timeout(60, max_num_timeout=3)
(run_dir / "submitit").mkdir(parents=True, exist_ok=True)
env._handle_signals(JobPaths(run_dir / "submitit", job_id=env.job_id), delayed)

sys.argv = ["nanolab-train", f"hydra.run.dir={run_dir}", *sys.argv[2:]]
from nanolab.train import main  # noqa: E402

main()
