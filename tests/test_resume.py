"""
Checkpoints and resume (issue 2), on a tiny CPU fp32 model trained by train.py in subprocesses:
- exact resume: a 120-iter run and a 60-iter run resumed to 120 log the same events (all but the wall
  time) and end with the same checkpoint, with a schedule of hyperparameter ops, stack_layers,
  widen_mlp and an MSG op whose mask ramp is half way at the resume point; with the schedule file
  given again, and with none (the remaining schedule stored in the checkpoint);
- a schedule file that disagrees with the ops already run is refused (exit 2, file and entry
  named), the checkpoint and event log untouched;
- save_checkpoint is atomic: a write that fails half way leaves the previous checkpoint;
- a truncated, garbage or empty ckpt.pt: one error line, exit 2, no traceback, file untouched;
- the checkpoint holds plain types (torch.load(weights_only=True)) and rebuilds the grown model
  alone: GPTConfig(**model_args) loads the weights, and they give the val loss the run logged.
"""

import os
import shutil
from contextlib import nullcontext

import pytest
import torch

import train
from checkpoint import save_checkpoint
from helpers import (assert_same_state, describe_run, entry, file_state, read_events, run_train, trained_runs,
                     without_elapsed, write_schedule)
from model import GPT, GPTConfig

pytestmark = pytest.mark.slow  # every test here runs train.py or another script as a subprocess

