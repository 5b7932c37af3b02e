"""The schedule files and their validation, and a short real training run with a schedule.

1. configs/: the YAML and JSON samples hold the same schedule; every schedule there validates
   against the model of the recipe it names.
2. Every validation rule of a schedule file rejects its bad case, naming the file, the entry,
   the field, what was found and what was expected.
3. train.py with a schedule: the ops fire at the expected iters, and events.jsonl and the log
   show the settings change as specified. A dry run prints the plan and writes nothing.
"""

import json
import math
import os
import pickle
import re
import sys

import numpy as np
import pytest

# tests/ holds helpers: pytest.ini puts it on the path for pytest, this line for `python test_integration.py`
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'tests'))
import train
from configurator import configure
from helpers import entry, run_script
from model import GPTConfig

REPO = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(REPO, 'configs')
CPU_RECIPE = 'config/train_shakespeare_char_cpu.py'
SHAKESPEARE = os.path.join(REPO, '..', 'shared', 'data', 'tinyshakespeare', 'input.txt')
ENTRY_KEYS = 'name, value, trigger_loss, max_wait_iters, reevaluate'
OPTIONAL_KEYS = 'trigger_slope'


def apply_recipe(recipe, monkeypatch):
    """Set train's config globals as `python train.py RECIPE` would (monkeypatch restores them);
    returns the recipe's model config. vocab_size: 65 for shakespeare_char, else GPT-2's padded 50304."""
    monkeypatch.chdir(REPO)  # recipes read other recipes by relative path
    config = configure([recipe], {k: getattr(train, k) for k in train.config_keys}, verbose=False)
    for key, value in config.items():
        monkeypatch.setattr(train, key, value)
    vocab_size = 65 if config['dataset'] == 'shakespeare_char' else 50304
    return GPTConfig(n_layer=train.n_layer, n_head=train.n_head, n_embd=train.n_embd, n_hidden=train.n_hidden,
                     head_size=train.head_size, block_size=train.block_size, bias=train.bias,
                     vocab_size=vocab_size, dropout=train.dropout, attn_lora_rank=train.attn_lora_rank,
                     embedding_lora_rank=train.embedding_lora_rank, lora_alpha=train.lora_alpha)


@pytest.fixture
def cpu_model(monkeypatch):
    """The CPU recipe applied to train's globals; its model config. The orchestrator state is restored."""
    saved = train.orchestrator_state()
    yield apply_recipe(CPU_RECIPE, monkeypatch)
    train.load_orchestrator_state(saved)


# -----------------------------------------------------------------------------
# 1. the files in configs/

def test_sample_schedule_yaml_and_json_are_the_same():
    yaml_entries = train.load_schedule_file(os.path.join(CONFIGS, 'sample_scaling_schedule.yaml'))
    json_entries = train.load_schedule_file(os.path.join(CONFIGS, 'sample_scaling_schedule.json'))
    assert yaml_entries == json_entries
    assert 4 <= len(yaml_entries) <= 6
    assert all(not train.OPERATIONS[e['name']].rebuilds_optimizer for e in yaml_entries)
    assert [type(e['value']) for e in yaml_entries] == [type(e['value']) for e in json_entries]


def test_sample_schedule_plan_on_the_cpu_recipe(cpu_model):
    path = os.path.join(CONFIGS, 'sample_scaling_schedule.yaml')
    plan = train.validate_schedule(path, train.load_schedule_file(path), 0, cpu_model)
    last = plan[-1]
    assert [row['name'] for row in plan] == ['change_eval_iters', 'change_lr', 'change_batch_size',
                                             'change_eval_interval', 'change_grad_accum']
    assert (last['peak_lr'], last['batch_size'], last['grad_accum'], last['eval_interval'], last['eval_iters']) == (
        5e-4, 24, 2, 125, 40)


def test_multiplier_example_has_every_hyperparameter_op(cpu_model):
    path = os.path.join(CONFIGS, 'multiplier_operations_example.yaml')
    entries = train.load_schedule_file(path)
    names = [e['name'] for e in entries]
    assert sorted(names) == sorted(name for name, op in train.OPERATIONS.items() if not (op.rebuilds_optimizer or op.rewraps))
    last = train.validate_schedule(path, entries, 0, cpu_model)[-1]
    assert last['peak_lr'] == pytest.approx(3e-4, rel=1e-12)
    assert (last['batch_size'], last['grad_accum'], last['warmup_iters'], last['lr_decay_iters'],
            last['eval_iters'], last['eval_interval']) == (16, 4, 40, 800, 50, 100)


