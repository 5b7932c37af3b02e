"""
Training script with a growth orchestrator. Runs on one CPU or GPU, or under DDP.

Single process, e.g. the CPU demo:
$ python train.py config/train_shakespeare_char_cpu.py --scaling_schedule_file=configs/test_scaling_schedule.yaml

DDP on 4 gpus on 1 node (or 2 cpu processes, gloo):
$ torchrun --standalone --nproc_per_node=4 train.py

The orchestrator follows a schedule file: at every eval, while the next entry's trigger fires
(val loss below trigger_loss, or max_wait_iters since the previous operation), it runs that
entry's operation: a hyperparameter change, or a growth of the model. See README_ORCHESTRATOR.md.
"""

import datetime
import difflib
import json
import math
import os
import pickle
import shlex
import signal
import sys
import time
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import checkpoint as ckpt_files
from configurator import ConfigError, UserError, configure, help_requested, key_comments, print_help
from model import (ACTIVATIONS, ARCH_KEYS, GPT, GPT2_HUB_NAMES, HF_FREE_KEYS, LORA_KEYS, OPTIMIZERS, POS_EMBS, GPTConfig,
                   attn_lora_ranks, carry_optimizer_state, hf_model_args, import_transformers, layer_rank_changes,
                   mask_at)

# -----------------------------------------------------------------------------
# default config values designed to train a gpt2 (124M) on OpenWebText
# I/O
out_dir = 'out'
eval_interval = 2000
log_interval = 1
eval_iters = 200
eval_only = False  # if True, evaluate the model (on a resume: the checkpoint's), print the losses and exit; writes nothing
final_eval_iters = 0  # > 0: when the run ends at max_iters, val scored once more on this many fixed batches (event final_eval)
final_eval_extra = ''  # a data folder with val.bin (same vocabulary) that the final eval scores too, e.g. text of another kind
always_save_checkpoint = True  # if True, always save a checkpoint after each eval
init_from = 'scratch'  # 'scratch', 'resume', or GPT-2 weights: 'gpt2'..'gpt2-xl' or a Hugging Face GPT-2 folder
overwrite = False  # a new run (not a resume) may replace the run it finds in out_dir (ckpt.pt, events.jsonl)
# wandb logging
wandb_log = False  # disabled by default
wandb_project = 'owt'
wandb_run_name = 'gpt2'
# data
dataset = 'openwebtext'
data_dir = ''  # '' means data/{dataset}
gradient_accumulation_steps = 5 * 8  # used to simulate larger batch sizes; summed over DDP ranks
batch_size = 12  # if gradient_accumulation_steps > 1, this is the micro-batch size
block_size = 1024  # the model's context; evals read blocks of it (set_seq_len / change_seq_len train on shorter ones)
# model
n_layer = 12
n_head = 12
n_embd = 768
n_hidden = 0  # mlp width; 0 means 4 * n_embd
head_size = 0  # 0 means n_embd // n_head
dropout = 0.0  # for pretraining 0 is good, for finetuning try 0.1+
bias = False  # do we use bias inside LayerNorm and Linear layers?
attn_lora_rank = 0  # LoRA adapters on the attention projections (0 = off); per layer: {'0': 4, '2-3': 16, '*': 8}
embedding_lora_rank = 0  # LoRA adapter on the token embedding and tied head (0 = off)
lora_alpha = 1.0
activation = 'gelu'  # the mlp's GELU: 'gelu' (exact) or 'gelu_tanh' (GPT-2's tanh approximation)
pos_emb = 'learned'  # 'learned' (a wpe table, GPT-2) or 'rope' (rotary, no wpe; head_size even; exports as GPT-NeoX)
rope_base = 10000.0  # rope: pair i of a head turns by position * rope_base^(-2i / head_size)
# optimizer
# 'adamw', or 'muon': Muon (momentum 0.95) for the blocks' weight matrices, its update scaled to AdamW's size
# so that learning_rate and every lr op mean the same for both; AdamW for embeddings and head, norms, biases and
# LoRA adapters. Fixed for the run (a resume keeps it). Muon needs torch 2.9 or newer (torch.optim.Muon)
optimizer = 'adamw'  # 'adamw' or 'muon' (above)
# adamw (muon shares learning_rate, weight_decay and the lr schedule)
learning_rate = 6e-4  # max learning rate
max_iters = 600000  # total number of training iterations
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # clip gradients at this value, or disable if == 0.0
# learning rate decay settings
decay_lr = True  # whether to decay the learning rate
lr_schedule = 'cosine'  # 'cosine': warmup, cosine decay to min_lr at lr_decay_iters; 'wsd': warmup, stable, decay
cooldown_iters = 0  # wsd: the decay to min_lr takes the last cooldown_iters before lr_decay_iters; 0 = a fifth of lr_decay_iters
warmup_iters = 2000  # how many steps to warm up for
lr_decay_iters = 600000  # should be ~= max_iters per Chinchilla
min_lr = 6e-5  # minimum learning rate, should be ~= learning_rate/10 per Chinchilla
# DDP settings
backend = ''  # '' picks nccl for cuda, gloo for cpu
# system
device = 'cuda'  # examples: 'cpu', 'cuda', 'cuda:0', 'cuda:1' or 'mps' on macbooks
dtype = ('bfloat16' if torch.cuda.is_bf16_supported() else 'float16') if torch.cuda.is_available() else 'float32'  # 'float32', 'bfloat16' or 'float16' (autocast, fp32 weights)
compile = True  # use PyTorch 2.0 to compile the model to be faster
seed = 1337  # each DDP rank adds its rank
# orchestrator
scaling_schedule_file = ''  # a YAML or JSON schedule; '' = none (on resume: the schedule stored in the checkpoint)
dry_run = False  # validate the schedule against the model, print the plan, exit
growth_optimizer_state = 'carry'  # after a growth op: 'carry' the optimizer state through the lineage, or 'reset'
growth_lr_rewarm_iters = 0  # > 0: linear lr re-warmup over this many iters after a growth op
skip_nonfinite_steps = 0  # 0: stop at a non-finite loss/grad norm; N: skip such steps, stop after N in a row
trigger_slope_evals = 3  # trigger_slope: fit the slope over this many most recent evals since the previous op
check_rank_consistency = True  # DDP: compare a parameter checksum across ranks after every growth op
# -----------------------------------------------------------------------------
config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
config_defaults = {k: globals()[k] for k in config_keys}  # a model key off its default must agree with imported weights
# keys that take a structured value besides their default's type, with the types they take (configurator checks)
CONFIG_TYPES = {'attn_lora_rank': (int, dict)}
# -----------------------------------------------------------------------------
# orchestrator state: everything the schedule changes lives in one object, `orch`, checkpointed as one dict

@dataclass
class Orchestrator:
    # each setting of SETTINGS (below) is the config's value, or the last set_ op's, times its multiplier:
    # the product of the change_ factors since (a setting missing here has never been changed: 1)
    multipliers: dict = field(default_factory=dict)
    lr_schedule_offset: int = 0  # the lr schedule (warmup, decay) runs on iter_num - lr_schedule_offset
    # absolute values of set_ ops (e.g. {'lr': [peak, min]}): a multiplier scales these, not the config's
    set_values: dict = field(default_factory=dict)
    schedule: list = field(default_factory=list)  # the entries still to run, next first
    schedule_position: int = 0  # index in the schedule file of schedule[0]
    iter_of_last_op: int = 0
    executed_ops: list = field(default_factory=list)  # the entries already run, each with the iter and reason
    active_ramp: dict = None  # the MSG mask still rising: {'name', 'start_iter', 'anneal_iters'}
    iter_of_last_growth: int = -1  # for growth_lr_rewarm_iters; -1 = no growth yet
    # [training flops, val loss] of each eval since the previous op, for trigger_slope
    evals_since_op: list = field(default_factory=list)


orch = Orchestrator()
ORCHESTRATOR_KEYS = [f.name for f in fields(Orchestrator)]
ddp_world_size = 1  # set by setup_distributed; the orchestrator's rounding of grad accumulation needs it
master_process = True  # rank 0 logs and writes; set by setup_distributed
model = None  # the GPT being trained (set in main; growth ops change it in place)
progress = {}  # iter_num, tokens, flops, eval_flops, best_val_loss, next_eval_iter; all checkpointed
PROGRESS_KEYS = ('iter_num', 'tokens', 'flops', 'eval_flops', 'best_val_loss', 'next_eval_iter')
EVAL_SEED = 0  # eval batches do not depend on `seed`, so runs with different seeds share them


# -----------------------------------------------------------------------------
# effective values: the loop reads every schedulable setting through these

# a setting of SETTINGS (the table, with the schedule below) is its config value, or the absolute value of the
# last set_ op (set_values, checkpointed: a run resumed with another --learning_rate keeps the lr that set_lr
# gave), times its multiplier

def scheduled_value(name):
    """A setting as the schedule leaves it, before rounding: a list (lr's peak and min) scales as a whole."""
    value = orch.set_values.get(name, SETTING[name].config_value())
    multiplier = orch.multipliers.get(name, 1.0)
    return [v * multiplier for v in value] if isinstance(value, list) else value * multiplier


def effective(name):
    """An integer setting as the loop uses it."""
    return round(scheduled_value(name))


def effective_batch_size():
    return effective('batch_size')


def grad_accum_total():
    """Global accumulation steps before the rounding to the world size."""
    return scheduled_value('grad_accum')


def effective_grad_accum():
    """Global accumulation steps (summed over ranks), rounded to the nearest multiple of the
    DDP world size, at least one step per rank."""
    return max(1, round(grad_accum_total() / ddp_world_size)) * ddp_world_size


def effective_eval_iters():
    return effective('eval_iters')


def effective_eval_interval():
    return effective('eval_interval')


def lr_schedule_lengths():
    """warmup_iters, lr_decay_iters and cooldown_iters (0: a fifth of lr_decay_iters) of the config."""
    return [warmup_iters, lr_decay_iters, cooldown_iters if cooldown_iters > 0 else lr_decay_iters / 5]


def effective_warmup_iters():
    return round(scheduled_value('warmup_iters')[0])


def effective_lr_decay_iters():
    return round(scheduled_value('warmup_iters')[1])


def effective_cooldown_iters():
    return round(scheduled_value('warmup_iters')[2])


def peak_and_min_lr():
    """The top and the bottom of the lr schedule: learning_rate and min_lr (or set_lr's), times the lr multiplier."""
    peak, low = scheduled_value('lr')
    return peak, low


def scheduled_lr(t, lr_max, lr_min):
    """The lr schedule at t iters on its own clock: linear warmup to lr_max, then either a cosine
    decay to lr_min at lr_decay_iters, or (wsd) lr_max until the cooldown, then a 1 - sqrt decay
    that reaches lr_min at lr_decay_iters (Hägele et al. 2024 found 1 - sqrt the better cooldown)."""
    warmup, decay = effective_warmup_iters(), effective_lr_decay_iters()
    if t < warmup:
        return lr_max * (t + 1) / (warmup + 1)
    if t > decay:
        return lr_min
    if lr_schedule == 'wsd':
        cooldown_start = max(warmup, decay - effective_cooldown_iters())
        if t <= cooldown_start:
            return lr_max
        ratio = (t - cooldown_start) / max(1, decay - cooldown_start)
        return lr_min + (1.0 - math.sqrt(ratio)) * (lr_max - lr_min)
    ratio = (t - warmup) / max(1, decay - warmup)
    return lr_min + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr_max - lr_min)


def get_lr(it):
    """The lr schedule on the schedule's own clock (it - lr_schedule_offset), scaled by
    the lr multiplier, and re-warmed after a growth op when growth_lr_rewarm_iters > 0."""
    lr_max, lr_min = peak_and_min_lr()
    lr = scheduled_lr(it - orch.lr_schedule_offset, lr_max, lr_min) if decay_lr else lr_max
    since_growth = it - orch.iter_of_last_growth
    if orch.iter_of_last_growth >= 0 and since_growth < growth_lr_rewarm_iters:
        lr *= (since_growth + 1) / (growth_lr_rewarm_iters + 1)
    return lr


def schedule_settings():
    """What the settings table and reset_lr_schedule set, as the loop uses it: for logs, events and the plan."""
    settings = {}
    for setting in SETTINGS:
        settings.update(setting.shown() if setting.shown is not None else {setting.name: effective(setting.name)})
    settings['lr_schedule_offset'] = orch.lr_schedule_offset
    return settings


def effective_settings():
    """What an operation can change, for logs, events and the dry-run plan."""
    settings = schedule_settings()
    settings.update({k: getattr(model.config, k) for k in ARCH_KEYS + LORA_KEYS})
    settings.update(params=model.get_num_params(), flops_per_token=model.flops_per_token(seq_len=effective('seq_len')),
                    frozen=model.frozen_components())
    return settings


# -----------------------------------------------------------------------------
# the schedule: loading, validation rules beside each operation, the operation table

ENTRY_KEYS = ('name', 'value', 'trigger_loss', 'max_wait_iters', 'reevaluate')
OPTIONAL_ENTRY_KEYS = ('trigger_slope',)


class ScheduleError(UserError):
    def __init__(self, path, index, field, message):
        where = f"{path}: entry {index}" if index is not None else path
        where += f", field '{field}'" if field else ''
        super().__init__(f"{where}: {message}")


class BadValue(Exception):
    """Raised by an operation's value checks; execution of the check adds file, entry and field."""


def describe(value):
    return f"{value!r} ({type(value).__name__})"


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_finite(value):
    """A number that is finite as a float (an int like 10**400 is not: a float cannot hold it)."""
    try:
        return is_number(value) and math.isfinite(value)
    except OverflowError:
        return False


