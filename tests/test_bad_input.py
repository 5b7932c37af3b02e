"""
Bad input is refused before step 0, with one message that names the file, the entry index and
field where there is one, what was found and what was expected.

Most cases run in-process (train.load_schedule_file / validate_schedule / check_data /
check_inputs / load_checkpoint, configurator.configure) on a tiny model; the last tests run the
real command line and check the exit code, the one-line stderr, and that nothing in out_dir was
touched. Memory checks see a machine of exactly 16 GiB (available_memory_bytes is patched), so
their messages are exact everywhere.
"""

import json
import os
import pickle
from dataclasses import asdict

import numpy as np
import pytest
import torch
import yaml

import train
from configurator import ConfigError, configure
from helpers import REPO, describe_run, entry, file_state, run_train, train_args, write_char_data
from model import GPTConfig

GiB = 2**30
TINY = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=65, bias=False)  # n_hidden 128, head 16
GPT2 = GPTConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304, bias=False)
KEYS = 'name, value, trigger_loss, max_wait_iters, reevaluate'


@pytest.fixture
def tiny(monkeypatch):
    """train's globals for a tiny run on a 16 GiB cpu; everything restored afterwards."""
    settings = dict(batch_size=8, gradient_accumulation_steps=2, eval_iters=2, eval_interval=10, warmup_iters=10,
                    lr_decay_iters=100, learning_rate=1e-3, device='cpu', ddp_world_size=1, seed=1337,
                    dataset='mydata', data_dir='', block_size=32, init_from='scratch', dtype='float32',
                    growth_optimizer_state='carry', scaling_schedule_file='', out_dir='out')
    for key, value in settings.items():
        monkeypatch.setattr(train, key, value)
    monkeypatch.setattr(train, 'available_memory_bytes', lambda: 16 * GiB)
    monkeypatch.setattr(train, 'model', None)
    monkeypatch.chdir(REPO)  # check_data looks for data/<dataset>/prepare.py from here
    saved = train.orchestrator_state()
    train.reset_orchestrator()
    yield
    train.load_orchestrator_state(saved)


def write_entries(tmp_path, fmt, entries):
    path = tmp_path / f'schedule.{fmt}'
    path.write_text(yaml.safe_dump(entries, sort_keys=False) if fmt == 'yaml' else json.dumps(entries))
    return str(path)


def check_schedule(path, config=TINY):
    """Load and validate as train.py does before step 0; returns the plan."""
    return train.validate_schedule(path, train.load_schedule_file(path), 0, config)


def variant(config, **changes):
    return GPTConfig(**{**asdict(config), **changes})


def refused(call, *args, error=train.UserError):
    with pytest.raises(error) as info:
        call(*args)
    return str(info.value)


# -----------------------------------------------------------------------------
# schedule files that do not parse into a list of entries

FILE_CASES = [
    ('yaml_syntax_error', 'schedule.yaml',
     "- name: change_lr\n  value: 0.5\n  trigger_loss 2.0\n  max_wait_iters: 10\n  reevaluate: false\n",
     "{path}: YAML syntax error, line 4: could not find expected ':'"),
    ('yaml_bad_indent', 'schedule.yaml',
     "- name: change_lr\n  value: 0.5\n   trigger_loss: 2.0\n",
     "{path}: YAML syntax error, line 3: mapping values are not allowed here"),
    ('json_syntax_error', 'schedule.json',
     '[\n  {"name": "change_lr", "value": 0.5,}\n]\n',
     "{path}: JSON syntax error, line 2: Expecting property name enclosed in double quotes"),
    ('yaml_not_a_list', 'schedule.yaml', "name: change_lr\nvalue: 0.5\n",
     "{path}: expected a list of entries at the top level, got a dict"),
    ('json_not_a_list', 'schedule.json', '{"name": "change_lr", "value": 0.5}',
     "{path}: expected a list of entries at the top level, got a dict"),
    ('yaml_scalar_top_level', 'schedule.yml', "change_lr\n",
     "{path}: expected a list of entries at the top level, got a str"),
    ('yaml_empty_file', 'schedule.yaml', "", "{path}: the file is empty; expected a list of entries"),
    ('yaml_comments_only', 'schedule.yaml', "# nothing yet\n",
     "{path}: the file is empty; expected a list of entries"),
    ('json_whitespace_only', 'schedule.json', "\n  \n", "{path}: the file is empty; expected a list of entries"),
    ('wrong_extension', 'schedule.txt', "[]", "{path}: expected a .yaml, .yml or .json file"),
    ('yaml_entry_not_a_mapping', 'schedule.yaml', "- change_lr\n",
     f"{{path}}: entry 0: expected a mapping with keys {KEYS}, got 'change_lr' (str)"),
    ('json_entry_not_a_mapping', 'schedule.json',
     json.dumps([entry('change_lr', 0.5), 3]), f"{{path}}: entry 1: expected a mapping with keys {KEYS}, got 3 (int)"),
]


@pytest.mark.parametrize('name, text, expected', [pytest.param(*c[1:], id=c[0]) for c in FILE_CASES])
def test_schedule_file_refused(tmp_path, tiny, name, text, expected):
    path = tmp_path / name
    path.write_text(text)
    assert refused(check_schedule, str(path)) == expected.replace('{path}', str(path))


def test_schedule_file_not_found(tmp_path, tiny):
    path = str(tmp_path / 'nope.yaml')
    assert refused(check_schedule, path) == f"{path}: schedule file not found"


# -----------------------------------------------------------------------------
# entries: shape, then each operation's value against the model it will meet

