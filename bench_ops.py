"""
Wall time of each growth operation on a GPT-2 124M-sized model (CPU by default), as train.py
runs it: the op itself, the optimizers rebuilt and their state carried over (execute_operation with
rebuild_after_growth). Every op starts from a fresh model whose optimizers hold real state: AdamW's,
or with --optimizer=muon Muon's momentum for the blocks' matrices and AdamW's for the rest.

Each op is also measured against its floor, timed in the same run right after it: one clone() of
every parameter and optimizer state tensor of the grown model. Any growth op must at least write those once
into fresh memory; the old tensors are kept alive through both timings, so that the op and the
floor alike get fresh memory (not memory the op just freed). The last line names the worst ratio.

$ python bench_ops.py
$ python bench_ops.py --repeats=3   # each op 3 times: the fastest op against the fastest floor (a busy machine)
$ python bench_ops.py --optimizer=muon   # the ops with Muon state
$ python bench_ops.py --n_layer=2 --n_embd=64 --n_head=2 --vocab_size=65 --block_size=64   # a tiny run
"""

import contextlib
import io
import math
import re
import sys
import time

import torch

import train
from configurator import ConfigError, configure, help_requested, key_comments, print_help
from model import GPTConfig

DEFAULTS = dict(
    n_layer=12,  # the model the ops grow: GPT-2 124M by default
    n_head=12,
    n_embd=768,
    vocab_size=50304,
    block_size=1024,
    device='cpu',
    seed=1337,
    repeats=1,  # each op this many times: the fastest op against the fastest floor
    optimizer='adamw',  # 'adamw' or 'muon': the optimizer state the ops carry
)

# (name, value, what the starting model differs in): stacking starts at half the depth, LoRA ops with rank 8 on
OPS = [('stack_layers', 2, dict(half_depth=True)),
       ('widen_mlp', 1.5, {}),
       ('change_attn_lora_rank', 2.0, dict(attn_lora_rank=8)),
       ('merge_lora_weights', None, dict(attn_lora_rank=8)),
       ('change_lora_alpha', 2.0, dict(attn_lora_rank=8)),
       ('msg_widen_mlp', {'factor': 1.5, 'anneal_iters': 100}, {}),
       ('msg_add_heads', {'n_new_heads': 2, 'anneal_iters': 100}, {}),
       ('msg_stack_layers', {'layers': 2, 'anneal_iters': 100}, dict(half_depth=True)),
       ('msg_widen_embd', {'factor': 1.25, 'anneal_iters': 100}, {})]


def model_with_optimizer_state(config, differs):
    """A fresh model on the device and optimizers that took one step with random gradients."""
    model_config = GPTConfig(n_layer=config['n_layer'] // 2 if differs.get('half_depth') else config['n_layer'],
                             n_head=config['n_head'], n_embd=config['n_embd'], vocab_size=config['vocab_size'],
                             block_size=config['block_size'], bias=False,
                             attn_lora_rank=differs.get('attn_lora_rank', 0))
    train.build_run(model_config, None)
    for p in train.model.parameters():
        if p.requires_grad:
            p.grad = torch.randn_like(p) * 1e-3
    train.optimizers.step()
    train.optimizers.zero_grad(set_to_none=True)


def floor_seconds(repeats=3):
    """The fastest of a few clones of every parameter and optimizer state tensor of the model as it is now."""
    tensors = [p.detach() for p in train.model.parameters()] + train.state_tensors()
    best = math.inf
    for _ in range(repeats):
        started = time.time()
        copies = [t.clone() for t in tensors]
        best = min(best, time.time() - started)
        del copies
    return best


def main(argv):
    if help_requested(argv):
        return print_help("usage: python bench_ops.py [--key=value ...]", DEFAULTS, key_comments(__file__))
    config = configure(argv, DEFAULTS)
    train.setup(dict(device=config['device'], compile=False, seed=config['seed'],
                     growth_optimizer_state='carry', optimizer=config['optimizer']))
    print(f"{'op':<28} {'seconds':>8}  {'params before -> after':>26}  {'state carried':>13}  under 1 s"
          f"  {'floor s':>8}  {'x floor':>7}")
    worst = (0.0, '')
    for name, value, differs in OPS:
        seconds = floor = math.inf
        for _ in range(config['repeats']):
            model_with_optimizer_state(config, differs)
            before = train.model.get_num_params()
            # the old parameters and moments stay alive until the floor is timed (see the top)
            old = list(train.model.parameters()) + [t for s in train.optimizers.state.values() for t in s.values()]
            entry = dict(name=name, value=value, trigger_loss=0.0, max_wait_iters=0, reevaluate=False)
            train.reset_orchestrator([entry])
            log = io.StringIO()
            started = time.time()
            with contextlib.redirect_stdout(log):  # the op's log block
                train.execute_operation(entry, 'timeout', 0, 0.0, train.rebuild_after_growth)
            seconds = min(seconds, time.time() - started)
            floor = min(floor, floor_seconds())
            del old
        carried = re.search(r'optimizer rebuilt: (\d+) of (\d+) tensors', log.getvalue())
        ratio = seconds / floor
        worst = max(worst, (ratio, name))
        print(f"{name:<28} {seconds:8.3f}  {before:>11,} -> {train.model.get_num_params():>11,}  "
              f"{carried[1] + '/' + carried[2]:>13}  {'yes' if seconds < 1 else 'no':>9}  {floor:8.3f}  {ratio:7.2f}",
              flush=True)
    print(f"worst_op_ratio={worst[0]:.2f} ({worst[1]})")


if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