def check_factor(value, minimum=0.0, allow_minimum=False):
    if not is_finite(value):
        raise BadValue(f"expected a finite number, got {describe(value)}")
    if value < minimum or (value == minimum and not allow_minimum):
        bound = f">= {minimum}" if allow_minimum else f"> {minimum}"
        raise BadValue(f"expected a number {bound}, got {value!r}")
    return value


def check_int(value, minimum):
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadValue(f"expected an integer >= {minimum}, got {describe(value)}")
    if value < minimum:
        raise BadValue(f"expected an integer >= {minimum}, got {value}")
    return value


def check_null(value):
    if value is not None:
        raise BadValue(f"expected null, got {describe(value)}")


def available_memory_bytes():
    if device.startswith('cuda') and torch.cuda.is_available():
        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')


def check_new_params(n_params):
    """Before a growth op is simulated: the tensors it creates alone (16 bytes a parameter: weights,
    grads, AdamW moments) must fit, so that an absurd size is refused without being built."""
    need, have = 16 * n_params, available_memory_bytes()
    if need > have:
        raise BadValue(f"this would create {n_params / 1e6:.1f}M parameters, about {need / 2**30:.1f} GiB "
                       f"to train, more than the {have / 2**30:.1f} GiB of {device}")


def check_layer_map(value, n_layers_now, layer_params=0):
    """An int k >= 2 (repeat the stack k times) or a list of layer indices; returns the map.
    layer_params > 0: first check that the grown stack would fit (see check_new_params)."""
    if isinstance(value, int) and not isinstance(value, bool):
        check_int(value, 2)
        check_new_params(n_layers_now * value * layer_params)
        return list(range(n_layers_now)) * value
    if not isinstance(value, list) or not value:
        raise BadValue(f"expected an integer >= 2 or a non-empty list of layer indices, got {describe(value)}")
    for i in value:
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < n_layers_now:
            raise BadValue(f"layer index {i!r} is out of range: the model has {n_layers_now} layers "
                           f"at this point (indices 0..{n_layers_now - 1})")
    check_new_params(len(value) * layer_params)
    return value


def check_key(mapping, key, check, *args):
    """check(mapping[key], *args), its message prefixed with the key."""
    try:
        return check(mapping[key], *args)
    except BadValue as e:
        raise BadValue(f"{key}: {e}") from None


def check_mapping(value, required, optional=()):
    if not isinstance(value, dict):
        raise BadValue(f"expected a mapping with keys {', '.join(required)}, got {describe(value)}")
    missing = [k for k in required if k not in value]
    unknown = [k for k in value if k not in required and k not in optional]
    if missing:
        raise BadValue(f"missing key '{missing[0]}' (expected keys: {', '.join(required + tuple(optional))})")
    if unknown:
        raise BadValue(f"unknown key '{unknown[0]}' (expected keys: {', '.join(required + tuple(optional))})")
    if 'anneal_iters' in required:
        check_key(value, 'anneal_iters', check_int, 1)
    return value


def require_lora(config, target):
    ranks = {'attn': config.attn_lora_rank, 'embedding': config.embedding_lora_rank}
    if target == 'any' and not any(ranks.values()) or target != 'any' and not ranks[target]:
        which = 'attn_lora_rank or embedding_lora_rank' if target == 'any' else f'{target}_lora_rank'
        raise BadValue(f"LoRA is off at this point ({which} is 0): this operation needs it on")


def require_no_lora(config):
    if config.attn_lora_rank or config.embedding_lora_rank:
        raise BadValue("needs LoRA off at this point (attn_lora_rank and embedding_lora_rank 0); "
                       "remove it first with change_*_lora_rank value 0")


def grown_size(size, factor):
    new_size = round(size * factor)
    if new_size <= size:
        raise BadValue(f"factor {factor} leaves the size at {size} -> {new_size}: it must grow")
    return new_size


def growth_generator():
    # the same seed on every DDP rank, so that every rank grows the same weights
    return torch.Generator().manual_seed(seed + orch.iter_of_last_op)


def block_params(config):
    """The matmul weights of one block."""
    return 4 * config.n_embd * config.n_head * config.head_size + 2 * config.n_embd * config.n_hidden


@dataclass
class Operation:
    check: object  # check(value, model_config) -> None, raises BadValue; runs before step 0
    apply: object  # apply(value) -> lineage dict for ops that rebuild the optimizer, None for hyperparameter ops
    # changes the model's parameters: the optimizer is rebuilt, its state carried through the lineage, and
    # the wrappers (compile, DDP) rebuilt
    rebuilds_optimizer: bool = False
    # growth: the flops per token change, growth_lr_rewarm_iters re-warms the lr, it waits for a MSG mask ramp
    changes_architecture: bool = False
    ramp: bool = False  # MSG: starts a mask ramp of value['anneal_iters']
    keeps_function: bool = True  # False: the model computes another function after it (its val loss changes)
    rewraps: bool = False  # changes which parameters train: flops per token and the DDP/compile wrappers are redone


def check_change(value, _config):
    check_factor(value)


def check_count(value):
    check_int(value, 1)


def set_lr_values(value):
    """set_lr: the peak lr = value, min_lr keeps its ratio to learning_rate."""
    return [value, min_lr * value / learning_rate]


def set_warmup_values(value):
    """set_warmup_iters: warmup_iters = value; lr_decay_iters and the cooldown scaled by the same factor
    from the config's."""
    return [value] + [length * value / warmup_iters for length in lr_schedule_lengths()[1:]]


def shown_lr():
    return dict(peak_lr=peak_and_min_lr()[0])


def shown_warmup():
    lengths = dict(warmup_iters=effective_warmup_iters(), lr_decay_iters=effective_lr_decay_iters())
    return dict(lengths, cooldown_iters=effective_cooldown_iters()) if lr_schedule == 'wsd' else lengths


@dataclass(frozen=True)
class Setting:
    name: str  # its ops are change_<name> and set_<name>
    config_value: object  # () -> the config's value: what the multiplier scales until a set_ op replaces it
    check: object  # check(value) of set_'s value, raises BadValue
    stored: object = None  # set_'s value -> what set_values[name] holds (None: the value itself)
    divides_by: str = None  # the config key `stored` divides by: set_ is refused while it is 0
    label: str = None  # an integer setting, named so in messages: it must round to 1 or more
    maximum: str = None  # the config key an integer setting may not exceed
    shown: object = None  # () -> {field: value} for logs, events and the plan; None: {name: effective(name)}


# the settings table: everything the schedule can scale or set, one row each. change_<name> multiplies
# orch.multipliers[name] by its value; set_<name> stores an absolute value in orch.set_values[name] and resets
# the multiplier to 1. The loop reads a setting through scheduled_value / effective (and the helpers above);
# the op log, the events and the plan show what `shown` returns; a checkpoint without a row's multiplier or
# set value (it predates the row) resumes with the config's value.
SETTINGS = (
    Setting('lr', lambda: [learning_rate, min_lr], check_factor, set_lr_values, 'learning_rate', shown=shown_lr),
    Setting('batch_size', lambda: batch_size, check_count, label='the batch size'),
    Setting('grad_accum', lambda: gradient_accumulation_steps, check_count,
            label='the gradient accumulation steps', shown=lambda: dict(grad_accum=effective_grad_accum())),
    Setting('eval_interval', lambda: eval_interval, check_count, label='eval_interval'),
    Setting('eval_iters', lambda: eval_iters, check_count, label='eval_iters'),
    Setting('warmup_iters', lr_schedule_lengths, check_count, set_warmup_values, 'warmup_iters', shown=shown_warmup),
    Setting('seq_len', lambda: block_size, check_count, label='seq_len', maximum='block_size'),  # training sequences
)
SETTING = {setting.name: setting for setting in SETTINGS}


def check_in_range(setting):
    """An integer setting the schedule leaves below 1 (or above its maximum) is refused."""
    if setting.label is None:
        return
    value = effective(setting.name)
    if value < 1:
        raise BadValue(f"this makes {setting.label} round to {value}; it must stay >= 1")
    if setting.maximum is not None and value > globals()[setting.maximum]:
        raise BadValue(f"this makes {setting.label} {value}, more than {setting.maximum} "
                       f"{globals()[setting.maximum]}; it must stay <= {setting.maximum}")


def check_set(setting):
    def check(value, _config):
        setting.check(value)
        if setting.divides_by is not None and globals()[setting.divides_by] == 0:
            raise BadValue(f"cannot set {setting.name}: the config's {setting.divides_by} is 0")
    return check


def change_op(setting):
    def apply(value):
        orch.multipliers[setting.name] = orch.multipliers.get(setting.name, 1.0) * value
    return apply


def set_op(setting):
    def apply(value):
        orch.set_values[setting.name] = setting.stored(value) if setting.stored is not None else value
        orch.multipliers[setting.name] = 1.0
    return apply


def hyperparameter_operations():
    operations = {}
    for setting in SETTINGS:
        operations[f'change_{setting.name}'] = Operation(check_change, change_op(setting))
        operations[f'set_{setting.name}'] = Operation(check_set(setting), set_op(setting))
    return operations


OPERATIONS = hyperparameter_operations()


def reset_lr_schedule(_value):
    orch.lr_schedule_offset = orch.iter_of_last_op


# growth operations, each one's check (the value against the model it will meet, and the memory of
# the parameters it creates) beside its apply: the model changes itself (model.py) and returns the
# lineage of its parameters

def check_stack_layers(value, config):
    check_layer_map(value, config.n_layer, block_params(config))


def stack_layers(value):
    return model.stack_layers(check_layer_map(value, model.config.n_layer))


def widen_settings(value):
    """widen_mlp's value: a factor (exact Net2WiderNet), or {factor, noise} (symmetry broken)."""
    if isinstance(value, dict):
        return value['factor'], value['noise']
    return value, 0.0


def check_widen(value, config):
    if isinstance(value, dict):
        check_mapping(value, ('factor', 'noise'))
        check_key(value, 'noise', check_factor, 0.0, True)
        check_key(value, 'factor', check_factor, 1.0)
    else:
        check_factor(value, 1.0)
    factor, _ = widen_settings(value)
    check_new_params(2 * config.n_layer * config.n_embd * grown_size(config.n_hidden, factor))


def widen_mlp(value):
    factor, noise = widen_settings(value)
    return model.widen_mlp(round(model.config.n_hidden * factor), growth_generator(), noise)


def lora_ranks(config, target):
    """The ranks of target's adapters: one per layer for 'attn', one for 'embedding'."""
    return attn_lora_ranks(config) if target == 'attn' else [config.embedding_lora_rank]


def params_per_rank(config, target):
    """The adapter parameters one unit of rank adds: on the token embedding, or on one layer's attention."""
    return config.vocab_size + config.n_embd if target == 'embedding' else \
        2 * config.n_embd + 4 * config.n_head * config.head_size


def check_lora_rank(target):
    def check(value, config):
        check_factor(value, 0.0, allow_minimum=True)
        require_lora(config, target)
        ranks = lora_ranks(config, target)
        for layer, rank in enumerate(ranks):
            if value > 0 and rank and round(rank * value) == 0:
                which = f" (layer {layer})" if len(set(ranks)) > 1 else ''
                raise BadValue(f"factor {value} rounds {target}_lora_rank {rank}{which} to 0, which would remove the "
                               f"adapters and train the full weights; to remove LoRA on purpose, give the value 0")
        check_new_params(sum(round(rank * value) for rank in ranks) * params_per_rank(config, target))
    return check


def change_lora_rank(target):
    """Multiply the rank (of attention: each layer's that has adapters) by the value."""
    def apply(value):
        if target == 'attn':
            changes = {layer: round(rank * value) for layer, rank in enumerate(attn_lora_ranks(model.config)) if rank}
            return model.set_layer_lora_ranks(changes, growth_generator())
        return model.set_lora_rank(target, round(model.config.embedding_lora_rank * value), growth_generator())
    return apply


def attn_rank_changes(value, n_layer):
    """set_attn_lora_rank's value as {layer: rank} at a depth of n_layer (see model.layer_rank_changes)."""
    try:
        return layer_rank_changes(value, n_layer)
    except ValueError as e:
        raise BadValue(str(e)) from None


def check_set_attn_lora_rank(value, config):
    changes = attn_rank_changes(value, config.n_layer)
    check_new_params(sum(changes.values()) * params_per_rank(config, 'attn'))


def set_attn_lora_rank(value):
    return model.set_layer_lora_ranks(attn_rank_changes(value, model.config.n_layer), growth_generator())


def check_lora_op(value, config, null=False):
    check_null(value) if null else check_factor(value)
    require_lora(config, 'any')


def change_lora_alpha(value):
    return model.set_lora_alpha(model.config.lora_alpha * value, growth_generator())


def check_merge_lora(value, config):
    check_lora_op(value, config, null=True)


def merge_lora_weights(_value):
    return model.merge_lora(growth_generator())


def check_msg_widen(value, config, size_key):
    check_mapping(value, ('factor', 'anneal_iters'))
    check_key(value, 'factor', check_factor, 1.0)
    per_unit = 2 * config.n_layer * config.n_embd if size_key == 'n_hidden' else \
        config.vocab_size + config.n_layer * block_params(config) // config.n_embd
    check_new_params(grown_size(getattr(config, size_key), value['factor']) * per_unit)
    require_no_lora(config) if size_key == 'n_embd' else None


def check_msg_widen_mlp(value, config):
    check_msg_widen(value, config, 'n_hidden')


def msg_widen_mlp(value):
    return model.msg_widen_mlp(round(model.config.n_hidden * value['factor']), growth_generator())


def check_msg_heads(value, config):
    check_mapping(value, ('n_new_heads', 'anneal_iters'))
    check_key(value, 'n_new_heads', check_int, 1)
    check_new_params(4 * config.n_layer * config.n_embd * (config.n_head + value['n_new_heads']) * config.head_size)
    if config.attn_lora_rank:
        raise BadValue("needs attention LoRA off at this point (attn_lora_rank 0)")


