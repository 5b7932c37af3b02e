"""
Faults survived (issue 5), on a tiny CPU fp32 model trained by train.py in subprocesses. Every
crash must cost nothing: a run resumed after it logs exactly the events of an uninterrupted run
(all but the wall time) and ends with the same checkpoint.
- SIGTERM / SIGINT mid-run: a checkpoint at the current iteration, exit 143 / 130 (128 + the signal, so
  that `train && next` stops), then an exact resume;
- kill -9 from outside at a (seeded) random iteration, then an exact resume;
- a resume of a run that had finished (killed after its last checkpoint): nothing is redone;
- kill -9 at the worst moments, one after the other in the same run (the kill is made by the
  process itself, through a small wrapper around train.py, so that it lands exactly there):
  right after an op fired and before that eval's checkpoint (the op is re-run once, at the same
  iter), in the middle of an MSG mask ramp, and half way through writing a checkpoint file;
- a non-finite loss: exit 2 naming the iteration, no traceback, the last checkpoint untouched;
  skip_nonfinite_steps=N skips such steps (the optimizer does not step), and stops at N+1 in a row.
"""

import os
import random
import shutil
import signal
import sys

import pytest
import torch

import train
from helpers import (NAN_TRAIN, assert_same_state, describe_run, file_state, read_events, run_train, skipped_steps,
                     start_train, train_args, train_env, trained_runs, wait_for_line, without_elapsed)

pytestmark = pytest.mark.slow  # every test here runs train.py or another script as a subprocess

MAX_ITERS = 70
SCHEDULE = [  # (name, value, trigger_loss, max_wait_iters, reevaluate); eval every 10 iters
    ('change_lr', 0.5, 0.0, 10, False),  # iter 10
    ('stack_layers', 2, 0.0, 10, True),  # iter 20
    ('msg_widen_mlp', {'factor': 2.0, 'anneal_iters': 30}, 0.0, 10, False),  # iter 30: mask 0 -> 1 at 60
    ('change_grad_accum', 2.0, 0.0, 10, False),  # iter 40
]
EXPECTED_OPS = [(10, 'change_lr'), (20, 'stack_layers'), (30, 'msg_widen_mlp'), (40, 'change_grad_accum')]

# train.py with a SIGKILL of itself at one exact point, given by KILL_AT=where:iter
KILLING_TRAIN = r'''
import io, os, signal, sys
import torch
import train

where, at = os.environ['KILL_AT'].split(':')
at = int(at)


def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


if where == 'step':  # before the training step of iteration `at`
    train_step = train.train_step

    def killing_train_step(iter_num):
        if iter_num == at:
            die()
        return train_step(iter_num)
    train.train_step = killing_train_step
elif where == 'checkpoint':  # as the checkpoint of iteration `at` is about to be written
    write_checkpoint = train.write_checkpoint

    def killing_write_checkpoint(*args):
        if train.progress['iter_num'] == at:
            die()
        return write_checkpoint(*args)
    train.write_checkpoint = killing_write_checkpoint
elif where == 'save':  # half way through writing the file of the checkpoint of iteration `at`
    save = torch.save

    def killing_save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get('iter_num') == at:
            buffer = io.BytesIO()
            save(obj, buffer, *args, **kwargs)
            with open(f, 'wb') as out:
                out.write(buffer.getvalue()[:len(buffer.getvalue()) // 2])
                out.flush()
                os.fsync(out.fileno())
            die()
        return save(obj, f, *args, **kwargs)
    torch.save = killing_save
train.run_from_command_line(sys.argv[1:])
'''


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """The data, the schedule, and the uninterrupted run every fault is compared with."""
    runs = trained_runs(tmp_path_factory.mktemp('faults'), SCHEDULE, always_save_checkpoint=True,
                        max_iters=MAX_ITERS)
    reference = runs['root'] / 'uninterrupted'
    result = run_train(runs['args'](reference))
    assert result.returncode == 0, describe_run(result)
    events = read_events(reference)
    assert [(e['iter'], e['name']) for e in events if e['event'] == 'op'] == EXPECTED_OPS
    return dict(runs, reference=reference)


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def assert_resumes_exactly(setup, out):
    """Resume out_dir to the end: the events and final checkpoint of the uninterrupted run."""
    result = run_train(setup['args'](out, init_from='resume'))
    assert result.returncode == 0, describe_run(result)
    assert without_elapsed(read_events(out)) == without_elapsed(read_events(setup['reference']))
    final, reference = load(out / 'ckpt.pt'), load(setup['reference'] / 'ckpt.pt')
    for key in ('config', 'wandb_run_id'):
        del final[key], reference[key]
    assert_same_state(final, reference)
    return result


