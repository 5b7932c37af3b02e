"""The fork server (tests/zygote.py, client helpers.run_script) runs a script as `python SCRIPT` does:
the same exit status, stdout and stderr, byte for byte, as a fresh interpreter, for a clean exit,
an exit status, sys.exit with a message, an uncaught exception, python -c, and a killed child; a
child past its timeout is killed and reported as subprocess.run reports it."""

import os
import subprocess
import sys
import time

import pytest

import helpers
from helpers import REPO, run_script, train_env

pytestmark = pytest.mark.slow  # each case also starts a fresh interpreter, to compare

# prints what a script sees of its process, then ends as argv[1] says
SCRIPT = r'''
import os, signal, sys
import numpy, torch
print(sys.argv, __name__, __file__, sys.path[0], os.getcwd(), os.environ.get('PROBE'), torch.get_num_threads())
print(sys.stdin.read() == '', 'to stderr', file=sys.stderr)
print(torch.ones(3).sum().item(), numpy.arange(4).sum())
how = sys.argv[1]
if how == 'status':
    sys.exit(3)
if how == 'message':
    sys.exit('error: a message')
if how == 'raise':
    def inner():
        raise ValueError('boom')
    inner()
if how == 'kill':
    os.kill(os.getpid(), signal.SIGKILL)
'''


def fresh(argv, env):
    return subprocess.run([sys.executable] + argv, cwd=REPO, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120)


@pytest.mark.parametrize('how', ['clean', 'status', 'message', 'raise', 'kill'])
def test_a_forked_script_ends_as_a_fresh_one(tmp_path, how):
    script = tmp_path / 'probe.py'
    script.write_text(SCRIPT)
    env = train_env(PROBE='seen')
    forked, real = run_script([str(script), how], env=env), fresh([str(script), how], env)
    expected = {'clean': 0, 'status': 3, 'message': 1, 'raise': 1, 'kill': -9}[how]
    assert (forked.returncode, forked.stdout, forked.stderr) == (expected, real.stdout, real.stderr)
    assert f"['{script}', '{how}'] __main__ {script} {tmp_path} {REPO} seen 1\n" in forked.stdout
    if how == 'raise':
        assert forked.stderr.startswith('True to stderr\nTraceback (most recent call last):\n  File "' + str(script))
        assert forked.stderr.endswith("ValueError: boom\n") and 'zygote' not in forked.stderr


def test_python_c_runs_as_a_fresh_one():
    code = "import sys; print(sys.argv, sys.path[0] == '', __name__); raise SystemExit(sys.argv[1])"
    forked, real = run_script(['-c', code, 'bye']), fresh(['-c', code, 'bye'], train_env())
    assert (forked.returncode, forked.stdout, forked.stderr) == (1, "['-c', 'bye'] True __main__\n", "bye\n")
    assert (real.returncode, real.stdout, real.stderr) == (forked.returncode, forked.stdout, forked.stderr)


def test_a_child_past_its_timeout_is_killed(tmp_path):
    marker = tmp_path / 'still-running'
    code = f"import time; print('started', flush=True); time.sleep(1); open({str(marker)!r}, 'w')"
    with pytest.raises(subprocess.TimeoutExpired) as caught:
        run_script(['-c', code], timeout=0.5)
    assert caught.value.timeout == 0.5 and caught.value.output == 'started\n'
    # the server answers the next request, and the killed child never gets to write its file
    assert run_script(['-c', "print('next')"]).stdout == 'next\n'
    time.sleep(1.5)
    assert not os.path.exists(marker)


def test_an_interrupted_call_leaves_a_fresh_server_for_the_next(monkeypatch):
    """pytest-timeout or ^C during a run: the server and its child are killed, the next call starts anew."""
    run_script(['-c', 'pass'])
    server = helpers.fork_server()
    says = helpers.server_says

    def interrupted(server, word, timeout=None):
        if word == 'exit':
            raise KeyboardInterrupt
        return says(server, word, timeout)
    monkeypatch.setattr(helpers, 'server_says', interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_script(['-c', 'import time; time.sleep(60)'])
    assert server.wait(timeout=10) == -9
    monkeypatch.setattr(helpers, 'server_says', says)
    assert run_script(['-c', "print('fresh')"]).stdout == 'fresh\n' and helpers.fork_server() is not server