def msg_add_heads(value):
    return model.msg_add_heads(value['n_new_heads'], growth_generator())


def check_msg_stack(value, config):
    check_mapping(value, ('layers', 'anneal_iters'), ('init',))
    layer_map = check_key(value, 'layers', check_layer_map, config.n_layer, block_params(config))
    if value.get('init', 'copy') not in ('copy', 'random'):
        raise BadValue(f"init must be 'copy' or 'random', got {describe(value['init'])}")
    if value.get('init') == 'random' and config.attn_lora_rank:
        raise BadValue("init 'random' needs attention LoRA off at this point (attn_lora_rank 0): the new layers' "
                       "random attention weights would be frozen, trained only through the adapters; use init "
                       "'copy', or remove LoRA first with change_attn_lora_rank value 0")
    first_seen = [i for n, i in enumerate(layer_map) if i not in layer_map[:n]]
    if first_seen != list(range(config.n_layer)):
        raise BadValue(f"layer map {layer_map} must keep every old layer, in order, at its first occurrence "
                       "(new layers are the repeats), so that the network is unchanged at mask 0")


def msg_stack_layers(value):
    layer_map = check_layer_map(value['layers'], model.config.n_layer)
    return model.stack_layers(layer_map, growth_generator(), blend=True, init=value.get('init', 'copy'))


def check_msg_widen_embd(value, config):
    check_msg_widen(value, config, 'n_embd')


def msg_widen_embd(value):
    return model.msg_widen_embd(round(model.config.n_embd * value['factor']), growth_generator())


# freeze / unfreeze: the value is a component pattern or a list of them (model.component_modules), resolved
# against the model as it is when the op fires. The frozen set is the model's (config.frozen, in the checkpoint's
# model_args) and goes through every growth op's lineage. The optimizers stay: they skip a parameter without a
# gradient and keep its state

def resolved_components(value):
    """[(pattern, its parameter names)] of a freeze / unfreeze value, against the model now."""
    patterns = value if isinstance(value, list) else [value]
    if not patterns:
        raise BadValue("expected a component pattern or a non-empty list of them, got []")
    try:
        return [(pattern, model.component_parameters(pattern)) for pattern in patterns]
    except ValueError as e:
        raise BadValue(str(e)) from None


def check_freeze(value, _config):
    resolved_components(value)


def freeze(value):
    model.set_frozen(model.config.frozen + [name for _, names in resolved_components(value) for name in names])


def check_unfreeze(value, _config):
    frozen, under_adapter = set(model.config.frozen), model.weights_under_adapter()
    for pattern, names in resolved_components(value):
        adapted = [name for name in names if name in under_adapter and name not in frozen]
        if adapted:
            raise BadValue(f"{pattern!r} names {adapted[0].removeprefix('transformer.')}, which has a LoRA adapter "
                           "at this point: LoRA keeps the weight frozen and trains the adapter; unfreeze the parts "
                           "without adapters, or remove the adapter first (its change_*_lora_rank with value 0)")
        if frozen.isdisjoint(names):
            raise BadValue(f"{pattern!r} matches nothing frozen at this point "
                           f"(frozen: {', '.join(model.frozen_components()) or 'nothing'})")


def unfreeze(value):
    names = {name for _, names in resolved_components(value) for name in names}
    model.set_frozen(name for name in model.config.frozen if name not in names)


def check_no_fresh_frozen(lineage, frozen_before):
    """A growth op must not put fresh values (random or zero slices) into a frozen tensor: they could not train."""
    for name, (old_name, _, index) in (lineage or {}).items():
        if old_name in frozen_before and index is not None and bool((index < 0).any()):
            raise BadValue(f"{name.removeprefix('transformer.')} is frozen at this point, and this would give it "
                           "fresh values that could not train; unfreeze it first")


def check_something_trains():
    if not any(p.requires_grad for p in model.parameters()):
        raise BadValue("this leaves no parameter to train")


# a growth op changes the parameters and the architecture. A LoRA rank change counts as growth: it brings
# parameters with no optimizer history (fresh adapters, or the full weights once the rank is 0) and changes
# the flops per token. An alpha change or a merge keeps the architecture: fresh adapters in place of the old
# ones, the lr not re-warmed
GROWTH = dict(rebuilds_optimizer=True, changes_architecture=True)
OPERATIONS.update({
    'reset_lr_schedule': Operation(lambda value, _config: check_null(value), reset_lr_schedule),
    'stack_layers': Operation(check_stack_layers, stack_layers, **GROWTH, keeps_function=False),
    'widen_mlp': Operation(check_widen, widen_mlp, **GROWTH),
    'change_attn_lora_rank': Operation(check_lora_rank('attn'), change_lora_rank('attn'), **GROWTH),
    'change_embedding_lora_rank': Operation(check_lora_rank('embedding'), change_lora_rank('embedding'), **GROWTH),
    'set_attn_lora_rank': Operation(check_set_attn_lora_rank, set_attn_lora_rank, **GROWTH),
    'change_lora_alpha': Operation(check_lora_op, change_lora_alpha, rebuilds_optimizer=True),
    'merge_lora_weights': Operation(check_merge_lora, merge_lora_weights, rebuilds_optimizer=True),
    'msg_widen_mlp': Operation(check_msg_widen_mlp, msg_widen_mlp, **GROWTH, ramp=True),
    'msg_add_heads': Operation(check_msg_heads, msg_add_heads, **GROWTH, ramp=True),
    'msg_stack_layers': Operation(check_msg_stack, msg_stack_layers, **GROWTH, ramp=True),
    'msg_widen_embd': Operation(check_msg_widen_embd, msg_widen_embd, **GROWTH, ramp=True),
    'freeze': Operation(check_freeze, freeze, rewraps=True),
    'unfreeze': Operation(check_unfreeze, unfreeze, rewraps=True),
})


def describe_non_json(value):
    """What YAML made of a value that JSON has no type for (an unquoted date, a timestamp, !!binary, !!set)."""
    if isinstance(value, datetime.datetime):
        return f"a timestamp ({value})"
    if isinstance(value, datetime.date):
        return f"a date ({value})"
    if isinstance(value, bytes):
        return f"binary data ({len(value)} bytes)"
    if isinstance(value, (set, frozenset)):
        return f"a set ({len(value)} items)"
    return f"a {type(value).__name__} ({value!r})"


