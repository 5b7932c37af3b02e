"""The orchestrator driven by a scripted val-loss sequence: no model, no training.

Each test sets a small config on train's globals (restored afterwards), gives the orchestrator a
schedule with train.reset_orchestrator(entries) and calls train.run_orchestrator(iter_num, val_loss)
as main() does at every eval step. Only hyperparameter operations, so train.model stays None.
"""

import json
import math
import os
import sys
from functools import partial

import pytest

# tests/ holds helpers: pytest.ini puts it on the path for pytest, this line for `python test_manual.py`
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'tests'))
import helpers
import train
from model import GPT, GPTConfig

BASE = dict(learning_rate=1e-3, min_lr=1e-4, decay_lr=True, lr_schedule='cosine', cooldown_iters=0,
            warmup_iters=100, lr_decay_iters=2000,
            batch_size=12, gradient_accumulation_steps=4, eval_interval=250, eval_iters=20,
            growth_lr_rewarm_iters=0, trigger_slope_evals=3, master_process=True, ddp_world_size=1, model=None)


@pytest.fixture(autouse=True)
def config():
    """Set BASE on train's globals, with a fresh orchestrator; put everything back afterwards."""
    names = set(BASE) | set(train.config_keys)
    saved = {name: getattr(train, name) for name in names}
    saved_state = train.orchestrator_state()
    for name, value in BASE.items():
        setattr(train, name, value)
    train.reset_orchestrator([])
    yield
    for name, value in saved.items():
        setattr(train, name, value)
    train.load_orchestrator_state(saved_state)


# entries that never time out unless told to
entry = partial(helpers.entry, max_wait_iters=10**6)


def run(iter_num, val_loss, reevaluate=None):
    """One eval step; returns (val loss the orchestrator hands back, op events it logged)."""
    events = []
    val_loss = train.run_orchestrator(iter_num, val_loss, reevaluate=reevaluate, on_growth=None,
                                      log_event=events.append)
    return val_loss, events


def fired(events):
    return [(e['name'], e['reason']) for e in events]


def cosine(lr_max, lr_min, t, warmup, decay):
    """The lr formula written out by hand: linear warmup over warmup+1 steps, then cosine to lr_min."""
    if t < warmup:
        return lr_max * (t + 1) / (warmup + 1)
    if t > decay:
        return lr_min
    return lr_min + 0.5 * (1.0 + math.cos(math.pi * (t - warmup) / (decay - warmup))) * (lr_max - lr_min)


# -----------------------------------------------------------------------------
# triggers

def test_loss_trigger_is_strict():
    train.reset_orchestrator([entry('change_lr', 0.5, trigger_loss=2.0)])
    assert run(250, 2.0) == (2.0, [])  # equal is not below
    assert train.orch.multipliers.get('lr', 1.0) == 1.0 and len(train.orch.schedule) == 1
    val_loss, events = run(500, 1.9999)
    assert val_loss == 1.9999
    assert events == [dict(event='op', iter=500, name='change_lr', value=0.5, reason='loss',
                           val_loss_before=1.9999, val_loss_after=None, index=0, changes={},
                           optimizer_policy=None)]
    assert train.orch.multipliers['lr'] == 0.5
    assert train.orch.schedule == [] and train.orch.schedule_position == 1 and train.orch.iter_of_last_op == 500
    assert train.orch.executed_ops == [dict(entry('change_lr', 0.5, trigger_loss=2.0), index=0, iter=500, reason='loss')]


def test_timeout_counts_from_the_previous_op():
    train.reset_orchestrator([entry('change_lr', 0.5, max_wait_iters=300),
                              entry('change_batch_size', 2.0, max_wait_iters=300)])
    assert run(0, 4.0)[1] == [] and run(250, 3.0)[1] == []
    _, events = run(300, 2.9)  # 300 - 0 >= 300
    assert fired(events) == [('change_lr', 'timeout')]
    assert train.orch.iter_of_last_op == 300
    # the second entry waits 300 iters from the first op, not from the start of the run
    assert run(400, 2.8)[1] == [] and run(599, 2.7)[1] == []
    _, events = run(600, 2.6)
    assert fired(events) == [('change_batch_size', 'timeout')]
    assert [(op['name'], op['iter'], op['reason']) for op in train.orch.executed_ops] == [
        ('change_lr', 300, 'timeout'), ('change_batch_size', 600, 'timeout')]
    assert train.orch.iter_of_last_op == 600 and train.orch.schedule_position == 2


