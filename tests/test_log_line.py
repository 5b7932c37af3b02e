"""
The training log (issue 21): what a nanoGPT user reads while a run trains and when it ends.
- the iteration line: `iter N/max_iters: loss L, time Tms, tok/s S, elapsed E, eta R`, `, mfu M%` only on
  cuda once measured (no A100-peak MFU on a CPU, no placeholder);
- step timing without wall time: StepClock takes timestamps, so a test injects an eval's duration and
  sees the next step's time leave it out, and the ETA is the mean step time since the last eval, the
  first step after it (compilation) left out;
- a notice while torch.compile compiles;
- the end-of-run summary (log lines and a `summary` event), checked against the run's own events.jsonl
  in a run whose clock is made up (a step takes 10 s, the first 70 s, an eval 100 s): exact lines.
"""

import json
import re

import pytest

import train
from helpers import describe_run, entry, read_events, run_script, train_args, write_char_data, write_schedule
from model import GPT, GPTConfig


@pytest.mark.parametrize('seconds, shown', [(0.4, '0s'), (9.4, '9s'), (59.4, '59s'), (60, '1m00s'), (134, '2m14s'),
                                            (3599, '59m59s'), (3600, '1h00m'), (3725, '1h02m'), (90000, '25h00m')])
def test_duration(seconds, shown):
    assert train.duration(seconds) == shown


def test_step_time_leaves_out_an_eval():
    """A 70 ms step, then an eval of 1.5 s and the clock restarted after it: the next step takes 70 ms,
    not the 1570 ms since the previous step ended."""
    clock = train.StepClock(100.0)
    assert clock.step(100.07) == pytest.approx(0.07)
    clock.restart(100.07 + 1.5)
    assert clock.step(100.07 + 1.5 + 0.07) == pytest.approx(0.07)
    assert clock.elapsed(100.07 + 1.5 + 0.07) == pytest.approx(1.64)


def test_eta_is_the_mean_step_since_the_last_eval_without_the_first():
    """The first step after a restart (compilation, warm-up) counts once it is the only one; then the
    mean of the others: 67 s, 0.1 s, 0.3 s -> 0.2 s a step. A restart forgets the steps before it."""
    clock = train.StepClock(0.0)
    clock.step(67.0)
    assert clock.eta(10) == pytest.approx(670.0)
    clock.step(67.1)
    clock.step(67.4)
    assert clock.eta(10) == pytest.approx(2.0)
    clock.restart(100.0)
    clock.step(100.5)
    assert clock.eta(4) == pytest.approx(2.0)


def test_log_line_on_cpu_has_no_mfu(monkeypatch):
    monkeypatch.setattr(train, 'max_iters', 2000)
    assert train.log_line(120, 2.34561, 0.0712, 1024, 9.2, 134.4) == \
        "iter 120/2000: loss 2.3456, time 71.20ms, tok/s 14,382, elapsed 9s, eta 2m14s"


def test_log_line_on_cuda_ends_with_mfu(monkeypatch):
    monkeypatch.setattr(train, 'max_iters', 2000)
    assert train.log_line(120, 2.34561, 0.0712, 1024, 9.2, 134.4, 0.31234) == \
        "iter 120/2000: loss 2.3456, time 71.20ms, tok/s 14,382, elapsed 9s, eta 2m14s, mfu 31.23%"


@pytest.mark.parametrize('compiled, printed', [
    (True, "compiling the model (torch.compile); the first iteration takes longer\n"), (False, "")])
def test_compile_notice(monkeypatch, capsys, compiled, printed):
    """wrap_model (before the first step and after every growth op) says when torch.compile will
    compile; torch.compile is lazy, so wrapping a tiny model costs nothing here."""
    for name, value in dict(compile=compiled, ddp=False, master_process=True, eval_model=None, train_model=None,
                            model=GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=65))).items():
        monkeypatch.setattr(train, name, value)
    train.wrap_model()
    assert capsys.readouterr().out == printed


def test_resume_drops_the_summary_of_the_stopped_run(tmp_path):
    """A run resumed from its final checkpoint with a larger max_iters goes on where the summary was
    written: that summary goes (the resumed run writes its own), the events up to the iter stay."""
    path = tmp_path / 'events.jsonl'
    events = [dict(event='eval', iter=0), dict(event='op', iter=0), dict(event='eval', iter=10),
              dict(event='summary', iter=10), dict(event='eval', iter=20)]
    path.write_text(''.join(json.dumps(e) + '\n' for e in events) + '{"event": "ev')  # a torn last line
    train.EventLog(str(path), 10, None).file.close()
    assert read_events(tmp_path) == events[:3]


