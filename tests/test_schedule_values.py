"""
Schedule values that JSON cannot hold (issue 21): YAML reads an unquoted date, a timestamp, `!!binary` and
`!!set` into Python types that the plan, the event log and the checkpoint cannot write. They are refused
when the file is loaded, in one line naming the file, the entry, the field and the operation, with exit 2
and no traceback, through the command line's own path (train.run_from_command_line, in-process).
"""


import pytest

import train
from helpers import run_command_line, write_char_data

ENTRY = "- {{name: {name}, value: {value}, trigger_loss: 0.0, max_wait_iters: 0, reevaluate: false}}\n"
GOOD = ENTRY.format(name='change_lr', value=0.5)
NOT_JSON = "which a schedule cannot hold (it takes numbers, text, true/false, null, lists and mappings)"

CASES = [
    # (id, op, value as written in YAML, the message after the file name)
    ('date', 'change_lr', '2024-01-01', f"entry 1, field 'value': change_lr: a date (2024-01-01), {NOT_JSON}"),
    ('timestamp', 'set_lr', '2024-01-01 10:30:00',
     f"entry 1, field 'value': set_lr: a timestamp (2024-01-01 10:30:00), {NOT_JSON}"),
    ('binary', 'change_batch_size', '!!binary aGVsbG8=',
     f"entry 1, field 'value': change_batch_size: binary data (5 bytes), {NOT_JSON}"),
    ('set', 'stack_layers', '!!set {0, 1}', f"entry 1, field 'value': stack_layers: a set (2 items), {NOT_JSON}"),
    ('nested_date', 'msg_widen_mlp', '{factor: 2024-01-01, anneal_iters: 2}',
     f"entry 1, field 'value': msg_widen_mlp: factor: a date (2024-01-01), {NOT_JSON}"),
    ('in_a_list', 'stack_layers', '[0, !!binary AA==, 1]',
     f"entry 1, field 'value': stack_layers: item 1: binary data (1 bytes), {NOT_JSON}"),
    ('date_key', 'widen_mlp', '{2024-01-01: 1, noise: 0.0}',
     f"entry 1, field 'value': widen_mlp: a mapping key that is a date (2024-01-01), {NOT_JSON}"),
]


@pytest.fixture
def restore_train():
    saved = {name: getattr(train, name) for name in train.config_keys}
    state = train.orchestrator_state()
    yield
    for name, value in saved.items():
        setattr(train, name, value)
    train.load_orchestrator_state(state)


@pytest.mark.parametrize('name, value, expected', [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_value_json_cannot_hold_is_refused_in_one_line(tmp_path, restore_train, name, value, expected):
    write_char_data(tmp_path / 'data', n_chars=5000)
    path = tmp_path / 'schedule.yaml'
    path.write_text(GOOD + ENTRY.format(name=name, value=value))
    tiny = dict(device='cpu', compile=False, dtype='float32', n_layer=2, n_head=2, n_embd=16, block_size=16,
                batch_size=4, data_dir=tmp_path / 'data', out_dir=tmp_path / 'out', scaling_schedule_file=path,
                dry_run=True)
    code, stdout, stderr = run_command_line([f'--{k}={v}' for k, v in tiny.items()])
    assert (code, stderr) == (2, f"error: {path}: {expected}\n")
    assert not (tmp_path / 'out').exists()


def test_load_schedule_file_refuses_a_date_before_validation(tmp_path):
    """The check is the loader's: nothing downstream (plan, events, checkpoint) meets a date."""
    path = tmp_path / 'schedule.yaml'
    path.write_text(ENTRY.format(name='change_lr', value='2024-01-01'))
    with pytest.raises(train.ScheduleError) as info:
        train.load_schedule_file(str(path))
    assert str(info.value) == f"{path}: entry 0, field 'value': change_lr: a date (2024-01-01), {NOT_JSON}"