ENTRY_CASES = [
    # (id, format, entries, expected message after '{path}: ', config overrides)
    ('unknown_operation_suggests', 'yaml', [entry('chnage_lr', 0.5)],
     "entry 0, field 'name': unknown operation 'chnage_lr' (did you mean 'change_lr'?)", {}),
    ('unknown_operation_no_match', 'json', [entry('change_lr', 0.5), entry('grow_everything', 2)],
     "entry 1, field 'name': unknown operation 'grow_everything'", {}),
    ('missing_key', 'yaml', [{k: v for k, v in entry('change_lr', 0.5).items() if k != 'reevaluate'}],
     f"entry 0, field 'reevaluate': missing (every entry has {KEYS})", {}),
    ('unknown_key_suggests', 'json',
     [{**{k: v for k, v in entry('change_lr', 0.5).items() if k != 'max_wait_iters'}, 'max_wait_iter': 10}],
     f"entry 0, field 'max_wait_iter': unknown key (did you mean 'max_wait_iters'?); expected exactly {KEYS}, "
     "optionally trigger_slope", {}),
    ('trigger_loss_string', 'yaml', [entry('change_lr', 0.5, trigger_loss='low')],
     "entry 0, field 'trigger_loss': expected a finite number, got 'low' (str)", {}),
    ('trigger_loss_nan', 'yaml', [entry('change_lr', 0.5, trigger_loss=float('nan'))],
     "entry 0, field 'trigger_loss': expected a finite number, got nan (float)", {}),
    ('trigger_loss_bool', 'json', [entry('change_lr', 0.5, trigger_loss=True)],
     "entry 0, field 'trigger_loss': expected a finite number, got True (bool)", {}),
    ('trigger_loss_null', 'json', [entry('change_lr', 0.5, trigger_loss=None)],
     "entry 0, field 'trigger_loss': expected a finite number, got None (NoneType)", {}),
    ('max_wait_negative', 'yaml', [entry('change_lr', 0.5, max_wait_iters=-1)],
     "entry 0, field 'max_wait_iters': expected an integer >= 0, got -1 (int)", {}),
    ('max_wait_fractional', 'yaml', [entry('change_lr', 0.5, max_wait_iters=2.5)],
     "entry 0, field 'max_wait_iters': expected an integer >= 0, got 2.5 (float)", {}),
    ('max_wait_integral_float', 'json', [entry('change_lr', 0.5, max_wait_iters=100.0)],
     "entry 0, field 'max_wait_iters': expected an integer >= 0, got 100.0 (float)", {}),
    ('max_wait_bool', 'yaml', [entry('change_lr', 0.5, max_wait_iters=True)],
     "entry 0, field 'max_wait_iters': expected an integer >= 0, got True (bool)", {}),
    ('reevaluate_not_bool', 'json', [entry('change_lr', 0.5, reevaluate=1)],
     "entry 0, field 'reevaluate': expected true or false, got 1 (int)", {}),
    # values of the wrong type
    ('factor_string', 'yaml', [entry('change_lr', '0.5')],
     "entry 0, field 'value': change_lr: expected a finite number, got '0.5' (str)", {}),
    ('factor_bool', 'yaml', [entry('change_lr', True)],
     "entry 0, field 'value': change_lr: expected a finite number, got True (bool)", {}),
    ('set_batch_size_bool', 'json', [entry('set_batch_size', True)],
     "entry 0, field 'value': set_batch_size: expected an integer >= 1, got True (bool)", {}),
    ('set_batch_size_float', 'yaml', [entry('set_batch_size', 8.0)],
     "entry 0, field 'value': set_batch_size: expected an integer >= 1, got 8.0 (float)", {}),
    ('reset_lr_schedule_not_null', 'yaml', [entry('reset_lr_schedule', 1)],
     "entry 0, field 'value': reset_lr_schedule: expected null, got 1 (int)", {}),
    # NaN / inf / negative / zero factors
    ('factor_nan', 'json', [entry('change_lr', float('nan'))],
     "entry 0, field 'value': change_lr: expected a finite number, got nan (float)", {}),
    ('factor_inf', 'yaml', [entry('change_lr', float('inf'))],
     "entry 0, field 'value': change_lr: expected a finite number, got inf (float)", {}),
    ('factor_minus_inf', 'json', [entry('change_batch_size', float('-inf'))],
     "entry 0, field 'value': change_batch_size: expected a finite number, got -inf (float)", {}),
    ('factor_negative', 'yaml', [entry('change_lr', -0.5)],
     "entry 0, field 'value': change_lr: expected a number > 0.0, got -0.5", {}),
    ('factor_zero', 'json', [entry('change_warmup_iters', 0)],
     "entry 0, field 'value': change_warmup_iters: expected a number > 0.0, got 0", {}),
    ('set_lr_zero', 'yaml', [entry('set_lr', 0.0)],
     "entry 0, field 'value': set_lr: expected a number > 0.0, got 0.0", {}),
    ('set_grad_accum_zero', 'yaml', [entry('set_grad_accum', 0)],
     "entry 0, field 'value': set_grad_accum: expected an integer >= 1, got 0", {}),
    ('widen_factor_below_one', 'yaml', [entry('widen_mlp', 0.5)],
     "entry 0, field 'value': widen_mlp: expected a number > 1.0, got 0.5", {}),
    ('widen_factor_rounds_to_same', 'yaml', [entry('widen_mlp', 1.001)],
     "entry 0, field 'value': widen_mlp: factor 1.001 leaves the size at 128 -> 128: it must grow", {}),
    ('widen_noise_missing', 'yaml', [entry('widen_mlp', {'factor': 2.0})],
     "entry 0, field 'value': widen_mlp: missing key 'noise' (expected keys: factor, noise)", {}),
    ('widen_noise_negative', 'json', [entry('widen_mlp', {'factor': 2.0, 'noise': -0.1})],
     "entry 0, field 'value': widen_mlp: noise: expected a number >= 0.0, got -0.1", {}),
    ('widen_mapping_factor_below_one', 'yaml', [entry('widen_mlp', {'factor': 0.5, 'noise': 0.1})],
     "entry 0, field 'value': widen_mlp: factor: expected a number > 1.0, got 0.5", {}),
    ('trigger_slope_not_a_number', 'yaml', [dict(entry('change_lr', 0.5), trigger_slope='flat')],
     "entry 0, field 'trigger_slope': expected a finite number, got 'flat' (str)", {}),
    # factors that round a size to 0 (batch_size 8, accumulation 2, eval_iters 2, eval_interval 10)
    ('batch_size_rounds_to_zero', 'yaml', [entry('change_batch_size', 0.01)],
     "entry 0, field 'value': change_batch_size: this makes the batch size round to 0; it must stay >= 1", {}),
    ('batch_size_rounds_to_zero_second_op', 'json', [entry('change_batch_size', 0.2), entry('change_batch_size', 0.2)],
     "entry 1, field 'value': change_batch_size: this makes the batch size round to 0; it must stay >= 1", {}),
    ('grad_accum_rounds_to_zero', 'yaml', [entry('change_grad_accum', 0.2)],
     "entry 0, field 'value': change_grad_accum: this makes the gradient accumulation steps round to 0; "
     "it must stay >= 1", {}),
    ('grad_accum_rounds_to_zero_after_set', 'json', [entry('set_grad_accum', 1), entry('change_grad_accum', 0.4)],
     "entry 1, field 'value': change_grad_accum: this makes the gradient accumulation steps round to 0; "
     "it must stay >= 1", {}),
    ('eval_iters_rounds_to_zero', 'yaml', [entry('change_eval_iters', 0.1)],
     "entry 0, field 'value': change_eval_iters: this makes eval_iters round to 0; it must stay >= 1", {}),
    ('eval_interval_rounds_to_zero', 'yaml', [entry('change_eval_interval', 0.01)],
     "entry 0, field 'value': change_eval_interval: this makes eval_interval round to 0; it must stay >= 1", {}),
    # layer maps
    ('stack_repeat_one', 'yaml', [entry('stack_layers', 1)],
     "entry 0, field 'value': stack_layers: expected an integer >= 2, got 1", {}),
    ('stack_empty_map', 'json', [entry('stack_layers', [])],
     "entry 0, field 'value': stack_layers: expected an integer >= 2 or a non-empty list of layer indices, "
     "got [] (list)", {}),
    ('stack_map_out_of_range', 'yaml', [entry('stack_layers', [0, 1, 2])],
     "entry 0, field 'value': stack_layers: layer index 2 is out of range: the model has 2 layers at this "
     "point (indices 0..1)", {}),
    ('stack_map_negative', 'json', [entry('stack_layers', [0, -1])],
     "entry 0, field 'value': stack_layers: layer index -1 is out of range: the model has 2 layers at this "
     "point (indices 0..1)", {}),
    ('stack_map_for_grown_depth_used_before_growth', 'yaml',
     [entry('stack_layers', [0, 1, 2, 3, 3]), entry('stack_layers', 2)],
     "entry 0, field 'value': stack_layers: layer index 2 is out of range: the model has 2 layers at this "
     "point (indices 0..1)", {}),
    ('stack_map_out_of_range_after_growth', 'yaml', [entry('stack_layers', 2), entry('stack_layers', [0, 1, 2, 3, 4])],
     "entry 1, field 'value': stack_layers: layer index 4 is out of range: the model has 4 layers at this "
     "point (indices 0..3)", {}),
    ('msg_stack_map_for_old_depth_used_after_growth', 'yaml',
     [entry('stack_layers', 2), entry('msg_stack_layers', {'layers': [0, 0, 1, 1], 'anneal_iters': 10})],
     "entry 1, field 'value': msg_stack_layers: layer map [0, 0, 1, 1] must keep every old layer, in order, "
     "at its first occurrence (new layers are the repeats), so that the network is unchanged at mask 0", {}),
    ('msg_stack_map_reorders', 'json', [entry('msg_stack_layers', {'layers': [1, 0, 0, 1], 'anneal_iters': 10})],
     "entry 0, field 'value': msg_stack_layers: layer map [1, 0, 0, 1] must keep every old layer, in order, "
     "at its first occurrence (new layers are the repeats), so that the network is unchanged at mask 0", {}),
    ('msg_stack_map_out_of_range', 'yaml', [entry('msg_stack_layers', {'layers': [0, 1, 5], 'anneal_iters': 10})],
     "entry 0, field 'value': msg_stack_layers: layers: layer index 5 is out of range: the model has 2 layers "
     "at this point (indices 0..1)", {}),
    ('msg_stack_bad_init', 'yaml',
     [entry('msg_stack_layers', {'layers': [0, 1, 1], 'anneal_iters': 10, 'init': 'zeros'})],
     "entry 0, field 'value': msg_stack_layers: init must be 'copy' or 'random', got 'zeros' (str)", {}),
    # MSG values
    ('msg_value_not_a_mapping', 'yaml', [entry('msg_widen_mlp', 2)],
     "entry 0, field 'value': msg_widen_mlp: expected a mapping with keys factor, anneal_iters, got 2 (int)", {}),
    ('msg_missing_anneal_iters', 'yaml', [entry('msg_widen_mlp', {'factor': 2})],
     "entry 0, field 'value': msg_widen_mlp: missing key 'anneal_iters' (expected keys: factor, anneal_iters)", {}),
    ('msg_unknown_key', 'json', [entry('msg_widen_mlp', {'factor': 2, 'anneal_iters': 10, 'warmup': 5})],
     "entry 0, field 'value': msg_widen_mlp: unknown key 'warmup' (expected keys: factor, anneal_iters)", {}),
    ('msg_anneal_iters_zero', 'yaml', [entry('msg_widen_mlp', {'factor': 2, 'anneal_iters': 0})],
     "entry 0, field 'value': msg_widen_mlp: anneal_iters: expected an integer >= 1, got 0", {}),
    ('msg_anneal_iters_fractional', 'json', [entry('msg_add_heads', {'n_new_heads': 1, 'anneal_iters': 2.5})],
     "entry 0, field 'value': msg_add_heads: anneal_iters: expected an integer >= 1, got 2.5 (float)", {}),
    ('msg_widen_embd_factor_one', 'yaml', [entry('msg_widen_embd', {'factor': 1.0, 'anneal_iters': 10})],
     "entry 0, field 'value': msg_widen_embd: factor: expected a number > 1.0, got 1.0", {}),
    ('msg_add_zero_heads', 'yaml', [entry('msg_add_heads', {'n_new_heads': 0, 'anneal_iters': 10})],
     "entry 0, field 'value': msg_add_heads: n_new_heads: expected an integer >= 1, got 0", {}),
    # LoRA and MSG ops that cannot apply to the model at that point
    ('attn_lora_op_with_lora_off', 'yaml', [entry('change_attn_lora_rank', 0.5)],
     "entry 0, field 'value': change_attn_lora_rank: LoRA is off at this point (attn_lora_rank is 0): "
     "this operation needs it on", {}),
    ('embedding_lora_op_with_only_attn_lora', 'json', [entry('change_embedding_lora_rank', 2)],
     "entry 0, field 'value': change_embedding_lora_rank: LoRA is off at this point (embedding_lora_rank is 0): "
     "this operation needs it on", dict(attn_lora_rank=4)),
    ('merge_lora_with_lora_off', 'yaml', [entry('merge_lora_weights', None)],
     "entry 0, field 'value': merge_lora_weights: LoRA is off at this point (attn_lora_rank or "
     "embedding_lora_rank is 0): this operation needs it on", {}),
    ('lora_alpha_after_lora_removed', 'yaml', [entry('change_attn_lora_rank', 0), entry('change_lora_alpha', 2)],
     "entry 1, field 'value': change_lora_alpha: LoRA is off at this point (attn_lora_rank or "
     "embedding_lora_rank is 0): this operation needs it on", dict(attn_lora_rank=4)),
    ('merge_lora_value_not_null', 'json', [entry('merge_lora_weights', 1)],
     "entry 0, field 'value': merge_lora_weights: expected null, got 1 (int)", dict(attn_lora_rank=4)),
    ('lora_rank_factor_negative', 'yaml', [entry('change_attn_lora_rank', -1)],
     "entry 0, field 'value': change_attn_lora_rank: expected a number >= 0.0, got -1", dict(attn_lora_rank=4)),
    # a factor that rounds the rank to 0 would silently turn LoRA off and train the full weights
    ('attn_lora_rank_rounds_to_zero', 'yaml', [entry('change_attn_lora_rank', 0.1)],
     "entry 0, field 'value': change_attn_lora_rank: factor 0.1 rounds attn_lora_rank 4 to 0, which would remove "
     "the adapters and train the full weights; to remove LoRA on purpose, give the value 0", dict(attn_lora_rank=4)),
    ('embedding_lora_rank_rounds_to_zero_later', 'json',
     [entry('change_embedding_lora_rank', 0.5), entry('change_embedding_lora_rank', 0.4)],
     "entry 1, field 'value': change_embedding_lora_rank: factor 0.4 rounds embedding_lora_rank 1 to 0, which "
     "would remove the adapters and train the full weights; to remove LoRA on purpose, give the value 0",
     dict(embedding_lora_rank=2)),
    # random new layers under attention LoRA: their random attention weights would be frozen
    ('msg_stack_random_with_attn_lora', 'yaml',
     [entry('msg_stack_layers', {'layers': 2, 'anneal_iters': 10, 'init': 'random'})],
     "entry 0, field 'value': msg_stack_layers: init 'random' needs attention LoRA off at this point "
     "(attn_lora_rank 0): the new layers' random attention weights would be frozen, trained only through the "
     "adapters; use init 'copy', or remove LoRA first with change_attn_lora_rank value 0", dict(attn_lora_rank=4)),
    ('msg_add_heads_with_attn_lora', 'yaml', [entry('msg_add_heads', {'n_new_heads': 2, 'anneal_iters': 10})],
     "entry 0, field 'value': msg_add_heads: needs attention LoRA off at this point (attn_lora_rank 0)",
     dict(attn_lora_rank=4)),
    ('msg_widen_embd_with_lora', 'yaml', [entry('msg_widen_embd', {'factor': 2, 'anneal_iters': 10})],
     "entry 0, field 'value': msg_widen_embd: needs LoRA off at this point (attn_lora_rank and "
     "embedding_lora_rank 0); remove it first with change_*_lora_rank value 0", dict(embedding_lora_rank=4)),
    ('msg_widen_embd_with_lora_turned_on_later', 'json',
     [entry('change_attn_lora_rank', 2), entry('msg_widen_embd', {'factor': 2, 'anneal_iters': 10})],
     "entry 1, field 'value': msg_widen_embd: needs LoRA off at this point (attn_lora_rank and "
     "embedding_lora_rank 0); remove it first with change_*_lora_rank value 0", dict(attn_lora_rank=4)),
    # absurd sizes, refused before anything that big is built (the machine has 16 GiB)
    ('widen_mlp_million', 'yaml', [entry('widen_mlp', 1e6)],
     "entry 0, field 'value': widen_mlp: this would create 16384.0M parameters, about 244.1 GiB to train, "
     "more than the 16.0 GiB of cpu", {}),
    ('stack_layers_repeat_huge', 'yaml', [entry('stack_layers', 10**12)],
     "entry 0, field 'value': stack_layers: this would create 24576000000.0M parameters, about 366210937.5 GiB "
     "to train, more than the 16.0 GiB of cpu", {}),
    ('msg_widen_embd_huge', 'json', [entry('msg_widen_embd', {'factor': 1e5, 'anneal_iters': 10})],
     "entry 0, field 'value': msg_widen_embd: this would create 2665.6M parameters, about 39.7 GiB to train, "
     "more than the 16.0 GiB of cpu", {}),
    ('msg_add_heads_huge', 'yaml', [entry('msg_add_heads', {'n_new_heads': 10**7, 'anneal_iters': 10})],
     "entry 0, field 'value': msg_add_heads: this would create 40960.0M parameters, about 610.4 GiB to train, "
     "more than the 16.0 GiB of cpu", {}),
    ('lora_rank_huge', 'yaml', [entry('change_attn_lora_rank', 1e8)],
     "entry 0, field 'value': change_attn_lora_rank: this would create 153600.0M parameters, about 2288.8 GiB "
     "to train, more than the 16.0 GiB of cpu", dict(attn_lora_rank=4)),
    ('widen_after_growth_too_big', 'yaml', [entry('stack_layers', 8), entry('widen_mlp', 1e5)],
     "entry 1, field 'value': widen_mlp: this would create 13107.2M parameters, about 195.3 GiB to train, "
     "more than the 16.0 GiB of cpu", {}),
]


