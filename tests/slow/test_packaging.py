"""The package as users install it: a wheel in a fresh virtual environment, with its console
script finding the configs shipped inside it."""

import subprocess
import sys
import sysconfig
from pathlib import Path

from conftest import REPO, TINY


def test_wheel_installs_and_trains_with_console_script(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(REPO),
        ],
        check=True,
    )
    (wheel,) = (tmp_path / "dist").glob("nanolab-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True
    )
    # Dependencies (torch, hydra, ...) come from this environment's site-packages, added as a
    # plain path: its .pth files, including an editable nanolab's, are not processed.
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    (site / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    where = subprocess.check_output(
        [python, "-c", "import nanolab; print(nanolab.__file__)"], text=True, cwd=tmp_path
    )
    assert where.startswith(str(venv)), where

    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = subprocess.run(
        [
            venv / "bin" / "nanolab-train",
            *TINY,
            "trainer.max_iters=2",
            "trainer.eval_interval=2",
            "logger.mode=offline",
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (work / "outputs").glob("*/*")
    assert (run_dir / "last.pt").exists() and (run_dir / "summary.json").exists()
    assert any((run_dir / "wandb").glob("offline-run-*"))
