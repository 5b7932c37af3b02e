"""bench_growth.py end to end on a tiny setting (1 seed), and plot_run.py on its runs."""

import os
import re
import subprocess
import sys

from helpers import REPO, read_events, train_env, write_char_data, write_schedule

TINY_SETTING = ['data_dir={data}', 'max_iters=60', 'eval_interval=20', 'eval_iters=2', 'n_embd=32', 'n_head=2',
                'n_hidden=32', 'block_size=32', 'batch_size=4', 'log_interval=100', 'warmup_iters=5',
                'lr_decay_iters=60']


def run(command, **kwargs):
    result = subprocess.run([sys.executable, *command], cwd=REPO, env=train_env(), capture_output=True, text=True,
                            timeout=600, **kwargs)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def first_reach(evals, target):
    return next((e for e in evals if e['val_loss'] <= target), None)


def test_bench_growth_tiny(tmp_path):
    data, out = tmp_path / 'data', tmp_path / 'bench'
    write_char_data(data, n_chars=50_000)
    schedule = write_schedule(tmp_path / 'grow.json', [
        ('msg_stack_layers', {'layers': 2, 'anneal_iters': 10}, 0.0, 20, True),
        ('widen_mlp', 2.0, 0.0, 20, True)])
    sets = [arg for kv in TINY_SETTING for arg in ('--set', kv.format(data=data))]
    stdout = run(['bench_growth.py', '--config=config/train_shakespeare_char_cpu_growth.py',
                  f'--schedules={schedule}', '--seeds=1', f'--out_dir={out}', *sets])

    runs = {kind: read_events(out / f'{kind}-seed1') for kind in ('static-large', 'static-small', 'growth-grow')}
    evals = {kind: [e for e in events if e['event'] == 'eval'] for kind, events in runs.items()}
    # static-large has the schedule's final architecture, static-small its first, neither runs a schedule
    assert {(e['n_layer'], e['n_hidden']) for e in evals['static-large']} == {(2, 64)}
    assert {(e['n_layer'], e['n_hidden']) for e in evals['static-small']} == {(1, 32)}
    assert not [e for e in runs['static-large'] + runs['static-small'] if e['event'] == 'op']
    assert [(e['iter'], e['name']) for e in runs['growth-grow'] if e['event'] == 'op'] == \
        [(20, 'msg_stack_layers'), (40, 'widen_mlp')]
    assert [e['iter'] for e in evals['growth-grow']] == [0, 20, 40, 60]

    # the table's growth row, recomputed from the event logs
    target = evals['static-large'][-1]['val_loss']
    large_at = first_reach(evals['static-large'], target)
    growth_at = first_reach(evals['growth-grow'], target)
    results = (out / 'results.md').read_text()
    row = next(line for line in results.splitlines() if line.startswith('| growth:grow | 1 |'))
    cells = [c.strip() for c in row.strip('|').split('|')]
    assert cells[2] == f"{evals['growth-grow'][-1]['val_loss']:.4f}"
    assert cells[3] == f"{target:.4f}"
    if growth_at is None:
        assert cells[4] == 'not reached'
        ratio_line = 'flops_ratio_median=nan wall_ratio_median=nan'
    else:
        flops_ratio = growth_at['flops'] / large_at['flops']
        wall_ratio = growth_at['elapsed_s'] / large_at['elapsed_s']
        assert cells[4] == str(growth_at['iter']) and cells[7] == f"{flops_ratio:.3f}"
        ratio_line = f"flops_ratio_median={flops_ratio:.3f} wall_ratio_median={wall_ratio:.3f}"
    assert cells[9] == str(evals['growth-grow'][-1]['val_loss'] < evals['static-small'][-1]['val_loss'])
    whole_run = (evals['growth-grow'][-1]['flops'] / evals['static-large'][-1]['flops'],
                 evals['growth-grow'][-1]['elapsed_s'] / evals['static-large'][-1]['elapsed_s'])
    assert cells[10] == f"{whole_run[0]:.3f}, {whole_run[1]:.3f}"
    assert stdout.strip().splitlines()[-1] == ratio_line
    assert re.search(r'^\| static-small \| 1 \|', results, re.M)

    png = out / 'growth_vs_static.png'
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'

    picture = tmp_path / 'two_runs.png'
    stdout = run(['plot_run.py', str(out / 'growth-grow-seed1'), str(out / 'static-large-seed1'), f'--out={picture}'])
    assert stdout.strip() == f"wrote {picture}"
    assert picture.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert os.path.getsize(picture) > 10_000


def test_plot_run_refuses_a_folder_without_events(tmp_path):
    result = subprocess.run([sys.executable, 'plot_run.py', str(tmp_path)], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert f"{tmp_path}: no events.jsonl (is it a train.py out_dir?)" in result.stderr
