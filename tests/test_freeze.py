"""
freeze / unfreeze (issue 22 item 1):
- component patterns (wte, wpe, ln_f, h.3, h.-1, h.0-3, h.*, with .attn / .mlp / .ln_1 / .ln_2) resolved against
  the depth at that point of the schedule, one resolver for the op and the plan;
- a frozen parameter does not change, bit for bit, while frozen (weight decay included), nor does its
  optimizer state (AdamW's moments and step, Muon's momentum); unfrozen, it resumes from the state kept;
- the frozen set goes through growth lineage (a stacked copy of a frozen layer is frozen, a widened frozen
  matrix stays frozen, a fresh layer is not), lives in the checkpoint, and a resume is exact;
- FLOPs per token: 4 instead of 6 for a frozen matrix (no weight gradient), exactly;
- refused before step 0, one line: a pattern matching nothing at that point, nothing left to train,
  unfreezing a weight under a LoRA adapter, a bad pattern, fresh values put into a frozen tensor;
- not growth: no lr re-warmup, no wait for an MSG ramp; under 2-rank DDP (gloo) the ranks stay identical.
"""

import contextlib
import io
import shutil
import tempfile

import pytest
import torch

import train
from helpers import (assert_same_state, describe_run, read_events, run_train, trained_runs, without_elapsed,
                     write_char_data)
from model import GPT, GPTConfig, component_modules


def tiny(**overrides):
    return GPT(GPTConfig(**dict(dict(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=65, bias=True),
                                **overrides)))


# -----------------------------------------------------------------------------
# patterns

@pytest.mark.parametrize('pattern, modules', [
    ('wte', ['transformer.wte']), ('ln_f', ['transformer.ln_f']),
    ('h.2', ['transformer.h.2']), ('h.-1', ['transformer.h.3']), ('h.-4', ['transformer.h.0']),
    ('h.1-2', ['transformer.h.1', 'transformer.h.2']),
    ('h.*', ['transformer.h.0', 'transformer.h.1', 'transformer.h.2', 'transformer.h.3']),
    ('h.0.attn', ['transformer.h.0.attn']), ('h.-1.ln_2', ['transformer.h.3.ln_2']),
    ('h.*.mlp', [f'transformer.h.{i}.mlp' for i in range(4)]),
])
def test_component_patterns(pattern, modules):
    assert component_modules(pattern, 4) == modules


@pytest.mark.parametrize('pattern, message', [
    ('h.4', "'h.4' matches nothing at this point: the model has 4 layers (h.0 to h.3), no layer 4"),
    ('h.-5', "'h.-5' matches nothing at this point: the model has 4 layers (h.0 to h.3), no layer -5"),
    ('h.2-5', "'h.2-5' reaches past the last layer at this point: the model has 4 layers (h.0 to h.3), no layer 4"),
    ('h.3-1', "'h.3-1': the range 3-1 is empty (write the lower layer first)"),
    ('h.0.ffn', "expected a component (wte, wpe, ln_f, or h.3, h.-1, h.0-3, h.* optionally followed by .attn, "
                ".mlp, .ln_1 or .ln_2), got 'h.0.ffn'"),
    (3, "expected a component (wte, wpe, ln_f, or h.3, h.-1, h.0-3, h.* optionally followed by .attn, "
        ".mlp, .ln_1 or .ln_2), got 3"),
])
def test_bad_component_patterns(pattern, message):
    with pytest.raises(ValueError) as e:
        component_modules(pattern, 4)
    assert str(e.value) == message


def test_rope_model_has_no_wpe():
    with pytest.raises(ValueError) as e:
        tiny(pos_emb='rope').component_parameters('wpe')
    assert str(e.value) == "'wpe' matches nothing: the model has no wpe (pos_emb 'rope')"


# -----------------------------------------------------------------------------
# the model's frozen set: requires_grad, lineage, FLOPs

def frozen_names(model):
    return [name for name, p in model.named_parameters() if not p.requires_grad]


