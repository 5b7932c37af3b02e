"""
Crashes at random moments (issue 15), not part of CI: a short scheduled run (a tiny model on tiny
shakespeare, CPU, fp32, growth ops and an MSG mask ramp, a checkpoint at every eval) is killed at
random moments and resumed, and every resumed run must end exactly where an uninterrupted run ends:
the same final checkpoint (weights, AdamW state, orchestrator, RNG, counters) and the same
events.jsonl (all but the wall time).

- SIGKILL: chains of 1-3 kills, each resumed (--init_from=resume, or from scratch when no checkpoint
  was written yet), until --kills kills have landed. A kill waits for one of three moments, drawn at
  random: the log line of a random iteration (then a random 0-10 ms), one of the next 4 "saving
  checkpoint" lines (then 0-2 ms: during torch.save), or one of the next 3 "SCALING OPERATION
  TRIGGERED" lines (then 0-2 ms: during the op). Where it landed is read from what it left: a
  ckpt.pt.tmp written by that run (killed mid-write), an op block without its COMPLETE line (mid-op).
- SIGTERM under torchrun --nproc_per_node=2 (gloo), after a random iteration, to rank 0, rank 1 or
  both (drawn): every rank must save once (one "stopped at iter" line, one checkpoint with both ranks'
  RNG) and exit 143 (128 + SIGTERM; torchrun lists each worker's exit code in its ChildFailedError
  report), and the resume must end as the uninterrupted DDP run does. The signal goes to the workers, not to torchrun: torchrun itself, when
  signalled, forwards it and then ends with its own SignalException traceback and a non-zero code
  (torch's elastic agent), whatever the workers do.

No hook in train.py: the kills come from outside, timed on its unbuffered output.

    python data/shakespeare_char/prepare.py   # once
    python crash_runs.py --kills=30 --sigterms=5 --seed=0
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), 'tests'))
from helpers import worker_pids  # noqa: E402

REPO = os.path.dirname(os.path.abspath(__file__))
MAX_ITERS = 60
SCHEDULE = [  # eval (and checkpoint) every 5 iters; ops by timeout
    dict(name='change_lr', value=0.5, trigger_loss=0.0, max_wait_iters=10, reevaluate=False),  # iter 10
    dict(name='stack_layers', value=2, trigger_loss=0.0, max_wait_iters=5, reevaluate=True),  # iter 15
    dict(name='msg_widen_mlp', value={'factor': 2.0, 'anneal_iters': 15}, trigger_loss=0.0, max_wait_iters=5,
         reevaluate=False),  # iter 20, mask 0 -> 1 at 35
    dict(name='msg_stack_layers', value={'layers': 3, 'anneal_iters': 10}, trigger_loss=0.0, max_wait_iters=5,
         reevaluate=True),  # waits for the ramp: iter 35, mask 0 -> 1 at 45
    dict(name='change_batch_size', value=2.0, trigger_loss=0.0, max_wait_iters=5, reevaluate=False),  # iter 40
    dict(name='widen_mlp', value=1.5, trigger_loss=0.0, max_wait_iters=10, reevaluate=True),  # iter 50
]
SETTINGS = dict(device='cpu', compile=False, dtype='float32', dataset='shakespeare_char', n_layer=1, n_head=2,
                n_embd=64, block_size=32, batch_size=8, gradient_accumulation_steps=2, eval_interval=5, eval_iters=2,
                log_interval=1, max_iters=MAX_ITERS, learning_rate=1e-3, warmup_iters=5, lr_decay_iters=MAX_ITERS,
                min_lr=1e-4, always_save_checkpoint=True)
TORCHRUN = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2']


def command(out_dir, schedule_file, ddp=False, resume=False):
    args = dict(SETTINGS, out_dir=out_dir, scaling_schedule_file=schedule_file,
                init_from='resume' if resume else 'scratch', overwrite=not resume)  # a kill before any checkpoint
    # leaves events.jsonl: the rerun from scratch replaces it
    return (TORCHRUN if ddp else [sys.executable]) + ['train.py'] + [f'--{k}={v}' for k, v in args.items()]


def start(cmd):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, start_new_session=True)


def run_to_end(cmd):
    process = start(cmd)
    output, _ = process.communicate(timeout=600)
    return process.returncode, output


def run_until(cmd, wanted, delay, send, occurrence=1):
    """Start cmd, call send(process) delay seconds after the occurrence-th output line that starts
    with wanted; returns (exit code, output, whether it was sent)."""
    process = start(cmd)
    seen, sent = [], False
    for line in process.stdout:
        seen.append(line)
        occurrence -= line.startswith(wanted)
        if not sent and occurrence == 0:
            time.sleep(delay)
            send(process)
            sent = True
    process.wait(timeout=600)
    return process.returncode, ''.join(seen), sent


def kill_group(process):
    os.killpg(process.pid, signal.SIGKILL)


def events(out_dir):
    with open(os.path.join(out_dir, 'events.jsonl')) as f:
        return [{k: v for k, v in json.loads(line).items() if k != 'elapsed_s'} for line in f if line.strip()]


def final_state(out_dir):
    checkpoint = torch.load(os.path.join(out_dir, 'ckpt.pt'), map_location='cpu', weights_only=True)
    for key in ('config', 'wandb_run_id'):  # init_from differs between a resumed run and a fresh one
        del checkpoint[key]
    return checkpoint


def differences(a, b, where='ckpt'):
    """Paths at which two nested checkpoints differ (tensors: dtype, shape and every value)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype \
            and a.shape == b.shape and torch.equal(a, b)
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return [f"{where} keys"]
        return [d for k in a for d in differences(a[k], b[k], f"{where}[{k!r}]")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [where]


def compare(out_dir, reference):
    """What differs from the reference run: 'events' and checkpoint paths."""
    mismatches = [] if events(out_dir) == events(reference) else ['events']
    return mismatches + differences(final_state(out_dir), final_state(reference))


def reference_run(root, schedule_file, ddp):
    out = os.path.join(root, 'reference-ddp' if ddp else 'reference')
    code, output = run_to_end(command(out, schedule_file, ddp))
    assert code == 0 and 'Traceback' not in output, output[-3000:]
    ops = [e['iter'] for e in events(out) if e['event'] == 'op']
    print(f"reference {'ddp ' if ddp else ''}run: ops at iters {ops}, "
          f"{sum(line.startswith('saving checkpoint') for line in output.splitlines())} checkpoints")
    return out


def sigkill_chain(rng, out, schedule_file, n_kills, tally):
    """Kill a run n_kills times at random moments, resuming after each, then resume to the end."""
    for _ in range(n_kills):
        resume = os.path.isfile(os.path.join(out, 'ckpt.pt'))
        moment, occurrence = rng.choice(['iter', 'save', 'op']), 1
        if moment == 'iter':
            wanted, delay = f"iter {rng.randrange(MAX_ITERS)}/", rng.uniform(0, 0.010)
        elif moment == 'save':  # one of the next 4 checkpoints
            wanted, delay, occurrence = 'saving checkpoint', rng.uniform(0, 0.002), rng.randint(1, 4)
        else:  # one of the next 3 ops
            wanted, delay, occurrence = '=== SCALING OPERATION TRIGGERED ===', rng.uniform(0, 0.002), rng.randint(1, 3)
        launched = time.time()
        code, output, sent = run_until(command(out, schedule_file, resume=resume), wanted, delay, kill_group,
                                       occurrence)
        if not sent or code != -signal.SIGKILL:  # the moment never came (the run had passed it): no kill
            tally['missed'] += 1
            continue
        if 'Traceback' in output:
            tally['tracebacks'] += 1
        tally['kills'] += 1
        tally['resumes'] += resume
        tally[f'aimed at {moment}'] += 1
        tmp = os.path.join(out, 'ckpt.pt.tmp')  # left in place: the resume must cope with it
        tally['landed mid-write'] += os.path.isfile(tmp) and os.path.getmtime(tmp) >= launched
        tally['landed mid-op'] += output.count('OPERATION TRIGGERED') > output.count('OPERATION COMPLETE')
    resume = os.path.isfile(os.path.join(out, 'ckpt.pt'))
    code, output = run_to_end(command(out, schedule_file, resume=resume))
    tally['resumes'] += resume
    if code != 0 or 'Traceback' in output:
        tally['failed resumes'] += 1
        print(output[-3000:])
        return ['exit']
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--kills', type=int, default=30, help='SIGKILLs that land, at least')
    parser.add_argument('--sigterms', type=int, default=5, help='SIGTERMs under torchrun --nproc_per_node=2')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--workdir', default=os.path.join(REPO, 'out-crash-runs'))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    schedule_file = os.path.join(args.workdir, 'schedule.json')
    with open(schedule_file, 'w') as f:
        json.dump(SCHEDULE, f)
    started = time.time()

    reference = reference_run(args.workdir, schedule_file, ddp=False)
    tally = {k: 0 for k in ('kills', 'resumes', 'missed', 'aimed at iter', 'aimed at save', 'aimed at op',
                            'landed mid-write', 'landed mid-op', 'tracebacks', 'failed resumes', 'mismatched runs')}
    chains = 0
    while tally['kills'] < args.kills:
        out = os.path.join(args.workdir, f'kill-{chains}')
        failed = sigkill_chain(rng, out, schedule_file, rng.randint(1, 3), tally)
        mismatches = failed or compare(out, reference)
        if mismatches:
            tally['mismatched runs'] += 1
            print(f"chain {chains}: MISMATCH {mismatches[:5]}")
        chains += 1
    print(f"SIGKILL: {chains} chains, " + ', '.join(f"{k} {v}" for k, v in tally.items()))

    reference = reference_run(args.workdir, schedule_file, ddp=True) if args.sigterms else None
    term = {k: 0 for k in ('sigterms', 'clean exits', 'single saves', 'resumes', 'mismatched runs')}
    for i in range(args.sigterms):
        out = os.path.join(args.workdir, f'sigterm-{i}')
        after, ranks = rng.randrange(5, MAX_ITERS - 5), rng.choice([(0,), (1,), (0, 1)])

        def terminate(process):  # the training processes, as a preemption signals them
            pids = worker_pids(process.pid)
            for rank in ranks:
                os.kill(pids[rank], signal.SIGTERM)
        code, output, sent = run_until(command(out, schedule_file, ddp=True), f"iter {after}/",
                                       rng.uniform(0, 0.010), terminate)
        stops = [line for line in output.splitlines() if line.startswith('stopped at iter ')]
        term['sigterms'] += sent
        worker_codes = set(re.findall(r'exitcode\s*: (-?\d+)', output))  # torchrun's report of its workers
        term['clean exits'] += worker_codes == {'143'} and output.count('Traceback') == output.count('ChildFailedError:')
        checkpoint = torch.load(os.path.join(out, 'ckpt.pt'), map_location='cpu', weights_only=True)
        stopped_at = int(stops[0].split('at iter ')[1].split(':')[0]) if len(stops) == 1 else None
        term['single saves'] += stopped_at == checkpoint['iter_num'] and len(checkpoint['rng']) == 2
        code, output = run_to_end(command(out, schedule_file, ddp=True, resume=True))
        term['resumes'] += code == 0
        mismatches = ['exit'] if code != 0 else compare(out, reference)
        if mismatches or len(stops) != 1:
            term['mismatched runs'] += 1
            print(f"sigterm {i} (ranks {ranks} after iter {after}): MISMATCH {mismatches[:5]} stops {stops}")
            print(output[-2000:])
    print("SIGTERM under torchrun: " + ', '.join(f"{k} {v}" for k, v in term.items()))
    print(f"{time.time() - started:.0f} s in all")
    ok = tally['mismatched runs'] == tally['tracebacks'] == tally['failed resumes'] == term['mismatched runs'] == 0 \
        and term['clean exits'] == term['single saves'] == term['resumes'] == args.sigterms
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