def non_json_part(value):
    """The first part of a schedule value that JSON cannot hold, as 'where: what', or None. Walked with a
    stack, not recursion: a value nested as deep as the parser allows does not overflow here."""
    json_scalars = (str, int, float, bool, type(None))
    stack = [('', value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, dict):
            for key in item:
                if not isinstance(key, json_scalars):
                    return f"{where}a mapping key that is {describe_non_json(key)}"
            stack.extend((f"{where}{key}: ", item[key]) for key in reversed(list(item)))
        elif isinstance(item, list):
            stack.extend((f"{where}item {i}: ", item[i]) for i in reversed(range(len(item))))
        elif not isinstance(item, json_scalars):
            return f"{where}{describe_non_json(item)}"
    return None


def check_entry_shape(path, index, entry):
    """The fields every entry has, whatever its operation."""
    if not isinstance(entry, dict):
        raise ScheduleError(path, index, None, f"expected a mapping with keys {', '.join(ENTRY_KEYS)}, got {describe(entry)}")
    for key in entry:  # unknown keys first: a misspelt key is reported as itself, with the right spelling
        if key not in ENTRY_KEYS + OPTIONAL_ENTRY_KEYS:
            close = difflib.get_close_matches(str(key), ENTRY_KEYS + OPTIONAL_ENTRY_KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ''
            raise ScheduleError(path, index, key, f"unknown key{hint}; expected exactly {', '.join(ENTRY_KEYS)}, "
                                f"optionally {', '.join(OPTIONAL_ENTRY_KEYS)}")
    for key in ENTRY_KEYS:
        if key not in entry:
            raise ScheduleError(path, index, key, f"missing (every entry has {', '.join(ENTRY_KEYS)})")
    name = entry['name']
    if not isinstance(name, str) or name not in OPERATIONS:  # a list or mapping cannot even be looked up
        close = difflib.get_close_matches(str(name), list(OPERATIONS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ''
        raise ScheduleError(path, index, 'name', f"unknown operation {name!r}{hint}")
    non_json = non_json_part(entry['value'])
    if non_json is not None:  # the plan, the event log and the checkpoint write values as JSON
        raise ScheduleError(path, index, 'value', f"{name}: {non_json}, which a schedule cannot hold (it takes "
                            "numbers, text, true/false, null, lists and mappings)")
    trigger = entry['trigger_loss']
    if not is_finite(trigger):
        raise ScheduleError(path, index, 'trigger_loss', f"expected a finite number, got {describe(trigger)}")
    slope = entry.get('trigger_slope', 0.0)
    if not is_finite(slope):
        raise ScheduleError(path, index, 'trigger_slope', f"expected a finite number, got {describe(slope)}")
    wait = entry['max_wait_iters']
    if not isinstance(wait, int) or isinstance(wait, bool) or wait < 0:
        raise ScheduleError(path, index, 'max_wait_iters', f"expected an integer >= 0, got {describe(wait)}")
    if not isinstance(entry['reevaluate'], bool):
        raise ScheduleError(path, index, 'reevaluate', f"expected true or false, got {describe(entry['reevaluate'])}")


def load_schedule_file(path):
    """Parse a YAML (.yaml/.yml) or JSON file into a list of raw entries; checks the shape only."""
    if not os.path.isfile(path):
        raise ScheduleError(path, None, None, "schedule file not found")
    try:
        with open(path, encoding='utf-8') as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ScheduleError(path, None, None, f"not UTF-8 text (byte {e.start}: {e.reason})") from None
    if not text.strip():
        raise ScheduleError(path, None, None, "the file is empty; expected a list of entries")
    if path.endswith(('.yaml', '.yml')):
        import yaml
        try:
            entries = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, 'problem_mark', None)
            line = f"line {mark.line + 1}: " if mark is not None else ''
            problem = str(getattr(e, 'problem', None) or e).splitlines()[0]  # a reader error's str() has two lines
            raise ScheduleError(path, None, None, f"YAML syntax error, {line}{problem}") from None
        except RecursionError:
            raise ScheduleError(path, None, None, "YAML nested too deeply to parse") from None
    elif path.endswith('.json'):
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as e:
            raise ScheduleError(path, None, None, f"JSON syntax error, line {e.lineno}: {e.msg}") from None
        except RecursionError:
            raise ScheduleError(path, None, None, "JSON nested too deeply to parse") from None
    else:
        raise ScheduleError(path, None, None, "expected a .yaml, .yml or .json file")
    if entries is None:
        raise ScheduleError(path, None, None, "the file is empty; expected a list of entries")
    if not isinstance(entries, list):
        raise ScheduleError(path, None, None, f"expected a list of entries at the top level, got a {type(entries).__name__}")
    for index, entry in enumerate(entries):
        check_entry_shape(path, index, entry)
    return entries


def estimated_memory_bytes():
    """A rough upper estimate of training memory: weights, grads and AdamW moments (16 bytes per
    parameter in fp32) plus activations (4 bytes, ~ 16 values per channel per layer per token)."""
    c = model.config
    params = sum(p.numel() for p in model.parameters())
    tokens = effective_batch_size() * c.block_size
    width = c.n_embd * 12 + c.n_hidden * 2 + c.n_head * c.head_size * 4
    return 16 * params + 4 * tokens * c.n_layer * width


def check_fits_in_memory(where):
    need, have = estimated_memory_bytes(), available_memory_bytes()
    if need > have:
        raise UserError(f"{where}: the model would need about {need / 2**30:.1f} GiB to train "
                        f"({model.get_num_params() / 1e6:.1f}M parameters, batch {effective_batch_size()}), "
                        f"more than the {have / 2**30:.1f} GiB of {device}")


def orchestrator_state():
    return json.loads(json.dumps(asdict(orch)))


def load_orchestrator_state(state):
    """The orchestrator state from a copy of `state` (as orchestrator_state returns it). A field it lacks
    (a checkpoint from before the field) keeps its default; a checkpoint from before the settings table
    kept each multiplier in a field of its own, <setting>_multiplier."""
    global orch
    state = json.loads(json.dumps(state))
    multipliers = state.setdefault('multipliers', {})
    for key in [k for k in state if k.endswith('_multiplier')]:
        multipliers[key.removesuffix('_multiplier')] = state.pop(key)
    orch = Orchestrator(**state)


def reset_orchestrator(entries=()):
    """Fresh orchestrator state with the given schedule (tests use this too)."""
    load_orchestrator_state(asdict(Orchestrator(schedule=list(entries))))


@contextmanager
def simulation(model_config):
    """Run operations on a copy of the orchestrator state and a weightless (meta device) model,
    then put everything back."""
    global model
    saved_state, saved_model = orchestrator_state(), model
    with torch.device('meta'):
        model = GPT(GPTConfig(**asdict(model_config)))
    try:
        yield
    finally:
        model = saved_model
        load_orchestrator_state(saved_state)


def describe_triggers(entry):
    triggers = [f"val loss < {entry['trigger_loss']:g}"]
    if 'trigger_slope' in entry:
        triggers.append(f"loss slope > {entry['trigger_slope']:g} over {trigger_slope_evals} evals")
    return ' or '.join(triggers + [f"{entry['max_wait_iters']} iters after the previous op"])


def lr_decay_end():
    """The iter at which the lr schedule reaches min_lr."""
    return orch.lr_schedule_offset + effective_lr_decay_iters()


# when entries fire, walked as run_orchestrator runs them: at evals, which come every eval_interval iters
# after the previous op; an entry fires at its timeout at the latest (a growth op not before the MSG mask
# ramp has reached 1: advance_ramp folds it at start_iter + anneal_iters), at once by its loss trigger at
# the earliest (a val loss is positive: trigger_loss <= 0 never fires), after trigger_slope_evals evals by
# its slope trigger

def eval_at_or_after(iter_num, last_op_iter):
    """The first eval at or after iter_num, the previous op at last_op_iter."""
    interval = effective_eval_interval()
    return last_op_iter + -(-(iter_num - last_op_iter) // interval) * interval


def last_eval_before_end(last_op_iter):
    """The last eval before max_iters, the previous op at last_op_iter: an op there still changes training."""
    interval = effective_eval_interval()
    return last_op_iter + (max_iters - 1 - last_op_iter) // interval * interval


def held_until(entry, due, ramp_end):
    """due, or the end of the mask ramp for a growth op while one rises."""
    return max(due, ramp_end) if OPERATIONS[entry['name']].changes_architecture and ramp_end is not None else due


def timeout_eval(entry, last_op_iter, ramp_end):
    """The eval at which the entry fires at the latest: its timeout."""
    return eval_at_or_after(held_until(entry, last_op_iter + entry['max_wait_iters'], ramp_end), last_op_iter)


def earliest_eval(entry, last_op_iter, ramp_end):
    """The first eval at which the entry can fire."""
    due = last_op_iter + entry['max_wait_iters']
    if entry['trigger_loss'] > 0:
        due = last_op_iter
    elif 'trigger_slope' in entry:
        due = min(due, last_op_iter + trigger_slope_evals * effective_eval_interval())
    return eval_at_or_after(held_until(entry, due, ramp_end), last_op_iter)


def ramp_end_iter():
    ramp = orch.active_ramp
    return ramp['start_iter'] + ramp['anneal_iters'] if ramp is not None else None


def why_then(entry, last_op_iter, ramp_end, slope=False):
    """Why an entry fires where it does at the earliest (slope=True) or the latest, for the warnings."""
    wait, why = entry['max_wait_iters'], f"{entry['max_wait_iters']} iters after the previous op at iter {last_op_iter}"
    slope_wait = trigger_slope_evals * effective_eval_interval()
    if slope and 'trigger_slope' in entry and slope_wait < wait:
        wait, why = slope_wait, f"the slope trigger's first eval, {slope_wait} iters after the previous op at iter {last_op_iter}"
    if held_until(entry, last_op_iter + wait, ramp_end) > last_op_iter + wait:
        why += f", then the {orch.active_ramp['name']} mask ramp until iter {ramp_end}"
    return why


def simulate_entry(path, index, entry):
    """Check the entry's value against the simulated model and apply it; returns the effective settings after it."""
    operation = OPERATIONS[entry['name']]
    try:
        operation.check(entry['value'], model.config)
        frozen_before = set(model.config.frozen)
        check_no_fresh_frozen(operation.apply(entry['value']), frozen_before)
        check_something_trains()
        if operation.ramp:
            model.fold_ramp()
        settings = effective_settings()
        for setting in SETTINGS:
            check_in_range(setting)
        check_fits_in_memory(f"{path}: entry {index} ({entry['name']})")
    except BadValue as e:
        raise ScheduleError(path, index, 'value', f"{entry['name']}: {e}") from None
    except OverflowError:  # 10**400 layers, a batch factor of 1e300: sizes no float holds
        raise ScheduleError(path, index, 'value', f"{entry['name']}: {describe(entry['value'])} is too "
                            "large: the sizes it leads to overflow") from None
    return settings


def validate_schedule(path, entries, first_index, model_config):
    """Walk the schedule on a simulated model as the loop would run it: every value is checked against the
    model and the settings it will meet. Returns the plan: one row of effective settings per entry, with
    latest_iter, the eval it fires at by its timeout when every entry before it fires at theirs (None when
    that is after max_iters for it or an entry before it), and a warning where the entry may not run before
    max_iters, or where the ops leave the end of the lr decay after max_iters (see decay_warnings)."""
    plan, timings = [], []
    with simulation(model_config):
        check_fits_in_memory('config')
        try:  # the ops a resumed run already ran, against its config (a set_seq_len above a smaller block_size)
            for setting in SETTINGS:
                check_in_range(setting)
        except BadValue as e:
            raise ScheduleError(path, None, None, f"the operations already run: {e}") from None
        # three walks at once, each as [iter of the previous op, end of the mask ramp]: every entry at its
        # timeout (latest), every entry as early as it can fire (early), and in orch every entry as late as
        # it can fire and still change training (the iters of the lr warnings)
        latest, early = [orch.iter_of_last_op, ramp_end_iter()], [orch.iter_of_last_op, ramp_end_iter()]
        certain, never = True, False  # every entry so far fires by max_iters; an entry so far never runs
        for offset, entry in enumerate(entries):
            index, operation = first_index + offset, OPERATIONS[entry['name']]
            timeout, first = timeout_eval(entry, *latest), earliest_eval(entry, *early)
            warned = first > max_iters and not never or timeout > max_iters and certain
            warning = reach_warning(f"{path}: entry {index} ({entry['name']})", entry, len(entries) - offset - 1,
                                    timeout, latest, first, early) if warned else None
            never, certain = never or first > max_iters, certain and timeout <= max_iters
            last_op_iter = orch.iter_of_last_op
            fired = timeout_eval(entry, last_op_iter, ramp_end_iter())
            fired = fired if fired < max_iters else max(last_op_iter, last_eval_before_end(last_op_iter))
            with_previous = offset > 0 and fired == last_op_iter and first == early[0]
            orch.iter_of_last_op, decay_end = fired, lr_decay_end()
            settings = simulate_entry(path, index, entry)
            latest[0], early[0] = timeout, first
            if operation.changes_architecture:
                orch.iter_of_last_growth = fired
            if operation.ramp:
                anneal = entry['value']['anneal_iters']
                orch.active_ramp = dict(name=entry['name'], start_iter=fired, anneal_iters=anneal)
                latest[1], early[1] = timeout + anneal, first + anneal
            timings.append(dict(fired=fired, runs=first < max_iters, decay_end_before=decay_end,
                                decay_end=lr_decay_end(), end_lr=get_lr(max_iters), min_lr=peak_and_min_lr()[1],
                                with_previous=with_previous))
            plan.append(dict(index=index, name=entry['name'], value=entry['value'], fires=describe_triggers(entry),
                             latest_iter=timeout if certain else None, warning=warning, **settings))
    for row, warning in decay_warnings(path, plan, timings):
        row['warning'] = '; '.join(w for w in (row['warning'], warning) if w)
    return plan


def describe_optimizer():
    """The optimizer line of the plan and the run's start."""
    parts = {'adamw': "adamw", 'muon': "muon for the blocks' weight matrices, adamw for embeddings and head, "
                                        "norms, biases and LoRA adapters"}
    after_growth = {'carry': 'carried through each growth op', 'reset': 'reset at each growth op'}
    return f"optimizer: {parts[optimizer]}; its state {after_growth[growth_optimizer_state]}"


def reach_warning(where, entry, n_after, timeout, latest, first, early):
    """An entry that never runs before max_iters (first, its earliest eval, is after it), or runs only if a
    trigger fires before its timeout."""
    rest = f"; the {n_after} entr{'y' if n_after == 1 else 'ies'} after it wait{'s' if n_after == 1 else ''} for it" \
        if n_after else ''
    if first > max_iters:
        return (f"{where} never runs: it can fire at iter {first} at the earliest ({why_then(entry, *early, slope=True)}), "
                f"after max_iters {max_iters}{rest}")
    triggers = [f"val loss < {entry['trigger_loss']:g}"] if entry['trigger_loss'] > 0 else []
    if 'trigger_slope' in entry:
        triggers.append(f"its loss slope > {entry['trigger_slope']:g}")
    if timeout_eval(entry, *early) <= max_iters:
        triggers.append("an entry before it fires early")
    return (f"{where} runs before max_iters {max_iters} only if {' or '.join(triggers)}: its timeout falls at iter "
            f"{timeout} ({why_then(entry, *latest)}){rest}")


def decay_warnings(path, plan, timings):
    """(row, warning) where the ops of one eval, fired as late as they can, leave the end of the lr decay after
    max_iters: the run would end above min_lr. The entries of one eval are those that fire with the one before
    them for sure (max_wait_iters 0): a later one may undo what an earlier one did."""
    if not decay_lr:
        return []
    warnings, start = [], 0
    for k, timing in enumerate(timings):
        if k + 1 < len(timings) and timings[k + 1]['with_previous']:
            continue
        group, start = list(range(start, k + 1)), k + 1
        moved = [j for j in group if timings[j]['decay_end'] != timings[j]['decay_end_before']]
        if timing['runs'] and timing['decay_end'] > max_iters and timing['decay_end'] != timings[group[0]]['decay_end_before']:
            culprit = plan[moved[-1]]
            warnings.append((culprit, f"{path}: entry {culprit['index']} ({culprit['name']}), fired at iter "
                                      f"{timings[moved[-1]]['fired']} (the latest it can), moves the end of the lr decay to iter "
                                      f"{timing['decay_end']}, after max_iters {max_iters}: the run would end at lr "
                                      f"{timing['end_lr']:.2e}, above min_lr {timing['min_lr']:.2e}"))
    return warnings


def print_plan(plan):
    print(describe_optimizer())
    print(f"plan: {len(plan)} operations")
    for row in plan:
        print(f"  [{row['index']}] {row['name']}({json.dumps(row['value'])}) when {row['fires']}")
        print("      then " + ', '.join(f"{k} {row[k]:.3g}" if isinstance(row[k], float) else f"{k} {row[k]}"
                                     for k in schedule_settings()))
        print("      model " + ''.join(f"{k} {row[k]}, " for k in ARCH_KEYS) +
              f"lora attn/emb {row['attn_lora_rank']}/{row['embedding_lora_rank']} (alpha {row['lora_alpha']:g}), "
              f"params {row['params'] / 1e6:.3f}M, flops/token {row['flops_per_token'] / 1e6:.3f}M")
        if row['frozen']:
            print(f"      frozen: {', '.join(row['frozen'])}")
        if row['latest_iter'] is not None:
            print(f"      fires at iter {row['latest_iter']} at the latest")
        if row['warning']:
            print(f"      warning: {row['warning']}")


def check_schedule_matches(entries):
    """On resume with a schedule file: the entries already run must be the file's first entries."""
    stored = json.loads(json.dumps(entries))  # as the checkpoint holds them: a YAML int key ({0: 4}) is text there
    for done in orch.executed_ops:
        index = done['index']
        if index >= len(entries) or any(stored[index].get(k) != done.get(k) for k in ENTRY_KEYS + OPTIONAL_ENTRY_KEYS):
            found = json.dumps(entries[index]) if index < len(entries) else 'nothing'
            raise ScheduleError(scaling_schedule_file, index, None,
                                f"the checkpoint already ran {json.dumps({k: done[k] for k in ENTRY_KEYS})} "
                                f"at iter {done['iter']}, but the file now has {found} here; "
                                "resume with the original schedule, or with no scaling_schedule_file")
    orch.schedule[:] = entries[len(orch.executed_ops):]


# -----------------------------------------------------------------------------
# the orchestrator at work

def loss_slope():
    """Least-squares slope of ln(val loss) against ln(training flops) over the last
    trigger_slope_evals evals since the previous op; None until there are that many."""
    points = [(math.log(f), math.log(v)) for f, v in orch.evals_since_op if f > 0 and v > 0][-trigger_slope_evals:]
    if len(points) < max(2, trigger_slope_evals):
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread_x = sum((x - mean_x) ** 2 for x, _ in points)
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread_x


def trigger_reason(entry, iter_num, val_loss):
    if val_loss < entry['trigger_loss']:
        return 'loss'
    if 'trigger_slope' in entry:
        slope = loss_slope()
        if slope is not None and slope > entry['trigger_slope']:
            return 'slope'
    if iter_num - orch.iter_of_last_op >= entry['max_wait_iters']:
        return 'timeout'
    return None


def record_eval(flops, val_loss):
    """Remember an eval on the grid (before the orchestrator runs) for the slope trigger."""
    orch.evals_since_op.append([flops, val_loss])


def ramp_mask(iter_num):
    """The MSG mask at iter_num: 0 at the op, rising linearly to 1 after anneal_iters."""
    return mask_at(orch.active_ramp, iter_num)


def execute_operation(entry, reason, iter_num, val_loss, on_growth=None, on_rewrap=None):
    """Run one schedule entry: apply it, record it, log what it changed. on_growth(lineage) rebuilds
    the optimizer and wrappers after a growth op, on_rewrap() the flop count and wrappers after a freeze
    or unfreeze (main() passes them; orchestrator tests need none).
    Returns {setting: [before, after]} for every effective setting it changed."""
    operation = OPERATIONS[entry['name']]
    if master_process:
        print("=== SCALING OPERATION TRIGGERED ===")
        print(f"Operation: {entry['name']} (entry {orch.schedule_position}), value {json.dumps(entry['value'])}")
        if reason == 'loss':
            print(f"Trigger reason: loss. Current val loss {val_loss:.4f} < trigger loss {entry['trigger_loss']}")
        elif reason == 'slope':
            print(f"Trigger reason: slope. d ln(val loss) / d ln(flops) over the last {trigger_slope_evals} evals "
                  f"{loss_slope():.4f} > trigger slope {entry['trigger_slope']}, current val loss {val_loss:.4f}")
        else:
            print(f"Trigger reason: timeout. Waited {iter_num - orch.iter_of_last_op} iters "
                  f"(max_wait_iters {entry['max_wait_iters']}), current val loss {val_loss:.4f}")
    orch.iter_of_last_op = iter_num
    orch.evals_since_op = []
    before = effective_settings() if model is not None else {}
    started = time.time()
    lineage = operation.apply(entry['value'])
    if operation.changes_architecture:
        orch.iter_of_last_growth = iter_num
    if operation.rebuilds_optimizer and on_growth is not None:
        on_growth(lineage)
    if operation.rewraps and on_rewrap is not None:
        on_rewrap()
    if operation.ramp:
        orch.active_ramp = dict(name=entry['name'], start_iter=iter_num, anneal_iters=entry['value']['anneal_iters'])
        model.set_growth_mask(0.0)
    seconds = time.time() - started
    after = effective_settings() if model is not None else {}
    changes = {k: [before[k], after[k]] for k in after if before[k] != after[k]}
    orch.schedule.pop(0)
    orch.executed_ops.append(dict(entry, index=orch.schedule_position, iter=iter_num, reason=reason))
    orch.schedule_position += 1
    if master_process:
        for key, (old, new) in changes.items():
            print(f"New {key}: {old} -> {new}")
        if operation.rebuilds_optimizer:
            rewarm = growth_lr_rewarm_iters if operation.changes_architecture else 0
            print(f"Growth policy: optimizer state '{growth_optimizer_state}', "
                  f"lr re-warmup {rewarm} iters; op took {seconds:.3f}s")
        if operation.ramp:
            print(f"MSG mask ramps 0 -> 1 over {orch.active_ramp['anneal_iters']} iters")
        print("=== SCALING OPERATION COMPLETE ===")
    return changes


def run_orchestrator(iter_num, val_loss, reevaluate=None, on_growth=None, log_event=None, on_rewrap=None):
    """At an eval step: fire the next entries while their triggers hold. reevaluate() returns a fresh
    val loss after an entry that asks for it. Returns the val loss of the model as it now is, or None
    when an operation changed the model's function and its loss was not measured again. Such an
    operation also restarts the best val loss, which belonged to a function the model no longer computes."""
    measured = True
    while orch.schedule:
        entry = orch.schedule[0]
        reason = trigger_reason(entry, iter_num, val_loss)
        if reason is None:
            break
        if OPERATIONS[entry['name']].changes_architecture and orch.active_ramp is not None:
            if master_process:
                print(f"orchestrator: {entry['name']} waits for the {orch.active_ramp['name']} mask ramp to finish")
            break
        changes = execute_operation(entry, reason, iter_num, val_loss, on_growth, on_rewrap)
        val_loss_after = reevaluate() if entry['reevaluate'] and reevaluate is not None else None
        if val_loss_after is not None and master_process:
            print(f"reevaluate: val loss {val_loss:.4f} before {entry['name']}, {val_loss_after:.4f} after")
        if log_event is not None:
            log_event(dict(event='op', iter=iter_num, name=entry['name'], value=entry['value'], reason=reason,
                           val_loss_before=val_loss, val_loss_after=val_loss_after,
                           index=orch.schedule_position - 1, changes=changes,
                           optimizer_policy=growth_optimizer_state if OPERATIONS[entry['name']].rebuilds_optimizer else None))
        if not OPERATIONS[entry['name']].keeps_function:
            progress['best_val_loss'] = 1e9
            measured = False
        if val_loss_after is not None:
            val_loss, measured = val_loss_after, True
    return val_loss if measured else None


def advance_ramp(iter_num):
    """Set the model's MSG mask for this iteration; fold it away once it reaches 1.
    Returns True when the model's structure changed (wrappers must be rebuilt)."""
    if orch.active_ramp is None:
        return False
    mask = ramp_mask(iter_num)
    if mask < 1.0:
        model.set_growth_mask(mask)
        return False
    model.set_growth_mask(1.0)
    model.fold_ramp()
    if master_process:
        print(f"orchestrator: {orch.active_ramp['name']} mask reached 1 at iter {iter_num}, folded away")
    orch.active_ramp = None
    return True


# -----------------------------------------------------------------------------
# runtime helpers: setup, data, eval, checkpoints, events


def setup_distributed():
    """Returns (ddp, rank, local_rank, device). Picks the backend by device."""
    global ddp_world_size, master_process, device
    ddp = int(os.environ.get('RANK', -1)) != -1
    if not ddp:
        return False, 0, 0, device
    rank, local_rank = int(os.environ['RANK']), int(os.environ['LOCAL_RANK'])
    ddp_world_size = int(os.environ['WORLD_SIZE'])
    master_process = rank == 0
    if device.startswith('cuda'):
        device = f'cuda:{local_rank}'
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend or ('nccl' if device.startswith('cuda') else 'gloo'))
    return True, rank, local_rank, device


def data_path():
    return data_dir or os.path.join('data', dataset)


def prepare_command(folder):
    """The command that makes the data in folder: the dataset's own prepare.py, or data/text/prepare.py on
    the user's text, GPT-2 BPE for GPT-2 weights, characters for a model from scratch."""
    if os.path.isfile(f"data/{dataset}/prepare.py"):
        return f"python data/{dataset}/prepare.py" + (f" --out_dir {folder}" if data_dir else '')
    tokenizer = 'char' if init_from in ('scratch', 'resume') else 'gpt2'
    return f"python data/text/prepare.py --input YOUR_TEXT --out_dir {folder} --tokenizer {tokenizer}"


def similar_dataset():
    """A hint for a misspelt dataset (no folder data/<dataset> at all): the prepared folder under data/ (one
    with a train.bin) closest to its name."""
    if data_dir or not os.path.isdir('data') or os.path.isdir(os.path.join('data', dataset)):
        return ''
    prepared = [name for name in sorted(os.listdir('data')) if os.path.isfile(os.path.join('data', name, 'train.bin'))]
    close = difflib.get_close_matches(dataset, prepared, n=1)
    return f" (did you mean --dataset={close[0]}?)" if close else ''


def check_data():
    """train.bin, val.bin and meta.pkl exist and the tokens fit the vocabulary. Returns meta."""
    folder = data_path()
    prepare = prepare_command(folder)
    for name in ('train.bin', 'val.bin', 'meta.pkl'):
        if not os.path.isfile(os.path.join(folder, name)):
            hint = similar_dataset() if name == 'train.bin' else ''
            raise UserError(f"data: {os.path.join(folder, name)} not found{hint}; make it with: {prepare}")
    try:
        with open(os.path.join(folder, 'meta.pkl'), 'rb') as f:
            meta = pickle.load(f)
        vocab_size = int(meta['vocab_size'])
    except Exception as e:
        raise UserError(f"data: {os.path.join(folder, 'meta.pkl')} is unreadable or has no vocab_size ({e}); "
                        f"remake it with: {prepare}") from None
    for split in ('train', 'val'):
        n_bytes = os.path.getsize(os.path.join(folder, f'{split}.bin'))  # np.memmap refuses an empty file
        if n_bytes % 2:
            raise UserError(f"data: {split}.bin in {folder} has an odd number of bytes ({n_bytes}), so it is not "
                            f"uint16 tokens; remake it with: {prepare}")
        n_tokens = n_bytes // 2
        if n_tokens <= block_size:
            raise UserError(f"data: {split}.bin in {folder} has {n_tokens} tokens, fewer than block_size+1 "
                            f"({block_size + 1})")
        largest = largest_token(os.path.join(folder, f'{split}.bin'))
        if largest >= vocab_size:
            raise UserError(f"data: {split}.bin in {folder} holds token {largest}, but meta.pkl's vocab_size is "
                            f"{vocab_size}; remake the data with: {prepare}")
    return meta


def largest_token(path):
    """The largest token of a .bin file. It takes a full read (18 GB per rank on OpenWebText), so it is
    done once: the result is remembered beside the data, in largest_token.json, with the file's size and
    mtime, and a later launch on the same file reads only that. A changed file is read again."""
    stat = os.stat(path)
    file_key = [stat.st_size, stat.st_mtime_ns]
    memo_path = os.path.join(os.path.dirname(path), 'largest_token.json')
    try:
        with open(memo_path) as f:
            memo = json.load(f)
    except (OSError, ValueError):
        memo = {}
    memo = memo if isinstance(memo, dict) else {}
    name = os.path.basename(path)
    if isinstance(memo.get(name), dict) and memo[name].get('file') == file_key:
        return memo[name]['largest']
    tokens = np.memmap(path, dtype=np.uint16, mode='r')
    largest = max(int(tokens[i:i + 2**26].max()) for i in range(0, len(tokens), 2**26))
    memo[name] = dict(file=file_key, largest=largest)
    tmp = f"{memo_path}.{os.getpid()}.tmp"  # DDP ranks may write at once: each its own file, then a rename
    with suppress(OSError):  # a read-only data folder: the next launch reads the file again
        with open(tmp, 'w') as f:
            json.dump(memo, f)
        os.replace(tmp, memo_path)
    return largest


def get_batch(split, generator, size, length=None):
    """size sequences of length tokens (block_size if None) and their next tokens."""
    length = length or block_size
    # recreate np.memmap every batch to avoid a memory leak, as per
    # https://stackoverflow.com/questions/45132940/numpy-memmap-memory-usage-want-to-iterate-once/61472122#61472122
    data = np.memmap(os.path.join(data_path(), f'{split}.bin'), dtype=np.uint16, mode='r')
    ix = torch.randint(len(data) - length, (size,), generator=generator)
    x = torch.stack([torch.from_numpy(data[i:i + length].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + length].astype(np.int64)) for i in ix])
    if device.startswith('cuda'):
        # pin arrays x,y, which allows us to move them to GPU asynchronously (non_blocking=True)
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


@torch.no_grad()
def estimate_loss(eval_model, ctx, rank, ddp, splits=('train', 'val')):
    """Mean loss over a fixed set of batches per split: the generator is seeded the same way at
    every eval (per rank; ranks average), so the same weights always give the same number.
    Batches have the config's batch_size, whatever the schedule does to the training batch."""
    out = {}
    eval_model.eval()
    for split in splits:
        split_index = ['train', 'val'].index(split)
        generator = torch.Generator().manual_seed(EVAL_SEED + 1000 * split_index + rank)
        losses = torch.zeros(effective_eval_iters(), device=device)
        for k in range(len(losses)):
            X, Y = get_batch(split, generator, batch_size)
            with ctx:
                _, loss = eval_model(X, Y)
            losses[k] = loss.float()
        mean = losses.mean()
        if ddp:  # a sum, then the division: gloo averages only from torch 2.8 on (and wrongly in some versions after)
            dist.all_reduce(mean)
            mean /= ddp_world_size
        out[split] = mean.item()
    eval_model.train()
    return out


def final_eval_windows(n_tokens, n_windows):
    """Start offsets of the final eval's windows: evenly spaced from the start of the split to its last
    full window, so that they cover all of it, and the same for every run (no rng)."""
    return [i * (n_tokens - block_size - 1) // n_windows for i in range(n_windows)]


@torch.no_grad()
def final_eval_loss(folder):
    """Mean loss over final_eval_iters batches of folder's val.bin: batch k holds the windows k*B .. k*B+B-1
    of final_eval_windows (B = batch_size); DDP ranks take every world_size-th batch and add up."""
    data = np.memmap(os.path.join(folder, 'val.bin'), dtype=np.uint16, mode='r')
    starts = final_eval_windows(len(data), final_eval_iters * batch_size)
    total = torch.zeros((), device=device)
    eval_model.eval()
    for k in range(ddp_rank, final_eval_iters, ddp_world_size):
        ix = starts[k * batch_size:(k + 1) * batch_size]
        x = torch.stack([torch.from_numpy(data[i:i + block_size].astype(np.int64)) for i in ix]).to(device)
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block_size].astype(np.int64)) for i in ix]).to(device)
        with ctx:
            _, loss = eval_model(x, y)
        total += loss.float()
    if ddp:
        dist.all_reduce(total)
    eval_model.train()
    return total.item() / final_eval_iters