def test_quick_trigger_schedule_fires_at_the_first_evals(cpu_model, monkeypatch):
    """configs/test_scaling_schedule.yaml on the CPU recipe: even with a val loss that never reaches a
    trigger, its entries fire at the recipe's first two evals after iter 0 (250 and 500)."""
    monkeypatch.setattr(train, 'master_process', False)
    train.reset_orchestrator(train.load_schedule_file(os.path.join(CONFIGS, 'test_scaling_schedule.yaml')))
    fired = {}
    for it in range(0, 1001, train.effective_eval_interval()):
        train.run_orchestrator(it, 9.9, log_event=lambda e: fired.setdefault(e['name'], (e['iter'], e['reason'])))
    assert train.eval_interval == 250
    assert fired == {'change_lr': (250, 'timeout'), 'change_batch_size': (500, 'timeout')}


SCHEDULE_FILES = sorted(f for f in os.listdir(CONFIGS) if f.endswith(('.yaml', '.yml', '.json')))


@pytest.mark.parametrize('name', SCHEDULE_FILES)
def test_every_schedule_in_configs_validates(name, monkeypatch):
    """Against the model of the recipe the file names in its text (config/....py), else the CPU recipe's."""
    path = os.path.join(CONFIGS, name)
    with open(path) as f:
        named = re.findall(r'config/\w+\.py', f.read())
    recipe = named[0] if named else CPU_RECIPE
    assert os.path.isfile(os.path.join(REPO, recipe)), f"{name} names {recipe}, which does not exist"
    saved = train.orchestrator_state()
    try:
        model_config = apply_recipe(recipe, monkeypatch)
        if train.device.startswith('cuda'):  # a GPU recipe: validated as on an 80 GB GPU, whatever this machine has
            monkeypatch.setattr(train, 'available_memory_bytes', lambda: 80 * 2**30)
        entries = train.load_schedule_file(path)
        plan = train.validate_schedule(path, entries, 0, model_config)
    finally:
        train.load_orchestrator_state(saved)
    assert len(plan) == len(entries) > 0


# -----------------------------------------------------------------------------
# 2. every validation rule, with its message

GOOD = """\
# two good entries, then the one under test (entry 2)
- {name: change_lr, value: 0.5, trigger_loss: 2.0, max_wait_iters: 500, reevaluate: false}
- {name: change_eval_iters, value: 2.0, trigger_loss: 1.9, max_wait_iters: 0, reevaluate: true}
"""


def schedule_error(tmp_path, model_config, text, name='schedule.yaml'):
    """Write text to a schedule file, load and validate it; returns (path, the error message)."""
    path = str(tmp_path / name)
    with open(path, 'w') as f:
        f.write(text)
    with pytest.raises(train.ScheduleError) as info:
        train.validate_schedule(path, train.load_schedule_file(path), 0, model_config)
    return path, str(info.value)


def third_entry(name='change_batch_size', value='2.0', trigger_loss='1.8', max_wait_iters='500',
                reevaluate='false', **extra):
    fields = dict(name=name, value=value, trigger_loss=trigger_loss, max_wait_iters=max_wait_iters,
                  reevaluate=reevaluate, **extra)
    return GOOD + '- {' + ', '.join(f'{k}: {v}' for k, v in fields.items() if v is not None) + '}\n'


def test_good_schedule_passes(tmp_path, cpu_model):
    path = str(tmp_path / 'good.yaml')
    with open(path, 'w') as f:
        f.write(third_entry())
    assert [row['batch_size'] for row in train.validate_schedule(path, train.load_schedule_file(path), 0,
                                                                 cpu_model)] == [12, 12, 24]


def test_file_missing(tmp_path):
    path = str(tmp_path / 'nope.yaml')
    with pytest.raises(train.ScheduleError) as info:
        train.load_schedule_file(path)
    assert str(info.value) == f"{path}: schedule file not found"


def test_wrong_extension(tmp_path, cpu_model):
    path, message = schedule_error(tmp_path, cpu_model, GOOD, 'schedule.txt')
    assert message == f"{path}: expected a .yaml, .yml or .json file"


def test_yaml_syntax_error_names_the_line(tmp_path, cpu_model):
    text = GOOD + "- name: change_lr\n  value: [0.5\n  trigger_loss: 2.0\n"
    path, message = schedule_error(tmp_path, cpu_model, text)
    assert message.startswith(f"{path}: YAML syntax error, line 6: ")