@pytest.mark.parametrize('fmt, entries, expected, config',
                         [pytest.param(*c[1:], id=c[0]) for c in ENTRY_CASES])
def test_schedule_entry_refused(tmp_path, tiny, fmt, entries, expected, config):
    path = write_entries(tmp_path, fmt, entries)
    assert refused(check_schedule, path, variant(TINY, **config)) == f"{path}: {expected}"


def test_stack_layers_to_thousands_of_layers_on_a_big_config(tmp_path, tiny):
    path = write_entries(tmp_path, 'yaml', [entry('change_lr', 0.5), entry('stack_layers', 200)])
    # 2400 layers of 7,077,888 matmul weights each
    assert refused(check_schedule, path, GPT2) == (
        f"{path}: entry 1, field 'value': stack_layers: this would create 16986.9M parameters, about 253.1 GiB "
        "to train, more than the 16.0 GiB of cpu")


def test_batch_too_big_for_memory_after_the_op(tmp_path, tiny):
    path = write_entries(tmp_path, 'json', [entry('change_batch_size', 1000)])
    assert refused(check_schedule, path, GPT2) == (
        f"{path}: entry 0 (change_batch_size): the model would need about 6751.9 GiB to train "
        "(123.6M parameters, batch 8000), more than the 16.0 GiB of cpu")


