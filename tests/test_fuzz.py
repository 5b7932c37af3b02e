"""
Property-based fuzzing (issue 15) with hypothesis, in-process, on tiny CPU models:
- schedules: random YAML / JSON documents, valid and not (wrong types, missing and unknown keys,
  huge and tiny numbers, NaN / inf, unicode, deep nesting, raw bytes, every op name with random
  values, YAML's dates, timestamps, !!binary and !!set), through the command line's own path (train.run_from_command_line with --dry_run=True):
  the plan is printed, or the run stops with exit 2 and one line naming the file (and the entry and
  field where there is one); never a traceback, never an out_dir;
- op sequences: random valid schedules of growth, freeze and hyperparameter ops applied for real, between
  training steps, as main() applies them: after every op the AdamW state has exactly the shapes of
  the parameters, the dry-run walk predicted the real model's parameter shapes, counts and FLOPs per
  token, a function-preserving op keeps the logits within 1e-5, and a checkpoint round trip
  (write_checkpoint, load_checkpoint, build_run) gives bit-identical weights, optimizer state and
  next loss;
  every operation is also applied this way once (then widen_mlp after it), so CI covers each;
- config overrides: random --key=value arguments into configurator.configure: the value keeps its
  default's type (or one train.CONFIG_TYPES gives the key), or one ConfigError line naming the key;
- what the fuzzer found, as plain tests with the exact messages (each failed before its fix).

Examples are derandomized (the same ones in every CI run). FUZZ_SCALE=N runs N times as many, e.g.
`FUZZ_SCALE=20 python -m pytest -q tests/test_fuzz.py --hypothesis-show-statistics` (the figures are
in docs/testing.md).
"""

import contextlib
import datetime
import io
import json
import os
import re
import shutil
import tempfile

import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import train
from configurator import ConfigError, configure
from helpers import run_command_line, write_char_data
from model import GPTConfig

SCALE = int(os.environ.get('FUZZ_SCALE', '1'))