def test_json_syntax_error_names_the_line(tmp_path, cpu_model):
    text = '[\n  {"name": "change_lr", "value": 0.5,\n   "trigger_loss": 2.0,}\n]\n'
    path, message = schedule_error(tmp_path, cpu_model, text, 'schedule.json')
    assert message == f"{path}: JSON syntax error, line 3: Expecting property name enclosed in double quotes"


@pytest.mark.parametrize('name,text', [('empty.yaml', ''), ('blank.json', '\n  \n'),
                                       ('comments.yaml', '# nothing here yet\n')])
def test_empty_file(tmp_path, cpu_model, name, text):
    path, message = schedule_error(tmp_path, cpu_model, text, name)
    assert message == f"{path}: the file is empty; expected a list of entries"


@pytest.mark.parametrize('name,text,found', [
    ('map.yaml', 'name: change_lr\nvalue: 0.5\n', 'dict'),
    ('map.json', '{"name": "change_lr"}', 'dict'),
    ('number.yaml', '3\n', 'int'),
    ('text.yaml', 'change_lr\n', 'str')])
def test_top_level_not_a_list(tmp_path, cpu_model, name, text, found):
    path, message = schedule_error(tmp_path, cpu_model, text, name)
    assert message == f"{path}: expected a list of entries at the top level, got a {found}"


@pytest.mark.parametrize('item,found', [('change_lr', "'change_lr' (str)"), ('[change_lr, 0.5]',
                                                                            "['change_lr', 0.5] (list)"),
                                        ('null', 'None (NoneType)')])
def test_entry_not_a_mapping(tmp_path, cpu_model, item, found):
    path, message = schedule_error(tmp_path, cpu_model, GOOD + f'- {item}\n')
    assert message == f"{path}: entry 2: expected a mapping with keys {ENTRY_KEYS}, got {found}"


@pytest.mark.parametrize('key', ['name', 'value', 'trigger_loss', 'max_wait_iters', 'reevaluate'])
def test_missing_key(tmp_path, cpu_model, key):
    path, message = schedule_error(tmp_path, cpu_model, third_entry(**{key: None}))
    assert message == f"{path}: entry 2, field '{key}': missing (every entry has {ENTRY_KEYS})"


@pytest.mark.parametrize('fields,key,hint', [
    (dict(trigger_loss=None, trigger_los='2.0'), 'trigger_los', " (did you mean 'trigger_loss'?)"),
    (dict(max_wait_iter='10'), 'max_wait_iter', " (did you mean 'max_wait_iters'?)"),
    (dict(reevaluate=None, re_evaluate='true'), 're_evaluate', " (did you mean 'reevaluate'?)"),
    (dict(comment="'grow'"), 'comment', '')])
def test_unknown_key_with_suggestion(tmp_path, cpu_model, fields, key, hint):
    path, message = schedule_error(tmp_path, cpu_model, third_entry(**fields))
    assert message == f"{path}: entry 2, field '{key}': unknown key{hint}; expected exactly {ENTRY_KEYS}, optionally {OPTIONAL_KEYS}"


@pytest.mark.parametrize('name,shown,hint', [
    ('change_lrr', "'change_lrr'", " (did you mean 'change_lr'?)"),
    ('set_batchsize', "'set_batchsize'", " (did you mean 'set_batch_size'?)"),
    ('reset_lr_shedule', "'reset_lr_shedule'", " (did you mean 'reset_lr_schedule'?)"),
    ('teleport', "'teleport'", ''),
    ('3', '3', '')])
def test_unknown_operation_with_suggestion(tmp_path, cpu_model, name, shown, hint):
    path, message = schedule_error(tmp_path, cpu_model, third_entry(name=name))
    assert message == f"{path}: entry 2, field 'name': unknown operation {shown}{hint}"


FACTOR_CASES = [('0', 'expected a number > 0.0, got 0'), ('-0.5', 'expected a number > 0.0, got -0.5'),
                ('.nan', 'expected a finite number, got nan (float)'),
                ('.inf', 'expected a finite number, got inf (float)'),
                ('-.inf', 'expected a finite number, got -inf (float)'),
                ('true', 'expected a finite number, got True (bool)'),
                ('"2.0"', "expected a finite number, got '2.0' (str)"),
                ('null', 'expected a finite number, got None (NoneType)'),
                ('[2.0]', 'expected a finite number, got [2.0] (list)')]