def final_eval(log_event):
    """The figure a report reads: val (and final_eval_extra's val.bin) on final_eval_iters fixed batches."""
    val = final_eval_loss(data_path())
    extra = dict(extra_val_loss=final_eval_loss(final_eval_extra), extra_data=final_eval_extra) if final_eval_extra else {}
    if master_process:
        print(f"final eval ({final_eval_iters} batches): val {val:.4f}"
              + (f", {final_eval_extra} {extra['extra_val_loss']:.4f}" if extra else ''))
        log_event(dict(event='final_eval', iter=progress['iter_num'], val_loss=val, batches=final_eval_iters, **extra,
                       flops=progress['flops']))


def check_final_eval(meta):
    """final_eval_iters >= 0; final_eval_extra a folder with val.bin and a meta.pkl of the training data's
    vocabulary (vocab_size, tokenizer and, for char data, the same characters)."""
    if final_eval_iters < 0:
        raise UserError(f"final_eval_iters: expected an integer >= 0 (0 = no final eval), got {final_eval_iters}")
    if not final_eval_extra:
        return
    for name in ('val.bin', 'meta.pkl'):
        if not os.path.isfile(os.path.join(final_eval_extra, name)):
            raise UserError(f"final_eval_extra: {os.path.join(final_eval_extra, name)} not found")
    with open(os.path.join(final_eval_extra, 'meta.pkl'), 'rb') as f:
        extra_meta = pickle.load(f)
    if any(extra_meta.get(k) != meta.get(k) for k in ('vocab_size', 'tokenizer', 'itos')):
        raise UserError(f"final_eval_extra: {os.path.join(final_eval_extra, 'meta.pkl')} is not the training data's "
                        f"vocabulary (vocab_size {extra_meta.get('vocab_size')} against {meta['vocab_size']}, tokenizer "
                        f"{extra_meta.get('tokenizer')!r} against {meta.get('tokenizer')!r}): prepare it as the "
                        f"training data was")
    if os.path.getsize(os.path.join(final_eval_extra, 'val.bin')) // 2 <= block_size:
        raise UserError(f"final_eval_extra: {os.path.join(final_eval_extra, 'val.bin')} has fewer than "
                        f"block_size+1 ({block_size + 1}) tokens")