def budget(examples):
    """Hypothesis settings: `examples` per CI run (times FUZZ_SCALE), the same examples every time."""
    return settings(max_examples=examples * SCALE, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


@pytest.fixture(scope='module')
def data_dir():
    folder = tempfile.mkdtemp(prefix='fuzz-data-')
    write_char_data(folder, n_chars=20_000)
    yield folder
    shutil.rmtree(folder)


@pytest.fixture
def restore_train():
    """train's config globals and orchestrator state put back after the test."""
    names = list(train.config_keys) + ['model', 'optimizers', 'scaler', 'progress', 'master_process',
                                       'ddp_world_size', 'data_generator', 'eval_model', 'train_model']
    saved = {name: getattr(train, name) for name in names}
    state = train.orchestrator_state()
    yield
    for name, value in saved.items():
        setattr(train, name, value)
    train.load_orchestrator_state(state)


# -----------------------------------------------------------------------------
# schedule documents

# values each operation accepts on some model (the op sequences below use them as they are)
FACTOR = st.floats(min_value=0.25, max_value=4.0)
GROW = st.floats(min_value=1.1, max_value=2.0)
ANNEAL = st.integers(min_value=1, max_value=3)
COMPONENTS = st.sampled_from(['wte', 'wpe', 'ln_f', 'h.0', 'h.-1', 'h.*', 'h.0-1', 'h.0.attn', 'h.-1.mlp', 'h.0.ln_2'])
OP_VALUES = {
    'change_lr': FACTOR, 'set_lr': st.floats(min_value=1e-5, max_value=1e-2),
    'change_batch_size': FACTOR, 'set_batch_size': st.integers(min_value=1, max_value=4),
    'change_grad_accum': FACTOR, 'set_grad_accum': st.integers(min_value=1, max_value=3),
    'change_warmup_iters': FACTOR, 'set_warmup_iters': st.integers(min_value=1, max_value=10),
    'change_eval_iters': FACTOR, 'set_eval_iters': st.integers(min_value=1, max_value=4),
    'change_eval_interval': FACTOR, 'set_eval_interval': st.integers(min_value=1, max_value=20),
    'change_seq_len': st.floats(min_value=0.1, max_value=1.0), 'set_seq_len': st.integers(min_value=1, max_value=16),
    'reset_lr_schedule': st.none(),
    'stack_layers': st.just(2) | st.lists(st.integers(min_value=0, max_value=2), min_size=1, max_size=4),
    'widen_mlp': GROW | st.fixed_dictionaries({'factor': GROW, 'noise': st.sampled_from([0.0, 0.01])}),
    'change_attn_lora_rank': st.sampled_from([0, 0.5, 1.5, 2.0]),
    'change_embedding_lora_rank': st.sampled_from([0, 0.5, 1.5, 2.0]),
    'change_lora_alpha': FACTOR, 'merge_lora_weights': st.none(),
    'set_attn_lora_rank': st.integers(min_value=0, max_value=3) | st.dictionaries(
        st.sampled_from(['*', '0', '1', '-1', '0-1', '1-2', 0, -1]), st.integers(min_value=0, max_value=3),
        min_size=1, max_size=3),
    'msg_widen_mlp': st.fixed_dictionaries({'factor': GROW, 'anneal_iters': ANNEAL}),
    'msg_add_heads': st.fixed_dictionaries({'n_new_heads': st.integers(min_value=1, max_value=2),
                                            'anneal_iters': ANNEAL}),
    'msg_stack_layers': st.fixed_dictionaries(
        {'layers': st.just(2) | st.sampled_from([[0, 0], [0, 0, 1], [0, 1, 1], [0, 0, 1, 1], [0, 1, 0, 1]]),
         'anneal_iters': ANNEAL}, optional={'init': st.sampled_from(['copy', 'random'])}),
    'msg_widen_embd': st.fixed_dictionaries({'factor': GROW, 'anneal_iters': ANNEAL}),
    'freeze': COMPONENTS | st.lists(COMPONENTS, min_size=1, max_size=3),
    'unfreeze': COMPONENTS | st.lists(COMPONENTS, min_size=1, max_size=3),
}
assert sorted(OP_VALUES) == sorted(train.OPERATIONS)  # a new operation gets fuzzed too

NUMBERS = st.one_of(
    st.integers(), st.integers(min_value=-10, max_value=10),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(min_value=0.01, max_value=4.0),
    st.sampled_from([0, 1, 2, -1, 0.0, 1.0, 1.5, 2.0, 5e-324, 1e-300, 1e300, 1.7e308, 2**63, 2**64, 10**30,
                     10**400, -10**400]))
TEXT = st.text(max_size=12) | st.sampled_from(['', 'copy', 'random', 'NaN', 'inf', 'null', '0.5', 'ƒäctor', '\x00'])
# YAML's native types that JSON has none for: yaml.safe_dump writes them as an unquoted date or timestamp,
# !!binary and !!set, which yaml.safe_load reads back as date, datetime, bytes and set
YAML_NATIVE = st.one_of(
    st.dates(), st.datetimes(timezones=st.sampled_from([None, datetime.timezone.utc])), st.binary(max_size=8),
    st.sets(st.integers(min_value=-3, max_value=3) | st.text(max_size=3), max_size=3))
LEAVES = st.none() | st.booleans() | NUMBERS | TEXT | YAML_NATIVE
KEYS_ANY = TEXT | st.dates()  # a date as a mapping key, too
JSONISH = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS_ANY, inner, max_size=4),
                       max_leaves=10)
VALUE_KEYS = ['factor', 'anneal_iters', 'noise', 'layers', 'init', 'n_new_heads']


@st.composite
def op_values(draw):
    """A value shaped like one an operation takes (a number, a layer map, a mapping with its keys)
    with random contents, or anything at all."""
    kind = draw(st.sampled_from(['number', 'null', 'map', 'layers', 'any']))
    if kind == 'number':
        return draw(NUMBERS)
    if kind == 'null':
        return None
    if kind == 'layers':
        return draw(st.lists(st.integers(min_value=-1, max_value=5), max_size=6))
    if kind == 'map':
        keys = draw(st.lists(st.sampled_from(VALUE_KEYS) | TEXT, max_size=4, unique=True))
        return {key: draw(NUMBERS | st.sampled_from(['copy', 'random']) | JSONISH) for key in keys}
    return draw(JSONISH)