def test_loss_trigger_wins_over_timeout_as_the_reason():
    train.reset_orchestrator([entry('change_lr', 0.5, trigger_loss=3.0, max_wait_iters=0)])
    assert fired(run(0, 2.5)[1]) == [('change_lr', 'loss')]


def test_max_wait_zero_fires_at_once():
    train.reset_orchestrator([entry('change_eval_iters', 2.0, max_wait_iters=0)])
    _, events = run(0, 10.0)
    assert fired(events) == [('change_eval_iters', 'timeout')]
    assert train.effective_eval_iters() == 40


def test_back_to_back_in_one_eval_step():
    train.reset_orchestrator([entry('change_lr', 0.5, trigger_loss=3.0),
                              entry('change_batch_size', 2.0, max_wait_iters=0),
                              entry('change_eval_interval', 0.5, trigger_loss=2.5),
                              entry('change_eval_iters', 2.0, trigger_loss=2.0)])
    val_loss, events = run(750, 2.4)
    assert val_loss == 2.4
    assert fired(events) == [('change_lr', 'loss'), ('change_batch_size', 'timeout'),
                             ('change_eval_interval', 'loss')]
    assert [e['index'] for e in events] == [0, 1, 2]
    assert all(e['iter'] == 750 and e['val_loss_before'] == 2.4 for e in events)
    assert train.orch.schedule == [entry('change_eval_iters', 2.0, trigger_loss=2.0)]
    assert train.orch.schedule_position == 3 and train.orch.iter_of_last_op == 750
    assert (train.orch.multipliers['lr'], train.effective_batch_size(), train.effective_eval_interval()) == (0.5, 24, 125)
    assert train.effective_eval_iters() == 20


def test_an_entry_that_does_not_fire_blocks_the_later_ones():
    train.reset_orchestrator([entry('change_lr', 0.5, trigger_loss=1.0, max_wait_iters=1000),
                              entry('change_batch_size', 2.0, trigger_loss=100.0, max_wait_iters=0)])
    for it in (0, 250, 500, 750):
        assert run(it, 2.0)[1] == []  # the second entry would fire, but the first holds it back
    assert train.effective_batch_size() == 12 and train.orch.schedule_position == 0
    _, events = run(1000, 2.0)
    assert fired(events) == [('change_lr', 'timeout'), ('change_batch_size', 'loss')]


def test_empty_schedule_does_nothing():
    assert run(0, 1.0) == (1.0, [])
    assert train.orch.executed_ops == [] and train.orch.schedule_position == 0


# -----------------------------------------------------------------------------
# the slope trigger: d ln(val loss) / d ln(flops) over the last trigger_slope_evals evals since the op

def eval_step(iter_num, flops, val_loss):
    """What main() does at an eval on the grid: remember the eval, then run the orchestrator."""
    train.record_eval(flops, val_loss)
    return run(iter_num, val_loss)[1]


def power_law(flops, exponent):
    return 3.0 * flops ** exponent


def test_slope_is_the_power_law_exponent():
    for flops in (1e9, 2e9, 4e9):
        train.record_eval(flops, power_law(flops, -0.1))
    assert train.loss_slope() == pytest.approx(-0.1, rel=1e-9)
    train.record_eval(8e9, power_law(4e9, -0.1))  # flat from 4e9 to 8e9: the fit over the last 3 is flatter
    # x = ln 2, ln 4, ln 8 (less ln 1e9); y = -0.1 ln 2, -0.1 ln 4, -0.1 ln 4; least squares by hand
    xs = [math.log(2e9), math.log(4e9), math.log(8e9)]
    ys = [math.log(power_law(2e9, -0.1)), math.log(power_law(4e9, -0.1)), math.log(power_law(4e9, -0.1))]
    mx, my = sum(xs) / 3, sum(ys) / 3
    by_hand = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    assert by_hand == pytest.approx(-0.05, rel=1e-9)
    assert train.loss_slope() == pytest.approx(by_hand, rel=1e-12)


