"""`inpo train` / `python -m inpo train` entry points."""

import subprocess
import sys

from inpo.online.cli import main


def test_python_dash_m_inpo_train_help():
    out = subprocess.run([sys.executable, "-m", "inpo", "train", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--output DIR" in out.stdout and "--resume" in out.stdout and "--max-steps" in out.stdout


def test_output_is_required(capsys):
    assert main(["--iterations", "1", "--progress", "false"]) == 2
    assert "--output DIR" in capsys.readouterr().err


def test_config_flag_needs_a_file(capsys, tmp_path):
    assert main(["--config"]) == 2
    assert main(["--config", str(tmp_path / "missing.yaml"), "--output", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err