def stop_line_iter(output):
    lines = [line for line in output.splitlines() if line.startswith('stopped at iter ')]
    assert len(lines) == 1, output[-3000:]
    return int(lines[0].split('at iter ')[1].split(':')[0])


def stop_with_signal(setup, out, signum, after_iter, **overrides):
    """Start a run, send signum once it logged iter after_iter; it must save and exit 128 + signum.
    Returns the iteration of its checkpoint."""
    process = start_train(setup['args'](out, **overrides))
    try:
        wait_for_line(process, f'iter {after_iter}/')
        process.send_signal(signum)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 128 + signum, output[-3000:]
    assert 'Traceback' not in output
    stopped_at = stop_line_iter(output)
    assert after_iter < stopped_at < MAX_ITERS
    assert load(out / 'ckpt.pt')['iter_num'] == stopped_at
    assert max(e['iter'] for e in read_events(out)) <= stopped_at
    return stopped_at


def test_stop_signals_save_and_resume_exactly(setup, tmp_path):
    """SIGTERM during the run (a preemption notice), SIGINT during its resumed run, then to the end."""
    out = tmp_path / 'out'
    stopped_at = stop_with_signal(setup, out, signal.SIGTERM, 13)
    stop_with_signal(setup, out, signal.SIGINT, stopped_at + 8, init_from='resume')
    assert_resumes_exactly(setup, out)


def test_kill_9_at_a_random_iteration(setup, tmp_path):
    kill_after = random.Random(5).randrange(12, 50)  # a fixed draw; the run has written a checkpoint by then
    out = tmp_path / 'out'
    process = start_train(setup['args'](out))
    try:
        wait_for_line(process, f'iter {kill_after}/')
        process.kill()
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL
    checkpoint = train.load_checkpoint(str(out / 'ckpt.pt'))
    assert checkpoint['iter_num'] % 10 == 0 and 10 <= checkpoint['iter_num'] < MAX_ITERS
    assert_resumes_exactly(setup, out)


def run_killed_at(setup, out, kill_at, **overrides):
    """train.py through KILLING_TRAIN: it SIGKILLs itself at kill_at ('step:45', ...)."""
    result = run_train(setup['args'](out, **overrides), command=[sys.executable, '-c', KILLING_TRAIN],
                       env=train_env(KILL_AT=kill_at))
    assert result.returncode == -signal.SIGKILL, describe_run(result)
    assert 'Traceback' not in result.stderr
    return result


def ops_in_events(out):
    return [(e['iter'], e['name']) for e in read_events(out) if e['event'] == 'op']