@st.composite
def entries(draw):
    """One schedule entry: every op name, random fields, then maybe a key dropped, added or misspelt."""
    entry = dict(name=draw(st.sampled_from(sorted(train.OPERATIONS)) | TEXT | JSONISH),
                 value=draw(op_values()),
                 trigger_loss=draw(NUMBERS | JSONISH), max_wait_iters=draw(NUMBERS | JSONISH),
                 reevaluate=draw(st.booleans() | JSONISH))
    if draw(st.booleans()):
        entry['trigger_slope'] = draw(NUMBERS | JSONISH)
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        action = draw(st.sampled_from(['drop', 'add', 'misspell']))
        key = draw(st.sampled_from(list(entry)))
        if action == 'drop':
            del entry[key]
        elif action == 'add':
            entry[draw(TEXT | st.integers())] = draw(JSONISH)
        else:
            entry[str(key)[:-1] or 'x'] = entry.pop(key)
    return entry


@st.composite
def tidy_entries(draw):
    """A well-formed entry whose value is one its operation takes on some model, or a random one."""
    name = draw(st.sampled_from(sorted(train.OPERATIONS)))
    return dict(name=name, value=draw(OP_VALUES[name] | op_values()),
                trigger_loss=draw(st.floats(min_value=-1, max_value=10)),
                max_wait_iters=draw(st.integers(min_value=0, max_value=100)), reevaluate=draw(st.booleans()))


@st.composite
def schedule_files(draw):
    """(file name, bytes): a YAML or JSON document from random entries, deeply nested brackets or
    dashes, or random text and bytes."""
    kind = draw(st.sampled_from(['entries', 'entries', 'tidy', 'tidy', 'tidy', 'tidy', 'tidy', 'any', 'deep', 'text',
                                 'bytes']))
    ext = draw(st.sampled_from(['.yaml', '.json', '.yml'] * 4 + ['.txt', '', '.JSON', '.yaml.bak']))
    if kind == 'entries':
        document = draw(st.lists(entries(), max_size=4))
    elif kind == 'tidy':
        document = draw(st.lists(tidy_entries(), min_size=1, max_size=4))
    elif kind == 'any':
        document = draw(JSONISH)
    elif kind == 'deep':  # written as text: deeper than the yaml and json writers go
        depth, leaf = draw(st.integers(min_value=1, max_value=20000)), json.dumps(draw(tidy_entries()), default=str, skipkeys=True)
        text = '- ' * depth + leaf if draw(st.booleans()) else '[' * depth + leaf + ']' * depth
        return ext, text.encode()
    elif kind == 'text':
        return ext, draw(st.text(max_size=200)).encode('utf-8', 'surrogatepass')
    else:
        return ext, draw(st.binary(max_size=200))
    if ext == '.json' or draw(st.booleans()) and not ext.endswith(('.yaml', '.yml')):
        try:
            text = json.dumps(document, allow_nan=True, ensure_ascii=draw(st.booleans()))
        except TypeError:  # keys or values json cannot write (a date, bytes, a set): YAML into the .json file
            text = yaml.safe_dump(document, allow_unicode=True)
    else:
        text = yaml.safe_dump(document, allow_unicode=draw(st.booleans()),
                              default_flow_style=draw(st.sampled_from([None, True, False])))
    return ext, text.encode('utf-8', 'surrogatepass')


# one line: where, then what. where is the file, then the entry index and the field when there is one
# (no field: the entry is not a mapping, or the model would not fit in memory after it)
WHERE = r"(: entry (?P<index>\d+)(, field '(?P<field>.*)'|(?= \()|(?=: expected a mapping)))?"