@pytest.mark.parametrize('op', ['change_lr', 'change_batch_size', 'change_grad_accum', 'change_warmup_iters',
                                'change_eval_iters', 'change_eval_interval', 'set_lr'])
@pytest.mark.parametrize('value,expected', FACTOR_CASES)
def test_bad_factor(tmp_path, cpu_model, op, value, expected):
    path, message = schedule_error(tmp_path, cpu_model, third_entry(name=op, value=value))
    assert message == f"{path}: entry 2, field 'value': {op}: {expected}"


@pytest.mark.parametrize('op', ['set_batch_size', 'set_grad_accum', 'set_warmup_iters', 'set_eval_iters',
                                'set_eval_interval'])
@pytest.mark.parametrize('value,expected', [('0', 'got 0'), ('-3', 'got -3'), ('2.5', 'got 2.5 (float)'),
                                            ('8.0', 'got 8.0 (float)'), ('true', 'got True (bool)'),
                                            ('"8"', "got '8' (str)"), ('null', 'got None (NoneType)')])
def test_bad_absolute_integer(tmp_path, cpu_model, op, value, expected):
    path, message = schedule_error(tmp_path, cpu_model, third_entry(name=op, value=value))
    assert message == f"{path}: entry 2, field 'value': {op}: expected an integer >= 1, {expected}"


@pytest.mark.parametrize('value,found', [('1', '1 (int)'), ('0', '0 (int)'), ('false', 'False (bool)'),
                                         ('"null"', "'null' (str)"), ('[]', '[] (list)')])
def test_reset_lr_schedule_takes_null(tmp_path, cpu_model, value, found):
    path, message = schedule_error(tmp_path, cpu_model, third_entry(name='reset_lr_schedule', value=value))
    assert message == f"{path}: entry 2, field 'value': reset_lr_schedule: expected null, got {found}"


@pytest.mark.parametrize('op,value,label,rounded', [
    ('change_batch_size', '0.01', 'the batch size', 0),  # 12 * 0.01 = 0.12
    ('change_eval_iters', '0.01', 'eval_iters', 0),  # 20 * 2 (entry 1) * 0.01 = 0.4
    ('change_eval_interval', '0.001', 'eval_interval', 0)])  # 250 * 0.001 = 0.25
def test_factor_that_rounds_to_zero(tmp_path, cpu_model, op, value, label, rounded):
    path, message = schedule_error(tmp_path, cpu_model, third_entry(name=op, value=value))
    assert message == (f"{path}: entry 2, field 'value': {op}: this makes {label} round to {rounded}; "
                       "it must stay >= 1")


def test_rounding_is_checked_along_the_schedule(tmp_path, cpu_model):
    """Each step alone is fine; the second halving of 12 * 0.2 = 2.4 -> 2 gives 12 * 0.04 = 0.48 -> 0."""
    text = third_entry(name='change_batch_size', value='0.2') + third_entry(name='change_batch_size', value='0.2')[
        len(GOOD):]
    path, message = schedule_error(tmp_path, cpu_model, text)
    assert message == (f"{path}: entry 3, field 'value': change_batch_size: this makes the batch size round to 0; "
                       "it must stay >= 1")


@pytest.mark.parametrize('value,found', [('.nan', 'nan (float)'), ('.inf', 'inf (float)'),
                                         ('"2.0"', "'2.0' (str)"), ('true', 'True (bool)'),
                                         ('null', 'None (NoneType)')])
def test_bad_trigger_loss(tmp_path, cpu_model, value, found):
    path, message = schedule_error(tmp_path, cpu_model, third_entry(trigger_loss=value))
    assert message == f"{path}: entry 2, field 'trigger_loss': expected a finite number, got {found}"


@pytest.mark.parametrize('value,found', [('-1', '-1 (int)'), ('2.5', '2.5 (float)'), ('100.0', '100.0 (float)'),
                                         ('true', 'True (bool)'), ('"10"', "'10' (str)"),
                                         ('null', 'None (NoneType)')])
def test_bad_max_wait_iters(tmp_path, cpu_model, value, found):
    path, message = schedule_error(tmp_path, cpu_model, third_entry(max_wait_iters=value))
    assert message == f"{path}: entry 2, field 'max_wait_iters': expected an integer >= 0, got {found}"