def test_config_too_big_for_memory(tmp_path, tiny):
    path = write_entries(tmp_path, 'yaml', [])
    big = GPTConfig(n_layer=100, n_head=64, n_embd=8192, block_size=1024, vocab_size=50304, bias=False)
    assert refused(check_schedule, path, big) == (
        "config: the model would need about 1806.3 GiB to train (80944.4M parameters, batch 8), "
        "more than the 16.0 GiB of cpu")


VALID_SCHEDULES = [
    # (id, entries, config overrides, n_layer / n_hidden / n_embd of the last plan row): the checks
    # above refuse these only at the point in the schedule where they stop applying
    ('grown_depth_map_after_growth', [entry('stack_layers', 2), entry('stack_layers', [0, 1, 2, 3, 3])], {},
     (5, 128, 32)),
    ('msg_stack_map_at_old_depth', [entry('msg_stack_layers', {'layers': [0, 0, 1, 1], 'anneal_iters': 10})], {},
     (4, 128, 32)),
    ('batch_size_stays_positive', [entry('change_batch_size', 0.2), entry('change_batch_size', 2.5)], {}, (2, 128, 32)),
    ('widen_embd_after_lora_removed', [entry('change_embedding_lora_rank', 0),
                                        entry('msg_widen_embd', {'factor': 2, 'anneal_iters': 10})],
     dict(embedding_lora_rank=4), (2, 128, 64)),
    ('widen_mlp_that_fits', [entry('widen_mlp', 100)], {}, (2, 12800, 32)),
    ('lora_rank_removed_on_purpose', [entry('change_attn_lora_rank', 0)], dict(attn_lora_rank=4), (2, 128, 32)),
    ('lora_rank_halved_to_one', [entry('change_attn_lora_rank', 0.3)], dict(attn_lora_rank=4), (2, 128, 32)),
    ('msg_stack_random_with_embedding_lora_only', [entry('msg_stack_layers', {'layers': 2, 'anneal_iters': 10,
                                                                           'init': 'random'})],
     dict(embedding_lora_rank=4), (4, 128, 32)),
    ('msg_stack_copy_with_attn_lora', [entry('msg_stack_layers', {'layers': 2, 'anneal_iters': 10})],
     dict(attn_lora_rank=4), (4, 128, 32)),
]