def eval_flops(n_splits=2):
    """Flops of one estimate_loss call over n_splits splits, all ranks together."""
    forwards = n_splits * effective_eval_iters() * ddp_world_size
    return model.flops_per_token(training=False) * forwards * batch_size * block_size + \
        model.flops_per_forward(training=False) * forwards


CHECKPOINT_KEYS = tuple(dict.fromkeys(('model', 'model_args', 'optimizer', 'iter_num', 'orchestrator', 'rng', 'scaler',
                                        'config', 'wandb_run_id') + PROGRESS_KEYS))  # what a resume reads


def load_checkpoint(path, mmap=False):
    """The checkpoint to resume from, with every key a resume reads (a UserError otherwise); mmap: see checkpoint.py."""
    if not os.path.isfile(path):
        raise UserError(f"init_from='resume': no checkpoint at {path}")
    return ckpt_files.load_checkpoint(path, CHECKPOINT_KEYS, mmap)


def rng_state(generator):
    state = dict(torch=torch.get_rng_state(), data=generator.get_state())
    if device.startswith('cuda'):
        state['cuda'] = torch.cuda.get_rng_state(torch.device(device))
    return state


def set_rng_state(state, generator):
    torch.set_rng_state(state['torch'])
    generator.set_state(state['data'])
    if 'cuda' in state:
        torch.cuda.set_rng_state(state['cuda'], torch.device(device))


def kept_on_resume(line, keep_through_iter):
    """Whether a run resumed at keep_through_iter keeps this events.jsonl line: an event up to that iter,
    not a line torn by a crash mid-write, nor the summary or final eval of the run that stopped there (the
    resumed run ends with its own)."""
    try:
        event = json.loads(line)
        return event['iter'] <= keep_through_iter and event['event'] not in ('summary', 'final_eval')
    except (json.JSONDecodeError, KeyError, TypeError):
        return False


class EventLog:
    """events.jsonl: one JSON object per line, flushed at once; rank 0 only; mirrored to wandb."""

    def __init__(self, path, keep_through_iter, wandb_run):
        self.path, self.wandb_run = path, wandb_run
        if keep_through_iter is not None and os.path.isfile(path):
            self.truncate_after(keep_through_iter)
        elif keep_through_iter is None and os.path.isfile(path):
            os.remove(path)
        self.file = open(path, 'a')

    def truncate_after(self, keep_through_iter):
        """A resumed run redoes what came after its checkpoint: drop those old events."""
        with open(self.path) as f:
            kept = [line for line in f if kept_on_resume(line, keep_through_iter)]
        tmp = self.path + '.tmp'
        with open(tmp, 'w') as f:
            f.writelines(kept)
        os.replace(tmp, self.path)

    def __call__(self, event):
        self.file.write(json.dumps(event) + '\n')
        self.file.flush()
        if self.wandb_run is not None:
            self.wandb_run.log({f"{event['event']}/{k}": v for k, v in event.items()
                                if is_number(v)}, step=event['iter'])


# -----------------------------------------------------------------------------
# the run: module globals (nanoGPT style) so that a growth op can rebuild what wraps the model

optimizers = None  # the run's optimizers as one (model.Optimizers: AdamW, or Muon and AdamW)
optimizer_names = {}  # parameter -> name when the optimizers were built, to find state of replaced ones
scaler = None
eval_model = train_model = None  # compiled and DDP wrappers around model
ddp, ddp_rank, ddp_local_rank, device_type = False, 0, 0, 'cpu'
ctx = nullcontext()
data_generator = None
stop_signals = []  # SIGTERM / SIGINT received: checkpoint and exit at the next iteration
stopped_by = 0  # the signal the run stopped for (under DDP: agreed by the ranks); the exit status is 128 + it
nonfinite_in_a_row = 0  # non-finite steps skipped in a row (skip_nonfinite_steps)
flops_per_token = {}  # sequence length -> flops per token of a training step with the current model; emptied when it changes
flops_per_forward = 0  # of a training step with the current model; refreshed when it changes


MAX_SEED = 2**63 - 2**20
PTDTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}
DEVICE_TYPES = ('cpu', 'cuda', 'mps')


def check_choice(key, allowed):
    if globals()[key] not in allowed:
        raise UserError(f"{key}: expected one of {', '.join(allowed)}, got {globals()[key]!r}")


def check_device():
    try:
        device_type_named = torch.device(device).type
    except (RuntimeError, ValueError):  # torch's words for 'gpu' or 'cuda:x'
        device_type_named = None
    if device_type_named not in DEVICE_TYPES:
        raise UserError(f"device: expected cpu, cuda, cuda:N or mps, got {device!r}")


def setup_runtime():
    global ddp, ddp_rank, ddp_local_rank, device_type, ctx, data_generator
    if not 0 <= seed <= MAX_SEED:  # torch takes a signed 64-bit seed, and each rank adds its rank
        raise UserError(f"seed: expected an integer from 0 to {MAX_SEED}, got {seed}")
    check_choice('dtype', PTDTYPES)  # before DDP starts on the device and autocast takes the dtype
    check_device()
    ddp, ddp_rank, ddp_local_rank, _ = setup_distributed()
    torch.manual_seed(seed + ddp_rank)
    data_generator = torch.Generator().manual_seed(seed + ddp_rank)
    device_type = 'cuda' if 'cuda' in device else 'cpu'
    torch.backends.cuda.matmul.allow_tf32 = True  # allow tf32 on matmul
    torch.backends.cudnn.allow_tf32 = True  # allow tf32 on cudnn
    # bf16 / fp16 run under autocast on cuda and cpu alike: weights and optimizer state stay float32
    ctx = nullcontext() if dtype == 'float32' else torch.amp.autocast(device_type=device_type, dtype=PTDTYPES[dtype])


def setup(settings):
    """The entry point for train.py itself and for scripts that use its pieces (bench.py, bench_ops.py,
    bench_growth.py): sets the config globals from `settings` (config keys, as configurator.configure
    resolves them), starts the runtime (seed, DDP, device, autocast) and returns every setting of the run.
    Scripts call this rather than write train's globals."""
    unknown = sorted(set(settings) - set(config_keys))
    if unknown:
        raise UserError(f"setup: not config keys: {', '.join(unknown)}")
    globals().update(settings)
    setup_runtime()
    return {k: globals()[k] for k in config_keys}


def model_config_from_globals(vocab_size):
    try:
        return GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_hidden=n_hidden, head_size=head_size,
                         block_size=block_size, bias=bias, vocab_size=vocab_size, dropout=dropout,
                         attn_lora_rank=attn_lora_rank, embedding_lora_rank=embedding_lora_rank,
                         lora_alpha=lora_alpha, activation=activation, pos_emb=pos_emb, rope_base=rope_base)
    except ValueError as e:
        raise UserError(f"config: {e}") from None


@contextmanager
def hf_errors():
    """transformers' errors (no such model, no network, not installed) and the import's refusals, as one
    message naming init_from."""
    try:
        yield
    except (ImportError, OSError, ValueError) as e:
        raise UserError(f"init_from={init_from!r}: {str(e).strip().splitlines()[0]}") from None


def model_config_from_hf(meta):
    """init_from names GPT-2 weights: the model keys they fix (shape, bias, activation, vocabulary) come
    from them; a key the config sets off its default must agree. block_size may crop the positions;
    dropout and LoRA are free."""
    if init_from in GPT2_HUB_NAMES and meta.get('tokenizer') != 'gpt2':
        raise UserError(f"data: {init_from} reads GPT-2 BPE tokens, but {data_path()}/meta.pkl says tokenizer "
                        f"{meta.get('tokenizer')!r}; prepare the data with the gpt2 tokenizer")
    with hf_errors():
        hf_config = import_transformers().AutoConfig.from_pretrained(init_from)
        args = hf_model_args(hf_config, **{k: globals()[k] for k in HF_FREE_KEYS})
    for key in ('n_layer', 'n_head', 'n_embd', 'n_hidden', 'head_size', 'bias', 'activation', 'pos_emb'):
        if globals()[key] not in (config_defaults[key], args[key]):
            raise UserError(f"config: {key} = {globals()[key]!r} contradicts the weights of {init_from} ({key} = "
                            f"{args[key]!r}); an imported model's shape comes from its weights: leave {key} out "
                            "of the config (the schedule can grow the model)")
    if meta['vocab_size'] > args['vocab_size']:
        raise UserError(f"data: meta.pkl's vocab_size {meta['vocab_size']} is larger than the vocabulary of "
                        f"{init_from} ({args['vocab_size']} tokens)")
    try:
        return GPTConfig(**args)
    except ValueError as e:  # a layer pattern of attn_lora_rank that the weights' depth does not have
        raise UserError(f"config: {e}") from None


def check_out_dir(path):
    if not path:
        raise UserError("out_dir: empty; give the folder of the run, e.g. --out_dir=out")
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"out_dir: {path} is a file, not a folder")


def check_wandb():
    """wandb_log: wandb is installed and has an API key (or logs offline), as wandb.init would find
    them: wandb.login without verify reads the key (environment, netrc, settings) without the network."""
    offline = os.environ.get('WANDB_MODE') in ('offline', 'disabled', 'dryrun')
    try:
        import wandb
    except ImportError:
        raise UserError("wandb_log=True, but wandb is not installed: pip install wandb") from None
    if offline:
        return
    try:
        wandb.login(verify=False)
    except wandb.errors.Error as e:
        raise UserError(f"wandb_log=True: {' '.join(str(e).split())} (or log offline: WANDB_MODE=offline)") from None


def check_vocabulary(meta, model_config):
    """A resume reads data of the model's vocabulary (GPT-2 BPE data may have fewer tokens than imported
    weights whose vocabulary is padded)."""
    data_vocab, model_vocab = meta['vocab_size'], model_config.vocab_size
    if data_vocab > model_vocab or (data_vocab < model_vocab and meta.get('tokenizer') != 'gpt2'):
        raise UserError(f"data: {data_path()}/meta.pkl has vocab_size {data_vocab}, but the model in "
                        f"{out_dir}/ckpt.pt has {model_vocab} tokens; resume on the data the run trained on")


def last_event_iter(path):
    """The largest iter in an events.jsonl, None if no line is a readable event."""
    iters = []
    with open(path) as f:
        for line in f:
            with suppress(json.JSONDecodeError, KeyError, TypeError):
                iters.append(json.loads(line)['iter'])
    return max(iters, default=None)


def check_no_run_in_out_dir():
    """A new run replaces out_dir's ckpt.pt and events.jsonl: refused where they hold a run, unless overwrite."""
    ckpt_path, events_path = os.path.join(out_dir, 'ckpt.pt'), os.path.join(out_dir, 'events.jsonl')
    ways = "pick another --out_dir, or pass --overwrite=True to replace"
    if os.path.exists(ckpt_path):
        try:
            found = f"holds a run at iter {ckpt_files.load_checkpoint(ckpt_path, ('iter_num',), mmap=True)['iter_num']}"
            ways = f"continue it with --init_from=resume, {ways} it"
        except UserError:
            found, ways = "is not a readable checkpoint", f"{ways} it"
        raise UserError(f"{ckpt_path} {found}; {ways}")
    if os.path.exists(events_path):
        last_iter = last_event_iter(events_path)
        through = f" (through iter {last_iter})" if last_iter is not None else ''
        raise UserError(f"{events_path} holds the events of a run{through}, without a checkpoint; {ways} them")


def check_inputs():
    """Everything the user gave us, checked before anything is built or written.
    Returns (model config, checkpoint or None, plan); sets the orchestrator state."""
    if init_from not in ('scratch', 'resume') + GPT2_HUB_NAMES and not os.path.isdir(init_from):
        raise UserError(f"init_from: expected scratch, resume, {', '.join(GPT2_HUB_NAMES)} or a Hugging Face GPT-2 "
                        f"folder, got {init_from!r} (no such folder)")
    for key, allowed in (('optimizer', OPTIMIZERS), ('growth_optimizer_state', ('carry', 'reset')),
                         ('dtype', tuple(PTDTYPES)), ('lr_schedule', ('cosine', 'wsd')), ('activation', ACTIVATIONS),
                         ('pos_emb', POS_EMBS)):
        check_choice(key, allowed)
    if optimizer == 'muon' and not hasattr(torch.optim, 'Muon'):
        raise UserError(f"optimizer: 'muon' needs torch.optim.Muon (torch 2.9 or newer); this torch is "
                        f"{torch.__version__}: upgrade torch, or train with optimizer='adamw'")
    if trigger_slope_evals < 2:
        raise UserError(f"trigger_slope_evals: expected an integer >= 2 (a slope needs two evals), got {trigger_slope_evals}")
    if cooldown_iters < 0:
        raise UserError(f"cooldown_iters: expected an integer >= 0 (0 = a fifth of lr_decay_iters), got {cooldown_iters}")
    for key in ('batch_size', 'gradient_accumulation_steps', 'block_size', 'n_layer', 'n_head', 'n_embd',
                'eval_interval', 'eval_iters', 'log_interval'):
        if globals()[key] < 1:
            raise UserError(f"{key}: expected an integer >= 1, got {globals()[key]}")
    for key, upper in (('learning_rate', math.inf), ('min_lr', math.inf), ('weight_decay', math.inf),
                       ('grad_clip', math.inf), ('lora_alpha', math.inf), ('beta1', 1.0), ('beta2', 1.0),
                       ('dropout', 1.0)):
        if not 0.0 <= globals()[key] < upper:
            raise UserError(f"{key}: expected a number >= 0{f' and < {upper}' if upper < math.inf else ''}, "
                            f"got {globals()[key]}")
    if not dry_run and device.startswith('cuda') and not torch.cuda.is_available():
        raise UserError(f"device: {device!r}, but this torch sees no CUDA device; train with --device=cpu "
                        "(a dry run validates a GPU recipe on any machine)")
    check_out_dir(out_dir)
    if wandb_log and master_process and not (dry_run or eval_only):
        check_wandb()
    meta = check_data()
    check_final_eval(meta)
    checkpoint = load_checkpoint(os.path.join(out_dir, 'ckpt.pt')) if init_from == 'resume' else None
    if checkpoint is None:
        model_config = model_config_from_globals(meta['vocab_size']) if init_from == 'scratch' else \
            model_config_from_hf(meta)
        reset_orchestrator(load_schedule_file(scaling_schedule_file) if scaling_schedule_file else [])
    else:
        saved_ranks = len(checkpoint['rng'])
        if saved_ranks != ddp_world_size:  # each rank goes on with its own rng and data order from the checkpoint
            raise UserError(f"{out_dir}/ckpt.pt: written by {saved_ranks} DDP process(es), resumed with "
                            f"{ddp_world_size}; resume with {saved_ranks} (each one continues its own data order)")
        model_config = GPTConfig(**dict(checkpoint['model_args'], dropout=dropout))  # dropout: the run's setting
        check_vocabulary(meta, model_config)
        load_orchestrator_state(checkpoint['orchestrator'])
        if scaling_schedule_file:
            check_schedule_matches(load_schedule_file(scaling_schedule_file))
    plan = validate_schedule(scaling_schedule_file or f"{out_dir}/ckpt.pt (stored schedule)", orch.schedule,
                             orch.schedule_position, model_config)
    if not (init_from == 'resume' or eval_only or dry_run or overwrite):
        check_no_run_in_out_dir()
    return model_config, checkpoint, plan


