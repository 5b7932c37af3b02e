"""
DDP on CPU (issues 2, 3, 5): 2 processes under torchrun (gloo, loopback only), a tiny fp32 model and
a schedule with a hyperparameter op, stack_layers and widen_mlp.
- the run exits 0; grad accumulation 1 with 2 ranks rounds up to 2 (one micro step per rank);
  every rank ends with the same parameters and the same optimizer state, AdamW's or Muon's and
  AdamW's (each rank dumps its own state after train.py's main() returns, through a small wrapper
  script), and rank 0's checkpoint holds them; widen_mlp keeps the val loss under DDP;
- the rank-consistency check (check_rank_consistency, on by default) stops a run whose ranks grew
  differently (here: widen_mlp given a rank-dependent generator, which only permutes replicas);
- one rank killed with kill -9 mid-run: torchrun exits non-zero, ckpt.pt is a complete
  checkpoint; resumed on 2 ranks, the run continues, every op logged exactly once, ranks identical.
"""

import math
import os
import signal

import pytest
import torch

import train
from helpers import (NAN_TRAIN, TORCHRUN, assert_same_state, describe_run, read_events, run_train, skipped_steps,
                     start_train, train_env, trained_runs, wait_for_line, worker_pids, write_schedule)

pytestmark = pytest.mark.slow  # every test here runs train.py or another script as a subprocess

SCHEDULE = [  # (name, value, trigger_loss, max_wait_iters, reevaluate); eval every 10 iters
    ('change_lr', 0.5, 0.0, 10, False),  # iter 10
    ('stack_layers', 2, 0.0, 10, True),  # iter 20
    ('widen_mlp', 2.0, 0.0, 10, True),  # iter 30
]
EXPECTED_OPS = [(10, 'change_lr'), (20, 'stack_layers'), (30, 'widen_mlp')]

# after a wrapped train.py: this rank's parameters and AdamW state to out_dir/rank{R}.pt
DUMP_STATE = r'''
import torch
torch.save(dict(model=train.model.state_dict(), optimizer=train.optimizers.state_dict()),
           os.path.join(train.out_dir, f'rank{train.ddp_rank}.pt'))
'''
# train.py, then the dump
DUMPING_TRAIN = r'''
import os, sys
sys.path.insert(0, os.getcwd())
import train

train.run_from_command_line(sys.argv[1:])
''' + DUMP_STATE


# train.py whose growth ops draw from a different generator on each rank (a bug the check must catch)
DIVERGING_TRAIN = r'''
import os, sys
sys.path.insert(0, os.getcwd())
import torch
import train

train.growth_generator = lambda: torch.Generator().manual_seed(train.seed + train.orch.iter_of_last_op + train.ddp_rank)
train.run_from_command_line(sys.argv[1:])
'''


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    runs = trained_runs(tmp_path_factory.mktemp('ddp'), SCHEDULE, always_save_checkpoint=True,
                        gradient_accumulation_steps=1, max_iters=40)
    scripts = dict(dumping=DUMPING_TRAIN, diverging=DIVERGING_TRAIN, nan_dumping=NAN_TRAIN + DUMP_STATE)
    for name, text in scripts.items():
        (runs['root'] / f'{name}_train.py').write_text(text)
    return dict(runs, **{name: TORCHRUN + [str(runs['root'] / f'{name}_train.py')] for name in scripts})


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def assert_ranks_identical(out):
    """Both ranks' final parameters and AdamW state exactly equal, and equal to rank 0's checkpoint."""
    rank0, rank1 = load(out / 'rank0.pt'), load(out / 'rank1.pt')
    assert_same_state(rank1, rank0, 'rank 1 vs rank 0')
    checkpoint = load(out / 'ckpt.pt')
    assert_same_state(checkpoint['model'], rank0['model'], 'checkpoint vs rank 0')
    assert_same_state(checkpoint['optimizer'], rank0['optimizer'], 'checkpoint vs rank 0')
    return checkpoint


def ops_in_events(out):
    return [(e['iter'], e['name']) for e in read_events(out) if e['event'] == 'op']


@pytest.mark.parametrize('optimizer', ['adamw', 'muon'])
def test_ddp_run_with_growth_ends_with_identical_ranks(setup, tmp_path, optimizer):
    """With Muon too: its momentum, carried through the growth ops, is the same on both ranks."""
    out = tmp_path / 'out'
    result = run_train(setup['args'](out, optimizer=optimizer), command=setup['dumping'], timeout=180)
    assert result.returncode == 0, describe_run(result)
    checkpoint = assert_ranks_identical(out)
    assert ('muon' in checkpoint['optimizer']) == (optimizer == 'muon')
    assert (checkpoint['model_args']['n_layer'], checkpoint['model_args']['n_hidden']) == (2, 256)
    assert len(checkpoint['rng']) == 2 and not torch.equal(checkpoint['rng'][0]['data'], checkpoint['rng'][1]['data'])
    events = read_events(out)
    assert [(e['iter'], e['name']) for e in events if e['event'] == 'op'] == EXPECTED_OPS
    evals = [e for e in events if e['event'] == 'eval']
    assert [e['iter'] for e in evals] == [0, 10, 20, 30, 40]
    assert {e['grad_accum'] for e in evals} == {2}  # gradient_accumulation_steps=1 rounded up to 1 per rank
    assert evals[-1]['tokens'] == 40 * 2 * 4 * 32  # 2 ranks x 1 micro step x batch 4 x block 32 per iter
    widen = [e for e in events if e['event'] == 'op' and e['name'] == 'widen_mlp'][0]
    assert abs(widen['val_loss_after'] - widen['val_loss_before']) <= 1e-5  # function kept on every rank


