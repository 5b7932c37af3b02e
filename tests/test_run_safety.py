"""
Nothing a user trained is lost by a command that did not ask to, and a stop says how to go on
(issue 21, items 1, 7, 8 and 9), on a tiny CPU fp32 run of 20 iters:
- eval_only (from scratch or on a resume) evaluates and stops: it prints the losses and writes nothing;
- a new run in an out_dir that holds a run is refused in one line naming it (its iter) and the ways on,
  unless --overwrite=True;
- a resume of a finished run says so in one line, exit 0, nothing written;
- a bad out_dir, dtype, device, or wandb without an API key: one line, exit 2, no traceback;
- SIGINT saves the checkpoint, prints the command that continues the run, exits 130 (SIGTERM: 143,
  tests/test_faults.py).
"""

import os
import shutil
import signal
import sys
import types

import pytest
import torch

import train
from configurator import UserError
from helpers import (describe_run, file_state, read_events, run_train, start_train, train_args, train_env,
                     wait_for_line, write_char_data)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """Data and a finished 20-iter run (lr decayed at iter 20: lr_decay_iters 20)."""
    root = tmp_path_factory.mktemp('run_safety')
    write_char_data(root / 'data', n_chars=20_000)
    result = run_train(train_args(root / 'data', root / 'out', max_iters=20, lr_decay_iters=20))
    assert result.returncode == 0, describe_run(result)
    return root


def copy_of_run(trained, tmp_path):
    out = tmp_path / 'out'
    shutil.copytree(trained / 'out', out)
    return out, {name: file_state(out / name) for name in os.listdir(out)}


def untouched(out, before):
    return {name: file_state(out / name) for name in os.listdir(out)} == before


def loss_line(event):
    return f"step {event['iter']}: train loss {event['train_loss']:.4f}, val loss {event['val_loss']:.4f}"


@pytest.mark.slow
def test_eval_only_on_a_resume_evaluates_the_checkpoint_and_writes_nothing(trained, tmp_path):
    """Once it trained from iter 20 to max_iters and overwrote the checkpoint at 30 and 40."""
    out, before = copy_of_run(trained, tmp_path)
    result = run_train(train_args(trained / 'data', out, max_iters=40, lr_decay_iters=20, init_from='resume',
                                  eval_only=True))
    assert result.returncode == 0, describe_run(result)
    last_eval = [e for e in read_events(out) if e['event'] == 'eval'][-1]
    assert last_eval['iter'] == 20
    assert f"{loss_line(last_eval)} (eval_only: nothing written)" in result.stdout.splitlines()
    assert 'saving checkpoint' not in result.stdout
    assert not [line for line in result.stdout.splitlines() if line.startswith('iter ')]  # no training step
    assert untouched(out, before)


@pytest.mark.slow
def test_eval_only_from_scratch_writes_nothing(trained, tmp_path):
    """Once it cut the events.jsonl of the run in out_dir to its own one line."""
    out, before = copy_of_run(trained, tmp_path)
    result = run_train(train_args(trained / 'data', out, max_iters=40, eval_only=True))
    assert result.returncode == 0, describe_run(result)
    steps = [line for line in result.stdout.splitlines() if line.startswith('step ')]
    assert len(steps) == 1 and steps[0].startswith('step 0: train loss '), result.stdout
    assert steps[0].endswith(' (eval_only: nothing written)')
    assert untouched(out, before)
    fresh = run_train(train_args(trained / 'data', tmp_path / 'fresh', eval_only=True))
    assert fresh.returncode == 0, describe_run(fresh)
    assert not (tmp_path / 'fresh').exists()


REFUSAL = "continue it with --init_from=resume, pick another --out_dir, or pass --overwrite=True to replace it"


@pytest.mark.slow
def test_a_new_run_over_a_run_is_refused(trained, tmp_path):
    """Once a 10-iter run silently replaced the 20-iter run's checkpoint and events."""
    out, before = copy_of_run(trained, tmp_path)
    result = run_train(train_args(trained / 'data', out, max_iters=10))
    assert (result.returncode, result.stderr) == (2, f"error: {out}/ckpt.pt holds a run at iter 20; {REFUSAL}\n")
    assert untouched(out, before)
    os.remove(out / 'ckpt.pt')
    result = run_train(train_args(trained / 'data', out, max_iters=10))
    assert (result.returncode, result.stderr) == (
        2, f"error: {out}/events.jsonl holds the events of a run (through iter 20), without a checkpoint; "
           "pick another --out_dir, or pass --overwrite=True to replace them\n")


@pytest.mark.slow
def test_overwrite_replaces_the_run(trained, tmp_path):
    out, _ = copy_of_run(trained, tmp_path)
    result = run_train(train_args(trained / 'data', out, max_iters=10, overwrite=True))
    assert result.returncode == 0, describe_run(result)
    assert torch.load(out / 'ckpt.pt', weights_only=True)['iter_num'] == 10
    assert [e['iter'] for e in read_events(out) if e['event'] == 'eval'] == [0, 10]