def test_freezing_sets_requires_grad_and_describes_itself():
    model = tiny()
    model.set_frozen(model.component_parameters('wte') + model.component_parameters('h.1.mlp'))
    assert frozen_names(model) == model.config.frozen == [
        'transformer.wte.weight', 'transformer.h.1.mlp.c_fc.weight', 'transformer.h.1.mlp.c_fc.bias',
        'transformer.h.1.mlp.c_proj.weight', 'transformer.h.1.mlp.c_proj.bias']
    assert model.frozen_components() == ['wte', 'h.1.mlp']
    model.set_frozen(model.config.frozen + model.component_parameters('h.*'))
    assert model.frozen_components() == ['wte', 'h.0-1']
    model = tiny(n_layer=5)
    model.set_frozen(model.component_parameters('h.0') + model.component_parameters('h.2-3') + ['transformer.ln_f.bias']
                     + model.component_parameters('h.1.mlp') + model.component_parameters('ln_f'))
    assert model.frozen_components() == ['ln_f', 'h.0', 'h.2-3', 'h.1.mlp']
    model.set_frozen(model.config.frozen + ['transformer.h.4.ln_1.weight'])  # no op freezes less than a part
    assert model.frozen_components() == ['ln_f', 'h.0', 'h.2-3', 'h.1.mlp', 'h.4.ln_1.weight']


def test_flops_per_token_leave_out_weight_gradients_of_frozen_matrices():
    """Per layer 16 x 48 + 16 x 16 + 2 x 16 x 64 = 3072 matmul weights, the tied head 65 x 16 = 1040,
    attention 12 x 16 x 8 = 1536 per layer: 6 per trained weight, 4 per frozen one."""
    model = tiny()
    assert model.flops_per_token() == 6 * (2 * 3072 + 1040) + 2 * 1536 == 46176
    model.set_frozen(model.component_parameters('h.0'))
    assert model.flops_per_token() == 6 * (3072 + 1040) + 4 * 3072 + 2 * 1536 == 40032
    model.set_frozen(model.config.frozen + model.component_parameters('wte'))
    assert model.flops_per_token() == 6 * 3072 + 4 * (3072 + 1040) + 2 * 1536 == 37952
    assert model.flops_per_token(training=False) == 2 * (2 * 3072 + 1040) + 2 * 4 * 16 * 8 == 15392
    # layernorms and position embeddings are not matmuls: freezing them leaves the count
    model.set_frozen(model.config.frozen + model.component_parameters('ln_f') + model.component_parameters('wpe'))
    assert model.flops_per_token() == 37952


def test_stacked_copies_of_a_frozen_layer_are_frozen_fresh_layers_are_not():
    model = tiny()
    model.set_frozen(model.component_parameters('h.1'))
    model.stack_layers([0, 1, 1])
    assert model.frozen_components() == ['h.1-2']
    model.stack_layers([0, 1, 2, 1], torch.Generator().manual_seed(0), blend=True, init='random')
    assert model.frozen_components() == ['h.1-2']  # layer 3, fresh weights, trains
    model.widen_mlp(96, torch.Generator().manual_seed(0))
    assert model.frozen_components() == ['h.1-2']
    assert all(not p.requires_grad for p in model.transformer.h[2].parameters())


def test_frozen_weights_keep_their_adapter_frozen():
    """An adapter trains in its weight's place, and is frozen with it; a fresh adapter of a frozen weight too."""
    model = tiny(attn_lora_rank=2)
    model.set_frozen(model.component_parameters('h.0.attn'))
    a = model.transformer.h[0].attn.c_attn
    assert (a.weight.requires_grad, a.lora_A.requires_grad, a.lora_B.requires_grad) == (False, False, False)
    assert model.transformer.h[1].attn.c_attn.lora_A.requires_grad
    model.set_lora_rank('attn', 4, torch.Generator().manual_seed(0))
    assert not model.transformer.h[0].attn.c_attn.lora_A.requires_grad
    model.set_lora_rank('attn', 0, torch.Generator().manual_seed(0))  # merged: the frozen weight stays frozen
    assert not model.transformer.h[0].attn.c_attn.weight.requires_grad
    assert model.transformer.h[1].attn.c_attn.weight.requires_grad


def test_a_checkpoint_without_a_frozen_set_resumes_with_nothing_frozen():
    args = dict(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=65)
    assert GPTConfig(**args).frozen == []
    assert frozen_names(GPT(GPTConfig(**args, frozen=['transformer.h.0.ln_1.weight']))) == ['transformer.h.0.ln_1.weight']


