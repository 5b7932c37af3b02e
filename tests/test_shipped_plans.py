"""
The shipped recipes plan without a warning (issue 21): every `python train.py config/....py [--key=value ...]`
command in the comments of config/ and configs/ and in README_ORCHESTRATOR.md, and every config/*.py with a
schedule, is validated as its dry run would validate it: the plan of its schedule has no warning (an entry that
may not run before max_iters, a decay left unfinished). In-process, on the recipe's model config.
"""

import glob
import os
import re

import pytest

import train
from configurator import configure
from helpers import REPO
from model import GPTConfig

VOCAB_SIZES = {'shakespeare_char': 65, 'gutenberg': 256}  # else GPT-2's padded 50304


def shown_commands():
    """The train.py arguments of every command shown with a recipe, and every recipe alone."""
    commands = {f"config/{os.path.basename(path)}" for path in glob.glob(os.path.join(REPO, 'config', '*.py'))}
    for path in glob.glob(os.path.join(REPO, 'config*', '*')) + [os.path.join(REPO, 'README_ORCHESTRATOR.md')]:
        with open(path, encoding='utf-8') as f:
            commands.update(re.findall(r"python train\.py (config/\w+\.py(?: --\w+=[^\s`]+)*)", f.read()))
    return sorted(commands)


@pytest.fixture
def restore_orchestrator():
    saved = train.orchestrator_state()
    yield
    train.load_orchestrator_state(saved)


@pytest.mark.parametrize('command', shown_commands())
def test_shipped_recipe_plans_without_a_warning(command, monkeypatch, restore_orchestrator):
    monkeypatch.chdir(REPO)  # recipes read other recipes by relative path
    config = configure(command.split(), {k: getattr(train, k) for k in train.config_keys}, verbose=False)
    for key, value in config.items():
        monkeypatch.setattr(train, key, value)
    if not train.scaling_schedule_file:
        pytest.skip("no schedule")
    if train.device.startswith('cuda'):  # a GPU recipe: planned as on an 80 GB GPU, whatever this machine has
        monkeypatch.setattr(train, 'available_memory_bytes', lambda: 80 * 2**30)
    model_config = GPTConfig(n_layer=train.n_layer, n_head=train.n_head, n_embd=train.n_embd, n_hidden=train.n_hidden,
                             head_size=train.head_size, block_size=train.block_size, bias=train.bias,
                             vocab_size=VOCAB_SIZES.get(train.dataset, 50304), attn_lora_rank=train.attn_lora_rank,
                             embedding_lora_rank=train.embedding_lora_rank, lora_alpha=train.lora_alpha)
    entries = train.load_schedule_file(train.scaling_schedule_file)
    train.reset_orchestrator(entries)
    plan = train.validate_schedule(train.scaling_schedule_file, entries, 0, model_config)
    assert len(plan) == len(entries) > 0
    assert [row['warning'] for row in plan if row['warning']] == []
