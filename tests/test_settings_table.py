"""
The settings table and what an operation does (issue 22, "First: make room for them"):
- one Setting row per schedulable setting makes its change_/set_ ops, its stored multiplier and set value,
  its effective value, its range check, and its fields in the op log, the events and the plan: a new row
  alone is a working, logged, planned, checked and checkpointed setting;
- a checkpoint that lacks an orchestrator field (written before the field existed, e.g. by the train.py
  before the table, which kept one <setting>_multiplier field per setting) resumes with the field's
  default, exactly as the uninterrupted run (once: "not a checkpoint of this train.py: missing
  'orchestrator.iter_of_last_growth'");
- Operation flags: rebuilds_optimizer (the parameters change) and changes_architecture (growth: lr
  re-warmup, MSG ramps wait for it); a LoRA alpha change or merge rebuilds the optimizer but does not
  re-warm the lr (it once did), stack_layers does.
"""

import shutil
from contextlib import nullcontext, redirect_stdout
from io import StringIO

import pytest
import torch

import train
from helpers import describe_run, entry, read_events, run_train, tiny_run_in_process, trained_runs, without_elapsed


@pytest.fixture
def tiny_run(tmp_path, monkeypatch):
    """train's globals for a tiny CPU run with attention LoRA (rank 2) and an lr re-warmup of 10 iters after
    growth; its model and optimizers built."""
    with tiny_run_in_process(tmp_path, monkeypatch, attn_lora_rank=2, growth_lr_rewarm_iters=10,
                             lr_schedule='cosine', growth_optimizer_state='carry', decay_lr=True) as model_config:
        yield model_config


def fire(name, value, iter_num):
    train.orch.schedule[:] = [entry(name, value)]
    train.execute_operation(train.orch.schedule[0], 'timeout', iter_num, 1.0, train.rebuild_after_growth)


# -----------------------------------------------------------------------------
# one row


def test_a_new_row_alone_is_a_whole_setting(tiny_run, monkeypatch):
    """A made-up setting `layer_drop`, one row: its ops, effective value, range check, op log, plan and
    checkpointed state all follow."""
    row = train.Setting('layer_drop', lambda: 6, train.check_count, label='layer_drop', maximum='n_layer')
    monkeypatch.setattr(train, 'n_layer', 12)
    monkeypatch.setattr(train, 'SETTINGS', train.SETTINGS + (row,))
    monkeypatch.setattr(train, 'SETTING', dict(train.SETTING, layer_drop=row))
    monkeypatch.setattr(train, 'OPERATIONS', dict(train.OPERATIONS, **train.hyperparameter_operations()))
    assert train.effective('layer_drop') == 6 and train.effective_settings()['layer_drop'] == 6
    schedule = [entry('change_layer_drop', 1.5), entry('set_layer_drop', 4, max_wait_iters=10)]
    train.reset_orchestrator(schedule)
    plan = train.validate_schedule('s.json', schedule, 0, tiny_run)
    assert [row['layer_drop'] for row in plan] == [9, 4]
    out = StringIO()
    with redirect_stdout(out):
        train.print_plan(plan)
    assert ", layer_drop 9, " in out.getvalue()
    with pytest.raises(train.ScheduleError) as refused:
        train.validate_schedule('s.json', [entry('change_layer_drop', 3.0)], 0, tiny_run)
    assert str(refused.value) == ("s.json: entry 0, field 'value': change_layer_drop: this makes layer_drop 18, "
                                  "more than n_layer 12; it must stay <= n_layer")
    events = []
    train.run_orchestrator(0, 9.0, log_event=events.append)
    assert [e['changes']['layer_drop'] for e in events] == [[6, 9]]
    state = train.orchestrator_state()
    assert state['multipliers'] == {'layer_drop': 1.5}
    train.load_orchestrator_state(state)
    assert train.effective('layer_drop') == 9


def test_every_row_has_its_two_ops_and_its_fields(tiny_run):
    for row in train.SETTINGS:
        assert train.OPERATIONS[f'change_{row.name}'].rebuilds_optimizer is False
        assert train.OPERATIONS[f'set_{row.name}'].changes_architecture is False
    progress = dict(iter_num=0, tokens=0, flops=0, eval_flops=0)
    train.progress.update(progress)
    event = train.eval_event(dict(train=1.0, val=1.0), 0.0)
    shown = ['peak_lr', 'batch_size', 'grad_accum', 'eval_interval', 'eval_iters', 'warmup_iters', 'lr_decay_iters',
             'seq_len', 'lr_schedule_offset']
    assert list(train.schedule_settings()) == shown and all(k in event for k in shown)
    assert (event['seq_len'], event['batch_size'], event['peak_lr']) == (32, 4, 1e-3)


