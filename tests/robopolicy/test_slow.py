"""Full-size runs, excluded from CI (`pytest -m slow`): the default job to its acceptance bar."""

import re
import subprocess
import sys

import pytest

from tests.robopolicy.test_cli import ENV, SUMMARY


@pytest.mark.slow
def test_default_job_reaches_80_percent_on_push(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "robopolicy.cli", "--quiet", "demo", "--out", str(tmp_path / "demo")],
                          env=ENV, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = SUMMARY.match(proc.stdout.strip().splitlines()[-1])
    assert match and int(match.group(4)) >= 20
    assert float(match.group(1)) >= 0.8, proc.stdout[-2000:]
    assert re.search(r"total \d+s", proc.stdout)