@pytest.mark.parametrize('value,found', [('1', '1 (int)'), ('0', '0 (int)'), ('"true"', "'true' (str)"),
                                         ('null', 'None (NoneType)')])
def test_bad_reevaluate(tmp_path, cpu_model, value, found):
    path, message = schedule_error(tmp_path, cpu_model, third_entry(reevaluate=value))
    assert message == f"{path}: entry 2, field 'reevaluate': expected true or false, got {found}"


def test_json_nan_is_rejected(tmp_path, cpu_model):
    entries = [dict(name='change_lr', value=float('nan'), trigger_loss=2.0, max_wait_iters=0, reevaluate=False)]
    path, message = schedule_error(tmp_path, cpu_model, json.dumps(entries), 'schedule.json')
    assert message == f"{path}: entry 0, field 'value': change_lr: expected a finite number, got nan (float)"


# -----------------------------------------------------------------------------
# 3. a real run

@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    """The first 100k characters of tiny shakespeare, char-level, as train.py reads them."""
    folder = tmp_path_factory.mktemp('data')
    with open(SHAKESPEARE, encoding='utf-8') as f:
        text = f.read()[:100_000]
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    tokens = np.array([stoi[c] for c in text], dtype=np.uint16)
    split = int(0.9 * len(tokens))
    tokens[:split].tofile(folder / 'train.bin')
    tokens[split:].tofile(folder / 'val.bin')
    with open(folder / 'meta.pkl', 'wb') as f:
        pickle.dump(dict(vocab_size=len(chars), itos=dict(enumerate(chars)), stoi=stoi, tokenizer='char'), f)
    return str(folder)


RUN_ARGS = ['--device=cpu', '--compile=False', '--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=32',
            '--batch_size=8', '--gradient_accumulation_steps=1', '--dropout=0.0', '--learning_rate=1e-3',
            '--min_lr=1e-4', '--warmup_iters=10', '--lr_decay_iters=120', '--max_iters=120', '--eval_interval=20',
            '--eval_iters=4', '--log_interval=20', '--always_save_checkpoint=False']


# trigger_loss 0.0 never fires (timeouts decide), 10.0 always does (the val loss starts near ln 61 = 4.1)
RUN_SCHEDULE = [
    entry('change_lr', 0.5, 0.0, 20, True),  # iter 20, timeout
    entry('change_batch_size', 2.0, 10.0, 1000, False),  # iter 20, loss, back to back
    entry('change_eval_interval', 2.0, 0.0, 20, False),  # iter 40, timeout: evals at 80, 120 from here
    entry('change_warmup_iters', 2.0, 10.0, 1000, False),  # iter 40, loss: warmup 20, decay 240
    entry('change_grad_accum', 2.0, 0.0, 40, False),  # iter 80, timeout
    entry('reset_lr_schedule', None, 10.0, 1000, True),  # iter 80, loss: the lr schedule restarts at 80
    entry('change_eval_iters', 2.0, 10.0, 1000, True),  # iter 80, loss: 8 eval batches, measured at once
    entry('set_lr', 2e-3, 0.0, 1000, False),  # never: blocks nothing after it, and the run ends first
]
EXPECTED_OPS = [(20, 'change_lr', 'timeout'), (20, 'change_batch_size', 'loss'),
                (40, 'change_eval_interval', 'timeout'), (40, 'change_warmup_iters', 'loss'),
                (80, 'change_grad_accum', 'timeout'), (80, 'reset_lr_schedule', 'loss'),
                (80, 'change_eval_iters', 'loss')]


def cosine(lr_max, lr_min, t, warmup, decay):
    if t < warmup:
        return lr_max * (t + 1) / (warmup + 1)
    return lr_min + 0.5 * (1.0 + math.cos(math.pi * (t - warmup) / (decay - warmup))) * (lr_max - lr_min)


def train_py(*args):
    # one thread (train_env): a tiny model gains nothing from more, and loses ~10x on a busy 2-core machine
    return run_script(['train.py', *args])


@pytest.fixture(scope='module')
def scheduled_run(data_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp('run')
    schedule = folder / 'schedule.json'
    schedule.write_text(json.dumps(RUN_SCHEDULE))
    out_dir = folder / 'out'
    result = train_py(*RUN_ARGS, f'--data_dir={data_dir}', f'--out_dir={out_dir}',
                      f'--scaling_schedule_file={schedule}')
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out_dir / 'events.jsonl') as f:
        events = [json.loads(line) for line in f]
    return result.stdout, events