# -----------------------------------------------------------------------------
# the ops in a run, in-process

@pytest.fixture
def run(tmp_path):
    """train set up as main() sets it up, for a 2-layer model on tiny data; put back afterwards."""
    names = list(train.config_keys) + ['model', 'optimizers', 'scaler', 'progress', 'master_process',
                                       'ddp_world_size', 'data_generator', 'eval_model', 'train_model',
                                       'flops_per_token', 'flops_per_forward']
    saved, state = {name: getattr(train, name) for name in names}, train.orchestrator_state()
    data = tmp_path / 'data'
    write_char_data(data, n_chars=20_000)

    def start(schedule, **settings):
        base = dict(device='cpu', compile=False, dtype='float32', n_layer=2, n_head=2, n_embd=16, head_size=0,
                    n_hidden=0, block_size=8, batch_size=2, gradient_accumulation_steps=1, eval_iters=1,
                    eval_interval=10, learning_rate=1e-2, min_lr=1e-3, warmup_iters=0, lr_decay_iters=100,
                    decay_lr=True, dropout=0.0, weight_decay=0.1, grad_clip=1.0, bias=True, seed=1337,
                    data_dir=str(data), out_dir=str(tmp_path / 'out'), master_process=True, ddp_world_size=1)
        for key, value in dict(base, **settings).items():
            setattr(train, key, value)
        with contextlib.redirect_stdout(io.StringIO()):
            train.setup_runtime()
            model_config = train.model_config_from_globals(train.check_data()['vocab_size'])
            train.reset_orchestrator(schedule)
            train.build_run(model_config, None)
    yield start
    for name, value in saved.items():
        setattr(train, name, value)
    train.load_orchestrator_state(state)


def steps(n):
    for _ in range(n):
        train.train_step(train.progress['iter_num'])
        train.progress['iter_num'] += 1


def fire_next():
    with contextlib.redirect_stdout(io.StringIO()):
        return train.execute_operation(train.orch.schedule[0], 'timeout', train.progress['iter_num'], 1.0,
                                       train.rebuild_after_growth, train.refresh_trainable)


def snapshot(names):
    params = dict(train.model.named_parameters())
    states = {train.optimizer_names[p]: s for p, s in train.optimizers.state.items()}
    return {name: (params[name].detach().clone(), {k: v.clone() for k, v in states[name].items()})
            for name in names}


def assert_snapshot_equal(a, b):
    assert sorted(a) == sorted(b)
    for name in a:
        assert torch.equal(a[name][0], b[name][0]), name
        assert sorted(a[name][1]) == sorted(b[name][1]), name
        for key in a[name][1]:
            assert torch.equal(a[name][1][key], b[name][1][key]), (name, key)


@pytest.mark.parametrize('optimizer', ['adamw', 'muon'])
def test_frozen_parameters_and_their_state_do_not_change_and_resume(run, optimizer):
    run([dict(name='freeze', value=['wte', 'h.0'], trigger_loss=0.0, max_wait_iters=0, reevaluate=False),
         dict(name='unfreeze', value='h.-2', trigger_loss=0.0, max_wait_iters=0, reevaluate=False)],
        optimizer=optimizer)
    steps(3)
    changes = fire_next()
    assert changes['frozen'] == [[], ['wte', 'h.0']]
    head = 16 * train.model.config.vocab_size  # the tied head
    after = 6 * 3072 + 4 * (3072 + head) + 2 * 1536  # see test_flops_per_token_leave_out_...
    assert changes['flops_per_token'] == [6 * (2 * 3072 + head) + 2 * 1536, after]
    assert train.step_flops(1000, 1) == 1000 * after  # the run's counter follows
    frozen = train.model.config.frozen
    kept, others = snapshot(frozen), snapshot([n for n, _ in train.model.named_parameters() if n not in frozen])
    keys = {key for _, state in kept.values() for key in state}
    assert keys == ({'exp_avg', 'exp_avg_sq', 'step', 'momentum_buffer'} if optimizer == 'muon' else
                    {'exp_avg', 'exp_avg_sq', 'step'})
    steps(3)
    assert_snapshot_equal(snapshot(frozen), kept)  # weight decay 0.1 and grad clipping included
    trained = snapshot(list(others))
    assert all(not torch.equal(trained[n][0], others[n][0]) for n in others if n.endswith('weight'))

    fire_next()  # unfreeze h.0 (h.-2 of 2 layers)
    h0 = [n for n in frozen if n.startswith('transformer.h.0.')]
    assert train.model.frozen_components() == ['wte']
    assert_snapshot_equal(snapshot(h0), {n: kept[n] for n in h0})  # the state kept, not a fresh one
    steps(1)
    after = snapshot(h0)
    for name in h0:
        assert not torch.equal(after[name][0], kept[name][0]), name
        if 'step' in kept[name][1]:  # AdamW's step count goes on from the one kept
            assert after[name][1]['step'].item() == kept[name][1]['step'].item() + 1 == 4, name


