"""The repo's own checks: the documented test commands run as written, and the linter finds nothing."""

import os
import subprocess
import sys

import pytest

from helpers import REPO


def collected(args, cwd):
    """The test names a pytest collection lists (args give -q once: one 'file::test' line each)."""
    out = subprocess.run([sys.executable] + args + ['--collect-only'], cwd=cwd, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    return [line.split('::', 1)[1] for line in out.stdout.splitlines() if '::' in line]


@pytest.mark.parametrize('script', ['test_manual.py', 'test_integration.py'])
def test_documented_test_command_runs_from_anywhere(script, tmp_path):
    """`python test_manual.py` (README_ORCHESTRATOR's Testing section) collects its tests, also from
    another working directory (it once stopped at `import helpers`, which only pytest.ini put on the path)."""
    assert len(collected([os.path.join(REPO, script)], cwd=tmp_path)) > 30  # 35 and 172 today; the script adds -q


def test_both_orchestrator_state_round_trips_run():
    """test_manual.py once defined test_orchestrator_state_round_trip twice, and the first never ran."""
    names = collected(['test_manual.py', '-k', 'state_round_trip or sets_every_key'], cwd=REPO)
    assert names == ['test_orchestrator_state_round_trip', 'test_load_orchestrator_state_sets_every_key']


def test_ruff_finds_no_redefined_or_undefined_name():
    out = subprocess.run([sys.executable, '-m', 'ruff', 'check', '--no-cache', '.'], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
