"""Every command in the README runs as written (except the two `make` targets themselves)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_blocks():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```(bash|python)\n(.*?)```", text, flags=re.S)


def test_readme_commands_run(tmp_path):
    """Run from a scratch copy of the repository's data files, as a user in the checkout would."""
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    ran = 0
    for language, body in readme_blocks():
        if language == "python":
            subprocess.run([sys.executable, "-c", body], cwd=tmp_path, env=env, check=True, capture_output=True)
            ran += 1
            continue
        for line in body.splitlines():
            command = line.split("#")[0].strip()
            if not command or command.startswith("make "):
                continue
            result = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True)
            assert result.returncode == 0, f"README command failed: {command}\n{result.stderr}"
            ran += 1
    assert ran >= 8