@pytest.mark.parametrize('entries, config, shape', [pytest.param(*c[1:], id=c[0]) for c in VALID_SCHEDULES])
def test_valid_schedule_passes(tmp_path, tiny, entries, config, shape):
    plan = check_schedule(write_entries(tmp_path, 'yaml', entries), variant(TINY, **config))
    assert [row['index'] for row in plan] == list(range(len(entries)))
    assert (plan[-1]['n_layer'], plan[-1]['n_hidden'], plan[-1]['n_embd']) == shape
    assert train.model is None and train.orch.multipliers == {}  # the walk left nothing behind


# -----------------------------------------------------------------------------
# configs and overrides

def defaults():
    return {k: getattr(train, k) for k in train.config_keys}


OVERRIDE_CASES = [
    ('unknown_key', ['--n_layr=2'], "command line: unknown config key 'n_layr' (did you mean 'n_layer'?)"),
    ('string_for_int', ['--batch_size=abc'], "command line: --batch_size=abc is a str, expected an int"),
    ('float_for_int', ['--max_iters=1e4'], "command line: --max_iters=1e4 is a float, expected an int"),
    ('bool_for_float', ['--learning_rate=True'], "command line: --learning_rate=True is a bool, expected a float"),
    ('int_for_bool', ['--compile=1'], "command line: --compile=1 is an int, expected a bool"),
    ('nan_word_for_float', ['--learning_rate=nan'], "command line: --learning_rate=nan is a str, expected a float"),
    ('no_equals', ['--max_iters', '100'], "command line: expected --key=value, got '--max_iters'"),
]


@pytest.mark.parametrize('argv, expected', [pytest.param(*c[1:], id=c[0]) for c in OVERRIDE_CASES])
def test_override_refused(argv, expected):
    assert refused(configure, argv, defaults(), error=ConfigError) == expected


CONFIG_FILE_CASES = [
    ('unknown_key', "n_layer = 2\nlearning_rat = 1e-3\n",
     "{path}: unknown config key 'learning_rat' (did you mean 'learning_rate'?)"),
    ('wrong_type', "batch_size = 'big'\n", "{path}: batch_size = 'big' is a str, expected an int"),
    ('raises', "n_layer = 4\nn_head = n_layer // 0\n",
     "{path}, line 2: ZeroDivisionError: integer division or modulo by zero"),
    ('raises_name_error', "n_embd = 64\nn_hidden = 4 * embd\n",
     "{path}, line 2: NameError: name 'embd' is not defined"),
]