def build_optimizer():
    """New optimizers for the model as it is now (and its training flops, for the counters)."""
    global optimizers, optimizer_names, flops_per_token, flops_per_forward
    flops_per_token, flops_per_forward = {}, model.flops_per_forward()
    optimizers = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type, optimizer)
    optimizer_names = {p: name for name, p in model.named_parameters()}


def wrap_model():
    """torch.compile and DDP around the model; redone after every change of its structure."""
    global eval_model, train_model
    if compile:
        if master_process:
            print("compiling the model (torch.compile); the first iteration takes longer")
        torch._dynamo.reset()  # a grown model is a new graph; do not pile up recompilations
        eval_model = torch.compile(model)
    else:
        eval_model = model
    train_model = DDP(eval_model, device_ids=[ddp_local_rank] if device_type == 'cuda' else None) if ddp else eval_model


def check_same_optimizer(checkpoint):
    """The optimizer is fixed for a run: its state in the checkpoint is that optimizer's (checkpoints
    from before the optimizer key trained with AdamW)."""
    saved = checkpoint['config'].get('optimizer', 'adamw')
    if optimizer != saved:
        raise UserError(f"optimizer: {out_dir}/ckpt.pt was trained with optimizer={saved!r}, resumed with "
                        f"{optimizer!r}; the optimizer is fixed for a run: resume with optimizer={saved!r}")


def build_run(model_config, checkpoint):
    global model, scaler, progress
    if checkpoint is None and init_from not in ('scratch', 'resume'):  # GPT-2 weights, checked by check_inputs
        with hf_errors():
            model = GPT.from_hf(init_from, **{k: getattr(model_config, k) for k in HF_FREE_KEYS}).to(device)
    else:
        model = GPT(model_config).to(device)
    build_optimizer()
    scaler = torch.amp.GradScaler(device_type, enabled=(dtype == 'float16'))
    progress = dict(iter_num=0, tokens=0, flops=0, eval_flops=0, best_val_loss=1e9, next_eval_iter=0)
    if checkpoint is not None:
        model.load_state_dict(checkpoint['model'])
        check_same_optimizer(checkpoint)
        optimizers.load_state_dict(checkpoint['optimizer'])
        scaler.load_state_dict(checkpoint['scaler'])
        progress = {k: checkpoint[k] for k in PROGRESS_KEYS}
        set_rng_state(checkpoint['rng'][ddp_rank], data_generator)
        model.set_growth_mask(ramp_mask(progress['iter_num']))
    wrap_model()


def position_checksum(tensors, chunk=2**20):
    """One float64 sum of all values, each weighted by its position in its tensor, so that rows in
    another order (e.g. other widen_mlp replicas) count. Taken in chunks: the float64 copy and the
    position weights stay small, whatever the size of the largest tensor."""
    total = 0
    for t in tensors:
        flat = t.detach().flatten()
        for start in range(0, flat.numel(), chunk):
            part = flat[start:start + chunk].double()
            total = total + (part * torch.arange(start + 1, start + len(part) + 1, dtype=torch.float64,
                                                 device=part.device)).sum()
    return total


def state_tensors():
    """The optimizers' state tensors shaped like their parameters (AdamW's moments, Muon's momentum)."""
    return [t for state in optimizers.state.values() for t in state.values() if t.dim() > 0]


def assert_ranks_agree():
    """The position checksum of all parameters and optimizer state tensors, compared across ranks."""
    tensors = list(model.parameters()) + state_tensors()
    checksum = position_checksum(tensors).view(1)
    gathered = [torch.zeros_like(checksum) for _ in range(ddp_world_size)]
    dist.all_gather(gathered, checksum)
    if any(g.item() != checksum.item() for g in gathered):
        raise RuntimeError(f"DDP ranks disagree after a growth op: parameter checksums {[g.item() for g in gathered]}")


def rebuild_after_growth(lineage):
    """After a growth op: new optimizers, their state carried through the lineage (or reset, by
    growth_optimizer_state), ranks checked to agree, new wrappers."""
    old_states = {optimizer_names[p]: state for p, state in optimizers.state.items()}
    build_optimizer()
    carried = carry_optimizer_state(model, old_states, optimizers, lineage) if growth_optimizer_state == 'carry' else 0
    if ddp and check_rank_consistency:
        assert_ranks_agree()
    wrap_model()
    if master_process:
        n_tensors = sum(len(g['params']) for g in optimizers.param_groups)
        print(f"optimizer rebuilt: {carried} of {n_tensors} tensors carried their state over")


def refresh_trainable():
    """After a freeze or unfreeze: the optimizers stay (they skip a frozen parameter and keep its state), the
    training flops change (frozen matrices have no weight gradient), and DDP, which registers the parameters
    that train when it is built, gets new wrappers."""
    global flops_per_token, flops_per_forward
    flops_per_token, flops_per_forward = {}, model.flops_per_forward()  # per seq_len, filled by step_flops
    wrap_model()


def write_checkpoint(config, wandb_run):
    """All ranks call this (the rng states are gathered); rank 0 writes."""
    rng = [rng_state(data_generator)]
    if ddp:
        rng = [None] * ddp_world_size
        dist.all_gather_object(rng, rng_state(data_generator))
    if master_process:
        checkpoint = dict(model=model.state_dict(), model_args=asdict(model.config),
                          optimizer=optimizers.state_dict(), scaler=scaler.state_dict(), config=config,
                          orchestrator=orchestrator_state(), growth_mask=ramp_mask(progress['iter_num']), rng=rng,
                          wandb_run_id=wandb_run.id if wandb_run is not None else '', **progress)
        print(f"saving checkpoint to {out_dir}")
        ckpt_files.save_checkpoint(checkpoint, os.path.join(out_dir, 'ckpt.pt'))


def evaluate(splits=('train', 'val')):
    """The losses of the model as it is now (fixed batches), their flops counted."""
    progress['eval_flops'] += eval_flops(len(splits))
    return estimate_loss(eval_model, ctx, ddp_rank, ddp, splits)


def reevaluate_val_loss():
    """The val loss after an operation (reevaluate: true); the train split is not needed."""
    return evaluate(('val',))['val']


def eval_event(losses, elapsed_s):
    it = progress['iter_num']
    return dict(event='eval', iter=it, tokens=progress['tokens'], train_loss=losses['train'],
                val_loss=losses['val'], lr=get_lr(it), **schedule_settings(),
                **{k: getattr(model.config, k) for k in ARCH_KEYS},
                params=model.get_num_params(), trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
                flops=progress['flops'],
                eval_flops=progress['eval_flops'], mask=ramp_mask(it), elapsed_s=elapsed_s)


def step_is_finite(iter_num, loss_nonfinite, grad_norm):
    """Stop at a non-finite loss (loss_nonfinite: a flag on the device, set by any micro step) or
    gradient norm, or skip up to skip_nonfinite_steps in a row.
    The check is a host-device sync: on cuda it is taken at log intervals only, unless steps are to
    be skipped (a non-finite step in between is then caught there, and by the eval before any checkpoint).
    Under DDP the ranks agree on the decision with one small all-reduce, where the check runs."""
    global nonfinite_in_a_row
    if device_type == 'cuda' and not skip_nonfinite_steps and iter_num % log_interval:
        return True
    nonfinite = loss_nonfinite.view(1)
    if grad_norm is not None and not scaler.is_enabled():  # with fp16 the grad scaler handles inf gradients itself
        nonfinite |= ~torch.isfinite(grad_norm.view(1))
    if ddp:  # the loss is this rank's own: every rank must skip or stop together, or the others hang or diverge
        nonfinite = nonfinite.int()
        dist.all_reduce(nonfinite, op=dist.ReduceOp.MAX)
    if not bool(nonfinite):
        nonfinite_in_a_row = 0
        return True
    nonfinite_in_a_row += 1
    if nonfinite_in_a_row > skip_nonfinite_steps:
        raise UserError(f"non-finite loss or gradient norm at iteration {iter_num}; stopping "
                        f"(the checkpoint in {out_dir}, if any, is left as it was)")
    if master_process:
        print(f"iter {iter_num}: non-finite loss or gradient norm, step skipped ({nonfinite_in_a_row} in a row)")
    return False


def train_step(iter_num, next_batch=None):
    """Forward/backward over the accumulation steps, clip, step; batches from next_batch (get_batch's
    signature), get_batch if None. Returns (last micro-step loss, number of micro steps, tokens, whether
    the step was applied)."""
    lr = get_lr(iter_num)
    for param_group in optimizers.param_groups:  # AdamW's and Muon's alike
        param_group['lr'] = lr
    micro_steps = effective_grad_accum() // ddp_world_size
    step_batch_size, seq_len = effective_batch_size(), effective('seq_len')
    # every micro step's loss is checked (without grad_clip a NaN in any of them reaches the gradients
    # unseen by the norm); the flag stays on the device, so there is no sync per micro step
    loss_nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    for micro_step in range(micro_steps):
        if ddp:
            # sync gradients at the last micro step only
            train_model.require_backward_grad_sync = (micro_step == micro_steps - 1)
        X, Y = (next_batch or get_batch)('train', data_generator, step_batch_size, seq_len)
        with ctx:
            _, loss = train_model(X, Y)
            loss = loss / micro_steps
        loss_nonfinite |= ~torch.isfinite(loss.detach())
        scaler.scale(loss).backward()
    # unscale here, not in scaler.step: a skipped step must leave the fp16 scaler its inf checks for update()
    scaler.unscale_(optimizers)
    grad_norm = None
    if grad_clip != 0.0:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    applied = step_is_finite(iter_num, loss_nonfinite, grad_norm)
    if applied:
        scaler.step(optimizers)
    scaler.update()
    optimizers.zero_grad(set_to_none=True)
    return loss, micro_steps, micro_steps * ddp_world_size * step_batch_size * seq_len, applied


def step_flops(tokens, micro_steps, seq_len=None):
    """Training flops of one step of sequences of seq_len tokens (the model's block_size if None), all ranks
    together (each rank runs micro_steps forwards)."""
    if seq_len not in flops_per_token:
        flops_per_token[seq_len] = model.flops_per_token(seq_len=seq_len)
    return flops_per_token[seq_len] * tokens + flops_per_forward * micro_steps * ddp_world_size


def per_gpu_mfu(flops, dt):
    """The model flops utilization of one GPU: its share of a step's flops (all ranks) against its peak."""
    return model.estimate_mfu(flops / ddp_world_size, dt)


def duration(seconds):
    """Wall time as a person reads it: 9s, 2m14s, 1h02m."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class StepClock:
    """The wall time of the run (since this process started it, a resume too), of each training step,
    and the ETA. It is given timestamps (main: time.time()), so a test can make them up."""

    def __init__(self, start):
        self.start = start
        self.restart(start)

    def restart(self, now):
        """After an eval (its ops, its checkpoint) or a re-wrap: the next step's time starts now, and the
        ETA's mean starts over."""
        self.t0 = now
        self.first_step, self.later_steps, self.later_seconds = None, 0, 0.0

    def step(self, now):
        """The time of the training step that ended now."""
        dt, self.t0 = now - self.t0, now
        if self.first_step is None:
            self.first_step = dt
        else:
            self.later_steps += 1
            self.later_seconds += dt
        return dt

    def elapsed(self, now):
        return now - self.start

    def eta(self, iters_left):
        """iters_left at the mean step time since the last restart, evals left out; the first step after
        it (compilation, warm-up) counts only while it is the only one."""
        mean = self.later_seconds / self.later_steps if self.later_steps else self.first_step
        return iters_left * mean


def log_line(iter_num, lossf, dt, tokens, elapsed, eta, mfu=None):
    """nanoGPT's iteration line with progress, throughput and time; the MFU (cuda only) once measured."""
    line = (f"iter {iter_num}/{max_iters}: loss {lossf:.4f}, time {dt * 1000:.2f}ms, tok/s {tokens / dt:,.0f}, "
            f"elapsed {duration(elapsed)}, eta {duration(eta)}")
    return line if mfu is None else line + f", mfu {mfu * 100:.2f}%"


