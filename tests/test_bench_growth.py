"""bench_growth.py end to end on a tiny setting (1 seed, a 2-budget ladder), its arithmetic, and
plot_run.py on its runs."""

import math
import os
import re
import subprocess
import sys

import pytest

from bench_growth import compute_equivalent
from helpers import REPO, read_events, train_env, write_char_data, write_schedule

TINY_SETTING = ['data_dir={data}', 'max_iters=60', 'eval_interval=20', 'eval_iters=2', 'n_embd=32', 'n_head=2',
                'n_hidden=32', 'block_size=32', 'batch_size=4', 'log_interval=100', 'warmup_iters=5',
                'lr_decay_iters=60']


def run(command, **kwargs):
    result = subprocess.run([sys.executable, *command], cwd=REPO, env=train_env(), capture_output=True, text=True,
                            timeout=600, **kwargs)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def evals_of(folder):
    return [e for e in read_events(folder) if e['event'] == 'eval']


def test_compute_equivalent_interpolates_in_log_flops():
    points = [(1e12, 2.0), (2e12, 1.8), (4e12, 1.7)]
    assert compute_equivalent(points, 1.8) == (pytest.approx(2e12), False)
    flops, extrapolated = compute_equivalent(points, 1.75)  # half way between 2e12 and 4e12 in log
    assert flops == pytest.approx(math.sqrt(2e12 * 4e12)) and not extrapolated
    flops, extrapolated = compute_equivalent(points, 1.6)  # beyond the best: the last segment, extended
    assert flops == pytest.approx(8e12) and extrapolated
    flops, extrapolated = compute_equivalent(points, 2.2)  # worse than the smallest budget
    assert flops == pytest.approx(0.5e12) and extrapolated


def test_bench_growth_tiny(tmp_path):
    data, out, report = tmp_path / 'data', tmp_path / 'bench', tmp_path / 'report'
    write_char_data(data, n_chars=50_000)
    schedule = write_schedule(tmp_path / 'grow.json', [
        ('stack_layers', 2, 0.0, 20, True),
        ('widen_mlp', {'factor': 2.0, 'noise': 0.5}, 0.0, 20, True)])
    sets = [arg for kv in TINY_SETTING for arg in ('--set', kv.format(data=data))]
    command = ['bench_growth.py', '--config=config/train_shakespeare_char_cpu_growth.py', f'--schedule={schedule}',
               '--seeds=1', '--ladder=0.5,1.0', '--ref_iters=40', f'--out_dir={out}', f'--report={report}', *sets]
    stdout = run(command)

    growth = evals_of(out / 'growth-grow-seed1')
    assert [e['iter'] for e in growth] == [0, 20, 40, 60]
    assert [(e['n_layer'], e['n_hidden']) for e in growth] == [(1, 32), (1, 32), (2, 32), (2, 64)]
    ladder = {(family, budget): evals_of(out / f'static-large-{family}-x{budget}-seed1')
              for family in ('cosine', 'wsd') for budget in ('0.5', '1')}
    for (family, budget), evals in ladder.items():
        # static-large: the schedule's final architecture, budget x 40 iters, its own complete schedule
        assert {(e['n_layer'], e['n_hidden']) for e in evals} == {(2, 64)}
        assert evals[-1]['iter'] == 40 * float(budget) and evals[-1]['lr_decay_iters'] == evals[-1]['iter']
    # wsd holds the peak until its cooldown (a fifth of the run); cosine is past it by then
    assert ladder[('wsd', '1')][1]['lr'] == 1e-3 > ladder[('cosine', '1')][1]['lr']
    f_ref = ladder[('cosine', '1')][-1]['flops']
    per_iter = f_ref / 40
    matched = {family: evals_of(out / f'matched-{family}-grow-seed1') for family in ('cosine', 'wsd')}
    for evals in matched.values():
        assert abs(evals[-1]['flops'] - growth[-1]['flops']) <= per_iter / 2
    small = evals_of(out / 'static-small-grow-seed1')
    assert {(e['n_layer'], e['n_hidden']) for e in small} == {(1, 32)}
    assert abs(small[-1]['flops'] - growth[-1]['flops']) < growth[-1]['flops'] * 0.05

    # the table's row, recomputed from the event logs
    final = {k: v[-1]['val_loss'] for k, v in ladder.items()}
    growth_val, budget = growth[-1]['val_loss'], growth[-1]['flops'] / f_ref
    matched_val = min(m[-1]['val_loss'] for m in matched.values())
    reference = min(final[('cosine', '1')], final[('wsd', '1')])
    points = sorted([(ladder[('cosine', b)][-1]['flops'], min(final[('cosine', b)], final[('wsd', b)]))
                     for b in ('0.5', '1')] + [(matched['cosine'][-1]['flops'], matched_val)])
    flops, extrapolated = compute_equivalent(points, growth_val)
    table = report.with_suffix('.md').read_text()
    row = next(line for line in table.splitlines() if line.startswith('| 1 | '))
    cells = [c.strip() for c in row.strip('|').split('|')]
    assert cells[1] == f"{budget:.3f}" and cells[2] == f"{growth_val:.4f}"
    assert cells[3].startswith(f"{matched_val:.4f} (") and cells[4].startswith(f"{reference:.4f} (")
    assert cells[5] == f"{small[-1]['val_loss']:.4f}"
    assert cells[6] == f"{flops / growth[-1]['flops']:.2f}" + (' (extrapolated)' if extrapolated else '')
    assert cells[7] == str(growth_val < matched_val)
    wins = int(growth_val < matched_val)
    assert stdout.strip().splitlines()[-1] == (
        f"speedup_median={flops / growth[-1]['flops']:.3f} budget_ratio_median={budget:.3f} "
        f"growth_val_median={growth_val:.4f} static_ref_val_median={reference:.4f} matched_wins={wins}/1")
    assert report.with_suffix('.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'

    # --reuse: nothing runs again, the same report comes out
    again = run(command + ['--reuse'])
    assert 'train.py' not in again and again.strip().splitlines()[-1] == stdout.strip().splitlines()[-1]
    # a changed schedule, same final architecture: only the growth run and what depends on it run again
    write_schedule(tmp_path / 'grow.json', [('stack_layers', 2, 0.0, 40, True),
                                            ('widen_mlp', {'factor': 2.0, 'noise': 0.5}, 0.0, 0, True)])
    rerun = [line for line in run(command + ['--reuse']).splitlines() if 'train.py' in line]
    assert sorted(re.search(r'--out_dir=\S*/(\S+)', line).group(1) for line in rerun) == \
        ['growth-grow-seed1', 'matched-cosine-grow-seed1', 'matched-wsd-grow-seed1', 'static-small-grow-seed1']

    picture = tmp_path / 'two_runs.png'
    stdout = run(['plot_run.py', str(out / 'growth-grow-seed1'), str(out / 'static-large-wsd-x1-seed1'),
                  f'--out={picture}'])
    assert stdout.strip() == f"wrote {picture}"
    assert os.path.getsize(picture) > 10_000


def test_plot_run_refuses_a_folder_without_events(tmp_path):
    result = subprocess.run([sys.executable, 'plot_run.py', str(tmp_path)], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert f"{tmp_path}: no events.jsonl (is it a train.py out_dir?)" in result.stderr
