"""
Shared helpers for tests that run train.py: tiny char-level data made in the test's tmp_path,
schedule entries (entry) and files, what a module's runs share (trained_runs), a tiny CPU fp32
command line, a script runner (run_train, run_script: a python script forks from this process's fork
server, tests/zygote.py, which has torch and train imported; start_train and torchrun start real
processes), the event log reader, and a train.py with NaN losses (NAN_TRAIN).
Add functions here; never rename or remove one (other test files use them).
"""

import contextlib
import io
import json
import os
import pickle
import re
import select
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAKESPEARE = os.path.join(REPO, '..', 'shared', 'data', 'tinyshakespeare', 'input.txt')

# a 1-layer, 2-head, 32-wide model on 32-token blocks: a training step takes milliseconds on CPU
TINY = dict(device='cpu', compile=False, dtype='float32', n_layer=1, n_head=2, n_embd=32, block_size=32,
            batch_size=4, gradient_accumulation_steps=1, eval_interval=10, eval_iters=2, log_interval=1,
            max_iters=40, learning_rate=1e-3, warmup_iters=5, lr_decay_iters=200, min_lr=1e-4, bias=False,
            dropout=0.0)


def write_char_data(folder, n_chars=100_000):
    """train.bin / val.bin / meta.pkl (char-level, 90/10 split) from the first n_chars of
    tiny-shakespeare. Returns the vocabulary size."""
    with open(SHAKESPEARE, encoding='utf-8') as f:
        text = f.read(n_chars)
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = np.array([stoi[c] for c in text], dtype=np.uint16)
    os.makedirs(folder, exist_ok=True)
    split = int(len(data) * 0.9)
    data[:split].tofile(os.path.join(folder, 'train.bin'))
    data[split:].tofile(os.path.join(folder, 'val.bin'))
    with open(os.path.join(folder, 'meta.pkl'), 'wb') as f:
        pickle.dump({'vocab_size': len(chars), 'itos': dict(enumerate(chars)), 'stoi': stoi, 'tokenizer': 'char'}, f)
    return len(chars)


def entry(name, value=None, trigger_loss=0.0, max_wait_iters=0, reevaluate=False):
    """One schedule entry. trigger_loss 0.0 never fires by loss; max_wait_iters 0 fires at once."""
    return dict(name=name, value=value, trigger_loss=trigger_loss, max_wait_iters=max_wait_iters,
                reevaluate=reevaluate)


def write_schedule(path, entries):
    """A JSON schedule file; entries are (name, value, trigger_loss, max_wait_iters, reevaluate) tuples or dicts."""
    rows = [e if isinstance(e, dict) else entry(*e) for e in entries]
    with open(path, 'w') as f:
        json.dump(rows, f)
    return str(path)


def trained_runs(root, schedule, **settings):
    """What a test module's runs share, in root: tiny data, a schedule file, and args(out, **overrides),
    train.py's arguments for a run into out (TINY, then settings, then overrides; None drops a key)."""
    data = root / 'data'
    write_char_data(data)
    schedule_file = write_schedule(root / 'schedule.json', schedule)

    def args(out, **overrides):
        return train_args(data, out, **dict(dict(scaling_schedule_file=schedule_file, **settings), **overrides))
    return dict(root=root, data=data, schedule=schedule_file, args=args)


def train_args(data_dir, out_dir, **overrides):
    """'--key=value' arguments for train.py: TINY, then overrides (None drops a key)."""
    config = dict(TINY, data_dir=str(data_dir), out_dir=str(out_dir))
    config.update(overrides)
    return [f'--{k}={v}' for k, v in config.items() if v is not None]


def train_env(**extra):
    """One intra-op thread (faster on a small, shared CI machine; the same sums in every run),
    unbuffered output (a test can follow the run line by line), plus extra variables."""
    return dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1', **extra)


TRAIN = [sys.executable, 'train.py']
TORCHRUN = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2']  # + a script