@budget(250)
@given(schedule_files(), st.sampled_from([0, 2, {'-1': 2}]), st.sampled_from([0, 2]))
def test_fuzz_schedule_file_is_accepted_whole_or_refused_in_one_line(data_dir, restore_train, tmp_path, document,
                                                                     attn_lora_rank, embedding_lora_rank):
    ext, content = document
    folder = tempfile.mkdtemp(dir=tmp_path)
    path, out_dir = os.path.join(folder, 'schedule' + ext), os.path.join(folder, 'out')
    with open(path, 'wb') as f:
        f.write(content)
    tiny = dict(device='cpu', compile=False, dtype='float32', n_layer=2, n_head=2, n_embd=16, block_size=16,
                batch_size=4, gradient_accumulation_steps=2, eval_iters=2, eval_interval=10, warmup_iters=5,
                lr_decay_iters=100, max_iters=100, data_dir=data_dir, out_dir=out_dir, scaling_schedule_file=path,
                attn_lora_rank=attn_lora_rank, embedding_lora_rank=embedding_lora_rank, dry_run=True)
    code, stdout, stderr = run_command_line([f'--{k}={v}' for k, v in tiny.items()])
    assert not os.path.exists(out_dir)
    if code == 0:
        event('accepted')
        n_entries = len(train.load_schedule_file(path))
        assert stderr == '' and f"plan: {n_entries} operations" in stdout
        return
    assert code == 2 and stderr.endswith('\n') and stderr.count('\n') == 1, stderr
    match = re.match(re.escape(f"error: {path}") + WHERE + ': ', stderr)
    assert match, stderr
    field = match['field'] if match['field'] in train.ENTRY_KEYS + train.OPTIONAL_ENTRY_KEYS else 'other'
    event(f"refused at {'entry, field ' + field if match['index'] else 'file'}")


# -----------------------------------------------------------------------------
# op sequences applied for real

SETTINGS = ['peak_lr', 'batch_size', 'grad_accum', 'eval_interval', 'eval_iters', 'warmup_iters', 'lr_decay_iters', 'seq_len',
            'n_layer', 'n_head', 'head_size', 'n_embd', 'n_hidden', 'attn_lora_rank', 'embedding_lora_rank',
            'lora_alpha', 'params', 'flops_per_token']  # all but lr_schedule_offset, the iter an op fires at


@st.composite
def runs(draw):
    """A tiny model's config and a schedule of 1-6 operations, growth and freeze ops drawn more often (valid or
    not: the test keeps the valid prefix)."""
    config = dict(n_layer=draw(st.integers(min_value=1, max_value=2)), n_head=draw(st.sampled_from([1, 2])),
                  bias=draw(st.booleans()), activation=draw(st.sampled_from(['gelu', 'gelu_tanh'])),
                  attn_lora_rank=draw(st.sampled_from([0, 2, {'0': 2}])), embedding_lora_rank=draw(st.sampled_from([0, 2])),
                  lora_alpha=draw(st.sampled_from([1.0, 4.0])), lr_schedule=draw(st.sampled_from(['cosine', 'wsd'])),
                  growth_optimizer_state=draw(st.sampled_from(['carry', 'carry', 'reset'])),
                  growth_lr_rewarm_iters=draw(st.sampled_from([0, 3])), grad_clip=draw(st.sampled_from([0.0, 1.0])),
                  gradient_accumulation_steps=draw(st.integers(min_value=1, max_value=2)),
                  optimizer=draw(st.sampled_from(['adamw', 'muon'])))
    often = sorted(name for name, op in train.OPERATIONS.items() if op.rebuilds_optimizer or op.rewraps)
    names = draw(st.lists(st.sampled_from(sorted(OP_VALUES)) | st.sampled_from(often), min_size=1, max_size=6))
    schedule = [dict(name=name, value=draw(OP_VALUES[name]), trigger_loss=0.0, max_wait_iters=0, reevaluate=False)
                for name in names]
    return config, schedule, [draw(st.integers(min_value=0, max_value=2)) for _ in names]


def valid_prefix(schedule, model_config):
    """The entries before the first one the dry-run walk refuses."""
    while True:
        try:
            train.validate_schedule('fuzz.json', schedule, 0, model_config)
            return schedule
        except train.UserError as e:
            schedule = schedule[:int(re.match(r'fuzz\.json: entry (\d+)', str(e))[1])]


def predicted_parameters(schedule, model_config):
    """Per entry, {name: (shape, trainable)} of the weightless model the dry-run walk grows."""
    shapes = []
    with train.simulation(model_config):
        for entry in schedule:
            operation = train.OPERATIONS[entry['name']]
            operation.apply(entry['value'])
            if operation.ramp:
                train.model.fold_ramp()
            shapes.append(parameters_of(train.model))
    return shapes