def test_growth_carries_the_frozen_set_and_the_plan_predicts_it(run):
    schedule = [dict(name=name, value=value, trigger_loss=0.0, max_wait_iters=0, reevaluate=False)
                for name, value in (('freeze', 'h.-1'), ('stack_layers', [0, 1, 1]), ('widen_mlp', 1.5),
                                    ('unfreeze', 'h.1'))]
    run(schedule)
    plan = train.validate_schedule('s.json', schedule, 0, train.model.config)
    assert [row['frozen'] for row in plan] == [['h.1'], ['h.1-2'], ['h.1-2'], ['h.2']]
    for row in plan:
        steps(1)
        fire_next()
        assert train.model.frozen_components() == row['frozen']
        assert train.model.flops_per_token() == row['flops_per_token']
    assert train.model.config.frozen == [n for n, _ in train.model.named_parameters() if n.startswith('transformer.h.2.')]
    # through the rebuilds of growth, a frozen parameter keeps its place in the optimizer and its state
    states = {train.optimizer_names[p]: state for p, state in train.optimizers.state.items()}
    assert all(states[name]['step'].item() == 1 for name in train.model.config.frozen)
    steps(1)


def test_freeze_is_not_growth(run):
    """No lr re-warmup after it, and it does not wait for an MSG mask ramp to finish."""
    schedule = [dict(name='msg_widen_mlp', value={'factor': 1.5, 'anneal_iters': 100}, trigger_loss=0.0,
                     max_wait_iters=0, reevaluate=False),
                dict(name='freeze', value='h.0', trigger_loss=0.0, max_wait_iters=10, reevaluate=False)]
    run(schedule, growth_lr_rewarm_iters=50)
    plan = train.validate_schedule('s.json', schedule, 0, train.model.config)
    assert [row['latest_iter'] for row in plan] == [0, 10]
    fire_next()
    steps(10)
    assert train.run_orchestrator(10, 1.0, on_growth=train.rebuild_after_growth, on_rewrap=train.refresh_trainable) == 1.0
    assert [op['name'] for op in train.orch.executed_ops] == ['msg_widen_mlp', 'freeze']
    assert train.orch.active_ramp is not None and train.orch.iter_of_last_growth == 0


# -----------------------------------------------------------------------------
# refusals before step 0, in the plan's walk

def refusal(run, schedule, **settings):
    run([], **settings)
    entries = [dict(name=name, value=value, trigger_loss=0.0, max_wait_iters=0, reevaluate=False)
               for name, value in schedule]
    with pytest.raises(train.UserError) as e:
        train.validate_schedule('s.json', entries, 0, train.model.config)
    return str(e.value)


