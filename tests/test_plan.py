"""
The dry-run plan (issue 21): it walks the schedule as the loop runs it, so its warnings hold for the run.

- a growth op waits for the MSG mask ramp still rising (run_orchestrator holds it until advance_ramp folds
  the mask), and the entries after it wait with it: the plan's iters are the real run's (events.jsonl);
- where the ops leave the end of the lr decay after max_iters, the plan says where the run ends, and at
  which lr, once per eval (an entry that fires at the same eval can undo what the one before it did);
- an entry whose timeout falls after max_iters gets a warning: it never runs, or only on its loss trigger;
- every warning of the plan is printed at the start of a real run too.
"""

import re

import pytest

import train
from helpers import entry, read_events, run_train, train_args, write_char_data, write_schedule
from model import GPTConfig

TINY = GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=65, bias=False)
# the run of the issue: max_iters 80, lr_decay_iters 40, an eval every 10 iters
SETTINGS = dict(max_iters=80, lr_decay_iters=40, warmup_iters=5, eval_interval=10, learning_rate=1e-3, min_lr=1e-4,
                lr_schedule='cosine', decay_lr=True, cooldown_iters=0, growth_lr_rewarm_iters=0)
RAMP_THEN_GROWTH = [
    entry('msg_widen_mlp', {'factor': 2.0, 'anneal_iters': 40}, max_wait_iters=10),  # iter 10: the mask rises to 50
    entry('stack_layers', 2, max_wait_iters=10),  # its timeout is 20, but it waits for the ramp: iter 50
    entry('reset_lr_schedule', None, max_wait_iters=0),  # at 50 with it: the decay ends at 90, after max_iters
]
NEVER = entry('set_lr', 3e-4, max_wait_iters=1000)  # trigger_loss 0.0: only its timeout, at 1050, fires it


@pytest.fixture
def settings(monkeypatch):
    for key, value in SETTINGS.items():
        monkeypatch.setattr(train, key, value)
    saved = train.orchestrator_state()
    train.reset_orchestrator()
    yield
    train.load_orchestrator_state(saved)


def warnings(plan):
    return [row['warning'] for row in plan]


def test_growth_waits_for_the_mask_ramp_in_the_plan(settings):
    plan = train.validate_schedule('s.json', RAMP_THEN_GROWTH, 0, TINY)
    assert warnings(plan) == [
        None, None,
        "s.json: entry 2 (reset_lr_schedule), fired at iter 50 (the latest it can), moves the end of the lr decay to "
        "iter 90, after max_iters 80: the run would end at lr 2.69e-04, above min_lr 1.00e-04"]
    assert [row['latest_iter'] for row in plan] == [10, 50, 50]


def test_entry_that_undoes_the_move_at_the_same_eval_clears_the_warning(settings):
    """reset_lr_schedule at 50 would end the decay at 90; change_warmup_iters 0.5 at the same eval ends it at 70."""
    schedule = RAMP_THEN_GROWTH + [entry('change_warmup_iters', 0.5, max_wait_iters=0)]
    plan = train.validate_schedule('s.json', schedule, 0, TINY)
    assert [row['latest_iter'] for row in plan] == [10, 50, 50, 50]
    assert warnings(plan) == [None] * 4


def test_entry_whose_timeout_is_after_max_iters_never_runs(settings, monkeypatch):
    """The Gutenberg recipe's stack_layers (max_wait_iters 9000, trigger_loss 0.0) with --max_iters=50."""
    monkeypatch.setattr(train, 'max_iters', 50)
    schedule = [entry('stack_layers', 2, max_wait_iters=9000), entry('change_lr', 0.5)]
    plan = train.validate_schedule('s.yaml', schedule, 0, TINY)
    assert [row['latest_iter'] for row in plan] == [None, None]
    assert warnings(plan) == [
        "s.yaml: entry 0 (stack_layers) never runs: it can fire at iter 9000 at the earliest (9000 iters after the "
        "previous op at iter 0), after max_iters 50; the 1 entry after it waits for it",
        None]