# train.py on a made-up clock: a training step takes 10 s (the first one 70 s, as if compiling), an eval 100 s
FAKE_CLOCK_TRAIN = r'''
import os, sys
sys.path.insert(0, os.getcwd())
import train


class Clock:
    now = 0.0

    def time(self):
        return self.now


clock = Clock()
train_step, evaluate = train.train_step, train.evaluate


def timed_train_step(iter_num):
    result = train_step(iter_num)
    clock.now += 70.0 if iter_num == 0 else 10.0
    return result


def timed_evaluate(*args):
    losses = evaluate(*args)
    clock.now += 100.0
    return losses


train.time, train.train_step, train.evaluate = clock, timed_train_step, timed_evaluate
train.run_from_command_line(sys.argv[1:])
'''

# eval at 0 (100 s), steps 0-2 (70, 10, 10 s), eval at 3, steps 3-5, eval at 6; 4 x 32 = 128 tokens a step
EXPECTED_LINES = [
    "iter 0/6: loss L, time 70000.00ms, tok/s 2, elapsed 2m50s, eta 5m50s",  # 5 left at the only step's 70 s
    "iter 1/6: loss L, time 10000.00ms, tok/s 13, elapsed 3m00s, eta 40s",  # the first step left out: 4 x 10 s
    "iter 2/6: loss L, time 10000.00ms, tok/s 13, elapsed 3m10s, eta 30s",
    "iter 3/6: loss L, time 10000.00ms, tok/s 13, elapsed 5m00s, eta 20s",  # the eval's 100 s not in its time
    "iter 4/6: loss L, time 10000.00ms, tok/s 13, elapsed 5m10s, eta 10s",
    "iter 5/6: loss L, time 10000.00ms, tok/s 13, elapsed 5m20s, eta 0s",
]


@pytest.mark.slow
def test_log_lines_and_summary_of_a_run(tmp_path):
    """Six iterations, an eval every 3, change_lr at the first eval: the iteration lines (loss aside),
    no mfu on a CPU, and a summary that says what events.jsonl says: the lowest val loss of its evals
    and its iter, the last eval's val loss and flops, the tokens, the checkpoint, the ops that fired."""
    write_char_data(tmp_path / 'data', n_chars=20_000)
    schedule = write_schedule(tmp_path / 'schedule.json', [entry('change_lr', 0.5)])
    out = tmp_path / 'out'
    result = run_script(['-c', FAKE_CLOCK_TRAIN] + train_args(tmp_path / 'data', out, max_iters=6, eval_interval=3,
                                                             scaling_schedule_file=schedule))
    assert result.returncode == 0, describe_run(result)
    lines = [re.sub(r'loss \d+\.\d{4},', 'loss L,', line) for line in result.stdout.splitlines()
             if line.startswith('iter ')]
    assert lines == EXPECTED_LINES

    events = read_events(out)
    evals = [e for e in events if e['event'] == 'eval']
    assert [e['iter'] for e in evals] == [0, 3, 6]
    best = min(evals, key=lambda e: e['val_loss'])
    summary = events[-1]
    assert summary == dict(event='summary', iter=6, min_val_loss=best['val_loss'], min_val_iter=best['iter'],
                           final_val_loss=evals[-1]['val_loss'], elapsed_s=420.0, flops=evals[-1]['flops'],
                           eval_flops=evals[-1]['eval_flops'], tokens=6 * 128, checkpoint='ckpt.pt',
                           ops_fired=[dict(name='change_lr', iter=0)])
    assert [e['event'] for e in events].count('summary') == 1
    tail = result.stdout.splitlines()[-3:]
    assert tail == [
        f"done: iter 6, best val {best['val_loss']:.4f} (iter {best['iter']}), final val {evals[-1]['val_loss']:.4f}, "
        "wall 7m00s",
        f"  training flops {evals[-1]['flops']:.3e}, tokens 768, checkpoint {out / 'ckpt.pt'}",
        "  ops fired: change_lr@0",
    ]


def test_summary_without_evals_or_checkpoint(tmp_path, monkeypatch, capsys):
    """A resume at max_iters into an out_dir whose events.jsonl lost its evals, and no checkpoint there:
    the summary leaves the val losses out and says so, rather than failing at the end of the run."""
    monkeypatch.setattr(train, 'out_dir', str(tmp_path))
    monkeypatch.setattr(train, 'progress', dict(iter_num=6, tokens=768, flops=1.5e9, eval_flops=2e8))
    (tmp_path / 'events.jsonl').write_text(json.dumps(dict(event='op', iter=3, name='stack_layers')) + '\n')
    log = train.EventLog(str(tmp_path / 'events.jsonl'), 6, None)
    train.print_summary(log, 65.4)
    log.file.close()
    assert capsys.readouterr().out.splitlines() == [
        "done: iter 6, wall 1m05s", "  training flops 1.500e+09, tokens 768, checkpoint none",
        "  ops fired: stack_layers@3"]
    assert read_events(tmp_path)[-1] == dict(event='summary', iter=6, min_val_loss=None, min_val_iter=None,
                                             final_val_loss=None, elapsed_s=65.4, flops=1.5e9, eval_flops=2e8,
                                             tokens=768, checkpoint=None, ops_fired=[dict(name='stack_layers', iter=3)])
