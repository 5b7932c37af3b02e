"""
Training-step throughput for any config: train.py's own step (forward/backward over the
accumulation steps, clip, AdamW from model.configure_optimizers), timed. Batches come from the
run's train.bin (real_data=True) or are random tokens (real_data=False, vocab_size tokens).
With --init_from=resume it times the run of {out_dir}/ckpt.pt as it was when saved: its
settings, its architecture (grown or not) and its optimizer state; later arguments override.

$ python bench.py config/train_shakespeare_char_cpu.py
$ python bench.py config/train_shakespeare_char_cpu.py --real_data=False --vocab_size=65 --num_steps=50
$ python bench.py --init_from=resume --out_dir=out-shakespeare-char-cpu-growth
"""

import os
import sys
import time

import torch

import train
from configurator import ConfigError, configure, help_requested, key_comments, print_help
from model import GPTConfig

BENCH_DEFAULTS = dict(
    real_data=True,  # batches from train.bin of data_dir (or data/{dataset}); False: random tokens
    vocab_size=50304,  # of the random tokens and a fresh model when real_data=False (else meta.pkl's)
    num_steps=20,  # timed steps
    warmup_steps=5,  # untimed steps first (compilation, allocator warm-up)
)


def random_batch(vocab_size):
    """A get_batch for train.train_step that draws uniform random tokens (no data files needed)."""
    def get_batch(_split, generator, size, length):
        tokens = torch.randint(vocab_size, (size, length + 1), generator=generator)
        return tokens[:, :-1].contiguous().to(train.device), tokens[:, 1:].contiguous().to(train.device)
    return get_batch


def main(argv):
    defaults = dict({k: getattr(train, k) for k in train.config_keys}, **BENCH_DEFAULTS)
    if help_requested(argv):
        return print_help("usage: python bench.py [config.py ...] [--key=value ...]", defaults,
                          dict(key_comments(train.__file__), **key_comments(__file__)))
    config = configure(argv, defaults)
    checkpoint = None
    if config['init_from'] == 'resume':
        checkpoint = train.load_checkpoint(os.path.join(config['out_dir'], 'ckpt.pt'))
        run_config = {k: v for k, v in checkpoint['config'].items() if k in train.config_keys}
        config = configure(argv, dict(defaults, **run_config), verbose=False)
    if config['num_steps'] < 1 or config['warmup_steps'] < 0:
        raise train.UserError("num_steps must be >= 1 and warmup_steps >= 0")
    train.setup({k: v for k, v in config.items() if k in train.config_keys})

    meta = train.check_data() if config['real_data'] else None
    if checkpoint is not None:  # the architecture, multipliers and optimizer state of the checkpoint
        model_config = GPTConfig(**checkpoint['model_args'])
        train.load_orchestrator_state(checkpoint['orchestrator'])
    else:
        model_config = train.model_config_from_globals(meta['vocab_size'] if meta else config['vocab_size'])
        train.reset_orchestrator()
    next_batch = None if config['real_data'] else random_batch(model_config.vocab_size)
    train.build_run(model_config, checkpoint)
    c = train.model.config
    print(f"model: n_layer {c.n_layer}, n_head {c.n_head}, n_embd {c.n_embd}, n_hidden {c.n_hidden}, "
          f"vocab {c.vocab_size}, params {train.model.get_num_params() / 1e6:.3f}M; batch "
          f"{train.effective_batch_size()} x accum {train.effective_grad_accum()} x block {train.block_size}, "
          f"{'real' if config['real_data'] else 'random'} data, {train.device}, compile {train.compile}")

    start_iter = train.progress['iter_num']
    times, tokens = [], 0
    for step in range(config['warmup_steps'] + config['num_steps']):
        t0 = time.time()
        if train.advance_ramp(start_iter + step):  # an MSG mask rises per iteration, as in train.py
            train.wrap_model()
        loss, micro_steps, step_tokens, _ = train.train_step(start_iter + step, next_batch)
        lossf = loss.item() * micro_steps  # a host-device sync: the step is over when the clock stops
        dt = time.time() - t0
        warmup = step < config['warmup_steps']
        if not warmup:
            times.append(dt)
            tokens, flops = step_tokens, train.step_flops(step_tokens, micro_steps)
        print(f"step {step}: loss {lossf:.4f}, {dt * 1000:.2f}ms{' (warmup)' if warmup else ''}")
    seconds = sum(times) / len(times)
    # mfu against a GPU's peak (train.per_gpu_mfu): on a CPU it would read as a meaningless 0.01%
    mfu = f", mfu {train.per_gpu_mfu(flops, seconds) * 100:.4g}%" if train.device_type == 'cuda' else ''
    print(f"ms/iter {seconds * 1000:.2f}, tokens/s {tokens / seconds:.0f}{mfu}")


if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except (train.UserError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