def test_a_main_checkpoints_orchestrator_state_loads():
    """The train.py before the table wrote one field per multiplier and had no seq_len."""
    state = train.orchestrator_state()
    state.pop('multipliers')
    state.update(lr_multiplier=0.5, batch_size_multiplier=2.0, grad_accum_multiplier=1.0, warmup_iters_multiplier=1.0,
                 eval_iters_multiplier=1.0, eval_interval_multiplier=1.0)
    state.pop('iter_of_last_growth')
    saved = train.orchestrator_state()
    try:
        train.load_orchestrator_state(state)
        assert train.orch.multipliers == dict(lr=0.5, batch_size=2.0, grad_accum=1.0, warmup_iters=1.0, eval_iters=1.0,
                                              eval_interval=1.0)
        assert train.orch.iter_of_last_growth == -1 and 'seq_len' not in train.orch.multipliers
    finally:
        train.load_orchestrator_state(saved)


# -----------------------------------------------------------------------------
# what an operation does


def test_flags_of_each_operation():
    growth = sorted(name for name, op in train.OPERATIONS.items() if op.changes_architecture)
    rebuilds = sorted(name for name, op in train.OPERATIONS.items() if op.rebuilds_optimizer)
    assert growth == ['change_attn_lora_rank', 'change_embedding_lora_rank', 'msg_add_heads', 'msg_stack_layers',
                      'msg_widen_embd', 'msg_widen_mlp', 'set_attn_lora_rank', 'stack_layers', 'widen_mlp']
    assert rebuilds == sorted(growth + ['change_lora_alpha', 'merge_lora_weights'])


@pytest.mark.parametrize('name, value', [('change_lora_alpha', 2.0), ('merge_lora_weights', None)])
def test_an_alpha_change_or_a_merge_does_not_rewarm_the_lr(tiny_run, name, value):
    scheduled = [train.get_lr(it) for it in (21, 25)]
    fire(name, value, 20)
    assert [train.get_lr(it) for it in (21, 25)] == scheduled
    assert train.orch.iter_of_last_growth == -1
    assert train.optimizers.param_groups and train.flops_per_token == {}  # the optimizer was rebuilt


def test_stack_layers_rewarms_the_lr(tiny_run):
    scheduled = [train.get_lr(it) for it in (21, 25, 30)]
    fire('stack_layers', 2, 20)
    assert [train.get_lr(it) for it in (21, 25, 30)] == [scheduled[0] * (2 / 11), scheduled[1] * (6 / 11), scheduled[2]]


def test_a_merge_during_a_mask_ramp_does_not_wait(tiny_run):
    """Not growth: it fires at once while a MSG ramp rises; stack_layers waits."""
    train.reset_orchestrator([entry('msg_widen_mlp', dict(factor=2.0, anneal_iters=20)),
                              entry('merge_lora_weights'), entry('stack_layers', 2)])
    fired = []
    with redirect_stdout(StringIO()):
        train.run_orchestrator(0, 9.0, on_growth=train.rebuild_after_growth, log_event=fired.append)
    assert [e['name'] for e in fired] == ['msg_widen_mlp', 'merge_lora_weights']
    assert train.estimate_loss(train.model, nullcontext(), 0, False)['val'] > 0


# -----------------------------------------------------------------------------
# a checkpoint from before a field


SCHEDULE = [entry('change_lr', 0.5), entry('change_batch_size', 2.0, max_wait_iters=10)]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    shared = trained_runs(tmp_path_factory.mktemp('settings_table'), SCHEDULE)
    for name, max_iters in (('full', 30), ('half', 20)):
        result = run_train(shared['args'](shared['root'] / name, max_iters=max_iters))
        assert result.returncode == 0, describe_run(result)
    return shared


def as_main_wrote_it(checkpoint):
    """The orchestrator state as the train.py before the settings table wrote it: one field per multiplier,
    and without a field added later (iter_of_last_growth: -1, no growth in this run)."""
    state = checkpoint['orchestrator']
    multipliers = state.pop('multipliers')
    for name in ('lr', 'batch_size', 'grad_accum', 'warmup_iters', 'eval_iters', 'eval_interval'):
        state[f'{name}_multiplier'] = multipliers.get(name, 1.0)
    assert state.pop('iter_of_last_growth') == -1


@pytest.mark.slow
def test_a_checkpoint_missing_a_field_resumes_exactly(runs, tmp_path):
    out = tmp_path / 'out'
    shutil.copytree(runs['root'] / 'half', out)
    checkpoint = torch.load(out / 'ckpt.pt', weights_only=True)
    as_main_wrote_it(checkpoint)
    torch.save(checkpoint, out / 'ckpt.pt')
    result = run_train(runs['args'](out, max_iters=30, init_from='resume'))
    assert result.returncode == 0, describe_run(result)
    assert without_elapsed(read_events(out)) == without_elapsed(read_events(runs['root'] / 'full'))
    resumed = torch.load(out / 'ckpt.pt', weights_only=True)
    full = torch.load(runs['root'] / 'full' / 'ckpt.pt', weights_only=True)
    multipliers = {k: v for k, v in resumed['orchestrator'].pop('multipliers').items() if v != 1.0}  # 1.0: the old fields
    assert multipliers == full['orchestrator'].pop('multipliers') and resumed['orchestrator'] == full['orchestrator']
    assert all(torch.equal(v, full['model'][k]) for k, v in resumed['model'].items())