def test_kill_9_at_the_worst_moments(setup, tmp_path):
    """One run killed three times, each resumed; the end is the uninterrupted run's."""
    out = tmp_path / 'out'
    # 1. the stack_layers op fires at the eval of iter 20, then the process dies before that eval's
    # checkpoint: the last checkpoint (iter 10) does not know the op ran
    result = run_killed_at(setup, out, 'checkpoint:20')
    op_block = result.stdout.split('Operation: stack_layers')[1]
    assert '=== SCALING OPERATION COMPLETE ===' in op_block and 'saving checkpoint' not in op_block
    checkpoint = load(out / 'ckpt.pt')
    assert checkpoint['iter_num'] == 10
    assert [op['name'] for op in checkpoint['orchestrator']['executed_ops']] == ['change_lr']
    assert checkpoint['model_args']['n_layer'] == 1
    assert ops_in_events(out) == EXPECTED_OPS[:2]  # logged before the kill: the resume must not log it twice

    # 2. resumed (the op runs again at iter 20), killed in the middle of the MSG ramp (30 -> 60)
    result = run_killed_at(setup, out, 'step:45', init_from='resume')
    assert result.stdout.count('Operation: stack_layers') == 1
    checkpoint = load(out / 'ckpt.pt')
    assert checkpoint['iter_num'] == 40
    assert checkpoint['orchestrator']['active_ramp'] == dict(name='msg_widen_mlp', start_iter=30, anneal_iters=30)

    # 3. resumed from mid-ramp, killed half way through writing the checkpoint of iter 50: the
    # checkpoint of iter 40 stays, loadable
    before = file_state(out / 'ckpt.pt')
    run_killed_at(setup, out, 'save:50', init_from='resume')
    assert file_state(out / 'ckpt.pt') == before
    assert train.load_checkpoint(str(out / 'ckpt.pt'))['iter_num'] == 40
    partial = [name for name in os.listdir(out) if name not in ('ckpt.pt', 'events.jsonl')]
    assert len(partial) == 1 and 0 < os.path.getsize(out / partial[0]) < len(before[0]) * 3 // 4

    # 4. resumed to the end: every op exactly once, at its iter; the uninterrupted run's events and state
    result = assert_resumes_exactly(setup, out)
    assert 'Operation: ' not in result.stdout  # all ops ran before iter 40, none is redone
    assert ops_in_events(out) == EXPECTED_OPS


def test_resume_of_a_finished_run_changes_nothing(setup, tmp_path):
    """A kill after the last checkpoint (iter max_iters) but before the process exits, then a resume
    (found by crash_runs.py): the final eval is not run and logged again, its flops not counted twice."""
    out = tmp_path / 'out'
    shutil.copytree(setup['reference'], out)
    before = file_state(out / 'ckpt.pt'), (out / 'events.jsonl').read_bytes()
    result = run_train(setup['args'](out, init_from='resume'))
    assert result.returncode == 0, describe_run(result)
    # the checkpoint is not written again; the event log is rewritten (cut back to iter 70) as it was
    assert (file_state(out / 'ckpt.pt'), (out / 'events.jsonl').read_bytes()) == before
    assert 'step 70:' not in result.stdout


# -------------------------------------------------------------------------------- non-finite loss

def diverging_run(setup, tmp_path, **overrides):
    """Resume the uninterrupted run's checkpoint (iter 70) with a learning rate of 1e10: the step of
    iter 70 is finite and blows the weights up, so the loss of iter 71 (and of every later step from
    these weights) is not."""
    out = tmp_path / 'out'
    shutil.copytree(setup['reference'], out)
    before = file_state(out / 'ckpt.pt')
    result = run_train(setup['args'](out, init_from='resume', max_iters=MAX_ITERS + 20, learning_rate=1e10,
                                     min_lr=1e9, **overrides))
    assert result.returncode == 2, describe_run(result)
    assert 'Traceback' not in result.stderr
    assert file_state(out / 'ckpt.pt') == before
    return result


def test_nonfinite_loss_stops_naming_the_iteration(setup, tmp_path):
    result = diverging_run(setup, tmp_path)
    assert result.stderr.strip().splitlines() == [
        f"error: non-finite loss or gradient norm at iteration 71; stopping (the checkpoint in "
        f"{tmp_path / 'out'}, if any, is left as it was)"]
    assert 'step skipped' not in result.stdout


def test_skip_nonfinite_steps_stops_after_n_in_a_row(setup, tmp_path):
    result = diverging_run(setup, tmp_path, skip_nonfinite_steps=3)
    assert skipped_steps(result.stdout) == [(71, 1), (72, 2), (73, 3)]
    assert result.stderr.strip().splitlines() == [
        f"error: non-finite loss or gradient norm at iteration 74; stopping (the checkpoint in "
        f"{tmp_path / 'out'}, if any, is left as it was)"]