def run_summary(events, elapsed_s):
    """The end of a run as one event: from its events.jsonl (the whole run, before a resume too) the lowest
    val loss of an eval and its iter, the last eval's val loss and the ops that fired; the counters; the
    checkpoint (relative to out_dir), None if there is none."""
    evals = [e for e in events if e['event'] == 'eval']
    lowest = min(evals, key=lambda e: e['val_loss'], default=dict(val_loss=None, iter=None))
    has_checkpoint = os.path.isfile(os.path.join(out_dir, 'ckpt.pt'))
    return dict(event='summary', iter=progress['iter_num'], min_val_loss=lowest['val_loss'],
                min_val_iter=lowest['iter'], final_val_loss=evals[-1]['val_loss'] if evals else None,
                elapsed_s=elapsed_s, flops=progress['flops'], eval_flops=progress['eval_flops'],
                tokens=progress['tokens'], checkpoint='ckpt.pt' if has_checkpoint else None,
                ops_fired=[dict(name=e['name'], iter=e['iter']) for e in events if e['event'] == 'op'])


def print_summary(log_event, elapsed_s):
    """Rank 0, once the loop is over: a few lines on what the run did, and the same as a summary event."""
    with open(log_event.path) as f:
        summary = run_summary([json.loads(line) for line in f if line.strip()], elapsed_s)
    vals = ''
    if summary['final_val_loss'] is not None:  # None: events.jsonl has no eval (deleted before a resume)
        vals = (f", best val {summary['min_val_loss']:.4f} (iter {summary['min_val_iter']}), "
                f"final val {summary['final_val_loss']:.4f}")
    checkpoint = os.path.join(out_dir, summary['checkpoint']) if summary['checkpoint'] else 'none'
    ops = ', '.join(f"{op['name']}@{op['iter']}" for op in summary['ops_fired']) or 'none'
    print(f"done: iter {summary['iter']}{vals}, wall {duration(elapsed_s)}")
    print(f"  training flops {summary['flops']:.3e}, tokens {summary['tokens']:,}, checkpoint {checkpoint}")
    print(f"  ops fired: {ops}")
    log_event(summary)


def stop_requested():
    """The number of the SIGTERM/SIGINT that arrived, 0 if none (under DDP: on any rank, agreed at log
    intervals; SIGTERM where ranks got both)."""
    if not ddp:
        return max(stop_signals, default=0)
    if progress['iter_num'] % log_interval:
        return 0
    flag = torch.tensor([max(stop_signals, default=0)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def rewound_wandb_run(wandb, run_id, iter_num, config):
    """The checkpoint's wandb run, its history cut back to the checkpoint's iter as events.jsonl is
    (wandb's rewind, resume_from: history steps below the given one stay). Rewind is a preview feature
    of the W&B server: where it is refused, None, and a note says what the charts will show."""
    try:
        return wandb.init(project=wandb_project, name=wandb_run_name, config=config,
                          resume_from=f"{run_id}?_step={iter_num + 1}")
    except wandb.errors.Error as e:
        print(f"wandb: run {run_id} could not be rewound to iter {iter_num} ({' '.join(str(e).split())[:200]}); "
              f"it is resumed with its history as it is: wandb drops what this run logs at the iters it already has "
              f"(up to the last one logged before the stop), so there the charts show the old points; "
              f"events.jsonl has this run's")
        return None


def open_logging(config, checkpoint):
    """wandb (continuing the checkpoint's run) and the event log; rank 0 only."""
    if not master_process:
        return None, None
    os.makedirs(out_dir, exist_ok=True)
    wandb_run = None
    if wandb_log:
        import wandb
        run_id = checkpoint['wandb_run_id'] if checkpoint else ''
        if run_id:
            wandb_run = rewound_wandb_run(wandb, run_id, checkpoint['iter_num'], config)
        if wandb_run is None:
            wandb_run = wandb.init(project=wandb_project, name=wandb_run_name, config=config,
                                   id=run_id or None, resume='allow' if run_id else None)
    keep_through_iter = checkpoint['iter_num'] if checkpoint else None
    return wandb_run, EventLog(os.path.join(out_dir, 'events.jsonl'), keep_through_iter, wandb_run)


def finished_message(iter_num):
    """A resume of a run at max_iters: what to raise to train on."""
    decayed = f", and a larger --lr_decay_iters (the lr reached min_lr at iter {lr_decay_end()})" \
        if decay_lr and iter_num >= lr_decay_end() else ''
    return (f"the run in {out_dir}/ckpt.pt is finished at iter {iter_num} (max_iters {max_iters}); "
            f"to train on, resume with a larger --max_iters{decayed}")


def evaluate_only():
    """eval_only: the losses of the model as it is (a resume: the checkpoint's); nothing is written."""
    losses = evaluate()
    if master_process:
        print(f"step {progress['iter_num']}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f} "
              "(eval_only: nothing written)")


def end_distributed():
    if ddp:
        dist.barrier()  # every rank done with the group before any tears it down (gloo aborts otherwise, now and then)
        dist.destroy_process_group()


def main(config):
    """The run, once setup(config) has set it up."""
    global stopped_by
    model_config, checkpoint, plan = check_inputs()
    if dry_run:
        if master_process:
            print_plan(plan)
        return
    if checkpoint is not None and checkpoint['iter_num'] >= max_iters and not eval_only:
        if master_process:
            print(finished_message(checkpoint['iter_num']))
        end_distributed()
        return
    build_run(model_config, checkpoint)
    if eval_only:
        evaluate_only()
        end_distributed()
        return
    if master_process:
        for row in plan:
            if row['warning']:
                print(f"warning: {row['warning']}")
    wandb_run, log_event = open_logging(config, checkpoint)
    del checkpoint  # free its memory
    if master_process:
        grad_accum, micro_batch, seq_len = effective_grad_accum(), effective_batch_size(), effective('seq_len')
        print(f"tokens per iteration will be: {grad_accum * micro_batch * seq_len:,} "
              f"(grad accum {grad_accum} x batch {micro_batch} x seq_len {seq_len})")
        print(f"number of parameters: {model.get_num_params() / 1e6:.2f}M")
        print(describe_optimizer())
        print(f"precision: {dtype}" + (f" autocast on {device_type}, float32 weights" if dtype != 'float32' else '')
              + (", loss scaling" if scaler.is_enabled() else ''))
    signal.signal(signal.SIGTERM, lambda signum, _: stop_signals.append(signum))
    signal.signal(signal.SIGINT, lambda signum, _: stop_signals.append(signum))

    clock = StepClock(time.time())
    local_iter_num = 0
    running_mfu = None
    while True:
        iter_num = progress['iter_num']
        if advance_ramp(iter_num):
            wrap_model()
            clock.restart(time.time())

        on_eval_grid = iter_num == progress['next_eval_iter']
        # a run resumed from its last checkpoint (iter max_iters) had its final eval before that checkpoint
        if on_eval_grid or iter_num == max_iters and local_iter_num > 0:
            losses = evaluate()
            val_loss = losses['val']
            if not math.isfinite(val_loss):
                raise UserError(f"non-finite val loss at iteration {iter_num}; stopping "
                                f"(the checkpoint in {out_dir}, if any, is left as it was)")
            if master_process:
                print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {val_loss:.4f}, "
                      f"flops {progress['flops']:.3e}, tokens {progress['tokens']:,}")
                log_event(eval_event(losses, clock.elapsed(time.time())))
            # the schedule runs at every eval on the grid, the last one too, so that a run resumed from
            # here with a larger max_iters continues exactly; an extra final eval off the grid only reports
            if on_eval_grid:
                record_eval(progress['flops'], val_loss)
                val_loss = run_orchestrator(iter_num, val_loss, reevaluate_val_loss, rebuild_after_growth, log_event,
                                            refresh_trainable)
                progress['next_eval_iter'] = iter_num + effective_eval_interval()
            # val_loss None: the model's function changed and was not measured again; the next eval sets the best
            improved = val_loss is not None and val_loss < progress['best_val_loss']
            if improved:
                progress['best_val_loss'] = val_loss
            if (improved or always_save_checkpoint) and iter_num > 0:
                write_checkpoint(config, wandb_run)
            clock.restart(time.time())  # the next step's time leaves out the eval, its ops and checkpoint
        if iter_num >= max_iters:
            break
        stop_signal = stop_requested()
        if stop_signal:
            write_checkpoint(config, wandb_run)
            stopped_by = stop_signal  # run_from_command_line says how to continue and exits with 128 + it
            break

        loss, micro_steps, tokens, _ = train_step(iter_num)
        flops = step_flops(tokens, micro_steps, effective('seq_len'))
        progress['tokens'] += tokens
        progress['flops'] += flops

        # timing and logging
        now = time.time()
        dt = clock.step(now)
        if iter_num % log_interval == 0 and master_process:
            # get loss as float. note: this is a CPU-GPU sync point
            lossf = loss.item() * micro_steps
            if device_type == 'cuda' and local_iter_num >= 5:  # a GPU's peak; let the training loop settle a bit
                mfu = per_gpu_mfu(flops, dt)
                running_mfu = mfu if running_mfu is None else 0.9 * running_mfu + 0.1 * mfu
            print(log_line(iter_num, lossf, dt, tokens, clock.elapsed(now), clock.eta(max_iters - iter_num - 1),
                           running_mfu))
        progress['iter_num'] += 1
        local_iter_num += 1

    if final_eval_iters and progress['iter_num'] >= max_iters:
        final_eval(log_event)
    if master_process and progress['iter_num'] >= max_iters:
        print_summary(log_event, clock.elapsed(time.time()))
    end_distributed()


# -----------------------------------------------------------------------------
# the command line. A resume continues the run it resumes: its settings are the checkpoint's (the
# config it stored), and whatever the resume's config file or --key=value set overrides them, one
# `resume:` line per setting that differs. RUN_LOCAL_KEYS follow the command line (and the defaults)
# instead: they describe this process, not the run. The model is the checkpoint's (it may have grown):
# a model key that differs from the run's is refused, and so is a block_size larger than the model's.

RUN_LOCAL_KEYS = ('init_from', 'out_dir', 'eval_only', 'dry_run', 'overwrite', 'device', 'backend', 'compile',
                  'scaling_schedule_file')  # scaling_schedule_file '' on a resume: the schedule stored in the checkpoint
MODEL_KEYS = tuple(f.name for f in fields(GPTConfig) if f.name in config_keys and f.name not in ('block_size', 'dropout'))


def describe_model(model_args):
    """What growth and LoRA ops change, as the model is now."""
    return ', '.join(f"{k} {model_args[k]!r}" for k in ARCH_KEYS + LORA_KEYS)


def resumed_settings(argv, defaults, run_dir):
    """The settings of a resume of the run in run_dir: the run's own (the config its checkpoint stored),
    argv's config files and --key=value applied over them."""
    check_out_dir(run_dir)
    path = os.path.join(run_dir, 'ckpt.pt')
    checkpoint = load_checkpoint(path, mmap=True)  # for its settings: no tensor is read
    # a key the checkpoint predates, or whose type has changed since, takes the command line's value
    run_config = {k: v for k, v in checkpoint['config'].items()
                  if k in defaults and k not in RUN_LOCAL_KEYS and type(v) in CONFIG_TYPES.get(k, (type(defaults[k]),))}
    resumed = configure(argv, dict(defaults, **run_config), verbose=False, types=CONFIG_TYPES)
    changed = [k for k in run_config if resumed[k] != run_config[k]]
    model_args = checkpoint['model_args']
    key = next((k for k in changed if k in MODEL_KEYS), None)
    if key is not None:
        raise UserError(f"resume: {key} = {resumed[key]!r}, but the run in {path} started with {key} = "
                        f"{run_config[key]!r} and its model is now {describe_model(model_args)}; a resume trains "
                        "the checkpoint's model: grow it with a scaling_schedule_file, or start a new run in "
                        "another --out_dir")
    if resumed['block_size'] > model_args['block_size']:
        raise UserError(f"resume: block_size = {resumed['block_size']} is larger than the block_size of the model in "
                        f"{path} ({model_args['block_size']}); a resumed run trains on blocks of at most "
                        f"{model_args['block_size']} tokens")
    if int(os.environ.get('RANK', 0)) == 0:  # rank 0 prints (setup_distributed has not run yet)
        print(f"resuming from iter {checkpoint['iter_num']} ({path})")
        for key in changed:
            print(f"resume: {key} = {resumed[key]!r} (the checkpoint's run: {run_config[key]!r})")
    return resumed


def resume_command(argv):
    """The command that continues this run: its own arguments, with init_from=resume."""
    script = sys.argv[0] if sys.argv[0].endswith('.py') else 'train.py'
    launcher = f"torchrun --standalone --nproc_per_node={ddp_world_size}" if ddp else 'python'
    args = [a for a in argv if not a.startswith(('--init_from=', '--overwrite='))] + ['--init_from=resume']
    return ' '.join([launcher, shlex.quote(script)] + [shlex.quote(a) for a in args])


def run_from_command_line(argv):
    """Apply the config file and overrides (on a resume: over the run's own settings), run, and turn user
    errors into one message. A run stopped by SIGINT / SIGTERM says how to continue and exits with
    130 / 143 (128 + the signal, the shell's way), so that `train && next` does not go on."""
    if help_requested(argv):
        return print_help("usage: python train.py [config.py ...] [--key=value ...]", config_defaults,
                          key_comments(__file__))
    try:
        defaults = {k: globals()[k] for k in config_keys}
        settings = configure(argv, defaults, types=CONFIG_TYPES)
        if settings['init_from'] == 'resume':
            settings = resumed_settings(argv, defaults, settings['out_dir'])
        main(setup(settings))
    except (UserError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if stopped_by:
        if master_process:
            print(f"stopped at iter {progress['iter_num']}: checkpoint saved in {out_dir}/ckpt.pt; "
                  f"continue with: {resume_command(argv)}")
        sys.exit(128 + stopped_by)


if __name__ == '__main__':
    run_from_command_line(sys.argv[1:])