def test_slope_fires_when_the_loss_flattens():
    train.reset_orchestrator([entry('change_lr', 0.5, max_wait_iters=10**6) | dict(trigger_slope=-0.03)])
    assert eval_step(0, 0.0, 4.2) == []  # flops 0: no point on a log scale
    losses = [power_law(f, -0.1) for f in (1e9, 2e9, 3e9)] + [power_law(3e9, -0.1) * 0.99, power_law(3e9, -0.1) * 0.985]
    for k, val_loss in enumerate(losses[:4]):
        assert eval_step(250 * (k + 1), 1e9 * (k + 1), val_loss) == []  # slopes -0.1, then about -0.06
    events = eval_step(1250, 5e9, losses[4])
    assert fired(events) == [('change_lr', 'slope')]
    assert train.orch.evals_since_op == [] and train.orch.iter_of_last_op == 1250
    assert train.orch.executed_ops[0]['trigger_slope'] == -0.03 and train.orch.executed_ops[0]['reason'] == 'slope'


def test_a_huge_negative_threshold_fires_as_soon_as_the_slope_can_be_measured():
    train.reset_orchestrator([entry('change_lr', 0.5) | dict(trigger_slope=-1e9),
                              entry('change_batch_size', 2.0) | dict(trigger_slope=-1e9)])
    assert eval_step(250, 1e9, 3.0) == [] and eval_step(500, 2e9, 2.9) == []  # two evals: not yet
    assert fired(eval_step(750, 3e9, 2.8)) == [('change_lr', 'slope')]
    # the next entry counts its evals from this op on: the three before it do not count
    assert eval_step(1000, 4e9, 2.7) == [] and eval_step(1250, 5e9, 2.6) == []
    assert fired(eval_step(1500, 6e9, 2.5)) == [('change_batch_size', 'slope')]


def test_a_huge_positive_threshold_never_fires_but_timeout_and_loss_still_do():
    train.reset_orchestrator([entry('change_lr', 0.5, max_wait_iters=1000) | dict(trigger_slope=1e9),
                              entry('change_batch_size', 2.0, trigger_loss=2.0) | dict(trigger_slope=1e9)])
    for k in range(1, 4):
        assert eval_step(250 * k, 1e9 * k, 3.0) == []  # a flat loss: slope 0, not above 1e9
    assert fired(eval_step(1000, 4e9, 3.0)) == [('change_lr', 'timeout')]
    for k in range(5, 8):
        assert eval_step(250 * k, 1e9 * k, 2.5 + 0.1 * k) == []  # rising loss, positive slope, still below 1e9
    assert fired(eval_step(2000, 8e9, 1.9)) == [('change_batch_size', 'loss')]


def test_slope_history_is_orchestrator_state():
    train.reset_orchestrator([entry('change_lr', 0.5) | dict(trigger_slope=-0.05)])
    train.record_eval(1e9, 3.0)
    train.record_eval(2e9, 2.99)
    state = train.orchestrator_state()
    assert state['evals_since_op'] == [[1e9, 3.0], [2e9, 2.99]]
    train.reset_orchestrator([])
    train.load_orchestrator_state(state)
    assert fired(eval_step(750, 3e9, 2.985)) == [('change_lr', 'slope')]  # about -0.005: flatter than -0.05


# -----------------------------------------------------------------------------
# reevaluate

def test_reevaluated_loss_is_used_for_the_next_entry():
    calls = []

    def reevaluate():
        calls.append(True)
        return [1.5, 1.2][len(calls) - 1]

    train.reset_orchestrator([entry('change_lr', 0.5, trigger_loss=3.0, reevaluate=True),
                              entry('change_batch_size', 2.0, trigger_loss=1.6, reevaluate=True),
                              entry('change_grad_accum', 2.0, trigger_loss=1.3),
                              entry('change_eval_iters', 2.0, trigger_loss=1.19)])
    val_loss, events = run(500, 2.0, reevaluate)
    # 2.0 < 3.0 fires entry 0; its reevaluation 1.5 < 1.6 fires entry 1; 1.2 < 1.3 fires entry 2;
    # 1.2 is not below 1.19, so entry 3 waits
    assert fired(events) == [('change_lr', 'loss'), ('change_batch_size', 'loss'), ('change_grad_accum', 'loss')]
    assert [(e['val_loss_before'], e['val_loss_after']) for e in events] == [(2.0, 1.5), (1.5, 1.2), (1.2, None)]
    assert len(calls) == 2  # no reevaluation for an entry with reevaluate false
    assert val_loss == 1.2  # what the caller uses (e.g. for best_val_loss) is the model's current loss
    assert train.orch.schedule_position == 3