def parameters_of(model):
    return {name: (tuple(p.shape), p.requires_grad) for name, p in model.named_parameters()}


def training_step():
    """One iteration of main()'s loop: the mask ramp, a training step. Returns the loss."""
    it = train.progress['iter_num']
    if train.advance_ramp(it):
        train.wrap_model()
    loss, micro_steps, _, _ = train.train_step(it)
    train.progress['iter_num'] += 1
    return loss.item() * micro_steps


def logits(batch):
    train.model.eval()
    with torch.no_grad():
        out = train.model(batch, batch)[0]
    train.model.train()
    return out


def moments_by_name():
    """{parameter name: its optimizer state (AdamW's or Muon's)} cloned, and the trainable parameter names."""
    names = {p: name for name, p in train.model.named_parameters()}
    states = {names[p]: {k: v.clone() for k, v in state.items()} for p, state in train.optimizers.state.items()}
    in_groups = sorted(names[p] for group in train.optimizers.param_groups for p in group['params'])
    return states, in_groups


def assert_optimizer_fits_the_model():
    states, in_groups = moments_by_name()
    shapes = {name: p.shape for name, p in train.model.named_parameters()}
    # every parameter but the weights under a LoRA adapter: a frozen one (freeze) keeps its place and state
    adapted = {f'{name}.weight' for name, m in train.model.named_modules() if getattr(m, 'lora_rank', 0)}
    assert in_groups == sorted(name for name, _ in train.model.named_parameters() if name not in adapted)
    assert all(p.requires_grad for name, p in train.model.named_parameters()
               if name not in adapted and name not in train.model.config.frozen and '.lora_' not in name)
    for name, state in states.items():  # every state tensor but the scalars (AdamW's step) shaped like its parameter
        for key, value in state.items():
            assert value.dim() == 0 or value.shape == shapes[name], (name, key)
        assert any(value.dim() > 0 for value in state.values()), name


def assert_equal_states(a, b):
    assert sorted(a) == sorted(b)
    for name in a:
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), (name, key)


def assert_round_trip(config, out_dir):
    """write_checkpoint, then: one step of the live run; resume from the file; one step again. The
    resumed run starts bit-identical and takes the same step."""
    train.write_checkpoint(config, None)
    weights = {k: v.clone() for k, v in train.model.state_dict().items()}
    moments, orchestrator, progress = moments_by_name()[0], train.orchestrator_state(), dict(train.progress)
    live_loss = training_step()
    live_weights, live_moments = {k: v.clone() for k, v in train.model.state_dict().items()}, moments_by_name()[0]

    checkpoint = train.load_checkpoint(os.path.join(out_dir, 'ckpt.pt'))
    train.load_orchestrator_state(checkpoint['orchestrator'])
    train.build_run(GPTConfig(**checkpoint['model_args']), checkpoint)
    assert train.orchestrator_state() == orchestrator and train.progress == progress
    assert sorted(train.model.state_dict()) == sorted(weights)
    assert all(torch.equal(v, weights[k]) for k, v in train.model.state_dict().items())
    assert_equal_states(moments_by_name()[0], moments)
    assert training_step() == live_loss
    assert all(torch.equal(v, live_weights[k]) for k, v in train.model.state_dict().items())
    assert_equal_states(moments_by_name()[0], live_moments)