@pytest.mark.slow
def test_ops_fire_at_the_expected_iters(scheduled_run):
    _, events = scheduled_run
    ops = [e for e in events if e['event'] == 'op']
    assert [(e['iter'], e['name'], e['reason']) for e in ops] == EXPECTED_OPS
    assert [e['value'] for e in ops] == [entry['value'] for entry in RUN_SCHEDULE[:7]]
    evals = {e['iter']: e for e in events if e['event'] == 'eval'}
    for e in ops:
        assert {'event', 'iter', 'name', 'value', 'reason', 'val_loss_before', 'val_loss_after'} <= set(e)
    by_name = {e['name']: e for e in ops}
    # the first op of an eval step sees that eval's loss; a reevaluated loss is the next op's
    assert by_name['change_lr']['val_loss_before'] == evals[20]['val_loss']
    assert by_name['change_eval_interval']['val_loss_before'] == evals[40]['val_loss']
    assert by_name['change_grad_accum']['val_loss_before'] == evals[80]['val_loss']
    # reevaluate after a hyperparameter op: same weights, same fixed eval batches, same loss
    for name in ('change_lr', 'reset_lr_schedule'):
        assert isinstance(by_name[name]['val_loss_after'], float)
        assert by_name[name]['val_loss_after'] == by_name[name]['val_loss_before']
    assert by_name['change_batch_size']['val_loss_before'] == by_name['change_lr']['val_loss_after']
    assert by_name['change_eval_iters']['val_loss_before'] == by_name['reset_lr_schedule']['val_loss_after']
    # 8 eval batches instead of 4: a float, measured on more batches
    after = by_name['change_eval_iters']['val_loss_after']
    assert isinstance(after, float) and math.isfinite(after)
    for name in ('change_batch_size', 'change_eval_interval', 'change_warmup_iters', 'change_grad_accum'):
        assert by_name[name]['val_loss_after'] is None


@pytest.mark.slow
def test_eval_events_show_the_settings_change(scheduled_run):
    _, events = scheduled_run
    evals = [e for e in events if e['event'] == 'eval']
    # an eval is logged before the ops of its step run; eval_interval 20 -> 40 after the op at 40
    assert [e['iter'] for e in evals] == [0, 20, 40, 80, 120]
    columns = ('batch_size', 'grad_accum', 'eval_interval', 'eval_iters', 'warmup_iters', 'lr_decay_iters')
    assert [tuple(e[k] for k in columns) for e in evals] == [
        (8, 1, 20, 4, 10, 120),
        (8, 1, 20, 4, 10, 120),
        (16, 1, 20, 4, 10, 120),  # change_lr, change_batch_size at 20
        (16, 1, 40, 4, 20, 240),  # change_eval_interval, change_warmup_iters at 40
        (16, 2, 40, 8, 20, 240)]  # change_grad_accum, reset_lr_schedule, change_eval_iters at 80
    expected_lr = [cosine(1e-3, 1e-4, 0, 10, 120), cosine(1e-3, 1e-4, 20, 10, 120),
                   cosine(5e-4, 5e-5, 40, 10, 120), cosine(5e-4, 5e-5, 80, 20, 240),
                   cosine(5e-4, 5e-5, 120 - 80, 20, 240)]
    assert [e['lr'] for e in evals] == pytest.approx(expected_lr, rel=1e-12)
    # tokens = sum over iters of batch * block * accum
    tokens = [0, 20 * 8 * 32, 20 * 8 * 32 + 20 * 16 * 32, 20 * 8 * 32 + 60 * 16 * 32,
              20 * 8 * 32 + 60 * 16 * 32 + 40 * 16 * 32 * 2]
    assert [e['tokens'] for e in evals] == tokens
    for e in evals:
        assert (e['n_layer'], e['n_embd'], e['n_hidden']) == (2, 32, 128)
        assert isinstance(e['params'], int) and e['params'] > 0
        assert math.isfinite(e['train_loss']) and math.isfinite(e['val_loss']) and e['elapsed_s'] >= 0
    assert evals[-1]['val_loss'] < evals[0]['val_loss']