def test_reevaluate_without_a_callback_gives_null():
    train.reset_orchestrator([entry('change_lr', 0.5, trigger_loss=3.0, reevaluate=True),
                              entry('change_batch_size', 2.0, trigger_loss=1.6)])
    val_loss, events = run(500, 2.0)
    assert fired(events) == [('change_lr', 'loss')]
    assert events[0]['val_loss_after'] is None
    assert val_loss == 2.0


# -----------------------------------------------------------------------------
# the effective values after each operation

def fire_now(*entries, iter_num=0):
    """Run these entries in one eval step (all with max_wait_iters 0), after the ops already run."""
    train.orch.schedule.extend(entry(name, value, max_wait_iters=0) for name, value in entries)
    _, events = run(iter_num, 5.0)
    assert len(events) == len(entries)


def test_lr_schedule_by_hand():
    assert train.get_lr(0) == pytest.approx(1e-3 * 1 / 101, rel=1e-12)
    assert train.get_lr(50) == pytest.approx(1e-3 * 51 / 101, rel=1e-12)
    assert train.get_lr(100) == pytest.approx(1e-3, rel=1e-12)
    assert train.get_lr(1050) == pytest.approx(1e-4 + 0.5 * 9e-4, rel=1e-12)  # half way: cos(pi/2) = 0
    assert train.get_lr(2000) == pytest.approx(1e-4, rel=1e-12)
    assert train.get_lr(2001) == 1e-4
    for it in (0, 99, 100, 101, 700, 1999, 3000):
        assert train.get_lr(it) == pytest.approx(cosine(1e-3, 1e-4, it, 100, 2000), rel=1e-12)


def test_decay_lr_off_gives_a_constant_lr():
    train.decay_lr = False
    fire_now(('change_lr', 0.25))
    assert train.get_lr(0) == train.get_lr(1500) == pytest.approx(2.5e-4, rel=1e-12)


def test_change_lr_scales_lr_and_min_lr():
    fire_now(('change_lr', 0.5), iter_num=300)
    assert train.get_lr(1050) == pytest.approx(5e-5 + 0.5 * 4.5e-4, rel=1e-12)  # 2.75e-4
    assert train.get_lr(2500) == pytest.approx(5e-5, rel=1e-12)
    fire_now(('change_lr', 3.0), iter_num=300)  # factors compound
    assert train.orch.multipliers['lr'] == pytest.approx(1.5, rel=1e-12)
    assert train.get_lr(100) == pytest.approx(1.5e-3, rel=1e-12)


def test_set_lr_is_absolute():
    fire_now(('change_lr', 4.0), ('set_lr', 5e-4))
    assert (train.orch.multipliers['lr'], train.orch.set_values) == (1.0, {'lr': [5e-4, pytest.approx(5e-5, rel=1e-12)]})
    assert train.get_lr(100) == pytest.approx(5e-4, rel=1e-12)
    assert train.get_lr(5000) == pytest.approx(5e-5, rel=1e-12)  # min_lr keeps its ratio to lr
    fire_now(('change_lr', 0.5))  # a factor after a set_ scales the value set
    assert train.get_lr(100) == pytest.approx(2.5e-4, rel=1e-12)