@pytest.mark.parametrize('schedule, settings, message', [
    ([('freeze', 'h.2')], {},
     "s.json: entry 0, field 'value': freeze: 'h.2' matches nothing at this point: the model has 2 layers (h.0 to "
     "h.1), no layer 2"),
    ([('stack_layers', 2), ('freeze', 'h.3'), ('freeze', 'h.4')], {},
     "s.json: entry 2, field 'value': freeze: 'h.4' matches nothing at this point: the model has 4 layers (h.0 to "
     "h.3), no layer 4"),
    ([('freeze', ['wte', 'h.x'])], {},
     "s.json: entry 0, field 'value': freeze: expected a component (wte, wpe, ln_f, or h.3, h.-1, h.0-3, h.* "
     "optionally followed by .attn, .mlp, .ln_1 or .ln_2), got 'h.x'"),
    ([('freeze', [])], {},
     "s.json: entry 0, field 'value': freeze: expected a component pattern or a non-empty list of them, got []"),
    ([('freeze', 'wpe')], {'pos_emb': 'rope'},
     "s.json: entry 0, field 'value': freeze: 'wpe' matches nothing: the model has no wpe (pos_emb 'rope')"),
    ([('freeze', ['wte', 'wpe', 'h.*']), ('freeze', 'ln_f')], {},
     "s.json: entry 1, field 'value': freeze: this leaves no parameter to train"),
    ([('freeze', 'h.0'), ('unfreeze', 'h.1')], {},
     "s.json: entry 1, field 'value': unfreeze: 'h.1' matches nothing frozen at this point (frozen: h.0)"),
    ([('unfreeze', 'h.0.attn')], {'attn_lora_rank': 2},
     "s.json: entry 0, field 'value': unfreeze: 'h.0.attn' names h.0.attn.c_attn.weight, which has a LoRA adapter "
     "at this point: LoRA keeps the weight frozen and trains the adapter; unfreeze the parts without adapters, or "
     "remove the adapter first (its change_*_lora_rank with value 0)"),
    ([('freeze', 'h.0'), ('msg_widen_mlp', {'factor': 1.5, 'anneal_iters': 10})], {},
     "s.json: entry 1, field 'value': msg_widen_mlp: h.0.mlp.c_fc.weight is frozen at this point, and this would "
     "give it fresh values that could not train; unfreeze it first"),
], ids=['no_layer', 'depth_at_that_point', 'bad_pattern', 'empty', 'rope_wpe', 'nothing_trains', 'not_frozen',
        'lora_weight', 'fresh_slice'])
def test_refused_in_the_plan(run, schedule, settings, message):
    assert refusal(run, schedule, **settings) == message


def test_unfreezing_a_frozen_layer_under_adapters_is_allowed(run):
    """The freeze froze the layer's adapters with it; its unfreeze lets them train again."""
    run([], attn_lora_rank=2)
    entries = [dict(name=name, value=value, trigger_loss=0.0, max_wait_iters=0, reevaluate=False)
               for name, value in (('freeze', 'h.0'), ('unfreeze', 'h.0'))]
    plan = train.validate_schedule('s.json', entries, 0, train.model.config)
    assert [row['frozen'] for row in plan] == [['h.0'], []]


# -----------------------------------------------------------------------------
# subprocess runs: one line, exit 2; the plan; resume exact