@pytest.mark.slow
def test_log_blocks(scheduled_run):
    stdout, _ = scheduled_run
    blocks = re.findall(r'=== SCALING OPERATION TRIGGERED ===\n(.*?)=== SCALING OPERATION COMPLETE ===\n',
                        stdout, re.S)
    assert len(blocks) == stdout.count('SCALING OPERATION TRIGGERED') == len(EXPECTED_OPS)
    for index, (block, (it, name, reason)) in enumerate(zip(blocks, EXPECTED_OPS)):
        lines = block.splitlines()
        assert lines[0].startswith(f"Operation: {name} (entry {index}), value ")
        if reason == 'loss':
            assert re.fullmatch(r"Trigger reason: loss\. Current val loss \d\.\d{4} < trigger loss 10\.0", lines[1])
        else:
            waited = RUN_SCHEDULE[index]['max_wait_iters']
            assert re.fullmatch(rf"Trigger reason: timeout\. Waited {waited} iters \(max_wait_iters {waited}\), "
                                r"current val loss \d\.\d{4}", lines[1])
        assert any(line.startswith('New ') for line in lines[2:]), block
    assert "New batch_size: 8 -> 16" in blocks[1]
    assert "New eval_interval: 20 -> 40" in blocks[2]
    assert "New warmup_iters: 10 -> 20" in blocks[3] and "New lr_decay_iters: 120 -> 240" in blocks[3]
    assert "New grad_accum: 1 -> 2" in blocks[4]
    assert "New eval_iters: 4 -> 8" in blocks[6]


@pytest.mark.slow
def test_dry_run_prints_the_plan_and_writes_nothing(data_dir, tmp_path):
    schedule = tmp_path / 'schedule.json'
    schedule.write_text(json.dumps(RUN_SCHEDULE))
    out_dir = tmp_path / 'out'
    result = train_py(*RUN_ARGS, f'--data_dir={data_dir}', f'--out_dir={out_dir}',
                      f'--scaling_schedule_file={schedule}', '--dry_run=True')
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"plan: {len(RUN_SCHEDULE)} operations" in result.stdout
    for index, row in enumerate(RUN_SCHEDULE):
        fires = f"val loss < {row['trigger_loss']:g} or {row['max_wait_iters']} iters after the previous op"
        assert (f"  [{index}] {row['name']}({json.dumps(row['value'])}) when {fires}\n"
                "      then peak_lr ") in result.stdout
    assert "batch_size 16, grad_accum 2, " in result.stdout
    assert 'SCALING OPERATION' not in result.stdout and 'step 0' not in result.stdout
    assert not out_dir.exists()


@pytest.mark.parametrize('lr_schedule', ['cosine', 'wsd'])
def test_plan_warns_of_a_decay_that_ends_after_max_iters(cpu_model, monkeypatch, tmp_path, lr_schedule):
    """A late reset_lr_schedule or change_warmup_iters moves the end of the decay (cosine) or of the
    cooldown (wsd) past max_iters: the run would end at a high lr. The plan names the entry, the
    latest iter it can fire at (and still train after it), where the decay would end and the lr the run
    would end at; an entry that undoes the move at the same eval clears it (issue 21)."""
    for key, value in dict(max_iters=1000, lr_decay_iters=1000, warmup_iters=100, eval_interval=100,
                           lr_schedule=lr_schedule, decay_lr=True).items():
        monkeypatch.setattr(train, key, value)
    entries = [entry('change_lr', 0.5, max_wait_iters=0),
               entry('reset_lr_schedule', None, max_wait_iters=250),  # fires at the eval of iter 300 at the latest
               entry('change_warmup_iters', 0.5, max_wait_iters=0),  # at 300 with it: decay 500, ends at 800 again
               entry('change_warmup_iters', 1.5, max_wait_iters=200),  # at 500 at the latest: decay 750 from 300, ends at 1050
               entry('set_lr', 1e-3, trigger_loss=1.0, max_wait_iters=10**6),  # no change of the decay
               entry('reset_lr_schedule', None, trigger_loss=1.0, max_wait_iters=10**6)]  # at 900, the last eval that trains
    path = str(tmp_path / 'schedule.json')
    plan = train.validate_schedule(path, entries, 0, cpu_model)
    warning = "{}: entry {} ({}), fired at iter {} (the latest it can), moves the end of the lr decay to iter {}, " \
              "after max_iters 1000: the run would end at lr {}, above min_lr {}"
    may_not_run = (f"{path}: entry 4 (set_lr) runs before max_iters 1000 only if val loss < 1: its timeout falls at "
                   "iter 1000500 (1000000 iters after the previous op at iter 500); the 1 entry after it waits for it")
    end_lr = {'cosine': '5.61e-05', 'wsd': '1.33e-04'}[lr_schedule]
    assert [row['warning'] for row in plan] == [
        None, None, None, warning.format(path, 3, 'change_warmup_iters', 500, 1050, end_lr, '5.00e-05'), may_not_run,
        warning.format(path, 5, 'reset_lr_schedule', 900, 1650, '9.97e-04' if lr_schedule == 'cosine' else '1.00e-03',
                       '1.00e-04')]
    monkeypatch.setattr(train, 'decay_lr', False)  # a constant lr: nothing to anneal
    assert [row['warning'] for row in train.validate_schedule(path, entries, 0, cpu_model)] == [None] * 4 + [
        may_not_run, None]