def test_set_ops_stay_absolute_after_a_resume_with_other_config_values():
    """A set_ op's value is kept in the orchestrator state: a run resumed (the state through JSON, as
    in a checkpoint) with another learning_rate, batch_size, ... keeps what was set. set_ ops once
    stored a ratio to the config value, and a resume with --learning_rate=2e-3 turned set_lr 5e-4 into 1e-3."""
    fire_now(('set_lr', 5e-4), ('set_batch_size', 30), ('set_grad_accum', 8), ('set_warmup_iters', 50),
             ('set_eval_iters', 7), ('set_eval_interval', 100), ('change_eval_iters', 2.0))

    def effective():
        return (train.get_lr(49), train.get_lr(5000), train.effective_batch_size(), train.effective_grad_accum(),
                train.effective_warmup_iters(), train.effective_lr_decay_iters(), train.effective_eval_iters(),
                train.effective_eval_interval())
    assert effective() == pytest.approx((5e-4 * 50 / 51, 5e-5, 30, 8, 50, 1000, 14, 100), rel=1e-12)
    state = json.loads(json.dumps(train.orchestrator_state()))
    for name, value in dict(learning_rate=2e-3, min_lr=3e-4, batch_size=5, gradient_accumulation_steps=3,
                            warmup_iters=10, lr_decay_iters=700, eval_iters=3, eval_interval=40).items():
        setattr(train, name, value)  # the config fixture puts them back
    train.reset_orchestrator()
    train.load_orchestrator_state(state)
    assert effective() == pytest.approx((5e-4 * 50 / 51, 5e-5, 30, 8, 50, 1000, 14, 100), rel=1e-12)
    fire_now(('change_lr', 0.5), ('change_batch_size', 2.0), ('set_eval_iters', 4))
    assert effective() == pytest.approx((2.5e-4 * 50 / 51, 2.5e-5, 60, 8, 50, 1000, 4, 100), rel=1e-12)


def test_reset_lr_schedule_restarts_warmup_and_decay_at_the_op():
    train.reset_orchestrator([entry('reset_lr_schedule', None, trigger_loss=2.0)])
    run(750, 2.5)
    assert train.orch.lr_schedule_offset == 0
    run(1000, 1.9)
    assert train.orch.lr_schedule_offset == 1000
    assert train.get_lr(1000) == pytest.approx(1e-3 / 101, rel=1e-12)  # warmup again, from its first step
    assert train.get_lr(1050) == pytest.approx(1e-3 * 51 / 101, rel=1e-12)
    assert train.get_lr(1100) == pytest.approx(1e-3, rel=1e-12)
    assert train.get_lr(2050) == pytest.approx(5.5e-4, rel=1e-12)
    assert train.get_lr(3000) == pytest.approx(1e-4, rel=1e-12)
    assert train.get_lr(3001) == 1e-4
    for it in (1000, 1500, 2999):
        assert train.get_lr(it) == pytest.approx(cosine(1e-3, 1e-4, it - 1000, 100, 2000), rel=1e-12)


def test_change_warmup_iters_scales_warmup_and_decay():
    fire_now(('change_warmup_iters', 2.0))
    assert (train.effective_warmup_iters(), train.effective_lr_decay_iters()) == (200, 4000)
    assert train.get_lr(99) == pytest.approx(1e-3 * 100 / 201, rel=1e-12)
    assert train.get_lr(200) == pytest.approx(1e-3, rel=1e-12)
    assert train.get_lr(2100) == pytest.approx(5.5e-4, rel=1e-12)  # (2100 - 200) / (4000 - 200) = 0.5
    assert train.get_lr(4001) == 1e-4


def test_set_warmup_iters_is_absolute_and_scales_decay_too():
    fire_now(('change_warmup_iters', 3.0), ('set_warmup_iters', 50))
    assert (train.effective_warmup_iters(), train.effective_lr_decay_iters()) == (50, 1000)
    assert train.get_lr(525) == pytest.approx(5.5e-4, rel=1e-12)
    for it in (0, 49, 50, 300, 999, 1001):
        assert train.get_lr(it) == pytest.approx(cosine(1e-3, 1e-4, it, 50, 1000), rel=1e-12)


def test_warmup_and_reset_and_lr_together():
    fire_now(('change_lr', 2.0), ('change_warmup_iters', 0.5), ('reset_lr_schedule', None), iter_num=400)
    assert (train.effective_warmup_iters(), train.effective_lr_decay_iters()) == (50, 1000)
    for it in (400, 425, 450, 900, 1400, 1401):
        assert train.get_lr(it) == pytest.approx(cosine(2e-3, 2e-4, it - 400, 50, 1000), rel=1e-12)


def wsd(lr_max, lr_min, t, warmup, decay, cooldown):
    """WSD written out by hand: the same warmup, lr_max until decay - cooldown, then 1 - sqrt to lr_min."""
    if t < warmup:
        return lr_max * (t + 1) / (warmup + 1)
    if t > decay:
        return lr_min
    start = decay - cooldown
    if t <= start:
        return lr_max
    return lr_min + (1 - math.sqrt((t - start) / cooldown)) * (lr_max - lr_min)