def run_train(args, timeout=300, command=TRAIN, env=None):
    """command + args in the repo (default: python train.py); returns the CompletedProcess. A python
    script (or python -c CODE) runs forked from the fork server, anything else (torchrun) as a process."""
    command, env = list(command), env or train_env()
    if command[0] == sys.executable and command[1] != '-m' and env.get('OMP_NUM_THREADS') == '1':
        return run_script(command[1:] + list(args), timeout, env)
    return subprocess.run(command + list(args), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


FORK_SERVER = []  # this test process's tests/zygote.py, started on first use


def fork_server():
    """The running fork server (one per test process; it exits when this process does)."""
    if not FORK_SERVER or FORK_SERVER[0].poll() is not None:
        server = subprocess.Popen([sys.executable, os.path.join(REPO, 'tests', 'zygote.py')], cwd=REPO,
                                  env=train_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        FORK_SERVER[:] = [server]
    return FORK_SERVER[0]


def server_says(server, word, timeout=None):
    """The number after `word` on the server's next line (None: the timeout passed first)."""
    if not select.select([server.stdout], [], [], timeout)[0]:
        return None
    line = server.stdout.readline().decode()
    assert line.startswith(word + ' '), f"fork server said {line!r}, expected {word} N"
    return int(line.split()[1])


def run_script(argv, timeout=300, env=None, cwd=REPO):
    """`python ARGV...` in cwd (the repo) with env, as subprocess.run(capture_output=True, text=True) would
    run it, but forked from the fork server, which has torch and train imported (tests/zygote.py): a tiny
    run starts in milliseconds instead of seconds."""
    server = fork_server()
    with tempfile.TemporaryDirectory() as folder:
        out, err = os.path.join(folder, 'stdout'), os.path.join(folder, 'stderr')
        for path in (out, err):  # here, not in the child: a child killed at once leaves them empty, not missing
            open(path, 'w').close()
        request = dict(argv=list(argv), cwd=str(cwd), env=env or train_env(), stdout=out, stderr=err)
        server.stdin.write((json.dumps(request) + '\n').encode())
        pid = server_says(server, 'pid')
        try:
            code = server_says(server, 'exit', timeout)
        except BaseException:  # interrupted (pytest-timeout, ^C): the next call starts a fresh server
            os.kill(pid, signal.SIGKILL)
            server.kill()
            raise
        if code is None:
            os.kill(pid, signal.SIGKILL)
            server_says(server, 'exit')
        with open(out) as f, open(err) as g:
            stdout, stderr = f.read(), g.read()
    command = [sys.executable] + list(argv)
    if code is None:
        raise subprocess.TimeoutExpired(command, timeout, stdout, stderr)
    return subprocess.CompletedProcess(command, code, stdout, stderr)


def start_train(args, command=TRAIN, env=None):
    """command + args in the background, in a session of its own, stdout and stderr merged into a
    line-buffered text pipe."""
    return subprocess.Popen(list(command) + list(args), cwd=REPO, env=env or train_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)


def wait_for_line(process, prefix, timeout=120):
    """Read the process's output until a line starts with prefix; returns everything read so far."""
    seen, deadline = [], time.time() + timeout
    for line in process.stdout:
        seen.append(line)
        if line.startswith(prefix):
            return ''.join(seen)
        if time.time() > deadline:
            break
    raise AssertionError(f"no line starting with {prefix!r}:\n" + ''.join(seen)[-3000:])


def read_events(out_dir):
    with open(os.path.join(out_dir, 'events.jsonl')) as f:
        return [json.loads(line) for line in f if line.strip()]


def describe_run(result):
    """stdout and stderr tails, for assertion messages."""
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"


def without_elapsed(events):
    """Events as two runs of the same training must log them: everything but the wall time."""
    return [{k: v for k, v in e.items() if k != 'elapsed_s'} for e in events]


def file_state(path):
    """Bytes and modification time: equal before and after means the file was not touched."""
    with open(path, 'rb') as f:
        return f.read(), os.stat(path).st_mtime_ns


def assert_same_state(a, b, where='checkpoint'):
    """Nested dicts / lists / tensors / plain values exactly equal (tensors: same dtype, shape and values)."""
    import torch
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: tensors differ (max |diff| {(a.double() - b.double()).abs().max()})"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a, key=str) == sorted(b, key=str), f"{where}: keys differ"
        for key in a:
            assert_same_state(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


# train.py whose training loss is NaN at the iterations in NAN_AT (comma separated), on every rank or,
# with NAN_RANK=r, on DDP rank r only. Run it with python -c, or as a script file under torchrun.
NAN_TRAIN = r'''
import os, sys
sys.path.insert(0, os.getcwd())
import train
from model import GPT

nan_at = {int(i) for i in os.environ['NAN_AT'].split(',')}
nan_rank = int(os.environ.get('NAN_RANK', -1))  # -1: every rank
now = [None]
train_step, forward = train.train_step, GPT.forward


def tracking_train_step(iter_num):
    now[0] = iter_num
    return train_step(iter_num)


def nan_forward(self, idx, targets=None):
    logits, loss = forward(self, idx, targets)
    if self.training and now[0] in nan_at and nan_rank in (-1, train.ddp_rank):
        loss = loss * float('nan')
    return logits, loss


train.train_step, GPT.forward = tracking_train_step, nan_forward
train.run_from_command_line(sys.argv[1:])
'''


def skipped_steps(stdout):
    """(iter, how many in a row) of every step skipped for a non-finite loss, as rank 0 logged them."""
    pattern = r'^iter (\d+): non-finite loss or gradient norm, step skipped \((\d+) in a row\)$'
    return [(int(m[0]), int(m[1])) for m in re.findall(pattern, stdout, re.M)]


def worker_pids(torchrun_pid):
    """{rank: pid} of the worker processes torchrun started."""
    with open(f'/proc/{torchrun_pid}/task/{torchrun_pid}/children') as f:
        children = [int(pid) for pid in f.read().split()]
    workers = {}
    for pid in children:
        with open(f'/proc/{pid}/environ', 'rb') as f:
            env = dict(item.split(b'=', 1) for item in f.read().split(b'\0') if b'=' in item)
        workers[int(env[b'RANK'])] = pid
    return workers


@contextlib.contextmanager
def tiny_run_in_process(tmp_path, monkeypatch, **settings):
    """train's globals set for a tiny CPU run on char data (TINY, then settings), its model and optimizers
    built; yields the model config and puts the orchestrator state back afterwards."""
    import train
    write_char_data(tmp_path / 'data', n_chars=20_000)
    settings = dict(TINY, data_dir=str(tmp_path / 'data'), out_dir=str(tmp_path / 'out'), master_process=False,
                    ddp_world_size=1, seed=1337, **settings)
    for key, value in settings.items():
        monkeypatch.setattr(train, key, value)
    saved = train.orchestrator_state()
    try:
        train.setup_runtime()
        model_config = train.model_config_from_globals(train.check_data()['vocab_size'])
        train.reset_orchestrator()
        train.build_run(model_config, None)
        yield model_config
    finally:
        train.load_orchestrator_state(saved)


def run_command_line(argv):
    """train.py's command line in-process; returns (exit code, stdout, stderr)."""
    import train
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            train.run_from_command_line(argv)
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()
