"""The README's quick start works on a fresh clone.

The repository's last commit is cloned into a temporary folder, and the first command
of the README's "Quick start" (read from the clone's README, so that the test follows
the README) is run there as a user would paste it: a new virtual environment, the
locked runtime dependencies, the package, and then the demo, made to run at 1000x and
to exit when the race ends.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(280)]

HERE = Path(__file__).resolve().parent
DEMO = "chequered demo"
DEMO_OPTIONS = "--speed 1000 --exit-at-end"


def quick_start_command(readme: str) -> str:
    """The one line of the first ``sh`` block under the README's "## Quick start"."""
    section = re.search(r"^## Quick start\n(.*?)(?=^## |\Z)", readme, re.M | re.S)
    assert section, 'README.md has no "## Quick start" section'
    block = re.search(r"^```sh\n(.*?)^```", section.group(1), re.M | re.S)
    assert block, 'the "Quick start" section of README.md has no ```sh block'
    lines = [line for line in block.group(1).splitlines() if line.strip()]
    assert len(lines) == 1, f"the quick start should be one copy-pasteable line: {lines}"
    return lines[0].strip()


def split_install_and_demo(command: str) -> tuple[str, str]:
    """The install part of the command, and its last step (which runs the demo)."""
    install, sep, demo = command.rpartition(" && ")
    assert sep and demo.strip().endswith(DEMO), (
        f"the quick start should end with `&& ... {DEMO}`: {command}"
    )
    return install, demo.strip()


def git_toplevel() -> Path:
    if shutil.which("git") is None:
        pytest.skip("git is not installed: cannot clone the repository")
    top = subprocess.run(
        ["git", "-C", str(HERE), "rev-parse", "--show-toplevel"],
        capture_output=True,
        text=True,
    )
    if top.returncode != 0:
        pytest.skip("the tests do not run from a git work tree: nothing to clone")
    head = subprocess.run(
        ["git", "-C", top.stdout.strip(), "rev-parse", "--verify", "--quiet", "HEAD"],
        capture_output=True,
    )
    if head.returncode != 0:
        pytest.skip("the repository has no commits yet: nothing to clone")
    return Path(top.stdout.strip())


def user_environment() -> dict[str, str]:
    """This process's environment without the test run's virtual environment or settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CHEQUERED_") and k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}
    }
    venvs = set()
    if sys.prefix != sys.base_prefix:  # pytest runs in a virtual environment
        venvs.add(str(Path(sys.prefix) / "bin"))
    if "VIRTUAL_ENV" in os.environ:
        venvs.add(str(Path(os.environ["VIRTUAL_ENV"]) / "bin"))
    path = env.get("PATH", "").split(os.pathsep)
    env["PATH"] = os.pathsep.join(p for p in path if p not in venvs)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def test_split_install_and_demo() -> None:
    command = quick_start_command(
        "## Quick start\n\nRun it:\n\n```sh\npython3 -m venv .venv && .venv/bin/pip install . "
        "&& .venv/bin/chequered demo\n```\n\n```sh\nbash scripts/test\n```\n## Next\n"
    )
    assert split_install_and_demo(command) == (
        "python3 -m venv .venv && .venv/bin/pip install .",
        ".venv/bin/chequered demo",
    )


def test_readme_quick_start_on_a_fresh_clone(tmp_path: Path) -> None:
    top = git_toplevel()
    clone = tmp_path / "chequered"
    subprocess.run(["git", "clone", "--quiet", str(top), str(clone)], check=True, timeout=60)
    command = quick_start_command((clone / "README.md").read_text(encoding="utf-8"))
    install, demo = split_install_and_demo(command)
    env = user_environment()

    done = subprocess.run(
        install,
        shell=True,
        executable="/bin/bash",
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, (
        f"`{install}` failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    )

    ran = subprocess.run(
        f"{demo} {DEMO_OPTIONS}",
        shell=True,
        executable="/bin/bash",
        cwd=clone,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=90,
    )
    out = ran.stdout + ran.stderr
    assert ran.returncode == 0, f"`{demo} {DEMO_OPTIONS}` failed ({ran.returncode}):\n{out[-4000:]}"
    assert re.search(r"race finished; winner: #\S+", out), (
        f"the demo named no winner:\n{out[-4000:]}"
    )