@pytest.mark.parametrize('dtype, grad_clip', [('float32', 1.0), ('float16', 0.0)])
def test_skip_nonfinite_steps_skips_transient_nans(setup, tmp_path, dtype, grad_clip):
    """NaN losses at iters 5, 6 and 8 with skip_nonfinite_steps=2: those three steps are skipped
    (never 3 in a row), the run finishes, and AdamW took 20 - 3 steps. With float16 (autocast and
    PyTorch's GradScaler, on the cpu here) and no clipping, nothing unscales the gradients before a
    skip: the scaler must still get its inf checks, and halve its scale at each skipped step."""
    out = tmp_path / 'out'
    result = run_train(train_args(setup['data'], out, max_iters=20, skip_nonfinite_steps=2, dtype=dtype,
                                  grad_clip=grad_clip),
                       command=[sys.executable, '-c', NAN_TRAIN], env=train_env(NAN_AT='5,6,8'))
    assert result.returncode == 0, describe_run(result)
    assert skipped_steps(result.stdout) == [(5, 1), (6, 2), (8, 1)]
    checkpoint = load(out / 'ckpt.pt')
    assert checkpoint['iter_num'] == 20
    steps = {float(state['step']) for state in checkpoint['optimizer']['state'].values()}
    assert steps == {17.0}
    for name, p in checkpoint['model'].items():
        assert torch.isfinite(p).all() and p.dtype == torch.float32, name
    if dtype == 'float16':
        assert 'precision: float16 autocast on cpu, float32 weights, loss scaling\n' in result.stdout
        assert checkpoint['scaler']['scale'] == 2.0**16 / 2**3  # the initial scale, halved by each skip
    else:
        assert checkpoint['scaler'] == {}  # no scaler without float16


@pytest.mark.parametrize('nan_micro_step', [0, 1, 2])
def test_a_nan_in_any_micro_step_skips_the_step_without_grad_clip(tmp_path, monkeypatch, nan_micro_step):
    """grad_clip=0 leaves no gradient norm to check: the loss of every micro step is checked, not
    only the last one's (a NaN in micro step 0 of 3 once reached the weights with the step applied)."""
    from helpers import TINY, write_char_data
    from model import GPT, GPTConfig
    vocab_size = write_char_data(tmp_path / 'data', n_chars=20_000)
    settings = dict(TINY, data_dir=str(tmp_path / 'data'), gradient_accumulation_steps=3, grad_clip=0.0,
                    skip_nonfinite_steps=1, ddp=False, ddp_world_size=1, device_type='cpu')
    for key, value in settings.items():
        monkeypatch.setattr(train, key, value)
    monkeypatch.setattr(train, 'nonfinite_in_a_row', 0)
    monkeypatch.setattr(train, 'data_generator', torch.Generator().manual_seed(0))
    monkeypatch.setattr(train, 'ctx', train.nullcontext())
    monkeypatch.setattr(train, 'model', GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, bias=False,
                                                      vocab_size=vocab_size)))
    monkeypatch.setattr(train, 'eval_model', train.model)
    monkeypatch.setattr(train, 'train_model', train.model)
    monkeypatch.setattr(train, 'scaler', torch.amp.GradScaler('cpu', enabled=False))
    train.reset_orchestrator()
    train.build_optimizer()
    forward, calls = GPT.forward, []

    def nan_forward(self, idx, targets=None):
        logits, loss = forward(self, idx, targets)
        calls.append(idx.shape)
        return logits, loss * float('nan') if len(calls) - 1 == nan_micro_step else loss  # in the first step only
    monkeypatch.setattr(GPT, 'forward', nan_forward)
    before = {k: v.clone() for k, v in train.model.state_dict().items()}
    _, micro_steps, _, applied = train.train_step(0)
    assert (micro_steps, len(calls), applied, train.nonfinite_in_a_row) == (3, 3, False, 1)
    assert all(torch.equal(before[k], v) for k, v in train.model.state_dict().items())
    assert not train.optimizers.state  # the optimizers never stepped
    _, _, _, applied = train.train_step(1)
    changed = [k for k, v in train.model.state_dict().items() if not torch.equal(before[k], v)]
    assert applied and train.nonfinite_in_a_row == 0 and len(changed) > 5
    assert all(torch.isfinite(v).all() for v in train.model.state_dict().values())