def test_wsd_warmup_stable_then_sqrt_cooldown():
    train.lr_schedule, train.cooldown_iters = 'wsd', 500
    assert train.get_lr(0) == pytest.approx(1e-3 / 101, rel=1e-12)  # the same warmup as cosine
    assert train.get_lr(100) == train.get_lr(1000) == train.get_lr(1500) == 1e-3  # stable at the peak
    assert train.get_lr(1625) == pytest.approx(1e-4 + 0.5 * 9e-4, rel=1e-12)  # a quarter in: 1 - sqrt(1/4)
    assert train.get_lr(2000) == pytest.approx(1e-4, rel=1e-12)
    assert train.get_lr(2001) == 1e-4
    for it in (0, 99, 100, 1499, 1500, 1501, 1900, 1999, 2500):
        assert train.get_lr(it) == pytest.approx(wsd(1e-3, 1e-4, it, 100, 2000, 500), rel=1e-12)


def test_wsd_default_cooldown_is_a_fifth_of_lr_decay_iters():
    train.lr_schedule = 'wsd'
    assert train.effective_cooldown_iters() == 400
    assert train.get_lr(1600) == 1e-3 and train.get_lr(1601) < 1e-3
    assert train.get_lr(1700) == pytest.approx(wsd(1e-3, 1e-4, 1700, 100, 2000, 400), rel=1e-12)


def test_wsd_under_warmup_reset_lr_and_growth_rewarm():
    """change_warmup_iters stretches the whole schedule (warmup, cooldown, decay end); reset_lr_schedule
    restarts it at the op (warmup, stable, cooldown ending lr_decay_iters later); change_lr scales
    peak and floor; a growth re-warmup multiplies whatever the schedule gives."""
    train.lr_schedule, train.cooldown_iters = 'wsd', 500
    fire_now(('change_lr', 2.0), ('change_warmup_iters', 0.5), ('reset_lr_schedule', None), iter_num=400)
    assert (train.effective_warmup_iters(), train.effective_cooldown_iters(),
            train.effective_lr_decay_iters()) == (50, 250, 1000)
    for it in (400, 449, 450, 1150, 1151, 1300, 1400, 1401):
        assert train.get_lr(it) == pytest.approx(wsd(2e-3, 2e-4, it - 400, 50, 1000, 250), rel=1e-12)
    assert train.get_lr(1000) == 2e-3  # stable phase: the peak
    train.growth_lr_rewarm_iters, train.orch.iter_of_last_growth = 99, 1000
    assert train.get_lr(1000) == pytest.approx(2e-3 / 100, rel=1e-12)
    assert train.get_lr(1049) == pytest.approx(2e-3 * 50 / 100, rel=1e-12)
    assert train.get_lr(1099) == 2e-3


def test_wsd_cooldown_appears_in_op_changes():
    train.lr_schedule, train.cooldown_iters = 'wsd', 500
    train.reset_orchestrator([entry('change_warmup_iters', 2.0, max_wait_iters=0)])
    train.model = GPT(GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=1, n_embd=8))
    _, events = run(0, 5.0)
    assert events[0]['changes'] == {'warmup_iters': [100, 200], 'lr_decay_iters': [2000, 4000],
                                    'cooldown_iters': [500, 1000]}


def test_batch_size_rounds():
    fire_now(('change_batch_size', 0.75))
    assert train.effective_batch_size() == 9
    fire_now(('change_batch_size', 0.5))  # 12 * 0.375 = 4.5 -> 4 (round half to even)
    assert train.effective_batch_size() == 4
    fire_now(('set_batch_size', 32))
    assert train.effective_batch_size() == 32
    fire_now(('change_batch_size', 0.5))
    assert train.effective_batch_size() == 16