def test_ddp_rank_check_catches_ranks_that_grew_differently(setup, tmp_path):
    """widen_mlp by 2 copies every unit once, whatever the generator: ranks differ only in the order
    of their replicas (and of the carried AdamW moments), which a plain sum would not see."""
    schedule = write_schedule(tmp_path / 'widen.json', [('widen_mlp', 2.0, 0.0, 10, False)])
    out = tmp_path / 'out'
    result = run_train(setup['args'](out, scaling_schedule_file=schedule, max_iters=10), command=setup['diverging'],
                       timeout=180)
    assert result.returncode != 0, describe_run(result)
    assert 'RuntimeError: DDP ranks disagree after a growth op' in result.stderr
    assert not os.path.exists(out / 'ckpt.pt')  # stopped before the checkpoint of iter 10


@pytest.mark.parametrize('grad_clip', [0.0, 1.0])
def test_ddp_ranks_agree_on_a_nonfinite_step(setup, tmp_path, grad_clip):
    """A NaN loss on rank 1 only (iters 5 and 6), skip_nonfinite_steps=2: both ranks skip both steps (the
    averaged gradients are NaN on both), so the run ends with identical, finite ranks. Without clipping only
    the local loss is checked: each rank alone would decide differently, and rank 0 would step on NaN."""
    out = tmp_path / 'out'
    result = run_train(setup['args'](out, scaling_schedule_file=None, max_iters=20, skip_nonfinite_steps=2,
                                     grad_clip=grad_clip),
                       command=setup['nan_dumping'], env=train_env(NAN_AT='5,6', NAN_RANK='1'), timeout=180)
    assert result.returncode == 0, describe_run(result)
    assert skipped_steps(result.stdout) == [(5, 1), (6, 2)]  # logged by rank 0, whose own loss was finite
    checkpoint = assert_ranks_identical(out)
    assert {float(state['step']) for state in checkpoint['optimizer']['state'].values()} == {18.0}
    assert all(torch.isfinite(p).all() for p in checkpoint['model'].values())


def test_position_checksum_in_chunks():
    """The rank check's checksum, taken in chunks, is the sum of value x position (from 1) over each
    tensor, and it tells rows in another order apart."""
    a = torch.randn(5, 7, dtype=torch.float64)
    b = torch.randn(3, dtype=torch.float64)
    whole = sum((t.flatten() * torch.arange(1, t.numel() + 1)).sum() for t in (a, b))
    for chunk in (1, 4, 35, 2**20):
        assert train.position_checksum([a, b], chunk).item() == pytest.approx(whole.item(), rel=1e-12)
    swapped = a[[1, 0, 2, 3, 4]]
    assert train.position_checksum([swapped, b], 4).item() != pytest.approx(whole.item(), rel=1e-12)


@pytest.mark.parametrize('optimizer', ['adamw', 'muon'])
def test_ddp_rank_killed_then_resumed(setup, tmp_path, optimizer):
    """With Muon too: the checkpoint rank 0 left holds both optimizers' state, and the resume (which takes
    the optimizer from the checkpoint) ends with identical ranks."""
    out = tmp_path / 'out'
    process = start_train(setup['args'](out, max_iters=1000, optimizer=optimizer), command=TORCHRUN + ['train.py'])
    try:
        wait_for_line(process, 'iter 25/')
        workers = worker_pids(process.pid)
        assert sorted(workers) == [0, 1]
        os.kill(workers[1], signal.SIGKILL)
        output, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode != 0, output[-3000:]
    assert 'exitcode  : -9' in output  # torchrun reports the killed rank
    # the latest checkpoint is a complete one, whatever rank 0 was doing when its peer died
    checkpoint = train.load_checkpoint(str(out / 'ckpt.pt'))
    stopped_at = checkpoint['iter_num']
    assert stopped_at >= 20 and stopped_at % 10 == 0
    assert ('muon' in checkpoint['optimizer']) == (optimizer == 'muon')
    assert [op['name'] for op in checkpoint['orchestrator']['executed_ops']] == \
        [name for it, name in EXPECTED_OPS if it <= stopped_at]

    result = run_train(setup['args'](out, init_from='resume', max_iters=max(40, stopped_at + 10)),
                       command=setup['dumping'], timeout=180)
    assert result.returncode == 0, describe_run(result)
    assert ('muon' in assert_ranks_identical(out)['optimizer']) == (optimizer == 'muon')
    evals = [e for e in read_events(out) if e['event'] == 'eval']
    assert [e['iter'] for e in evals] == list(range(0, max(40, stopped_at + 10) + 1, 10))
    assert all(e['grad_accum'] == 2 and math.isfinite(e['val_loss']) for e in evals)
    assert ops_in_events(out) == EXPECTED_OPS
