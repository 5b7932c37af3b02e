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

import difflib
import json
import math
import os
import pickle
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
from configurator import ConfigError, UserError, configure
from model import (ACTIVATIONS, ARCH_KEYS, GPT, GPT2_HUB_NAMES, HF_FREE_KEYS, LORA_KEYS, GPTConfig,
                   carry_optimizer_state, hf_model_args, import_transformers, mask_at)

# -----------------------------------------------------------------------------
# default config values designed to train a gpt2 (124M) on OpenWebText
# I/O
out_dir = 'out'
eval_interval = 2000
log_interval = 1
eval_iters = 200
eval_only = False  # if True, script exits right after the first eval
final_eval_iters = 0  # > 0: when the run ends at max_iters, val scored once more on this many fixed batches (event final_eval)
final_eval_extra = ''  # a data folder with val.bin (same vocabulary) that the final eval scores too, e.g. text of another kind
always_save_checkpoint = True  # if True, always save a checkpoint after each eval
init_from = 'scratch'  # 'scratch', 'resume', or GPT-2 weights: 'gpt2'..'gpt2-xl' or a Hugging Face GPT-2 folder
# wandb logging
wandb_log = False  # disabled by default
wandb_project = 'owt'
wandb_run_name = 'gpt2'
# data
dataset = 'openwebtext'
data_dir = ''  # '' means data/{dataset}
gradient_accumulation_steps = 5 * 8  # used to simulate larger batch sizes; summed over DDP ranks
batch_size = 12  # if gradient_accumulation_steps > 1, this is the micro-batch size
block_size = 1024
# model
n_layer = 12
n_head = 12
n_embd = 768
n_hidden = 0  # mlp width; 0 means 4 * n_embd
head_size = 0  # 0 means n_embd // n_head
dropout = 0.0  # for pretraining 0 is good, for finetuning try 0.1+
bias = False  # do we use bias inside LayerNorm and Linear layers?
attn_lora_rank = 0  # LoRA adapters on the attention projections (0 = off)
embedding_lora_rank = 0  # LoRA adapter on the token embedding and tied head (0 = off)
lora_alpha = 1.0
activation = 'gelu'  # the mlp's GELU: 'gelu' (exact) or 'gelu_tanh' (GPT-2's tanh approximation)
# adamw optimizer
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
growth_optimizer_state = 'carry'  # after a growth op: 'carry' AdamW moments through the lineage, or 'reset'
growth_lr_rewarm_iters = 0  # > 0: linear lr re-warmup over this many iters after a growth op
skip_nonfinite_steps = 0  # 0: stop at a non-finite loss/grad norm; N: skip such steps, stop after N in a row
trigger_slope_evals = 3  # trigger_slope: fit the slope over this many most recent evals since the previous op
check_rank_consistency = True  # DDP: compare a parameter checksum across ranks after every growth op
# -----------------------------------------------------------------------------
config_keys = [k for k, v in globals().items() if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
config_defaults = {k: globals()[k] for k in config_keys}  # a model key off its default must agree with imported weights
# -----------------------------------------------------------------------------
# orchestrator state: everything the schedule changes lives in one object, `orch`, checkpointed as one dict

@dataclass
class Orchestrator:
    lr_multiplier: float = 1.0  # scales learning_rate and min_lr
    batch_size_multiplier: float = 1.0
    grad_accum_multiplier: float = 1.0
    lr_schedule_offset: int = 0  # the lr schedule (warmup, decay) runs on iter_num - lr_schedule_offset
    warmup_iters_multiplier: float = 1.0  # scales warmup_iters and lr_decay_iters
    eval_iters_multiplier: float = 1.0
    eval_interval_multiplier: float = 1.0
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

# a multiplier scales the config's value, or the absolute value of the last set_ op (set_values, checkpointed:
# a run resumed with another --learning_rate keeps the lr that set_lr gave)

def effective_batch_size():
    return round(orch.set_values.get('batch_size', batch_size) * orch.batch_size_multiplier)


def grad_accum_total():
    """Global accumulation steps before the rounding to the world size."""
    return orch.set_values.get('grad_accum', gradient_accumulation_steps) * orch.grad_accum_multiplier


def effective_grad_accum():
    """Global accumulation steps (summed over ranks), rounded to the nearest multiple of the
    DDP world size, at least one step per rank."""
    return max(1, round(grad_accum_total() / ddp_world_size)) * ddp_world_size


def effective_eval_iters():
    return round(orch.set_values.get('eval_iters', eval_iters) * orch.eval_iters_multiplier)


def effective_eval_interval():
    return round(orch.set_values.get('eval_interval', eval_interval) * orch.eval_interval_multiplier)


def lr_schedule_lengths():
    """warmup_iters, lr_decay_iters and cooldown_iters (0: a fifth of lr_decay_iters), before the multiplier."""
    cooldown = cooldown_iters if cooldown_iters > 0 else lr_decay_iters / 5
    return orch.set_values.get('warmup_iters', [warmup_iters, lr_decay_iters, cooldown])


def effective_warmup_iters():
    return round(lr_schedule_lengths()[0] * orch.warmup_iters_multiplier)


def effective_lr_decay_iters():
    return round(lr_schedule_lengths()[1] * orch.warmup_iters_multiplier)


def effective_cooldown_iters():
    return round(lr_schedule_lengths()[2] * orch.warmup_iters_multiplier)


def peak_and_min_lr():
    """The top and the bottom of the lr schedule: learning_rate and min_lr (or set_lr's), times lr_multiplier."""
    peak, low = orch.set_values.get('lr', [learning_rate, min_lr])
    return peak * orch.lr_multiplier, low * orch.lr_multiplier


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
    lr_multiplier, and re-warmed after a growth op when growth_lr_rewarm_iters > 0."""
    lr_max, lr_min = peak_and_min_lr()
    lr = scheduled_lr(it - orch.lr_schedule_offset, lr_max, lr_min) if decay_lr else lr_max
    since_growth = it - orch.iter_of_last_growth
    if orch.iter_of_last_growth >= 0 and since_growth < growth_lr_rewarm_iters:
        lr *= (since_growth + 1) / (growth_lr_rewarm_iters + 1)
    return lr


def effective_settings():
    """What an operation can change, for logs, events and the dry-run plan."""
    settings = dict(peak_lr=peak_and_min_lr()[0], batch_size=effective_batch_size(),
                    grad_accum=effective_grad_accum(), eval_interval=effective_eval_interval(),
                    eval_iters=effective_eval_iters(), warmup_iters=effective_warmup_iters(),
                    lr_decay_iters=effective_lr_decay_iters(), lr_schedule_offset=orch.lr_schedule_offset)
    if lr_schedule == 'wsd':
        settings['cooldown_iters'] = effective_cooldown_iters()
    settings.update({k: getattr(model.config, k) for k in ARCH_KEYS + LORA_KEYS})
    settings.update(params=model.get_num_params(), flops_per_token=model.flops_per_token())
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


def check_rounds_positive(label, value):
    if value < 1:
        raise BadValue(f"this makes {label} round to {value}; it must stay >= 1")


def block_params(config):
    """The matmul weights of one block."""
    return 4 * config.n_embd * config.n_head * config.head_size + 2 * config.n_embd * config.n_hidden


@dataclass
class Operation:
    check: object  # check(value, model_config) -> None, raises BadValue; runs before step 0
    apply: object  # apply(value) -> lineage dict for growth ops, None for hyperparameter ops
    grows: bool = False  # changes the model's parameters (optimizer and wrappers are rebuilt)
    ramp: bool = False  # MSG: starts a mask ramp of value['anneal_iters']
    keeps_function: bool = True  # False: the model computes another function after it (its val loss changes)


def check_change(value, _config):
    check_factor(value)


def check_count(value):
    check_int(value, 1)


def set_warmup_values(value):
    """set_warmup_iters: warmup_iters = value; lr_decay_iters and the cooldown scaled by the same factor
    from the config's."""
    cooldown = cooldown_iters if cooldown_iters > 0 else lr_decay_iters / 5
    return [value, lr_decay_iters * value / warmup_iters, cooldown * value / warmup_iters]


# hyperparameter operations, one row each: change_<setting> multiplies orch.<setting>_multiplier by its
# value; set_<setting> stores an absolute value in orch.set_values[setting] and resets the multiplier to 1.
# columns: the setting, the check of set_'s value, what set_ stores (None: the value itself), and the
# config value that set_'s value is divided by (None: none), which must not be 0
HYPERPARAMETER_OPS = [
    ('lr', check_factor, lambda value: [value, min_lr * value / learning_rate], 'learning_rate'),  # min_lr: same ratio
    ('batch_size', check_count, None, None),
    ('grad_accum', check_count, None, None),
    ('warmup_iters', check_count, set_warmup_values, 'warmup_iters'),
    ('eval_iters', check_count, None, None),
    ('eval_interval', check_count, None, None),
]


def check_set(absolute_check, setting, base_key):
    def check(value, _config):
        absolute_check(value)
        if base_key is not None and globals()[base_key] == 0:
            raise BadValue(f"cannot set {setting}: the config's {base_key} is 0")
    return check


def change_op(setting):
    def apply(value):
        multiplier = f'{setting}_multiplier'
        setattr(orch, multiplier, getattr(orch, multiplier) * value)
    return apply


def set_op(setting, stored):
    def apply(value):
        orch.set_values[setting] = stored(value) if stored is not None else value
        setattr(orch, f'{setting}_multiplier', 1.0)
    return apply


def hyperparameter_operations():
    operations = {}
    for setting, absolute_check, stored, base_key in HYPERPARAMETER_OPS:
        operations[f'change_{setting}'] = Operation(check_change, change_op(setting))
        operations[f'set_{setting}'] = Operation(check_set(absolute_check, setting, base_key), set_op(setting, stored))
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


def check_lora_rank(target):
    def check(value, config):
        check_factor(value, 0.0, allow_minimum=True)
        require_lora(config, target)
        rank = getattr(config, f'{target}_lora_rank')
        if value > 0 and round(rank * value) == 0:
            raise BadValue(f"factor {value} rounds {target}_lora_rank {rank} to 0, which would remove the adapters "
                           f"and train the full weights; to remove LoRA on purpose, give the value 0")
        per_rank = config.vocab_size + config.n_embd if target == 'embedding' else \
            config.n_layer * (2 * config.n_embd + 4 * config.n_head * config.head_size)
        check_new_params(round(getattr(config, f'{target}_lora_rank') * value) * per_rank)
    return check


def change_lora_rank(target):
    def apply(value):
        rank = round(getattr(model.config, f'{target}_lora_rank') * value)
        return model.set_lora_rank(target, rank, growth_generator())
    return apply


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


OPERATIONS.update({
    'reset_lr_schedule': Operation(lambda value, _config: check_null(value), reset_lr_schedule),
    'stack_layers': Operation(check_stack_layers, stack_layers, grows=True, keeps_function=False),
    'widen_mlp': Operation(check_widen, widen_mlp, grows=True),
    'change_attn_lora_rank': Operation(check_lora_rank('attn'), change_lora_rank('attn'), grows=True),
    'change_embedding_lora_rank': Operation(check_lora_rank('embedding'), change_lora_rank('embedding'), grows=True),
    'change_lora_alpha': Operation(check_lora_op, change_lora_alpha, grows=True),
    'merge_lora_weights': Operation(check_merge_lora, merge_lora_weights, grows=True),
    'msg_widen_mlp': Operation(check_msg_widen_mlp, msg_widen_mlp, grows=True, ramp=True),
    'msg_add_heads': Operation(check_msg_heads, msg_add_heads, grows=True, ramp=True),
    'msg_stack_layers': Operation(check_msg_stack, msg_stack_layers, grows=True, ramp=True),
    'msg_widen_embd': Operation(check_msg_widen_embd, msg_widen_embd, grows=True, ramp=True),
})


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
    """The orchestrator state from a copy of `state` (as orchestrator_state returns it); a key it lacks keeps
    its default (set_values: none in checkpoints of before issue 15, whose set_ ops were ratios)."""
    global orch
    orch = Orchestrator(**json.loads(json.dumps(state)))


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


def validate_schedule(path, entries, first_index, model_config):
    """Walk the schedule on a simulated model: every value is checked against the model and the
    settings it will meet. Returns the plan: one row of effective settings per entry, with a warning
    where the entry, fired as late as it can, moves the end of the lr decay past max_iters (a late
    reset_lr_schedule or change_warmup_iters: the run would end before the lr anneals)."""
    plan = []
    with simulation(model_config):
        check_fits_in_memory('config')
        for offset, entry in enumerate(entries):
            index = first_index + offset
            operation = OPERATIONS[entry['name']]
            # the latest iter the entry can fire at: its timeout (every entry before at theirs), or the last eval
            interval = effective_eval_interval()
            orch.iter_of_last_op = min(max_iters, orch.iter_of_last_op + -(-entry['max_wait_iters'] // interval) * interval)
            decay_end = lr_decay_end()
            try:
                operation.check(entry['value'], model.config)
                operation.apply(entry['value'])
                if operation.ramp:
                    model.fold_ramp()
                settings = effective_settings()
                check_rounds_positive('the batch size', settings['batch_size'])
                check_rounds_positive('the gradient accumulation steps', round(grad_accum_total()))
                check_rounds_positive('eval_iters', settings['eval_iters'])
                check_rounds_positive('eval_interval', settings['eval_interval'])
                check_fits_in_memory(f"{path}: entry {index} ({entry['name']})")
            except BadValue as e:
                raise ScheduleError(path, index, 'value', f"{entry['name']}: {e}") from None
            except OverflowError:  # 10**400 layers, a batch factor of 1e300: sizes no float holds
                raise ScheduleError(path, index, 'value', f"{entry['name']}: {describe(entry['value'])} is too "
                                    "large: the sizes it leads to overflow") from None
            warning = None
            if decay_lr and lr_decay_end() != decay_end and lr_decay_end() > max_iters:
                warning = (f"{path}: entry {index} ({entry['name']}), fired at iter {orch.iter_of_last_op} (the latest "
                           f"it can), moves the end of the lr decay to iter {lr_decay_end()}, after max_iters "
                           f"{max_iters}: the run would end before the lr reaches min_lr")
            plan.append(dict(index=index, name=entry['name'], value=entry['value'], fires=describe_triggers(entry),
                             warning=warning, **settings))
    return plan


def print_plan(plan):
    print(f"plan: {len(plan)} operations")
    for row in plan:
        print(f"  [{row['index']}] {row['name']}({json.dumps(row['value'])}) when {row['fires']}")
        print(f"      then peak lr {row['peak_lr']:.3g}, batch {row['batch_size']} x accum {row['grad_accum']}, "
              + ''.join(f"{k} {row[k]}, " for k in ARCH_KEYS) +
              f"lora attn/emb {row['attn_lora_rank']}/{row['embedding_lora_rank']} (alpha {row['lora_alpha']:g}), "
              f"params {row['params'] / 1e6:.3f}M, flops/token {row['flops_per_token'] / 1e6:.3f}M")
        if row['warning']:
            print(f"      warning: {row['warning']}")


def check_schedule_matches(entries):
    """On resume with a schedule file: the entries already run must be the file's first entries."""
    for done in orch.executed_ops:
        index = done['index']
        if index >= len(entries) or any(entries[index].get(k) != done.get(k) for k in ENTRY_KEYS + OPTIONAL_ENTRY_KEYS):
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


def execute_operation(entry, reason, iter_num, val_loss, on_growth=None):
    """Run one schedule entry: apply it, record it, log what it changed. on_growth(lineage) rebuilds
    the optimizer and wrappers after a growth op (main() passes it; orchestrator tests need none).
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
    if operation.grows:
        orch.iter_of_last_growth = iter_num
        if on_growth is not None:
            on_growth(lineage)
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
        if operation.grows:
            print(f"Growth policy: optimizer state '{growth_optimizer_state}', "
                  f"lr re-warmup {growth_lr_rewarm_iters} iters; op took {seconds:.3f}s")
        if operation.ramp:
            print(f"MSG mask ramps 0 -> 1 over {orch.active_ramp['anneal_iters']} iters")
        print("=== SCALING OPERATION COMPLETE ===")
    return changes


def run_orchestrator(iter_num, val_loss, reevaluate=None, on_growth=None, log_event=None):
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
        if OPERATIONS[entry['name']].grows and orch.active_ramp is not None:
            if master_process:
                print(f"orchestrator: {entry['name']} waits for the {orch.active_ramp['name']} mask ramp to finish")
            break
        changes = execute_operation(entry, reason, iter_num, val_loss, on_growth)
        val_loss_after = reevaluate() if entry['reevaluate'] and reevaluate is not None else None
        if val_loss_after is not None and master_process:
            print(f"reevaluate: val loss {val_loss:.4f} before {entry['name']}, {val_loss_after:.4f} after")
        if log_event is not None:
            log_event(dict(event='op', iter=iter_num, name=entry['name'], value=entry['value'], reason=reason,
                           val_loss_before=val_loss, val_loss_after=val_loss_after,
                           index=orch.schedule_position - 1, changes=changes,
                           optimizer_policy=growth_optimizer_state if OPERATIONS[entry['name']].grows else None))
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


def check_data():
    """train.bin, val.bin and meta.pkl exist and the tokens fit the vocabulary. Returns meta."""
    folder = data_path()
    prepare = f"python data/{dataset}/prepare.py" + (f" --out_dir {folder}" if data_dir else '') \
        if os.path.isfile(f"data/{dataset}/prepare.py") \
        else "python data/text/prepare.py --input YOUR_TEXT --out_dir " + folder
    for name in ('train.bin', 'val.bin', 'meta.pkl'):
        if not os.path.isfile(os.path.join(folder, name)):
            raise UserError(f"data: {os.path.join(folder, name)} not found; make it with: {prepare}")
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


def get_batch(split, generator, size):
    # recreate np.memmap every batch to avoid a memory leak, as per
    # https://stackoverflow.com/questions/45132940/numpy-memmap-memory-usage-want-to-iterate-once/61472122#61472122
    data = np.memmap(os.path.join(data_path(), f'{split}.bin'), dtype=np.uint16, mode='r')
    ix = torch.randint(len(data) - block_size, (size,), generator=generator)
    x = torch.stack([torch.from_numpy(data[i:i + block_size].astype(np.int64)) for i in ix])
    y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block_size].astype(np.int64)) for i in ix])
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


def load_checkpoint(path):
    """The checkpoint to resume from, with every key a resume reads (a UserError otherwise)."""
    if not os.path.isfile(path):
        raise UserError(f"init_from='resume': no checkpoint at {path}")
    checkpoint = ckpt_files.load_checkpoint(path, CHECKPOINT_KEYS)
    missing = [f'orchestrator.{k}' for k in ORCHESTRATOR_KEYS
               if k not in checkpoint['orchestrator'] and k != 'set_values']
    if missing:
        raise UserError(f"{path}: not a checkpoint of this train.py: missing '{missing[0]}'")
    return checkpoint


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


def event_iter(line):
    """The iter of one events.jsonl line; None for a line torn by a crash mid-write."""
    try:
        return json.loads(line)['iter']
    except (json.JSONDecodeError, KeyError, TypeError):
        return None


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
            kept = [line for line in f if event_iter(line) is not None and event_iter(line) <= keep_through_iter]
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

optimizer = None
optimizer_names = {}  # parameter -> name when the optimizer was built, to find state of replaced ones
scaler = None
eval_model = train_model = None  # compiled and DDP wrappers around model
ddp, ddp_rank, ddp_local_rank, device_type = False, 0, 0, 'cpu'
ctx = nullcontext()
data_generator = None
stop_signals = []  # SIGTERM / SIGINT received: checkpoint and exit at the next iteration
nonfinite_in_a_row = 0  # non-finite steps skipped in a row (skip_nonfinite_steps)
flops_per_token = flops_per_forward = 0  # of a training step with the current model; refreshed when it changes


MAX_SEED = 2**63 - 2**20


def setup_runtime():
    global ddp, ddp_rank, ddp_local_rank, device_type, ctx, data_generator
    if not 0 <= seed <= MAX_SEED:  # torch takes a signed 64-bit seed, and each rank adds its rank
        raise UserError(f"seed: expected an integer from 0 to {MAX_SEED}, got {seed}")
    ddp, ddp_rank, ddp_local_rank, _ = setup_distributed()
    torch.manual_seed(seed + ddp_rank)
    data_generator = torch.Generator().manual_seed(seed + ddp_rank)
    device_type = 'cuda' if 'cuda' in device else 'cpu'
    torch.backends.cuda.matmul.allow_tf32 = True  # allow tf32 on matmul
    torch.backends.cudnn.allow_tf32 = True  # allow tf32 on cudnn
    # bf16 / fp16 run under autocast on cuda and cpu alike: weights and optimizer state stay float32
    ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]
    ctx = nullcontext() if dtype == 'float32' else torch.amp.autocast(device_type=device_type, dtype=ptdtype)


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
                         lora_alpha=lora_alpha, activation=activation)
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
    for key in ('n_layer', 'n_head', 'n_embd', 'n_hidden', 'head_size', 'bias', 'activation'):
        if globals()[key] not in (config_defaults[key], args[key]):
            raise UserError(f"config: {key} = {globals()[key]!r} contradicts the weights of {init_from} ({key} = "
                            f"{args[key]!r}); an imported model's shape comes from its weights: leave {key} out "
                            "of the config (the schedule can grow the model)")
    if meta['vocab_size'] > args['vocab_size']:
        raise UserError(f"data: meta.pkl's vocab_size {meta['vocab_size']} is larger than the vocabulary of "
                        f"{init_from} ({args['vocab_size']} tokens)")
    return GPTConfig(**args)


def check_inputs():
    """Everything the user gave us, checked before anything is built or written.
    Returns (model config, checkpoint or None, plan); sets the orchestrator state."""
    if init_from not in ('scratch', 'resume') + GPT2_HUB_NAMES and not os.path.isdir(init_from):
        raise UserError(f"init_from: expected scratch, resume, {', '.join(GPT2_HUB_NAMES)} or a Hugging Face GPT-2 "
                        f"folder, got {init_from!r} (no such folder)")
    for key, allowed in (('growth_optimizer_state', ('carry', 'reset')), ('dtype', ('float32', 'bfloat16', 'float16')),
                         ('lr_schedule', ('cosine', 'wsd')), ('activation', ACTIVATIONS)):
        if globals()[key] not in allowed:
            raise UserError(f"{key}: expected one of {', '.join(allowed)}, got {globals()[key]!r}")
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
        model_config = GPTConfig(**checkpoint['model_args'])
        load_orchestrator_state(checkpoint['orchestrator'])
        if scaling_schedule_file:
            check_schedule_matches(load_schedule_file(scaling_schedule_file))
    plan = validate_schedule(scaling_schedule_file or f"{out_dir}/ckpt.pt (stored schedule)", orch.schedule,
                             orch.schedule_position, model_config)
    return model_config, checkpoint, plan


def build_optimizer():
    """A new AdamW for the model as it is now (and its training flops, for the counters)."""
    global optimizer, optimizer_names, flops_per_token, flops_per_forward
    flops_per_token, flops_per_forward = model.flops_per_token(), model.flops_per_forward()
    optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
    optimizer_names = {p: name for name, p in model.named_parameters()}


def wrap_model():
    """torch.compile and DDP around the model; redone after every change of its structure."""
    global eval_model, train_model
    if compile:
        torch._dynamo.reset()  # a grown model is a new graph; do not pile up recompilations
        eval_model = torch.compile(model)
    else:
        eval_model = model
    train_model = DDP(eval_model, device_ids=[ddp_local_rank] if device_type == 'cuda' else None) if ddp else eval_model


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
        optimizer.load_state_dict(checkpoint['optimizer'])
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


def assert_ranks_agree():
    """The position checksum of all parameters and AdamW moments, compared across ranks."""
    tensors = list(model.parameters())
    tensors += [state[k] for state in optimizer.state.values() for k in ('exp_avg', 'exp_avg_sq') if k in state]
    checksum = position_checksum(tensors).view(1)
    gathered = [torch.zeros_like(checksum) for _ in range(ddp_world_size)]
    dist.all_gather(gathered, checksum)
    if any(g.item() != checksum.item() for g in gathered):
        raise RuntimeError(f"DDP ranks disagree after a growth op: parameter checksums {[g.item() for g in gathered]}")


def rebuild_after_growth(lineage):
    """After a growth op: a new optimizer, its state carried through the lineage (or reset, by
    growth_optimizer_state), ranks checked to agree, new wrappers."""
    old_states = {optimizer_names[p]: state for p, state in optimizer.state.items()}
    build_optimizer()
    carried = carry_optimizer_state(model, old_states, optimizer, lineage) if growth_optimizer_state == 'carry' else 0
    if ddp and check_rank_consistency:
        assert_ranks_agree()
    wrap_model()
    if master_process:
        n_tensors = sum(len(g['params']) for g in optimizer.param_groups)
        print(f"optimizer rebuilt: {carried} of {n_tensors} tensors carried their state over")


def write_checkpoint(config, wandb_run):
    """All ranks call this (the rng states are gathered); rank 0 writes."""
    rng = [rng_state(data_generator)]
    if ddp:
        rng = [None] * ddp_world_size
        dist.all_gather_object(rng, rng_state(data_generator))
    if master_process:
        checkpoint = dict(model=model.state_dict(), model_args=asdict(model.config),
                          optimizer=optimizer.state_dict(), scaler=scaler.state_dict(), config=config,
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
                val_loss=losses['val'], lr=get_lr(it), batch_size=effective_batch_size(),
                grad_accum=effective_grad_accum(), eval_interval=effective_eval_interval(),
                eval_iters=effective_eval_iters(), warmup_iters=effective_warmup_iters(),
                lr_decay_iters=effective_lr_decay_iters(), **{k: getattr(model.config, k) for k in ARCH_KEYS},
                params=model.get_num_params(), flops=progress['flops'],
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
    for param_group in optimizer.param_groups:
        param_group['lr'] = lr
    micro_steps = effective_grad_accum() // ddp_world_size
    step_batch_size = effective_batch_size()
    # every micro step's loss is checked (without grad_clip a NaN in any of them reaches the gradients
    # unseen by the norm); the flag stays on the device, so there is no sync per micro step
    loss_nonfinite = torch.zeros((), dtype=torch.bool, device=device)
    for micro_step in range(micro_steps):
        if ddp:
            # sync gradients at the last micro step only
            train_model.require_backward_grad_sync = (micro_step == micro_steps - 1)
        X, Y = (next_batch or get_batch)('train', data_generator, step_batch_size)
        with ctx:
            _, loss = train_model(X, Y)
            loss = loss / micro_steps
        loss_nonfinite |= ~torch.isfinite(loss.detach())
        scaler.scale(loss).backward()
    # unscale here, not in scaler.step: a skipped step must leave the fp16 scaler its inf checks for update()
    scaler.unscale_(optimizer)
    grad_norm = None
    if grad_clip != 0.0:
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    applied = step_is_finite(iter_num, loss_nonfinite, grad_norm)
    if applied:
        scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss, micro_steps, micro_steps * ddp_world_size * step_batch_size * block_size, applied


def step_flops(tokens, micro_steps):
    """Training flops of one step, all ranks together (each rank runs micro_steps forwards)."""
    return flops_per_token * tokens + flops_per_forward * micro_steps * ddp_world_size


def per_gpu_mfu(flops, dt):
    """The model flops utilization of one GPU: its share of a step's flops (all ranks) against its peak."""
    return model.estimate_mfu(flops / ddp_world_size, dt)


def stop_requested():
    """A SIGTERM/SIGINT arrived (under DDP: on any rank, agreed at log intervals)."""
    if not ddp:
        return bool(stop_signals)
    if progress['iter_num'] % log_interval:
        return False
    flag = torch.tensor([len(stop_signals)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


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


def main(config):
    """The run, once setup(config) has set it up."""
    model_config, checkpoint, plan = check_inputs()
    if dry_run:
        if master_process:
            print_plan(plan)
        return
    build_run(model_config, checkpoint)
    if master_process:
        for row in plan:
            if row['warning']:
                print(f"warning: {row['warning']}")
    wandb_run, log_event = open_logging(config, checkpoint)
    del checkpoint  # free its memory
    if master_process:
        print(f"tokens per iteration will be: {effective_grad_accum() * effective_batch_size() * block_size:,}")
        print(f"number of parameters: {model.get_num_params() / 1e6:.2f}M")
        print(f"precision: {dtype}" + (f" autocast on {device_type}, float32 weights" if dtype != 'float32' else '')
              + (", loss scaling" if scaler.is_enabled() else ''))
    signal.signal(signal.SIGTERM, lambda *_: stop_signals.append(True))
    signal.signal(signal.SIGINT, lambda *_: stop_signals.append(True))

    t0 = run_start = time.time()
    local_iter_num = 0
    running_mfu = -1.0
    while True:
        iter_num = progress['iter_num']
        if advance_ramp(iter_num):
            wrap_model()

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
                log_event(eval_event(losses, time.time() - run_start))
            # the schedule runs at every eval on the grid, the last one too, so that a run resumed from
            # here with a larger max_iters continues exactly; an extra final eval off the grid only reports
            if on_eval_grid:
                record_eval(progress['flops'], val_loss)
                val_loss = run_orchestrator(iter_num, val_loss, reevaluate_val_loss, rebuild_after_growth, log_event)
                progress['next_eval_iter'] = iter_num + effective_eval_interval()
            # val_loss None: the model's function changed and was not measured again; the next eval sets the best
            improved = val_loss is not None and val_loss < progress['best_val_loss']
            if improved:
                progress['best_val_loss'] = val_loss
            if (improved or always_save_checkpoint) and iter_num > 0:
                write_checkpoint(config, wandb_run)
        if iter_num >= max_iters or (iter_num == 0 and eval_only):
            break
        if stop_requested():
            if master_process:
                print(f"stop requested: checkpoint at iter {iter_num}, then exit")
            write_checkpoint(config, wandb_run)
            break

        loss, micro_steps, tokens, _ = train_step(iter_num)
        flops = step_flops(tokens, micro_steps)
        progress['tokens'] += tokens
        progress['flops'] += flops

        # timing and logging
        t1 = time.time()
        dt, t0 = t1 - t0, t1
        if iter_num % log_interval == 0 and master_process:
            # get loss as float. note: this is a CPU-GPU sync point
            lossf = loss.item() * micro_steps
            if local_iter_num >= 5:  # let the training loop settle a bit
                mfu = per_gpu_mfu(flops, dt)
                running_mfu = mfu if running_mfu == -1.0 else 0.9 * running_mfu + 0.1 * mfu
            print(f"iter {iter_num}: loss {lossf:.4f}, time {dt * 1000:.2f}ms, "
                  f"tok/s {tokens / dt:,.0f}, mfu {running_mfu * 100:.2f}%")
        progress['iter_num'] += 1
        local_iter_num += 1

    if final_eval_iters and progress['iter_num'] >= max_iters:
        final_eval(log_event)
    if ddp:
        dist.barrier()  # every rank done with the group before any tears it down (gloo aborts otherwise, now and then)
        dist.destroy_process_group()


def run_from_command_line(argv):
    """Apply the config file and overrides, run, and turn user errors into one message."""
    try:
        main(setup(configure(argv, {k: globals()[k] for k in config_keys})))
    except (UserError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
    run_from_command_line(sys.argv[1:])