N = 120
SCHEDULE = [  # (name, value, trigger_loss, max_wait_iters, reevaluate); eval every 10 iters
    ('change_lr', 0.5, 10.0, 0, False),  # iter 0, by loss
    ('stack_layers', 2, 0.0, 20, True),  # iter 20, by timeout from here on
    ('widen_mlp', 2.0, 0.0, 10, True),  # iter 30
    ('msg_widen_mlp', {'factor': 1.5, 'anneal_iters': 40}, 0.0, 10, False),  # iter 40: mask 0 -> 1 at 80
    ('change_batch_size', 2.0, 0.0, 20, False),  # iter 60, the resume point
    ('set_grad_accum', 2, 0.0, 10, False),  # iter 70
    ('reset_lr_schedule', None, 0.0, 10, False),  # iter 80
    ('widen_mlp', 1.25, 0.0, 20, True),  # iter 100
]
EXPECTED_OPS = [(0, 'change_lr', 'loss'), (20, 'stack_layers', 'timeout'), (30, 'widen_mlp', 'timeout'),
                (40, 'msg_widen_mlp', 'timeout'), (60, 'change_batch_size', 'timeout'),
                (70, 'set_grad_accum', 'timeout'), (80, 'reset_lr_schedule', 'timeout'),
                (100, 'widen_mlp', 'timeout')]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """An uninterrupted N-iter run ('full') and the same run stopped at N/2 ('half')."""
    runs = trained_runs(tmp_path_factory.mktemp('resume'), SCHEDULE, always_save_checkpoint=True, log_interval=10)
    for name, iters in (('full', N), ('half', N // 2)):
        result = run_train(runs['args'](runs['root'] / name, max_iters=iters))
        assert result.returncode == 0, describe_run(result)
    return dict(runs, full=runs['root'] / 'full', half=runs['root'] / 'half')


def copy_half(runs, tmp_path):
    """A copy of the half run's out_dir, to resume or break without touching the shared one."""
    out = tmp_path / 'out'
    shutil.copytree(runs['half'], out)
    return out


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def test_uninterrupted_run_fires_the_schedule(runs):
    events = read_events(runs['full'])
    ops = [(e['iter'], e['name'], e['reason']) for e in events if e['event'] == 'op']
    assert ops == EXPECTED_OPS
    evals = {e['iter']: e for e in events if e['event'] == 'eval'}
    assert sorted(evals) == list(range(0, N + 1, 10))
    # the resume point is in the middle of the MSG ramp (an eval at an op's iter runs before the op)
    assert [evals[i]['mask'] for i in (40, 50, 60, 70, 80)] == [1.0, 0.25, 0.5, 0.75, 1.0]
    assert (evals[60]['n_layer'], evals[60]['n_hidden'], evals[120]['n_hidden']) == (2, 384, 480)
    assert (evals[60]['batch_size'], evals[70]['batch_size'], evals[70]['grad_accum'], evals[80]['grad_accum']) \
        == (4, 8, 1, 2)
    half = load(runs['half'] / 'ckpt.pt')
    assert half['iter_num'] == N // 2
    assert half['orchestrator']['active_ramp'] == dict(name='msg_widen_mlp', start_iter=40, anneal_iters=40)
    assert [op['name'] for op in half['orchestrator']['executed_ops']] == [name for _, name, _ in EXPECTED_OPS[:5]]


@pytest.mark.parametrize('with_schedule_file', [True, False], ids=['schedule_file', 'stored_schedule'])
def test_resume_is_exact(runs, tmp_path, with_schedule_file):
    """Resumed to N, the half run logs the uninterrupted run's events (same losses exactly, no op
    repeated or skipped) and ends with the same checkpoint. Without a schedule file the
    checkpoint's remaining schedule is used."""
    out = copy_half(runs, tmp_path)
    schedule = runs['schedule'] if with_schedule_file else None  # None: no --scaling_schedule_file
    result = run_train(runs['args'](out, max_iters=N, init_from='resume', scaling_schedule_file=schedule))
    assert result.returncode == 0, describe_run(result)
    full_events, resumed_events = read_events(runs['full']), read_events(out)
    assert without_elapsed(resumed_events) == without_elapsed(full_events)
    # the resumed process itself ran the ops after the resume point, and only those
    resumed_ops = [line.split(' (entry')[0] for line in result.stdout.splitlines() if line.startswith('Operation: ')]
    assert resumed_ops == [f'Operation: {name}' for _, name, _ in EXPECTED_OPS[5:]]
    full, resumed = load(runs['full'] / 'ckpt.pt'), load(out / 'ckpt.pt')
    for key in ('config', 'wandb_run_id'):
        del full[key], resumed[key]
    assert_same_state(resumed, full)


@pytest.mark.parametrize('change, message', [
    (lambda entries: entries.__setitem__(1, ('stack_layers', 3, 0.0, 20, True)),
     'entry 1: the checkpoint already ran {"name": "stack_layers", "value": 2, "trigger_loss": 0.0, '
     '"max_wait_iters": 20, "reevaluate": true} at iter 20, but the file now has {"name": "stack_layers", '
     '"value": 3, "trigger_loss": 0.0, "max_wait_iters": 20, "reevaluate": true} here'),
    (lambda entries: entries.__delitem__(slice(3, None)),
     'entry 3: the checkpoint already ran {"name": "msg_widen_mlp", "value": {"factor": 1.5, "anneal_iters": 40}, '
     '"trigger_loss": 0.0, "max_wait_iters": 10, "reevaluate": false} at iter 40, but the file now has nothing here'),
], ids=['changed_value', 'entries_removed'])
def test_resume_with_disagreeing_schedule_is_refused(runs, tmp_path, change, message):
    out = copy_half(runs, tmp_path)
    entries = list(SCHEDULE)
    change(entries)
    schedule = write_schedule(tmp_path / 'edited.json', entries)
    before = [file_state(out / name) for name in ('ckpt.pt', 'events.jsonl')]
    result = run_train(runs['args'](out, max_iters=N, init_from='resume', scaling_schedule_file=schedule))
    assert result.returncode == 2, describe_run(result)
    assert 'Traceback' not in result.stderr
    assert result.stderr.strip().splitlines() == [f"error: {schedule}: {message}; resume with the original "
                                                  "schedule, or with no scaling_schedule_file"]
    assert [file_state(out / name) for name in ('ckpt.pt', 'events.jsonl')] == before
    assert sorted(os.listdir(out)) == ['ckpt.pt', 'events.jsonl']


def test_save_checkpoint_is_atomic(runs, tmp_path, monkeypatch):
    """A write that dies half way (here: torch.save writes part of the file, then fails) leaves the
    previous ckpt.pt as it was, loadable; a write that succeeds leaves no temp file behind."""
    path = str(tmp_path / 'ckpt.pt')
    shutil.copy(runs['half'] / 'ckpt.pt', path)
    before = file_state(path)
    checkpoint = train.load_checkpoint(path)
    checkpoint['iter_num'] = 999
    real_save, written = torch.save, []

    def dying_save(obj, f, *args, **kwargs):
        written.append(f)
        with open(f, 'wb') as out:
            out.write(b'PK\x03\x04 the first bytes of a zip, and no more')
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(torch, 'save', dying_save)
    with pytest.raises(OSError, match='No space left'):
        save_checkpoint(checkpoint, path)
    assert written and os.path.abspath(written[0]) != os.path.abspath(path)  # it wrote elsewhere
    assert file_state(path) == before
    assert train.load_checkpoint(path)['iter_num'] == N // 2

    monkeypatch.setattr(torch, 'save', real_save)
    save_checkpoint(checkpoint, path)
    assert train.load_checkpoint(path)['iter_num'] == 999
    assert os.listdir(tmp_path) == ['ckpt.pt']


@pytest.mark.parametrize('corrupt', [
    lambda data: data[:len(data) // 2],
    lambda data: bytes(range(256)) * 64,
], ids=['truncated', 'garbage'])
def test_corrupted_checkpoint_one_clear_error(runs, tmp_path, corrupt):
    out = copy_half(runs, tmp_path)
    path = out / 'ckpt.pt'
    path.write_bytes(corrupt(path.read_bytes()))
    before = [file_state(out / name) for name in ('ckpt.pt', 'events.jsonl')]
    result = run_train(runs['args'](out, max_iters=N, init_from='resume'))
    assert result.returncode == 2, describe_run(result)
    assert 'Traceback' not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: not a readable checkpoint (truncated or "
                                                   "corrupted?): "), lines
    assert [file_state(out / name) for name in ('ckpt.pt', 'events.jsonl')] == before


def test_checkpoint_is_plain_types(runs):
    """weights_only=True loads it (no pickled objects) and it holds everything a resume needs."""
    checkpoint = load(runs['half'] / 'ckpt.pt')
    assert set(checkpoint) == {'model', 'model_args', 'optimizer', 'scaler', 'iter_num', 'tokens', 'flops',
                               'eval_flops', 'best_val_loss', 'next_eval_iter', 'config', 'orchestrator', 'rng',
                               'wandb_run_id', 'growth_mask'}
    assert (checkpoint['iter_num'], checkpoint['next_eval_iter'], checkpoint['tokens']) == (60, 70, 60 * 4 * 32)
    orchestrator = checkpoint['orchestrator']
    assert orchestrator['schedule_position'] == 5 and orchestrator['iter_of_last_op'] == 60
    assert [tuple(e[k] for k in train.ENTRY_KEYS) for e in orchestrator['schedule']] == SCHEDULE[5:]
    assert orchestrator['multipliers'] == {'batch_size': 2.0, 'lr': 0.5}
    assert checkpoint['config']['max_iters'] == N // 2 and checkpoint['config']['n_layer'] == 1
    assert isinstance(checkpoint['rng'], list) and len(checkpoint['rng']) == 1


def test_grown_checkpoint_rebuilds_the_model(runs, monkeypatch):
    """What sample.py and bench.py do: GPTConfig(**model_args) alone gives the grown architecture
    (2 layers, MLP 384 wide, mid-ramp), its weights load strictly and, with the mask of the
    checkpoint's iter, give exactly the val loss that the run logged at that eval."""
    checkpoint = load(runs['half'] / 'ckpt.pt')
    config = GPTConfig(**checkpoint['model_args'])
    assert (config.n_layer, config.n_hidden, config.ramp) == (2, 384, {'kind': 'mlp', 'n_unmasked': 256})
    model = GPT(config)
    model.load_state_dict(checkpoint['model'])
    last_eval = [e for e in read_events(runs['full']) if e['event'] == 'eval'][-1]
    assert model.get_num_params() == last_eval['params'] - 2 * 2 * 32 * (480 - 384)
    model.set_growth_mask(0.5)  # (60 - 40) / 40
    for key, value in dict(data_dir=str(runs['data']), block_size=32, batch_size=4, eval_iters=2,
                           device='cpu').items():
        monkeypatch.setattr(train, key, value)
    monkeypatch.setattr(train, 'orch', train.Orchestrator())  # multipliers 1
    losses = train.estimate_loss(model, nullcontext(), 0, False)
    logged = [e for e in read_events(runs['full']) if e['event'] == 'eval' and e['iter'] == 60][0]
    assert losses['val'] == pytest.approx(logged['val_loss'], abs=1e-6)
    assert losses['train'] == pytest.approx(logged['train_loss'], abs=1e-6)
    torch.manual_seed(0)
    sample = model.generate(torch.zeros((1, 1), dtype=torch.long), 20)
    assert sample.shape == (1, 21) and 0 <= int(sample.min()) and int(sample.max()) < config.vocab_size


def test_resume_keeps_the_slope_history(tmp_path):
    """A slope-triggered entry straddling the resume point fires at the same eval: the evals since the
    previous op (flops, val loss) are in the checkpoint. -1e9 fires at the third eval with flops > 0."""
    args = trained_runs(tmp_path, [dict(entry('change_lr', 0.5, max_wait_iters=10**6), trigger_slope=-1e9)],
                        always_save_checkpoint=True)['args']

    for name, iters in (('full', 40), ('half', 20)):
        result = run_train(args(tmp_path / name, max_iters=iters))
        assert result.returncode == 0, describe_run(result)
    evals = {e['iter']: e for e in read_events(tmp_path / 'half') if e['event'] == 'eval'}
    assert load(tmp_path / 'half' / 'ckpt.pt')['orchestrator']['evals_since_op'] == \
        [[evals[it]['flops'], evals[it]['val_loss']] for it in (0, 10, 20)]
    result = run_train(args(tmp_path / 'half', max_iters=40, init_from='resume'))
    assert result.returncode == 0, describe_run(result)
    full_events = read_events(tmp_path / 'full')
    assert [(e['iter'], e['reason']) for e in full_events if e['event'] == 'op'] == [(30, 'slope')]
    assert without_elapsed(read_events(tmp_path / 'half')) == without_elapsed(full_events)
    assert 'Trigger reason: slope.' in result.stdout