@pytest.mark.parametrize('text, expected', [pytest.param(*c[1:], id=c[0]) for c in CONFIG_FILE_CASES])
def test_config_file_refused(tmp_path, text, expected):
    path = tmp_path / 'my_config.py'
    path.write_text(text)
    assert refused(configure, [str(path)], defaults(), error=ConfigError) == expected.replace('{path}', str(path))


def test_config_file_syntax_error(tmp_path):
    path = tmp_path / 'my_config.py'
    path.write_text("n_layer = 2\nn_head = (4\n")
    assert refused(configure, [str(path)], defaults(), error=ConfigError).startswith(f"{path}, line 2: SyntaxError: ")


def test_config_file_not_found(tmp_path):
    path = str(tmp_path / 'nope.py')
    assert refused(configure, [path], defaults(), error=ConfigError) == f"config file not found: {path}"


CONFIG_VALUE_CASES = [
    ('init_from', dict(init_from='resum'), "init_from: expected scratch, resume, gpt2, gpt2-medium, gpt2-large, "
     "gpt2-xl or a Hugging Face GPT-2 folder, got 'resum' (no such folder)"),
    ('dtype', dict(dtype='fp16'), "dtype: expected one of float32, bfloat16, float16, got 'fp16'"),
    ('optimizer_policy', dict(growth_optimizer_state='keep'),
     "growth_optimizer_state: expected one of carry, reset, got 'keep'"),
    ('batch_size_zero', dict(batch_size=0), "batch_size: expected an integer >= 1, got 0"),
    ('grad_accum_zero', dict(gradient_accumulation_steps=0),
     "gradient_accumulation_steps: expected an integer >= 1, got 0"),
    ('eval_iters_zero', dict(eval_iters=0), "eval_iters: expected an integer >= 1, got 0"),
    ('log_interval_zero', dict(log_interval=0), "log_interval: expected an integer >= 1, got 0"),
    ('n_embd_not_divisible', dict(n_head=3), "config: n_embd=32 is not divisible by n_head=3"),
]


@pytest.mark.parametrize('settings, expected', [pytest.param(*c[1:], id=c[0]) for c in CONFIG_VALUE_CASES])
def test_config_value_refused(tmp_path, tiny, monkeypatch, settings, expected):
    write_char_data(tmp_path / 'data', n_chars=5000)
    base = dict(data_dir=str(tmp_path / 'data'), n_layer=2, n_head=2, n_embd=32, log_interval=1)
    for key, value in {**base, **settings}.items():
        monkeypatch.setattr(train, key, value)
    assert refused(train.check_inputs) == expected


# -----------------------------------------------------------------------------
# data folders

