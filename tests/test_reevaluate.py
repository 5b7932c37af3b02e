"""
The val loss after an operation (issue 10), on a tiny CPU fp32 model trained by train.py:
- reevaluate measures the val split only: the eval FLOPs count one split for it;
- an operation that changes the model's function (stack_layers) restarts the best val loss, which
  belonged to the model before it: with always_save_checkpoint=False the grown model is saved at the
  first loss measured for it (at once with reevaluate, else at the next eval), and the checkpoint's
  best_val_loss is that loss.
"""

import re

import pytest
import torch

from helpers import describe_run, entry, read_events, run_train, trained_runs, write_schedule

pytestmark = pytest.mark.slow  # every test here runs train.py or another script as a subprocess


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    return trained_runs(tmp_path_factory.mktemp('reevaluate'), [], max_iters=30, always_save_checkpoint=False)


def run(runs, tmp_path, entries, **overrides):
    """A run with these schedule entries; returns (its evals by iter, its op events, the iters whose
    eval saved a checkpoint, the final checkpoint, its log)."""
    out = tmp_path / 'out'
    schedule = write_schedule(tmp_path / 'schedule.json', entries)
    result = run_train(runs['args'](out, scaling_schedule_file=schedule, **overrides))
    assert result.returncode == 0, describe_run(result)
    saved, step = [], None
    for line in result.stdout.splitlines():
        if re.match(r'step \d+:', line):
            step = int(line.split()[1].rstrip(':'))
        elif line.startswith('saving checkpoint'):
            saved.append(step)
    events = read_events(out)
    evals = {e['iter']: e for e in events if e['event'] == 'eval'}
    ops = [e for e in events if e['event'] == 'op']
    return evals, ops, saved, torch.load(out / 'ckpt.pt', map_location='cpu', weights_only=True), result.stdout


def test_reevaluate_measures_the_val_split_only(runs, tmp_path):
    """Evals at 0, 10, 20, 30 measure both splits; the reevaluation after change_lr (iter 10) the val
    split alone. The model is the same, so it measures the same val loss exactly."""
    evals, ops, _, _, _ = run(runs, tmp_path, [entry('change_lr', 0.5, max_wait_iters=10, reevaluate=True)])
    one_split = evals[0]['eval_flops'] / 2
    assert evals[10]['eval_flops'] == 4 * one_split
    assert evals[20]['eval_flops'] == 7 * one_split  # 2 evals + 1 reevaluation + 1 eval, two splits each but one
    assert evals[30]['eval_flops'] == 9 * one_split
    assert ops[0]['iter'] == 10 and ops[0]['val_loss_after'] == ops[0]['val_loss_before'] == evals[10]['val_loss']


def test_best_val_loss_restarts_after_stack_layers(runs, tmp_path):
    """stack_layers at iter 20, not reevaluated: the loss logged at 20 is the model's before the op, so
    that eval saves nothing; the next eval's loss is the grown model's first, so it is saved, as the best."""
    evals, ops, saved, checkpoint, _ = run(runs, tmp_path, [entry('stack_layers', 2, max_wait_iters=20)])
    assert [(op['iter'], op['name'], op['val_loss_after']) for op in ops] == [(20, 'stack_layers', None)]
    assert evals[10]['val_loss'] < evals[0]['val_loss']  # so iter 10 saves, as an improvement
    assert saved == [10, 30]
    assert checkpoint['iter_num'] == 30 and checkpoint['model_args']['n_layer'] == 2
    assert checkpoint['best_val_loss'] == pytest.approx(evals[30]['val_loss'], abs=1e-12)


def test_best_val_loss_restarts_at_the_reevaluated_loss(runs, tmp_path):
    """stack_layers at iter 20 to four copies of the layer, reevaluated: the grown model's loss is measured
    at once; it is the new best, and saved there, though it is worse than the best loss of the model
    before the op."""
    evals, ops, saved, checkpoint, log = run(runs, tmp_path, [entry('stack_layers', [0, 0, 0, 0], max_wait_iters=20,
                                                                    reevaluate=True)], learning_rate=1e-2)
    grown = ops[0]['val_loss_after']
    assert f"reevaluate: val loss {ops[0]['val_loss_before']:.4f} before stack_layers, {grown:.4f} after" in log
    assert grown > evals[10]['val_loss']  # the layer applied four times: worse than the best loss before
    assert saved[:2] == [10, 20]
    best = min(grown, evals[30]['val_loss'])
    assert checkpoint['best_val_loss'] == pytest.approx(best, abs=1e-12)
    assert saved == ([10, 20, 30] if evals[30]['val_loss'] < grown else [10, 20])