def test_grad_accum_rounds_and_stays_a_multiple_of_the_world_size():
    fire_now(('change_grad_accum', 1.5))
    assert train.effective_grad_accum() == 6
    fire_now(('change_grad_accum', 0.1))  # 4 * 0.15 = 0.6 -> 1
    assert train.effective_grad_accum() == 1
    fire_now(('set_grad_accum', 7))
    assert train.effective_grad_accum() == 7
    train.ddp_world_size = 4  # restored by the fixture
    assert train.effective_grad_accum() == 8  # 7 / 4 = 1.75 -> 2 steps per rank
    fire_now(('set_grad_accum', 5))
    assert train.effective_grad_accum() == 4  # 1.25 -> 1 step per rank
    fire_now(('change_grad_accum', 0.1))
    assert train.effective_grad_accum() == 4  # never below one step per rank
    fire_now(('set_grad_accum', 14))
    assert train.effective_grad_accum() == 16  # 3.5 -> 4
    train.ddp_world_size = 2
    assert train.effective_grad_accum() == 14


def test_eval_interval_and_eval_iters():
    fire_now(('change_eval_interval', 0.5), ('change_eval_iters', 1.5))
    assert (train.effective_eval_interval(), train.effective_eval_iters()) == (125, 30)
    fire_now(('set_eval_interval', 100), ('set_eval_iters', 7))
    assert (train.effective_eval_interval(), train.effective_eval_iters()) == (100, 7)
    fire_now(('change_eval_interval', 0.33), ('change_eval_iters', 3.0))
    assert (train.effective_eval_interval(), train.effective_eval_iters()) == (33, 21)
    # nothing else moved
    assert (train.effective_batch_size(), train.effective_grad_accum(), train.get_lr(100)) == (12, 4, 1e-3)