def make_data(folder, train_tokens=200, val_tokens=100, vocab_size=65, train_max=None, val_max=None):
    """Random tokens 0..9, the largest one (if given) in the middle of the split."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, n, largest in (('train.bin', train_tokens, train_max), ('val.bin', val_tokens, val_max)):
        tokens = rng.integers(0, 10, n, dtype=np.uint16)
        if largest is not None:
            tokens[n // 2] = largest
        tokens.tofile(folder / name)
    with open(folder / 'meta.pkl', 'wb') as f:
        pickle.dump({'vocab_size': vocab_size}, f)
    return str(folder)


GENERIC = "python data/text/prepare.py --input YOUR_TEXT --out_dir {d} --tokenizer char"
DATA_CASES = [
    # (id, make_data arguments, file to remove, dataset, expected; {d} is the folder)
    ('missing_train_bin', {}, 'train.bin', 'mydata', "data: {d}/train.bin not found; make it with: " + GENERIC),
    ('missing_val_bin', {}, 'val.bin', 'mydata', "data: {d}/val.bin not found; make it with: " + GENERIC),
    ('missing_meta_pkl', {}, 'meta.pkl', 'mydata', "data: {d}/meta.pkl not found; make it with: " + GENERIC),
    ('missing_meta_known_dataset', {}, 'meta.pkl', 'shakespeare_char',
     "data: {d}/meta.pkl not found; make it with: python data/shakespeare_char/prepare.py --out_dir {d}"),
    ('vocab_smaller_than_train_tokens', dict(train_max=100), None, 'mydata',
     "data: train.bin in {d} holds token 100, but meta.pkl's vocab_size is 65; remake the data with: " + GENERIC),
    ('vocab_equal_to_largest_val_token', dict(val_max=65), None, 'mydata',
     "data: val.bin in {d} holds token 65, but meta.pkl's vocab_size is 65; remake the data with: " + GENERIC),
    ('val_shorter_than_block', dict(val_tokens=20), None, 'mydata',
     "data: val.bin in {d} has 20 tokens, fewer than block_size+1 (33)"),
    ('train_exactly_block_size', dict(train_tokens=32), None, 'mydata',
     "data: train.bin in {d} has 32 tokens, fewer than block_size+1 (33)"),
    ('train_bin_empty', dict(train_tokens=0), None, 'mydata',
     "data: train.bin in {d} has 0 tokens, fewer than block_size+1 (33)"),
]


@pytest.mark.parametrize('make, remove, dataset, expected', [pytest.param(*c[1:], id=c[0]) for c in DATA_CASES])
def test_data_refused(tmp_path, tiny, monkeypatch, make, remove, dataset, expected):
    folder = make_data(tmp_path / 'data', **make)
    if remove:
        os.remove(os.path.join(folder, remove))
    monkeypatch.setattr(train, 'data_dir', folder)
    monkeypatch.setattr(train, 'dataset', dataset)
    assert refused(train.check_data) == expected.replace('{d}', folder)


def test_data_bin_with_odd_byte_count(tmp_path, tiny, monkeypatch):
    folder = make_data(tmp_path / 'data')
    with open(os.path.join(folder, 'val.bin'), 'ab') as f:
        f.write(b'\x01')
    monkeypatch.setattr(train, 'data_dir', folder)
    assert refused(train.check_data) == (
        f"data: val.bin in {folder} has an odd number of bytes (201), so it is not uint16 tokens; remake it with: "
        + GENERIC.replace('{d}', folder))


def test_data_is_read_once_then_its_largest_token_remembered(tmp_path, tiny, monkeypatch):
    """check_data once read all of train.bin at every launch (18 GB per rank on OpenWebText): now the
    largest token of each file is remembered by size and mtime, and a later launch reads none of it.
    A meta.pkl that does not match is still refused, and a changed file is read again."""
    folder = make_data(tmp_path / 'data', train_max=40, val_max=30)
    monkeypatch.setattr(train, 'data_dir', folder)
    reads, memmap = [], np.memmap
    monkeypatch.setattr(np, 'memmap', lambda path, *args, **kwargs: reads.append(os.path.basename(path))
                        or memmap(path, *args, **kwargs))
    assert train.check_data()['vocab_size'] == 65 and reads == ['train.bin', 'val.bin']
    with open(os.path.join(folder, 'largest_token.json')) as f:
        memo = json.load(f)
    assert (memo['train.bin']['largest'], memo['val.bin']['largest']) == (40, 30)
    assert memo['train.bin']['file'][0] == 400
    for _ in range(3):
        train.check_data()
    assert reads == ['train.bin', 'val.bin']
    with open(os.path.join(folder, 'meta.pkl'), 'wb') as f:
        pickle.dump({'vocab_size': 40}, f)  # a meta.pkl of other data
    assert refused(train.check_data) == (f"data: train.bin in {folder} holds token 40, but meta.pkl's vocab_size is 40; "
                                         "remake the data with: " + GENERIC.replace('{d}', folder))
    assert reads == ['train.bin', 'val.bin']
    path = os.path.join(folder, 'train.bin')
    mtime_ns = os.stat(path).st_mtime_ns
    np.full(200, 7, dtype=np.uint16).tofile(path)  # the same size, other tokens
    os.utime(path, ns=(mtime_ns + 10**9, mtime_ns + 10**9))
    assert train.check_data()['vocab_size'] == 40 and reads == ['train.bin', 'val.bin', 'train.bin']


@pytest.mark.parametrize('content, found', [
    pytest.param(b'not a pickle', "(invalid load key, 'n'.)", id='meta_garbage'),
    pytest.param(pickle.dumps({'itos': {}}), "('vocab_size')", id='meta_without_vocab_size'),
])
def test_data_meta_unreadable(tmp_path, tiny, monkeypatch, content, found):
    folder = make_data(tmp_path / 'data')
    with open(os.path.join(folder, 'meta.pkl'), 'wb') as f:
        f.write(content)
    monkeypatch.setattr(train, 'data_dir', folder)
    assert refused(train.check_data) == (
        f"data: {folder}/meta.pkl is unreadable or has no vocab_size {found}; remake it with: "
        + GENERIC.replace('{d}', folder))


# -----------------------------------------------------------------------------
# checkpoints to resume from

def test_resume_without_checkpoint(tmp_path):
    path = str(tmp_path / 'ckpt.pt')
    assert refused(train.load_checkpoint, path) == f"init_from='resume': no checkpoint at {path}"


def test_resume_from_garbage(tmp_path):
    path = tmp_path / 'ckpt.pt'
    path.write_bytes(b'this is not a checkpoint')
    assert refused(train.load_checkpoint, str(path)).startswith(
        f"{path}: not a readable checkpoint (truncated or corrupted?): ")


def test_resume_from_foreign_checkpoint(tmp_path):
    path = str(tmp_path / 'ckpt.pt')
    torch.save({'model': {}, 'model_args': {}, 'optimizer': {}}, path)
    assert refused(train.load_checkpoint, path) == f"{path}: not a checkpoint of this train.py: missing 'iter_num'"


# -----------------------------------------------------------------------------
# the real command line: exit 2, one line on stderr, no traceback, out_dir untouched

def cli_case_schedule(tmp_path, data):
    path = write_entries(tmp_path, 'yaml', [entry('change_lr', 0.5), entry('widen_mpl', 2)])
    return ([f'--scaling_schedule_file={path}'],
            f"error: {path}: entry 1, field 'name': unknown operation 'widen_mpl' (did you mean 'widen_mlp'?)")


def cli_case_schedule_memory(tmp_path, data):
    path = write_entries(tmp_path, 'json', [entry('stack_layers', 10**9)])
    return [f'--scaling_schedule_file={path}'], None  # the machine's memory is in the message: see below


def cli_case_config(tmp_path, data):
    path = tmp_path / 'my_config.py'
    path.write_text("n_layer = 1\ndropuot = 0.1\n")
    return [str(path)], f"error: {path}: unknown config key 'dropuot' (did you mean 'dropout'?)"


def cli_case_override(tmp_path, data):
    return ['--max_iters=ten'], "error: command line: --max_iters=ten is a str, expected an int"


def cli_case_config_value(tmp_path, data):
    return ['--batch_size=0'], "error: batch_size: expected an integer >= 1, got 0"


def cli_case_data(tmp_path, data):
    os.remove(os.path.join(data, 'meta.pkl'))
    return [], f"error: data: {data}/meta.pkl not found; make it with: " + GENERIC.replace('{d}', data)


def cli_case_checkpoint(tmp_path, data):
    return ['--init_from=resume'], None  # the garbage ckpt.pt made below


CLI_CASES = [cli_case_schedule, cli_case_schedule_memory, cli_case_config, cli_case_override,
             cli_case_config_value, cli_case_data, cli_case_checkpoint]


@pytest.mark.parametrize('case', CLI_CASES, ids=[c.__name__[len('cli_case_'):] for c in CLI_CASES])
@pytest.mark.slow
def test_command_line_refuses_and_touches_nothing(tmp_path, case):
    data = str(tmp_path / 'data')
    write_char_data(data, n_chars=5000)
    out_dir = tmp_path / 'out'
    out_dir.mkdir()
    (out_dir / 'ckpt.pt').write_bytes(b'an old checkpoint, not torch: must stay as it is')
    (out_dir / 'events.jsonl').write_text('{"event": "eval", "iter": 0}\n')
    before = {name: file_state(out_dir / name) for name in os.listdir(out_dir)}
    extra, expected = case(tmp_path, data)
    config_files = [a for a in extra if not a.startswith('--')]
    args = config_files + train_args(data, out_dir, max_iters=2) + [a for a in extra if a.startswith('--')]
    result = run_train(args, timeout=300)
    assert result.returncode == 2, result.stderr
    assert 'Traceback' not in result.stderr and 'Traceback' not in result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr
    if case is cli_case_schedule_memory:
        path = str(tmp_path / 'schedule.json')
        assert lines[0].startswith(f"error: {path}: entry 0, field 'value': stack_layers: this would create "
                                   "12288000.0M parameters, about ")
        assert lines[0].endswith(" GiB of cpu")
    elif case is cli_case_checkpoint:
        assert lines[0].startswith(f"error: {out_dir}/ckpt.pt: not a readable checkpoint (truncated or corrupted?): ")
    else:
        assert lines[0] == expected
    assert {name: file_state(out_dir / name) for name in os.listdir(out_dir)} == before


@pytest.mark.slow
def test_command_line_refuses_without_creating_out_dir(tmp_path):
    data = str(tmp_path / 'data')
    write_char_data(data, n_chars=5000)
    out_dir = tmp_path / 'new_out'
    path = write_entries(tmp_path, 'yaml', [entry('change_lr', float('nan'))])
    result = run_train(train_args(data, out_dir, max_iters=2) + [f'--scaling_schedule_file={path}'], timeout=300)
    assert (result.returncode, result.stderr) == (
        2, f"error: {path}: entry 0, field 'value': change_lr: expected a finite number, got nan (float)\n")
    assert not out_dir.exists()


# -----------------------------------------------------------------------------
# a real checkpoint, changed: a key a resume reads is gone, or another number of DDP processes

@pytest.fixture(scope='module')
def written_checkpoint(tmp_path_factory):
    """A 2-iter run's data folder and ckpt.pt."""
    root = tmp_path_factory.mktemp('written')
    write_char_data(root / 'data', n_chars=5000)
    result = run_train(train_args(root / 'data', root / 'out', max_iters=2, eval_interval=2), timeout=300)
    assert result.returncode == 0, result.stderr
    return root