def apply_for_real(settings, schedule, steps_before, data_dir, out_dir):
    """Build the tiny model of settings, keep the valid prefix of the schedule and apply it between
    training steps as main() does, checking every property after every op. Returns the entries applied."""
    base = dict(device='cpu', compile=False, dtype='float32', n_embd=16, head_size=0, n_hidden=0, block_size=16,
                batch_size=2, eval_iters=1, eval_interval=10, learning_rate=1e-3, min_lr=1e-4, warmup_iters=2,
                lr_decay_iters=40, cooldown_iters=0, decay_lr=True, dropout=0.0, weight_decay=0.1, seed=1337,
                skip_nonfinite_steps=0, data_dir=data_dir, out_dir=out_dir, master_process=True, ddp_world_size=1)
    for key, value in dict(base, **settings).items():
        setattr(train, key, value)
    config = {k: getattr(train, k) for k in train.config_keys}
    with contextlib.redirect_stdout(io.StringIO()):
        train.setup_runtime()
        model_config = train.model_config_from_globals(train.check_data()['vocab_size'])
        train.reset_orchestrator()
        schedule = valid_prefix(schedule, model_config)
        plan = train.validate_schedule('fuzz.json', schedule, 0, model_config)
        predicted = predicted_parameters(schedule, model_config)
        train.reset_orchestrator(schedule)
        train.build_run(model_config, None)
        batch = torch.randint(0, model_config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
        for index, entry in enumerate(list(schedule)):
            operation = train.OPERATIONS[entry['name']]
            while operation.changes_architecture and train.orch.active_ramp is not None:  # main() holds growth while a mask rises
                training_step()
            for _ in range(steps_before[index]):
                training_step()
            before, params_before = logits(batch), {k: v.clone() for k, v in train.model.state_dict().items()}
            train.execute_operation(entry, 'timeout', train.progress['iter_num'], 1.0, train.rebuild_after_growth,
                                    train.refresh_trainable)
            assert_optimizer_fits_the_model()
            real = train.effective_settings()
            assert {k: plan[index][k] for k in SETTINGS} == {k: real[k] for k in SETTINGS}
            assert parameters_of(train.model) == predicted[index]
            if not operation.rebuilds_optimizer:
                assert all(torch.equal(v, params_before[k]) for k, v in train.model.state_dict().items())
                assert torch.equal(logits(batch), before)
            elif operation.keeps_function and not (isinstance(entry['value'], dict) and entry['value'].get('noise')):
                assert (logits(batch) - before).abs().max().item() <= 1e-5, entry
            training_step()
            assert_optimizer_fits_the_model()
            assert_round_trip(config, out_dir)
    return schedule


@budget(20)
@given(runs())
def test_fuzz_op_sequences_keep_optimizer_plan_function_and_checkpoint(data_dir, restore_train, tmp_path, run):
    settings, schedule, steps_before = run
    applied = apply_for_real(settings, schedule, steps_before, data_dir, tempfile.mkdtemp(dir=tmp_path))
    event(f"{len(applied)} ops")
    event(f"optimizer {settings['optimizer']}")
    for entry in applied:
        event(entry['name'])


ALONE = {  # a value for each operation, on a model with LoRA on for the LoRA ops and off for the rest
    'change_lr': 0.5, 'set_lr': 3e-3, 'change_batch_size': 2.0, 'set_batch_size': 3, 'change_grad_accum': 2.0,
    'set_grad_accum': 3, 'change_warmup_iters': 2.0, 'set_warmup_iters': 7, 'change_eval_iters': 2.0,
    'set_eval_iters': 3, 'change_eval_interval': 0.5, 'set_eval_interval': 4, 'reset_lr_schedule': None,
    'change_seq_len': 0.5, 'set_seq_len': 5,
    'stack_layers': [0, 1, 1], 'widen_mlp': 1.5, 'change_attn_lora_rank': 1.5, 'change_embedding_lora_rank': 0,
    'change_lora_alpha': 2.0, 'merge_lora_weights': None, 'set_attn_lora_rank': {'0': 4, '-1': 0},
    'msg_widen_mlp': {'factor': 1.5, 'anneal_iters': 2},
    'msg_add_heads': {'n_new_heads': 1, 'anneal_iters': 2},
    'msg_stack_layers': {'layers': [0, 0, 1], 'anneal_iters': 2, 'init': 'random'},
    'msg_widen_embd': {'factor': 1.5, 'anneal_iters': 2}, 'freeze': ['wte', 'h.0'], 'unfreeze': 'h.0',
}
assert sorted(ALONE) == sorted(train.OPERATIONS)


@pytest.mark.parametrize('name', sorted(ALONE))
def test_every_operation_applied_for_real(data_dir, restore_train, tmp_path, name):
    """The op-sequence properties for each operation at least once in CI, twice in a row (after a ramp)."""
    lora = 2 if 'lora' in name else 0
    settings = dict(n_layer=2, n_head=2, bias=True, activation='gelu', attn_lora_rank=lora, embedding_lora_rank=lora,
                    lora_alpha=1.0, lr_schedule='wsd', growth_optimizer_state='carry', growth_lr_rewarm_iters=0,
                    grad_clip=1.0, gradient_accumulation_steps=2)
    entry = dict(name=name, value=ALONE[name], trigger_loss=0.0, max_wait_iters=0, reevaluate=False)
    second = dict(entry, name='widen_mlp', value=1.25)
    first = [dict(entry, name='freeze', value=['wte', 'h.*'])] if name == 'unfreeze' else []  # something to unfreeze
    schedule = first + [entry, second]
    assert apply_for_real(settings, schedule, [2, 1, 1][:len(schedule)], data_dir, str(tmp_path)) == schedule


# -----------------------------------------------------------------------------
# config overrides

LITERALS = st.recursive(st.none() | st.booleans() | NUMBERS | st.text(max_size=8),
                        lambda inner: st.lists(inner, max_size=3) | st.tuples(inner, inner)
                        | st.dictionaries(st.text(max_size=4), inner, max_size=2), max_leaves=6)
KEYS = st.sampled_from(sorted(train.config_defaults)) | st.sampled_from(sorted(train.config_defaults)) \
    | st.text(max_size=12) \
    | st.sampled_from(sorted(train.config_defaults)).map(lambda k: k[:-1] + k[-1].upper())


@st.composite
def overrides(draw):
    """--key=value with a known or unknown key, and a value that is a Python literal of any type, text,
    a huge number, deep brackets, or nothing."""
    key = draw(KEYS)
    kind = draw(st.sampled_from(['typed', 'typed', 'typed', 'literal', 'text', 'digits', 'deep', 'number']))
    if kind == 'typed':  # a value of the default's type, mostly
        default = train.config_defaults.get(key, '')
        kinds = {bool: st.booleans(), int: st.integers(min_value=-10, max_value=10**6) | st.integers(),
                 float: NUMBERS, str: st.text(max_size=10)}
        text = repr(draw(kinds[type(default)])) if not isinstance(default, str) else draw(kinds[str])
    elif kind == 'literal':
        text = repr(draw(LITERALS))
    elif kind == 'text':
        text = draw(st.text(max_size=20))
    elif kind == 'digits':
        text = draw(st.sampled_from(['', '-'])) + '9' * draw(st.integers(min_value=1, max_value=6000))
    elif kind == 'deep':
        depth = draw(st.integers(min_value=1, max_value=5000))
        text = '[' * depth + ']' * depth
    else:
        text = repr(draw(NUMBERS))
    return f"--{key}{draw(st.sampled_from(['='] * 8 + ['', ' ']))}{text}"


@budget(300)
@given(overrides())
def test_fuzz_config_override_is_typed_or_refused_in_one_line_naming_the_key(arg):
    defaults = dict(train.config_defaults)
    key, eq, _ = arg[2:].partition('=')
    try:
        config = configure([arg], defaults, verbose=False, types=train.CONFIG_TYPES)
    except ConfigError as e:
        message = str(e)
        assert '\n' not in message, message
        assert message.startswith("command line: ")
        assert (repr(key) in message or f"--{key}=" in message) if eq and key else "expected --key=value" in message
        event('refused')
        return
    event(f'accepted {type(defaults[key]).__name__}')
    assert key in defaults and type(config[key]) in train.CONFIG_TYPES.get(key, (type(defaults[key]),))
    assert {k: v for k, v in config.items() if k != key} == {k: v for k, v in defaults.items() if k != key}


# -----------------------------------------------------------------------------
# what the fuzzer found: each a traceback (or a two-line message) before the fix in train.py

def one_entry(**fields):
    return [dict(dict(name='change_lr', value=0.5, trigger_loss=0.0, max_wait_iters=0, reevaluate=False), **fields)]


FOUND = [
    # (id, file extension, file bytes, the message after the file name)
    ('bytes_not_utf8', '.yaml', b'\x80', "not UTF-8 text (byte 0: invalid start byte)"),
    ('yaml_reader_error_has_two_lines', '.yaml', b'\x00',
     "YAML syntax error, unacceptable character #x0000: special characters are not allowed"),
    ('yaml_nested_too_deep', '.yaml', b'- ' * 1000 + b'1', "YAML nested too deeply to parse"),
    ('json_nested_too_deep', '.json', b'[' * 5000 + b']' * 5000, "JSON nested too deeply to parse"),
    ('name_unhashable', '.json', json.dumps(one_entry(name=['change_lr'])).encode(),
     "entry 0, field 'name': unknown operation ['change_lr'] (did you mean 'change_lr'?)"),
    ('trigger_loss_beyond_float', '.yaml', yaml.safe_dump(one_entry(trigger_loss=10**400)).encode(),
     f"entry 0, field 'trigger_loss': expected a finite number, got {10**400} (int)"),
    ('factor_beyond_float', '.json', json.dumps(one_entry(value=-10**400)).encode(),
     f"entry 0, field 'value': change_lr: expected a finite number, got {-10**400} (int)"),
    ('set_batch_size_beyond_float', '.json', json.dumps(one_entry(name='set_batch_size', value=10**400)).encode(),
     f"entry 0, field 'value': set_batch_size: {10**400} (int) is too large: the sizes it leads to overflow"),
    ('widen_factor_overflows', '.yaml', yaml.safe_dump(one_entry(name='widen_mlp', value=1e307)).encode(),
     "entry 0, field 'value': widen_mlp: 1e+307 (float) is too large: the sizes it leads to overflow"),
    ('batch_size_overflows', '.json', json.dumps(one_entry(name='change_batch_size', value=1e308)).encode(),
     "entry 0, field 'value': change_batch_size: 1e+308 (float) is too large: the sizes it leads to overflow"),
    # issue 21: YAML's own types reached json.dumps (TypeError: keys must be str, ..., not datetime.date / Object
    # of type bytes is not JSON serializable)
    ('yaml_date_key', '.yaml', b'- {name: change_attn_lora_rank, value: {2000-01-01: null}, trigger_loss: 0.0, '
     b'max_wait_iters: 0, reevaluate: false}\n',
     "entry 0, field 'value': change_attn_lora_rank: a mapping key that is a date (2000-01-01), which a schedule "
     "cannot hold (it takes numbers, text, true/false, null, lists and mappings)"),
    ('yaml_binary', '.yaml', b'- {name: change_attn_lora_rank, value: !!binary "", trigger_loss: 0.0, '
     b'max_wait_iters: 0, reevaluate: false}\n',
     "entry 0, field 'value': change_attn_lora_rank: binary data (0 bytes), which a schedule cannot hold (it takes "
     "numbers, text, true/false, null, lists and mappings)"),
]


@pytest.mark.parametrize('ext, content, expected', [pytest.param(*c[1:], id=c[0]) for c in FOUND])
def test_found_by_fuzzing_refused_in_one_line(data_dir, restore_train, tmp_path, ext, content, expected):
    path = str(tmp_path / f'schedule{ext}')
    with open(path, 'wb') as f:
        f.write(content)
    tiny = dict(device='cpu', compile=False, dtype='float32', n_layer=2, n_head=2, n_embd=16, block_size=16,
                batch_size=4, data_dir=data_dir, out_dir=str(tmp_path / 'out'), scaling_schedule_file=path,
                dry_run=True)
    code, stdout, stderr = run_command_line([f'--{k}={v}' for k, v in tiny.items()])
    assert (code, stderr) == (2, f"error: {path}: {expected}\n")
    assert not os.path.exists(tmp_path / 'out')


@pytest.mark.parametrize('arg, expected', [
    ('--batch_size=a\nb', "command line: '--batch_size=a\\nb' is a str, expected an int"),
    ('--compile=\n', "command line: '--compile=\\n' is a str, expected a bool"),
])
def test_found_by_fuzzing_override_with_a_newline_in_one_line(arg, expected):
    with pytest.raises(ConfigError) as info:
        configure([arg], dict(train.config_defaults), verbose=False)
    assert str(info.value) == expected
