"""
Training-step throughput for any config: train.py's own step (forward/backward over the
accumulation steps, clip, AdamW) on the run's data, timed. With --init_from=resume it times
the architecture of {out_dir}/ckpt.pt, grown or not, with its optimizer state.

$ python bench.py config/train_shakespeare_char_cpu.py
$ python bench.py config/train_shakespeare_char_cpu_growth.py --init_from=resume
"""

import os
import sys
import time

import train
from configurator import ConfigError, configure
from model import GPTConfig

BENCH_DEFAULTS = dict(num_steps=20, warmup_steps=5)  # timed steps, after untimed warmup steps


def main(argv):
    defaults = dict({k: getattr(train, k) for k in train.config_keys}, **BENCH_DEFAULTS)
    config = configure(argv, defaults)
    if config['num_steps'] < 1 or config['warmup_steps'] < 0:
        raise train.UserError("num_steps must be >= 1 and warmup_steps >= 0")
    vars(train).update({k: v for k, v in config.items() if k in train.config_keys})
    train.setup_runtime()
    meta = train.check_data()
    checkpoint = train.load_checkpoint(os.path.join(train.out_dir, 'ckpt.pt')) if train.init_from == 'resume' else None
    train.reset_orchestrator()
    if checkpoint is None:
        model_config = train.model_config_from_globals(meta['vocab_size'])
    else:  # the architecture, batch size and accumulation the run had at its checkpoint
        model_config = GPTConfig(**checkpoint['model_args'])
        train.load_orchestrator_state(checkpoint['orchestrator'])
    train.build_run(model_config, checkpoint)
    c = train.model.config
    print(f"model: n_layer {c.n_layer}, n_head {c.n_head}, n_embd {c.n_embd}, n_hidden {c.n_hidden}, "
          f"params {train.model.get_num_params() / 1e6:.3f}M; batch {train.effective_batch_size()} x accum "
          f"{train.effective_grad_accum()} x block {c.block_size}, {train.device}, compile {train.compile}")

    start_iter = train.progress['iter_num']
    times, tokens = [], 0
    for step in range(config['warmup_steps'] + config['num_steps']):
        t0 = time.time()
        loss, micro_steps, step_tokens, _ = train.train_step(start_iter + step)
        lossf = loss.item() * micro_steps  # a sync, so the step is over when the clock stops
        dt = time.time() - t0
        if step >= config['warmup_steps']:
            times.append(dt)
            tokens = step_tokens
        print(f"step {step}: loss {lossf:.4f}, {dt * 1000:.2f}ms{' (warmup)' if step < config['warmup_steps'] else ''}")
    ms_per_iter = 1000 * sum(times) / len(times)
    mfu = train.model.estimate_mfu(tokens, ms_per_iter / 1000)
    print(f"ms/iter {ms_per_iter:.2f}, tokens/s {tokens / (ms_per_iter / 1000):,.0f}, mfu {mfu * 100:.4f}%")


if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except (train.UserError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