def changed_checkpoint(written_checkpoint, tmp_path, change):
    """A copy of the written checkpoint, change(checkpoint) applied, saved in tmp_path/out."""
    checkpoint = torch.load(written_checkpoint / 'out' / 'ckpt.pt', map_location='cpu', weights_only=True)
    change(checkpoint)
    (tmp_path / 'out').mkdir()
    torch.save(checkpoint, tmp_path / 'out' / 'ckpt.pt')
    return str(tmp_path / 'out' / 'ckpt.pt')


@pytest.mark.parametrize('key', ['scaler', 'next_eval_iter', 'tokens', 'wandb_run_id'])
@pytest.mark.slow
def test_resume_from_a_checkpoint_without_a_key_it_needs(written_checkpoint, tmp_path, key):
    """Once refused with a KeyError traceback, after the model was built."""
    parent, _, name = key.rpartition('.')
    path = changed_checkpoint(written_checkpoint, tmp_path, lambda c: (c[parent] if parent else c).pop(name))
    assert refused(train.load_checkpoint, path) == f"{path}: not a checkpoint of this train.py: missing '{key}'"


@pytest.mark.slow
def test_resume_with_fewer_ddp_processes_than_wrote_the_checkpoint(written_checkpoint, tmp_path):
    """A checkpoint of 2 processes resumed by 1: refused in one line naming both sizes (it once went on,
    silently, with rank 0's data order alone)."""
    changed_checkpoint(written_checkpoint, tmp_path, lambda c: c['rng'].append(c['rng'][0]))
    result = run_train(train_args(written_checkpoint / 'data', tmp_path / 'out', max_iters=4, eval_interval=2,
                                  init_from='resume'), timeout=300)
    assert (result.returncode, result.stderr) == (2, f"error: {tmp_path}/out/ckpt.pt: written by 2 DDP process(es), "
                                                     "resumed with 1; resume with 2 (each one continues its own data order)\n")


@pytest.mark.slow
def test_resume_with_more_ddp_processes_than_wrote_the_checkpoint(written_checkpoint, tiny, monkeypatch):
    """A checkpoint of 1 process resumed by 2 once stopped with an IndexError traceback on rank 1."""
    for key, value in dict(init_from='resume', out_dir=str(written_checkpoint / 'out'), ddp_world_size=2,
                           data_dir=str(written_checkpoint / 'data')).items():
        monkeypatch.setattr(train, key, value)
    assert refused(train.check_inputs) == (f"{written_checkpoint}/out/ckpt.pt: written by 1 DDP process(es), "
                                           "resumed with 2; resume with 1 (each one continues its own data order)")


@pytest.mark.slow
@pytest.mark.parametrize('seed', ['100000000000000000000', '-1'])
def test_a_seed_torch_cannot_take_is_one_line(tmp_path, seed):
    """Found by hand after the override fuzzer: a seed beyond 64 bits ended in an OverflowError traceback."""
    write_char_data(tmp_path / 'data', n_chars=5000)
    result = run_train(train_args(tmp_path / 'data', tmp_path / 'out', seed=seed))
    assert result.returncode == 2, describe_run(result)
    assert result.stderr.strip() == f"error: seed: expected an integer from 0 to {train.MAX_SEED}, got {seed}"
    assert not (tmp_path / 'out').exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without CUDA")
def test_a_cuda_device_without_cuda_is_one_line_but_a_dry_run_passes(tmp_path, tiny, monkeypatch):
    """Found by hand: --device=cuda on a CPU-only torch ended in an AssertionError traceback at .to(device)."""
    write_char_data(tmp_path / 'data', n_chars=5000)
    for key, value in dict(data_dir=str(tmp_path / 'data'), n_layer=2, n_head=2, n_embd=32, device='cuda').items():
        monkeypatch.setattr(train, key, value)
    assert refused(train.check_inputs) == ("device: 'cuda', but this torch sees no CUDA device; train with "
                                           "--device=cpu (a dry run validates a GPU recipe on any machine)")
    monkeypatch.setattr(train, 'dry_run', True)
    model_config, checkpoint, plan = train.check_inputs()
    assert (model_config.n_layer, checkpoint, plan) == (2, None, [])
