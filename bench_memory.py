"""
Memory benchmark (not run in CI): a long CPU run of a tiny model through train.py's real loop,
with a few schedule operations, to show that memory does not grow per iteration.

    python bench_memory.py                  # 20000 iters (~10+ minutes on 2 cores)
    python bench_memory.py --iters 3000     # a quick check

train.py runs in a subprocess; its resident memory is read from /proc/PID/status every 50 ms
(VmRSS: now, VmHWM: the peak so far) while its log says which iteration it is at. The growth
operations fire early (by iter 300; the MSG ramp ends at 400), before the start mark, so the
memory between the start mark and the end is that of one fixed model; the later operations
only change hyperparameters. Output: the peak and current RSS at the start mark and at the
end, their differences, and a last line `rss_start_mb=<peak at start> rss_end_mb=<peak at end>`.
"""

import argparse
import json
import os
import pickle
import re
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.abspath(__file__))
TEXT = os.path.join(REPO, '..', 'shared', 'data', 'tinyshakespeare', 'input.txt')


def write_data(folder, n_chars=200_000):
    """Char-level train.bin / val.bin / meta.pkl from tiny shakespeare (or a synthetic text)."""
    if os.path.isfile(TEXT):
        with open(TEXT, encoding='utf-8') as f:
            text = f.read(n_chars)
    else:
        text = ''.join(chr(97 + (i * i + i // 7) % 26) for i in range(n_chars))
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    tokens = np.array([stoi[c] for c in text], dtype=np.uint16)
    split = int(len(tokens) * 0.9)
    os.makedirs(folder, exist_ok=True)
    tokens[:split].tofile(os.path.join(folder, 'train.bin'))
    tokens[split:].tofile(os.path.join(folder, 'val.bin'))
    with open(os.path.join(folder, 'meta.pkl'), 'wb') as f:
        pickle.dump({'vocab_size': len(chars), 'itos': dict(enumerate(chars)), 'stoi': stoi, 'tokenizer': 'char'}, f)


def write_schedule(path, iters):
    """Growth early (before the start mark), hyperparameter changes spread over the run; every
    entry fires on its timeout (trigger_loss 0 is never reached)."""
    late = max(100, iters // 4 // 100 * 100)  # a multiple of the eval interval
    entries = [('widen_mlp', 1.5, 100), ('msg_add_heads', {'n_new_heads': 1, 'anneal_iters': 100}, 100),
               ('change_lr', 0.5, late), ('change_eval_iters', 2, late), ('reset_lr_schedule', None, late)]
    with open(path, 'w') as f:
        json.dump([dict(name=n, value=v, trigger_loss=0.0, max_wait_iters=w, reevaluate=False) for n, v, w in entries],
                  f)


def read_status(pid):
    """(VmRSS, VmHWM) in MiB, or None once the process is gone."""
    try:
        with open(f'/proc/{pid}/status') as f:
            fields = dict(line.split(':', 1) for line in f if ':' in line)
        return int(fields['VmRSS'].split()[0]) / 1024, int(fields['VmHWM'].split()[0]) / 1024
    except (OSError, KeyError):
        return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--iters', type=int, default=20000)
    parser.add_argument('--start_iter', type=int, default=500, help="the start mark")
    parser.add_argument('--work_dir', default='', help="data and out_dir go here (default: a temp folder)")
    args = parser.parse_args()
    assert args.iters > args.start_iter >= 400, "the start mark comes after the growth ops (iter 400)"

    work = args.work_dir or tempfile.mkdtemp(prefix='bench_memory_')
    data, out_dir, schedule = os.path.join(work, 'data'), os.path.join(work, 'out'), os.path.join(work, 'schedule.json')
    write_data(data)
    write_schedule(schedule, args.iters)
    config = dict(device='cpu', compile=False, dtype='float32', n_layer=2, n_head=2, n_embd=32, block_size=32,
                  batch_size=8, gradient_accumulation_steps=1, eval_interval=100, eval_iters=5, log_interval=10,
                  max_iters=args.iters, learning_rate=1e-3, warmup_iters=100, lr_decay_iters=args.iters,
                  min_lr=1e-4, bias=False, dropout=0.0, always_save_checkpoint=True, data_dir=data,
                  out_dir=out_dir, scaling_schedule_file=schedule)
    command = [sys.executable, 'train.py'] + [f'--{k}={v}' for k, v in config.items()]
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, bufsize=1)

    progress = {'iter': -1, 'ops': 0, 'tail': []}

    def read_log():
        for line in process.stdout:
            match = re.match(r'iter (\d+)/', line)
            if match:
                progress['iter'] = int(match.group(1))
            progress['ops'] += line.startswith('=== SCALING OPERATION COMPLETE')
            progress['tail'] = (progress['tail'] + [line])[-20:]

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    started = time.time()
    start = last = None
    while process.poll() is None:
        status = read_status(process.pid)
        if status is not None:
            last = (progress['iter'], *status)
            if start is None and progress['iter'] >= args.start_iter:
                start = last
        time.sleep(0.05)
    reader.join(timeout=10)
    seconds = time.time() - started
    if process.returncode != 0 or start is None:
        sys.exit(f"train.py failed (exit {process.returncode}):\n{''.join(progress['tail'])}")

    (start_iter, start_rss, start_hwm), (end_iter, end_rss, end_hwm) = start, last
    per_iter_kb = (end_rss - start_rss) * 1024 / max(1, end_iter - start_iter)
    print(f"{args.iters} iters in {seconds:.0f}s, {progress['ops']} schedule ops fired, work dir {work}")
    print(f"start mark (iter {start_iter}): rss {start_rss:.1f} MiB, peak rss {start_hwm:.1f} MiB")
    print(f"end (iter {end_iter}): rss {end_rss:.1f} MiB, peak rss {end_hwm:.1f} MiB")
    print(f"difference: rss {end_rss - start_rss:+.1f} MiB, peak rss {end_hwm - start_hwm:+.1f} MiB "
          f"({per_iter_kb:+.3f} KiB of rss per iteration)")
    print(f"rss_start_mb={start_hwm:.1f} rss_end_mb={end_hwm:.1f}")


if __name__ == '__main__':
    main()