@pytest.mark.slow
@pytest.mark.parametrize('max_iters, lr_decay_iters, advice', [
    (20, 20, ", and a larger --lr_decay_iters (the lr reached min_lr at iter 20)"),
    (10, 40, ""),
])
def test_a_resume_of_a_finished_run_says_so(trained, tmp_path, max_iters, lr_decay_iters, advice):
    """Once it printed nothing and exited 0."""
    out, before = copy_of_run(trained, tmp_path)
    result = run_train(train_args(trained / 'data', out, max_iters=max_iters, lr_decay_iters=lr_decay_iters,
                                  init_from='resume'))
    assert result.returncode == 0, describe_run(result)
    assert result.stdout.splitlines()[-1] == (f"the run in {out}/ckpt.pt is finished at iter 20 (max_iters "
                                              f"{max_iters}); to train on, resume with a larger --max_iters{advice}")
    assert untouched(out, before)


@pytest.mark.slow
@pytest.mark.parametrize('override, message', [
    (dict(out_dir='{data}/train.bin'), "out_dir: {data}/train.bin is a file, not a folder"),
    (dict(out_dir=''), "out_dir: empty; give the folder of the run, e.g. --out_dir=out"),
    (dict(dtype='float64'), "dtype: expected one of float32, bfloat16, float16, got 'float64'"),
    (dict(device='gpu'), "device: expected cpu, cuda, cuda:N or mps, got 'gpu'"),
    (dict(device='cuda:x'), "device: expected cpu, cuda, cuda:N or mps, got 'cuda:x'"),
])
@pytest.mark.parametrize('init_from', ['scratch', 'resume'])
def test_a_bad_runtime_setting_is_one_line(trained, tmp_path, override, message, init_from):
    """Once tracebacks: FileExistsError, KeyError 'float64', RuntimeError at .to('gpu')."""
    settings = {k: v.format(data=trained / 'data') for k, v in override.items()}
    out, before = copy_of_run(trained, tmp_path) if init_from == 'resume' else (tmp_path / 'new', None)
    result = run_train(train_args(trained / 'data', settings.pop('out_dir', out), init_from=init_from, **settings))
    assert (result.returncode, result.stderr) == (2, f"error: {message.format(data=trained / 'data')}\n")
    assert untouched(out, before) if before else not out.exists()


def stand_in_wandb(api_key):
    """wandb as its login reports a missing API key (wandb 0.31's words), never the network."""
    class Error(Exception):
        """wandb.errors.Error, the error wandb.login raises without an API key."""

    def login(verify=True):
        if not api_key:
            raise Error("No API key configured. Use `wandb login` to log in.")
        return True
    return types.SimpleNamespace(login=login, errors=types.SimpleNamespace(Error=Error))


@pytest.mark.parametrize('api_key, mode, refused', [('', '', True), ('', 'offline', False), ('k' * 40, '', False)])
def test_wandb_without_an_api_key_is_one_line(monkeypatch, api_key, mode, refused):
    monkeypatch.setitem(sys.modules, 'wandb', stand_in_wandb(api_key))
    monkeypatch.setenv('WANDB_MODE', mode)
    if not refused:
        train.check_wandb()
        return
    with pytest.raises(UserError) as error:
        train.check_wandb()
    assert str(error.value) == ("wandb_log=True: No API key configured. Use `wandb login` to log in. (or log "
                                "offline: WANDB_MODE=offline)")


@pytest.mark.slow
def test_real_wandb_without_an_api_key_is_one_line(trained, tmp_path):
    """The real wandb, in an empty HOME, no key: its login refuses before any network (and the only server
    it could reach is a closed local port)."""
    pytest.importorskip('wandb')
    env = {k: v for k, v in train_env(HOME=str(tmp_path), WANDB_BASE_URL='http://127.0.0.1:9').items()
           if k not in ('WANDB_API_KEY', 'WANDB_MODE')}
    result = run_train(train_args(trained / 'data', tmp_path / 'out', wandb_log=True), env=env)
    assert (result.returncode, result.stderr) == (
        2, "error: wandb_log=True: No API key configured. Use `wandb login` to log in. (or log offline: "
           "WANDB_MODE=offline)\n"), describe_run(result)
    assert not (tmp_path / 'out').exists()


@pytest.mark.slow
def test_ctrl_c_saves_says_how_to_continue_and_exits_130(trained, tmp_path):
    """Once: exit 0, so `train && next` went on as if training had finished."""
    args = train_args(trained / 'data', tmp_path / 'out', max_iters=1000, lr_decay_iters=1000, log_interval=1)
    process = start_train(args)
    try:
        wait_for_line(process, 'iter 3')  # the log line of iter 3 (iters 30.. come later)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, output[-3000:]
    stopped_at = torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)['iter_num']
    resume = f"python train.py {' '.join(args)} --init_from=resume"
    assert output.splitlines()[-1] == (f"stopped at iter {stopped_at}: checkpoint saved in {tmp_path}/out/ckpt.pt; "
                                       f"continue with: {resume}")
    continued = run_train(resume.split()[2:-1] + ['--init_from=resume', f'--max_iters={stopped_at + 2}'])
    assert continued.returncode == 0, describe_run(continued)
    assert [e['iter'] for e in read_events(tmp_path / 'out') if e['event'] == 'eval'][-1] == stopped_at + 2