@pytest.mark.slow
def test_dry_run_and_start_up_log_warn_of_a_decay_past_max_iters(scheduled_run, data_dir, tmp_path):
    """RUN_SCHEDULE doubles lr_decay_iters (120 -> 240, max_iters 120) and resets the schedule at the latest at
    100 (the last eval before max_iters); its entry 1 has a timeout after max_iters, its entry 7 never runs."""
    schedule = tmp_path / 'schedule.json'
    schedule.write_text(json.dumps(RUN_SCHEDULE))
    warnings = [f"warning: {schedule}: entry 1 (change_batch_size) runs before max_iters 120 only if val loss < 10: "
                "its timeout falls at iter 1020 (1000 iters after the previous op at iter 20); the 6 entries after it "
                "wait for it",
                f"warning: {schedule}: entry 3 (change_warmup_iters), fired at iter 100 (the latest it can), moves "
                "the end of the lr decay to iter 240, after max_iters 120: the run would end at lr 3.07e-04, above "
                "min_lr 5.00e-05",
                f"warning: {schedule}: entry 5 (reset_lr_schedule), fired at iter 100 (the latest it can), moves "
                "the end of the lr decay to iter 340, after max_iters 120: the run would end at lr 5.00e-04, above "
                "min_lr 5.00e-05",
                f"warning: {schedule}: entry 7 (set_lr) never runs: it can fire at iter 1080 at the earliest (1000 "
                "iters after the previous op at iter 80), after max_iters 120"]
    result = train_py(*RUN_ARGS, f'--data_dir={data_dir}', f'--out_dir={tmp_path / "out"}',
                      f'--scaling_schedule_file={schedule}', '--dry_run=True')
    assert [line.strip() for line in result.stdout.splitlines() if 'warning' in line] == warnings
    stdout, _ = scheduled_run  # the same schedule, run (its file in another folder): the warnings come before step 0
    start_up = [line for line in stdout[:stdout.index('step 0:')].splitlines() if 'warning' in line]
    assert [line.split('schedule.json')[1] for line in start_up] == [w.split('schedule.json')[1] for w in warnings]
    assert all(line.startswith('warning: ') for line in start_up)


@pytest.mark.slow
def test_dry_run_names_the_slope_trigger(data_dir, tmp_path):
    schedule = tmp_path / 'schedule.yaml'
    schedule.write_text("- {name: stack_layers, value: 2, trigger_loss: 0.0, max_wait_iters: 100, reevaluate: true,"
                        " trigger_slope: -0.05}\n")
    result = train_py(*RUN_ARGS, f'--data_dir={data_dir}', f'--out_dir={tmp_path / "out"}',
                      f'--scaling_schedule_file={schedule}', '--dry_run=True', '--trigger_slope_evals=4')
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("  [0] stack_layers(2) when val loss < 0 or loss slope > -0.05 over 4 evals or 100 iters after the "
            "previous op\n") in result.stdout


@pytest.mark.slow
def test_bad_schedule_stops_before_step_0(data_dir, tmp_path):
    schedule = tmp_path / 'schedule.yaml'
    schedule.write_text(third_entry(max_wait_iters='-5'))
    out_dir = tmp_path / 'out'
    result = train_py(*RUN_ARGS, f'--data_dir={data_dir}', f'--out_dir={out_dir}',
                      f'--scaling_schedule_file={schedule}')
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: {schedule}: entry 2, field 'max_wait_iters': expected an integer >= 0, "
                                     "got -5 (int)")
    assert 'step 0' not in result.stdout
    assert not out_dir.exists()


if __name__ == '__main__':  # python test_integration.py [pytest options]
    sys.exit(pytest.main([__file__, '-q'] + sys.argv[1:]))
