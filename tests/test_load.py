"""
Load: a 200-entry schedule of small hyperparameter ops runs to the end through train.py, every
op fired exactly once and in order, and the event log complete (an eval event at every eval iter,
the ops of an eval step right after it).
"""

import pytest
import torch

from helpers import describe_run, entry, read_events, run_train, train_args, write_char_data, write_schedule

pytestmark = pytest.mark.slow  # every test here runs train.py or another script as a subprocess

N_GROUPS = 50  # 4 entries each; group g fires at iter 2 * (g + 1), the eval grid being every 2 iters
ROTATION = [('set_batch_size', 8, {'batch_size': [4, 8]}), ('set_batch_size', 4, {'batch_size': [8, 4]}),
            ('change_grad_accum', 2, {'grad_accum': [1, 2]}), ('change_grad_accum', 0.5, {'grad_accum': [2, 1]}),
            ('change_warmup_iters', 2, {'warmup_iters': [5, 10], 'lr_decay_iters': [200, 400]}),
            ('change_warmup_iters', 0.5, {'warmup_iters': [10, 5], 'lr_decay_iters': [400, 200]}),
            ('reset_lr_schedule', None, {})]


def schedule():
    """(entries, for each entry: the reason it fires for, and the changes it must report)."""
    entries, expected = [], []
    for g in range(N_GROUPS):
        lr_factor = 1.01 if g % 2 == 0 else 1 / 1.01
        rotation_name, rotation_value, rotation_changes = ROTATION[g % len(ROTATION)]
        group = [
            # waits 2 iters after the previous group: a timeout at the next eval
            (entry('change_lr', lr_factor, 0.0, 2, False), 'timeout', None),
            # any val loss is below 100: fires on loss, never waits
            (entry('change_eval_iters', 2, 100.0, 10**6, g % 3 == 0), 'loss', {'eval_iters': [2, 4]}),
            (entry('change_eval_iters', 0.5, 0.0, 0, False), 'timeout', {'eval_iters': [4, 2]}),
            (entry(rotation_name, rotation_value, 0.0, 0, g % 5 == 0), 'timeout', rotation_changes),
        ]
        entries += [e for e, _, _ in group]
        expected += [(reason, changes) for _, reason, changes in group]
    return entries, expected


def test_200_entry_schedule_fires_every_op_once_in_order(tmp_path):
    data = tmp_path / 'data'
    write_char_data(data, n_chars=20_000)
    entries, expected = schedule()
    assert len(entries) == 200
    path = write_schedule(tmp_path / 'schedule.json', entries)
    out_dir = tmp_path / 'out'
    result = run_train(train_args(data, out_dir, max_iters=100, eval_interval=2, eval_iters=2,
                                  scaling_schedule_file=path), timeout=300)
    assert result.returncode == 0, describe_run(result)
    assert result.stdout.count("=== SCALING OPERATION TRIGGERED ===") == 200
    assert result.stdout.count("=== SCALING OPERATION COMPLETE ===") == 200

    events = read_events(out_dir)
    # the whole log, in order: every eval iter once, each group's four ops right after its eval
    sequence = []
    for it in range(0, 101, 2):
        sequence.append(('eval', it, None))
        if it > 0:
            sequence += [('op', it, i) for i in range(4 * (it // 2 - 1), 4 * (it // 2))]
    sequence.append(('summary', 100, None))
    assert [(e['event'], e['iter'], e.get('index')) for e in events] == sequence

    ops = [e for e in events if e['event'] == 'op']
    for op, e, (reason, changes) in zip(ops, entries, expected):
        assert (op['name'], op['value'], op['reason']) == (e['name'], e['value'], reason), op
        assert (op['val_loss_after'] is not None) == e['reevaluate'], op
        if changes is not None:
            assert {k: op['changes'][k] for k in changes} == changes, op
        if e['name'] == 'change_lr':
            before, after = op['changes']['peak_lr']
            assert abs(after / before - e['value']) < 1e-12, op
    evals = [e for e in events if e['event'] == 'eval']
    assert all(e['eval_iters'] == 2 for e in evals)  # each x2 is undone by the x0.5 of the same step
    assert len({frozenset(e) for e in evals}) == 1  # every eval event carries the same fields

    checkpoint = torch.load(out_dir / 'ckpt.pt', map_location='cpu', weights_only=True)
    state = checkpoint['orchestrator']
    assert checkpoint['iter_num'] == 100
    assert (state['schedule'], state['schedule_position'], state['iter_of_last_op']) == ([], 200, 100)
    assert [(op['index'], op['iter']) for op in state['executed_ops']] == [(i, 2 * (i // 4 + 1)) for i in range(200)]
    assert abs(state['multipliers']['lr'] - 1.0) < 1e-12  # 25 x 1.01 and 25 x 1/1.01