N = 60
SCHEDULE = [  # eval every 10 iters
    ('freeze', ['wte', 'h.0.attn'], 0.0, 10, False),  # iter 10
    ('stack_layers', [0, 0], 0.0, 10, True),  # iter 20: h.1.attn is a copy of a frozen one
    ('unfreeze', 'h.0', 0.0, 20, False),  # iter 40, after the resume point
]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    runs = trained_runs(tmp_path_factory.mktemp('freeze'), SCHEDULE, always_save_checkpoint=True, log_interval=10)
    for name, iters in (('full', N), ('half', N // 2)):
        result = run_train(runs['args'](runs['root'] / name, max_iters=iters))
        assert result.returncode == 0, describe_run(result)
    return dict(runs, full=runs['root'] / 'full', half=runs['root'] / 'half')


@pytest.mark.slow
def test_run_logs_the_ops_and_resumes_exactly(runs, tmp_path):
    events = read_events(runs['full'])
    ops = {e['name']: e for e in events if e['event'] == 'op'}
    assert [(e['iter'], e['name']) for e in ops.values()] == [(10, 'freeze'), (20, 'stack_layers'), (40, 'unfreeze')]
    assert ops['freeze']['changes']['frozen'] == [[], ['wte', 'h.0.attn']]
    assert ops['stack_layers']['changes']['frozen'] == [['wte', 'h.0.attn'], ['wte', 'h.0.attn', 'h.1.attn']]
    assert ops['unfreeze']['changes']['frozen'] == [['wte', 'h.0.attn', 'h.1.attn'], ['wte', 'h.1.attn']]
    evals = {e['iter']: e for e in events if e['event'] == 'eval'}
    # a layer has 32 x 96 + 32 x 32 + 2 x 32 x 128 = 12288 matmul weights, 4096 of them in attn, 2 x 32 layernorm
    # gains; wpe 32 x 32, ln_f 32; wte frozen. An eval at an op's iter comes before the op
    assert (evals[20]['trainable_params'], evals[30]['trainable_params']) == \
        (12288 - 4096 + 1024 + 3 * 32, 2 * (12288 - 4096) + 1024 + 5 * 32)
    half = torch.load(runs['half'] / 'ckpt.pt', map_location='cpu', weights_only=True)
    assert [n.removeprefix('transformer.') for n in half['model_args']['frozen']] == [
        'wte.weight', 'h.0.attn.c_attn.weight', 'h.0.attn.c_proj.weight', 'h.1.attn.c_attn.weight',
        'h.1.attn.c_proj.weight']

    out = tmp_path / 'out'
    shutil.copytree(runs['half'], out)
    result = run_train(runs['args'](out, max_iters=N, init_from='resume'))
    assert result.returncode == 0, describe_run(result)
    assert without_elapsed(read_events(out)) == without_elapsed(events)
    full, resumed = (torch.load(p / 'ckpt.pt', map_location='cpu', weights_only=True) for p in (runs['full'], out))
    for key in ('config', 'wandb_run_id'):
        del full[key], resumed[key]
    assert_same_state(resumed, full)


@pytest.mark.slow
def test_dry_run_plans_the_frozen_set(runs):
    result = run_train(runs['args'](tempfile.mkdtemp(), dry_run=True))
    assert result.returncode == 0, describe_run(result)
    assert [line.strip() for line in result.stdout.splitlines() if line.strip().startswith('frozen:')] == [
        'frozen: wte, h.0.attn', 'frozen: wte, h.0.attn, h.1.attn', 'frozen: wte, h.1.attn']


@pytest.mark.slow
def test_bad_pattern_is_one_line_before_step_0(runs, tmp_path):
    from helpers import write_schedule
    schedule = write_schedule(tmp_path / 'bad.json', [('freeze', 'h.1', 0.0, 10, False)])
    result = run_train(runs['args'](tmp_path / 'out', scaling_schedule_file=schedule))
    assert result.returncode == 2, describe_run(result)
    assert result.stderr.splitlines() == [
        f"error: {schedule}: entry 0, field 'value': freeze: 'h.1' matches nothing at this point: the model has 1 "
        "layers (h.0 to h.0), no layer 1"]
    assert not (tmp_path / 'out').exists() or not list((tmp_path / 'out').iterdir())


@pytest.mark.slow
def test_ddp_ranks_agree_through_freeze_and_unfreeze(tmp_path):
    """2 ranks (gloo): a freeze, a stack of the frozen layer, an unfreeze. DDP registers the parameters that
    train when it is built, so both ops rebuild it: without that, the frozen parameters' missing gradients
    stop the run, and an unfrozen parameter's gradients would not be averaged (the ranks would drift)."""
    from helpers import TORCHRUN
    from test_ddp import DUMPING_TRAIN, assert_ranks_identical
    schedule = [('freeze', ['wte', 'h.0'], 0.0, 10, False), ('stack_layers', [0, 0], 0.0, 10, False),
                ('unfreeze', 'h.*', 0.0, 10, False)]
    runs = trained_runs(tmp_path, schedule, always_save_checkpoint=True, gradient_accumulation_steps=1, max_iters=40)
    (tmp_path / 'dumping_train.py').write_text(DUMPING_TRAIN)
    out = tmp_path / 'out'
    result = run_train(runs['args'](out), command=TORCHRUN + [str(tmp_path / 'dumping_train.py')], timeout=180)
    assert result.returncode == 0, describe_run(result)
    checkpoint = assert_ranks_identical(out)
    assert checkpoint['model_args']['frozen'] == ['transformer.wte.weight']
    assert [(e['iter'], e['name']) for e in read_events(out) if e['event'] == 'op'] == [
        (10, 'freeze'), (20, 'stack_layers'), (30, 'unfreeze')]