def test_entry_that_runs_only_on_its_loss_trigger(settings):
    schedule = [entry('change_lr', 0.5, trigger_loss=2.0, max_wait_iters=100_000),
                dict(entry('change_batch_size', 2.0, max_wait_iters=500), trigger_slope=-0.05),
                entry('change_lr', 0.5)]
    plan = train.validate_schedule('s.yaml', schedule, 0, TINY)
    assert [row['latest_iter'] for row in plan] == [None, None, None]
    assert warnings(plan) == [
        "s.yaml: entry 0 (change_lr) runs before max_iters 80 only if val loss < 2: its timeout falls at iter "
        "100000 (100000 iters after the previous op at iter 0); the 2 entries after it wait for it", None, None]


def test_timeout_held_by_the_ramp_past_max_iters(settings, monkeypatch):
    monkeypatch.setattr(train, 'max_iters', 40)
    plan = train.validate_schedule('s.json', RAMP_THEN_GROWTH[:2], 0, TINY)
    assert warnings(plan) == [
        None,
        "s.json: entry 1 (stack_layers) never runs: it can fire at iter 50 at the earliest (10 iters after the "
        "previous op at iter 10, then the msg_widen_mlp mask ramp until iter 50), after max_iters 40"]


@pytest.mark.slow
def test_plan_iters_and_warnings_are_the_real_runs(tmp_path):
    """The same schedule, planned and run: the ops fire at the plan's iters, the final eval's lr is the one the
    warning names, and the warnings of the dry run are printed at the start of the run."""
    write_char_data(tmp_path / 'data')
    schedule = write_schedule(tmp_path / 'schedule.json', RAMP_THEN_GROWTH + [NEVER])
    args = train_args(tmp_path / 'data', tmp_path / 'out', **SETTINGS, scaling_schedule_file=schedule)
    dry = run_train(args + ['--dry_run=True'])
    assert dry.returncode == 0, dry.stderr
    dry_warnings = [line.strip() for line in dry.stdout.splitlines() if line.strip().startswith('warning: ')]
    assert dry_warnings == [
        f"warning: {schedule}: entry 2 (reset_lr_schedule), fired at iter 50 (the latest it can), moves the end of the "
        "lr decay to iter 90, after max_iters 80: the run would end at lr 2.69e-04, above min_lr 1.00e-04",
        f"warning: {schedule}: entry 3 (set_lr) never runs: it can fire at iter 1050 at the earliest (1000 iters after "
        "the previous op at iter 50), after max_iters 80"]
    fires = re.findall(r"^  \[\d\] (\w+)\(.*\n      then .*\n      model .*\n(?:      fires at iter (\d+) at the latest\n)?", dry.stdout, re.M)
    assert fires == [('msg_widen_mlp', '10'), ('stack_layers', '50'), ('reset_lr_schedule', '50'), ('set_lr', '')]

    run = run_train(args)
    assert run.returncode == 0, run.stderr
    start_up = run.stdout[:run.stdout.index('step 0:')]
    assert [line for line in start_up.splitlines() if line.startswith('warning: ')] == dry_warnings
    events = read_events(tmp_path / 'out')
    ops = [(e['iter'], e['name']) for e in events if e['event'] == 'op']
    assert ops == [(int(at), name) for name, at in fires if at]  # the plan's iters, set_lr never
    assert ops == [(10, 'msg_widen_mlp'), (50, 'stack_layers'), (50, 'reset_lr_schedule')]
    final = [e for e in events if e['event'] == 'eval'][-1]
    assert final['iter'] == 80 and f"{final['lr']:.2e}" == '2.69e-04'


def test_slope_trigger_too_late_never_runs(settings, monkeypatch):
    """The slope is first measured trigger_slope_evals (3) evals after the previous op: iter 30, after max_iters 20."""
    monkeypatch.setattr(train, 'max_iters', 20)
    monkeypatch.setattr(train, 'trigger_slope_evals', 3)
    plan = train.validate_schedule('s.yaml', [dict(entry('change_lr', 0.5, max_wait_iters=1000), trigger_slope=-0.1)],
                                   0, TINY)
    assert warnings(plan) == [
        "s.yaml: entry 0 (change_lr) never runs: it can fire at iter 30 at the earliest (the slope trigger's first "
        "eval, 30 iters after the previous op at iter 0), after max_iters 20"]