def test_each_op_changes_only_its_own_setting():
    def settings():
        return dict(lr=train.get_lr(1050), batch_size=train.effective_batch_size(),
                    grad_accum=train.effective_grad_accum(), warmup=train.effective_warmup_iters(),
                    decay=train.effective_lr_decay_iters(), eval_iters=train.effective_eval_iters(),
                    eval_interval=train.effective_eval_interval(), seq_len=train.effective('seq_len'))

    base = settings()
    expected = {'change_lr': dict(lr=2 * 5.5e-4), 'set_lr': dict(lr=5.5e-3), 'change_batch_size': dict(batch_size=24),
                'set_batch_size': dict(batch_size=5), 'change_grad_accum': dict(grad_accum=8),
                'set_grad_accum': dict(grad_accum=3),
                'change_warmup_iters': dict(warmup=200, decay=4000, lr=cosine(1e-3, 1e-4, 1050, 200, 4000)),
                'set_warmup_iters': dict(warmup=5, decay=100, lr=1e-4),
                'change_eval_iters': dict(eval_iters=40), 'set_eval_iters': dict(eval_iters=3),
                'change_eval_interval': dict(eval_interval=500), 'set_eval_interval': dict(eval_interval=10),
                'change_seq_len': dict(seq_len=train.block_size // 2), 'set_seq_len': dict(seq_len=7)}
    values = {'set_lr': 1e-2, 'set_batch_size': 5, 'set_grad_accum': 3, 'set_warmup_iters': 5, 'set_eval_iters': 3,
              'set_eval_interval': 10, 'change_seq_len': 0.5, 'set_seq_len': 7}
    for name, changed in expected.items():
        fire_now((name, values.get(name, 2.0)))
        assert settings() == pytest.approx({**base, **changed}, rel=1e-12), name
        train.reset_orchestrator([])
    # every hyperparameter operation is covered here or (reset_lr_schedule) above
    assert sorted([*expected, 'reset_lr_schedule']) == sorted(
        name for name, op in train.OPERATIONS.items() if not (op.rebuilds_optimizer or op.rewraps))


# -----------------------------------------------------------------------------
# the record of what ran, the log block, and the state a checkpoint keeps

def test_executed_ops_and_schedule_position():
    entries = [entry('change_lr', 0.5, trigger_loss=3.0), entry('set_batch_size', 24, max_wait_iters=500),
               entry('reset_lr_schedule', None, max_wait_iters=0, reevaluate=True),
               entry('change_eval_iters', 2.0, trigger_loss=1.0)]
    train.reset_orchestrator(entries)
    run(0, 3.5)
    run(250, 2.9)
    assert train.orch.schedule_position == 1 and train.orch.schedule == entries[1:]
    run(500, 2.8)
    run(750, 2.7, reevaluate=lambda: 2.6)
    assert train.orch.executed_ops == [dict(entries[0], index=0, iter=250, reason='loss'),
                                  dict(entries[1], index=1, iter=750, reason='timeout'),
                                  dict(entries[2], index=2, iter=750, reason='timeout')]
    assert train.orch.schedule == entries[3:] and train.orch.schedule_position == 3
    assert train.orch.lr_schedule_offset == 750 and train.orch.iter_of_last_op == 750
    assert entries[0] == entry('change_lr', 0.5, trigger_loss=3.0)  # the caller's entries are not changed


def test_log_block(capsys):
    train.reset_orchestrator([entry('change_lr', 0.5, trigger_loss=2.5),
                              entry('change_batch_size', 2.0, max_wait_iters=250)])
    run(250, 2.25)
    out = capsys.readouterr().out.splitlines()
    assert out == ["=== SCALING OPERATION TRIGGERED ===",
                   "Operation: change_lr (entry 0), value 0.5",
                   "Trigger reason: loss. Current val loss 2.2500 < trigger loss 2.5",
                   "=== SCALING OPERATION COMPLETE ==="]
    run(500, 2.375)
    out = capsys.readouterr().out.splitlines()
    assert out == ["=== SCALING OPERATION TRIGGERED ===",
                   "Operation: change_batch_size (entry 1), value 2.0",
                   "Trigger reason: timeout. Waited 250 iters (max_wait_iters 250), current val loss 2.3750",
                   "=== SCALING OPERATION COMPLETE ==="]


def test_only_rank_zero_prints(capsys):
    train.master_process = False
    train.reset_orchestrator([entry('change_lr', 0.5, max_wait_iters=0)])
    _, events = run(0, 2.0)
    assert fired(events) == [('change_lr', 'timeout')] and train.orch.multipliers['lr'] == 0.5
    assert capsys.readouterr().out == ''


def test_orchestrator_state_round_trip():
    entries = [entry('change_lr', 0.5, trigger_loss=3.0), entry('change_warmup_iters', 2.0, max_wait_iters=0),
               entry('reset_lr_schedule', None, max_wait_iters=0), entry('set_batch_size', 30, max_wait_iters=500),
               entry('change_eval_interval', 0.5, max_wait_iters=0), entry('change_grad_accum', 2.0, trigger_loss=1.0)]
    train.reset_orchestrator(entries)
    run(500, 2.9)
    state = train.orchestrator_state()
    assert json.loads(json.dumps(state)) == state  # plain types: a checkpoint loads it with weights_only=True
    assert state['schedule'] == entries[3:] and state['schedule_position'] == 3
    assert (state['multipliers']['lr'], state['multipliers']['warmup_iters'], state['lr_schedule_offset']) == (0.5, 2.0, 500)
    state['schedule'].clear()
    assert train.orch.schedule == entries[3:]  # the state is a copy

    def finish():
        log = [run(it, 2.5)[1] for it in (750, 1000, 1250)]
        return log, train.orchestrator_state(), [train.get_lr(it) for it in (500, 700, 1300, 5000)], (
            train.effective_batch_size(), train.effective_grad_accum(), train.effective_eval_interval())

    saved = train.orchestrator_state()
    uninterrupted = finish()
    train.reset_orchestrator([entry('set_lr', 1.0, max_wait_iters=0)])
    run(0, 9.0)
    train.load_orchestrator_state(saved)
    assert train.orchestrator_state() == saved
    resumed = finish()
    assert resumed == uninterrupted
    log, final, _, effective = resumed
    assert [fired(events) for events in log] == [
        [], [('set_batch_size', 'timeout'), ('change_eval_interval', 'timeout')], []]
    assert effective == (30, 4, 125) and final['schedule_position'] == 5


def test_load_orchestrator_state_sets_every_key():
    """load_orchestrator_state sets every variable that orchestrator_state saves: a marker per key comes back."""
    state = {key: f'<{key}>' for key in train.ORCHESTRATOR_KEYS}
    train.load_orchestrator_state(state)
    assert train.orchestrator_state() == state


if __name__ == '__main__':  # python test_manual.py [pytest options]
    sys.exit(pytest.main([__file__, '-q'] + sys.argv[1:]))
