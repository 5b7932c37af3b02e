"""bench_growth.py: its arithmetic (compute equivalent, the envelope's hull), a wsd cooldown branch
against a separate run of its budget (bit for bit), the benchmark end to end on a tiny setting with
two static sizes, the lr sweep, a bad sizes table, and plot_run.py on its runs."""

import argparse
import json
import math
import os
import pickle
import re
import sys

import numpy as np
import pytest
import torch

import bench_growth
import train
from bench_growth import (add_rung, comparable, compute_equivalent, cooldown_start, lower_hull, run_all, run_identity,
                          run_train, stamped_identity, static_args, wsd_branches)
from helpers import REPO, SHAKESPEARE, assert_same_state, read_events, run_script, train_args, write_char_data, write_schedule

TINY_SETTING = ['data_dir={data}', 'max_iters=60', 'eval_interval=20', 'eval_iters=2', 'n_embd=32', 'n_head=2',
                'n_hidden=32', 'block_size=32', 'batch_size=4', 'log_interval=100', 'warmup_iters=5',
                'lr_decay_iters=60']


def run(command):
    result = run_script(command, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def evals_of(folder):
    return [e for e in read_events(folder) if e['event'] == 'eval']


def final_eval_of(folder):
    """The run's own final eval (a cooldown branch also holds its stable segment's, at an earlier iter)."""
    events = read_events(folder)
    finals = [e for e in events if e['event'] == 'final_eval']
    assert finals[-1]['iter'] == evals_of(folder)[-1]['iter']
    return finals[-1]


def test_compute_equivalent_interpolates_in_log_flops():
    points = [(1e12, 2.0), (2e12, 1.8), (4e12, 1.7)]
    assert compute_equivalent(points, 1.8) == (pytest.approx(2e12), '')
    flops, bound = compute_equivalent(points, 1.75)  # half way between 2e12 and 4e12 in log
    assert flops == pytest.approx(math.sqrt(2e12 * 4e12)) and bound == ''
    # beyond the measured range no line is extended: the FLOPs of the run it passes are a bound
    assert compute_equivalent(points, 1.6) == (4e12, '>')  # below every point: more than the lowest one's
    assert compute_equivalent(points, 2.2) == (1e12, '<')  # above every point: less than the smallest budget
    assert math.isnan(compute_equivalent([], 1.9)[0])


def test_no_speedup_is_extrapolated_from_two_close_points():
    """issue 23: two points at 1.0 and 1.0001 x F_ref (losses 1.6227, 1.6228) turned a growth run 0.037
    below every static run into a speedup of 0.96 by extending the line through them."""
    f_ref = 2.054e13
    points = [(0.5 * f_ref, 1.6609), (1.0 * f_ref, 1.6227), (1.0001 * f_ref, 1.6228)]
    flops, bound = compute_equivalent(points, 1.6227 - 0.037)
    assert (flops / f_ref, bound) == (1.0, '>')  # a speedup above 1.00 at 1.0 x F_ref: more is not measured


def test_lower_hull_is_the_falling_convex_envelope():
    small = [(1e12, 2.0), (2e12, 1.9), (4e12, 1.85)]  # a small model flattens out
    large = [(1e12, 2.3), (2e12, 1.95), (4e12, 1.6), (8e12, 1.62)]  # a large one wins late, then overfits
    hull = lower_hull(small + large)
    # (2e12, 1.9) lies above the line from (1e12, 2.0) to (4e12, 1.6) (1.8 there), so it is not on the hull
    assert hull == [(pytest.approx(1e12), 2.0), (pytest.approx(4e12), 1.6)]
    assert compute_equivalent(hull, 1.8) == (pytest.approx(2e12), '')
    # collinear points and a single lowest point
    assert lower_hull([(1.0, 3.0), (math.e, 2.0), (math.e ** 2, 1.0)]) == [
        (pytest.approx(1.0), 3.0), (pytest.approx(math.e ** 2), 1.0)]
    assert lower_hull([(1e12, 1.5), (2e12, 1.7)]) == [(pytest.approx(1e12), 1.5)]


def test_a_point_given_twice_counts_once():
    """The 1.0 x F_ref recipe's budget is the ladder's 1.0 run: its same-size points held that run twice
    (the line through them divided by zero: speedup vs same size nan)."""
    points = [(1.0, 3.0), (math.e, 2.0)]
    assert compute_equivalent(points + [(math.e, 2.0)], 2.5) == compute_equivalent(points, 2.5)
    assert compute_equivalent(points + [(math.e, 2.0)], 2.5) == (pytest.approx(math.e ** 0.5), '')


def test_budgets_of_the_same_iters_share_one_branch():
    """A growth run's budget that rounds to a ladder budget's iters is that run, not a second copy."""
    setting = dict(cooldown_iters=0, lr_decay_iters=200, warmup_iters=5)
    size = dict(name='t', arch=dict(n_layer=2), lr=2e-3, min_lr=2e-4)
    runs, names = wsd_branches('t', size, {'x0.5': 40, 'x1': 80, 'matched-g': 40}, setting, ['--seed=3'])
    assert names == {'x0.5': 't-x0.5', 'x1': 't-x1', 'matched-g': 't-x0.5'}
    assert list(runs) == ['t-stable32', 't-stable64', 't-x0.5', 't-x1']


def test_a_stable_segment_is_the_same_run_whatever_the_largest_budget():
    """--reuse: a wsd segment that stops by its cooldown's start never used lr_decay_iters or
    cooldown_iters, and a branch that only continues its parent is the run of its own settings."""
    base = dict(lr_schedule='wsd', warmup_iters=5, learning_rate=1e-3, init_from='scratch')
    old = dict(base, max_iters=48, lr_decay_iters=60, cooldown_iters=12)  # stops where its cooldown starts
    new = dict(base, max_iters=48, lr_decay_iters=100, cooldown_iters=20)  # the ladder grew a larger budget
    assert comparable(old) == comparable(new) == {k: v for k, v in old.items() if 'decay' not in k and 'cool' not in k}
    assert comparable(dict(old, max_iters=49)) != comparable(dict(new, max_iters=49))  # iter 49 cools down in old
    assert comparable(dict(old, learning_rate=2e-3)) != comparable(new)
    fifth = dict(base, max_iters=80, lr_decay_iters=100, cooldown_iters=0)  # 0: a fifth of lr_decay_iters
    assert comparable(fifth) == comparable(dict(fifth, lr_decay_iters=500))
    assert comparable(dict(fifth, max_iters=81)) != comparable(dict(fifth, max_iters=81, lr_decay_iters=500))
    cosine = dict(old, lr_schedule='cosine')
    assert comparable(cosine) == cosine
    # a branch through its cooldown, from a segment it continues: its own settings are its identity
    branch = dict(base, max_iters=60, lr_decay_iters=60, cooldown_iters=12, init_from='resume')
    assert comparable(dict(branch, parent=new)) == comparable(dict(branch, parent=old)) == comparable(branch)
    # from a segment that trained otherwise, the parent is part of it
    other = dict(new, learning_rate=2e-3)
    assert comparable(dict(branch, parent=other)) == dict(branch, parent=comparable(other))


def test_a_stamp_from_before_a_new_setting_is_the_same_run():
    """--reuse: an identity.json written before train.py gained a key is the run of that key's default
    (and a key train.py has since lost is ignored); with the key set otherwise it is another run."""
    config = 'config/train_shakespeare_char_cpu.py'
    today = run_identity(config, ['--max_iters=40'])
    assert today['optimizer'] == 'adamw' and today['pos_emb'] == 'learned'
    old = json.loads(json.dumps({k: v for k, v in today.items() if k not in ('optimizer', 'pos_emb')}))
    old['a_key_train_py_lost'] = 3
    assert comparable(stamped_identity(old)) == comparable(today)
    assert comparable(stamped_identity(old)) != comparable(run_identity(config, ['--max_iters=40', '--optimizer=muon']))
    assert comparable(stamped_identity(dict(old, max_iters=41))) != comparable(today)
    # a branch's stamp holds its parent's: read the same way
    branch = run_identity(config, ['--max_iters=60', '--learning_rate=2e-3'])
    assert comparable(stamped_identity(dict(old, parent=dict(old, learning_rate=2e-3)))) == \
        comparable(dict(today, parent=dict(today, learning_rate=2e-3)))
    assert comparable(stamped_identity(dict(branch, parent=old))) == comparable(dict(branch, parent=today))


def test_a_size_runs_only_at_the_rungs_of_its_ladder(capsys):
    """A sizes row's ladder: the size runs at those rungs, and at the growth budget where they span it (the
    final size always); the others at every rung. An added rung extends the ladders that reached the top."""
    setting = dict(cooldown_iters=0, lr_decay_iters=1000, warmup_iters=5)
    final = dict(n_layer=2)
    sizes = [dict(name='1', arch=dict(n_layer=1), lr=1e-3, min_lr=1e-4, ladder=[0.5]),
             dict(name='2', arch=final, lr=1e-3, min_lr=1e-4, ladder=[1.0, 2.0]),
             dict(name='4', arch=dict(n_layer=4), lr=1e-3, min_lr=1e-4, ladder=[0.5, 1.0]),
             dict(name='8', arch=dict(n_layer=8), lr=1e-3, min_lr=1e-4, ladder=None)]
    budgets = {'x0.5': 50.0, 'x1': 100.0, 'x2': 200.0, 'matched': 70.0}
    nominal = {'x0.5': 0.5, 'x1': 1.0, 'x2': 2.0, 'matched': 0.7}
    _, named = bench_growth.static_runs(sizes, [1], ['wsd'], budgets, nominal, 3, [], setting,
                                        lambda size, flops: round(flops), 'g', final)
    ran = {(fields['size'], fields['budget']) for _, fields in named}
    assert ran == {('1', 0.5), ('2', 1.0), ('2', 2.0), ('2', 0.7), ('4', 0.5), ('4', 1.0), ('4', 0.7),
                   ('8', 0.5), ('8', 1.0), ('8', 2.0), ('8', 0.7)}
    # a row's rungs off --ladder are skipped, with a line
    assert bench_growth.size_ladder([2.0, 0.5, 3.0], [0.5, 1.0, 2.0], 'entry 1') == [0.5, 2.0]
    assert capsys.readouterr().out == "bench_growth: entry 1: rungs 3 are not on --ladder (0.5,1,2): skipped\n"
    ladder = [0.5, 1.0, 2.0]
    add_rung(ladder, sizes)
    assert ladder == [0.5, 1.0, 2.0, 4.0] and [s['ladder'] for s in sizes] == [[0.5], [1.0, 2.0, 4.0], [0.5, 1.0], None]


@pytest.mark.slow
def test_a_cooldown_branch_is_its_budget_run_bit_for_bit(tmp_path):
    """The stable phase run once (segments to iters 32 and 48, decay at 60), the 40 and 60 iter
    budgets' cooldowns resumed from it, against a separate wsd run of 40 and of 60 iters."""
    data = tmp_path / 'data'
    write_char_data(data, n_chars=50_000)
    setting = dict(cooldown_iters=0, lr_decay_iters=200, warmup_iters=5)  # a fifth of each run cools down
    size = dict(name='t', arch=dict(n_layer=2, n_hidden=48), lr=2e-3, min_lr=2e-4)
    common = [a for a in train_args(data, tmp_path / 'unused', seed=3) if not a.startswith('--out_dir')]
    runs, names = wsd_branches('t', size, {'a': 40, 'b': 60}, setting, common)
    assert [cooldown_start(40, setting), cooldown_start(60, setting)] == [32, 48]
    assert [(name, parent) for name, (_, parent) in runs.items()] == [
        ('t-stable32', None), ('t-stable48', 't-stable32'), ('t-a', 't-stable32'), ('t-b', 't-stable48')]
    options = argparse.Namespace(jobs=2, out_dir=str(tmp_path / 'bench'), config='config/train_shakespeare_char_cpu.py',
                                 reuse=False)
    results = run_all(runs, options)
    for label, iters in (('a', 40), ('b', 60)):
        separate = tmp_path / f'separate-{label}'
        run_train(str(separate), options.config, [*common, *static_args(size, iters, 'wsd', setting)], False, 1)
        branch = tmp_path / 'bench' / names[label]
        assert results[names[label]][0][-1]['iter'] == iters
        # the same evals at the same iters (the branch also has its parents' extra evals at their ends)
        on_grid = {e['iter']: e for e in evals_of(separate)}
        branch_evals = {e['iter']: e for e in evals_of(branch)}
        assert sorted(on_grid) == [0, 10, 20, 30, 40] + ([50, 60] if iters == 60 else [])
        assert set(branch_evals) - set(on_grid) == ({32} if iters == 40 else {32, 48})
        for it, e in on_grid.items():
            for key in ('train_loss', 'val_loss', 'flops', 'tokens', 'lr'):
                assert branch_evals[it][key] == e[key], (label, it, key)
        a, b = (torch.load(d / 'ckpt.pt', weights_only=True) for d in (separate, branch))
        for key in ('model', 'optimizer', 'rng', 'iter_num', 'flops', 'tokens'):
            assert_same_state(a[key], b[key], key)
    # the stable segments decay at the largest budget: still at the peak lr where the branches start
    stable = {e['iter']: e['lr'] for e in evals_of(tmp_path / 'bench' / 't-stable48')}
    assert stable[32] == stable[48] == 2e-3


def tiny_bench(tmp_path, sizes_rows, extra=()):
    data, out, report = tmp_path / 'data', tmp_path / 'bench', tmp_path / 'report'
    write_char_data(data, n_chars=50_000)
    schedule = write_schedule(tmp_path / 'grow.json', [
        ('stack_layers', 2, 0.0, 20, True),
        ('widen_mlp', {'factor': 2.0, 'noise': 0.5}, 0.0, 20, True)])
    sizes = tmp_path / 'sizes.yaml'
    sizes.write_text(sizes_rows)
    sets = [arg for kv in TINY_SETTING for arg in ('--set', kv.format(data=data))]
    return ['bench_growth.py', '--config=config/train_shakespeare_char_cpu_growth.py', f'--schedule={schedule}',
            f'--sizes={sizes}', '--seeds=1', '--ladder=0.5,1.5', '--ref_iters=40', f'--out_dir={out}',
            f'--report={report}', '--lr_factors=1', '--final_eval_iters=3', '--add_rungs=0', *sets, *extra], out, report


SIZES = "- {name: small, n_layer: 1, n_hidden: 32, learning_rate: 0.003}\n- {n_layer: 2, learning_rate: 0.001}\n"


@pytest.mark.slow
def test_bench_growth_tiny(tmp_path):
    command, out, report = tiny_bench(tmp_path, SIZES, ['--jobs=2'])
    # the sizes alone first; the full benchmark then keeps them and runs only what the growth budget adds
    ladder_table = run(command + ['--ladder_only']).strip().splitlines()
    assert ladder_table[-4] == "| seed | size | 0.5 x F_ref | 1.5 x F_ref |"
    ladder_dirs = set(os.listdir(out))
    stdout = run(command + ['--reuse'])
    ran = {re.search(r'--out_dir=\S*/(\S+)', line).group(1) for line in stdout.splitlines() if 'train.py' in line}
    added = set(os.listdir(out)) - ladder_dirs
    assert ran == added and {'growth-grow-seed1', 'static-small-wsd-seed1-matched-grow',
                             'static-2x32-mlp64-wsd-seed1-matched-grow'} <= added
    assert all('-stable' in name for name in added - {'growth-grow-seed1', 'static-small-wsd-seed1-matched-grow',
                                                         'static-2x32-mlp64-wsd-seed1-matched-grow'})

    growth = evals_of(out / 'growth-grow-seed1')
    assert [e['iter'] for e in growth] == [0, 20, 40, 60]
    assert [(e['n_layer'], e['n_hidden']) for e in growth] == [(1, 32), (1, 32), (2, 32), (2, 64)]
    sizes = {'small': dict(n_layer=1, n_hidden=32, lr=0.003), '2x32-mlp64': dict(n_layer=2, n_hidden=64, lr=0.001)}
    final, per_iter = {}, {}
    for name, size in sizes.items():
        for label in ('x0.5', 'x1.5', 'matched-grow'):
            evals = evals_of(out / f'static-{name}-wsd-seed1-{label}')
            # each size with its own lr, its own complete wsd schedule, resumed from its stable phase
            assert {(e['n_layer'], e['n_hidden']) for e in evals} == {(size['n_layer'], size['n_hidden'])}
            assert evals[-1]['iter'] == evals[-1]['lr_decay_iters'] and evals[1]['lr'] == size['lr']
            final[name, label] = (evals[-1]['flops'], final_eval_of(out / f'static-{name}-wsd-seed1-{label}')['val_loss'])
            per_iter[name] = evals[-1]['flops'] / evals[-1]['iter']
    f_ref = 40 * per_iter['2x32-mlp64']
    assert final['2x32-mlp64', 'x0.5'][0] == pytest.approx(f_ref / 2)
    assert abs(final['small', 'x1.5'][0] - 1.5 * f_ref) <= per_iter['small'] / 2
    for name in sizes:  # every size at the growth run's budget, to the nearest iter
        assert abs(final[name, 'matched-grow'][0] - growth[-1]['flops']) <= per_iter[name] / 2

    # the table's row, recomputed from the event logs: the final evals' vals, the hull through the best
    # size at each budget, no line extended past the measured range
    growth_val, budget = final_eval_of(out / 'growth-grow-seed1')['val_loss'], growth[-1]['flops']
    labels = ('x0.5', 'x1.5', 'matched-grow')
    best_size = {label: min(sizes, key=lambda n: final[n, label][1]) for label in labels}
    hull = lower_hull([final[best_size[label], label] for label in labels])
    env_flops, env_bound = compute_equivalent(hull, growth_val)
    same = sorted(v for (name, _), v in final.items() if name == '2x32-mlp64')
    same_flops, same_bound = compute_equivalent(same, growth_val)
    envelope_size = best_size['matched-grow']
    envelope_val = final[envelope_size, 'matched-grow'][1]
    table = report.with_suffix('.md').read_text()
    row = next(line for line in table.splitlines() if re.match(r'\| 1 \| \d+\.\d{3} \|', line))
    cells = [c.strip() for c in row.strip('|').split('|')]
    assert cells[1] == f"{budget / f_ref:.3f}" and cells[2] == f"{growth_val:.4f}"
    assert cells[3] == f"{final['2x32-mlp64', 'matched-grow'][1]:.4f}"
    assert cells[4] == f"{envelope_val:.4f} ({envelope_size}, {sizes[envelope_size]['lr']:g})"
    assert cells[5] == f"{env_bound}{env_flops / budget:.2f}"
    assert cells[6] == f"{same_bound}{same_flops / budget:.2f}"
    size_row = next(line for line in table.splitlines() if line.startswith('| 1 | small |'))
    assert [c.strip().strip('*') for c in size_row.strip('|').split('|')][2:] == [
        f"{final['small', label][1]:.4f}" for label in labels]
    env_wins = int(env_flops / budget > 1 and env_bound != '<')
    same_wins = int(same_flops / budget > 1 and same_bound != '<')
    assert stdout.strip().splitlines()[-1] == (
        f"speedup_envelope_median={env_bound}{env_flops / budget:.3f} "
        f"speedup_same_size_median={same_bound}{same_flops / budget:.3f} "
        f"budget_ratio_median={budget / f_ref:.3f} growth_val_median={growth_val:.4f} "
        f"envelope_wins={env_wins}/1 same_size_wins={same_wins}/1 "
        f"speedup_envelope_pooled={env_bound}{env_flops / budget:.3f} "
        f"ci90={env_flops / budget:.3f}..{env_flops / budget:.3f} seeds=1")
    # the raw results: one line per run, the final eval's figures; the report rebuilt from them alone
    results = [json.loads(line) for line in open(f"{report}.results.jsonl")]
    assert len(results) == 7 and {(r['eval_batches'], r['extra_val']) for r in results} == {(3, None)}
    assert {(r['size'], r['budget']): r['val'] for r in results if r['arm'] == 'static' and not r['at_growth_budget']} \
        == {(name, float(label[1:])): final[name, label][1] for name in sizes for label in ('x0.5', 'x1.5')}
    rebuilt = run(['bench_growth.py', f'--report_from={report}.results.jsonl', f'--report={tmp_path / "rebuilt"}'])
    assert rebuilt.strip().splitlines()[-1] == stdout.strip().splitlines()[-1]
    assert (tmp_path / 'rebuilt.md').read_text() == table
    assert report.with_suffix('.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'

    # --reuse: nothing runs again, the same report comes out
    again = run(command + ['--reuse'])
    assert 'train.py' not in again and again.strip().splitlines()[-1] == stdout.strip().splitlines()[-1]
    # another lr for one size: only that size's runs run again
    rerun = run(tiny_bench(tmp_path, SIZES.replace('0.003', '0.004'), ['--reuse'])[0])
    assert {re.search(r'--out_dir=\S*/static-(\w+)-', line).group(1)
            for line in rerun.splitlines() if 'train.py' in line} == {'small'}
    # a larger budget on the ladder: each size runs one more stable segment and its branch, nothing else
    # (the segments before decay at the old largest budget, never reached: the peak lr throughout)
    longer = run(tiny_bench(tmp_path, SIZES.replace('0.003', '0.004'), ['--reuse', '--ladder_only',
                                                                         '--ladder=0.5,1.5,2'])[0])
    ran = [re.search(r'--out_dir=\S*/(\S+)', line).group(1) for line in longer.splitlines() if 'train.py' in line]
    assert sorted(re.sub(r'stable\d+$', 'stable', name) for name in ran) == sorted(
        f'static-{name}-wsd-seed1-{run}' for name in ('small', '2x32-mlp64') for run in ('stable', 'x2'))
    for name, peak in (('small', 0.004), ('2x32-mlp64', 0.001)):
        kept = [d for d in os.listdir(out) if d.startswith(f'static-{name}-wsd-seed1-stable') and d not in ran]
        assert kept and all(e['lr'] == peak for d in kept for e in evals_of(out / d) if e['iter'] > 5)

    picture = tmp_path / 'two_runs.png'
    stdout = run(['plot_run.py', str(out / 'growth-grow-seed1'), str(out / 'static-small-wsd-seed1-x1.5'),
                  f'--out={picture}'])
    assert stdout.strip() == f"wrote {picture}"
    assert os.path.getsize(picture) > 10_000


def test_the_ladder_runs_beside_the_growth_run(tmp_path, monkeypatch):
    """No lane waits for a growth run: the static runs at the ladder's budgets start with it, only the
    growth budget's branches after it (the growth run used to run first, alone, one core idle)."""
    for key in train.config_keys:  # bench_growth sets train up in-process; its globals come back after
        monkeypatch.setattr(train, key, getattr(train, key))
    saved = train.orchestrator_state()
    batches = []

    def first_batch_only(runs, args):
        batches.append(runs)
        raise SystemExit('stop after the first batch')
    monkeypatch.setattr(bench_growth, 'run_all', first_batch_only)
    command, _, _ = tiny_bench(tmp_path, SIZES, ['--jobs=2'])
    monkeypatch.setattr(sys, 'argv', command)
    monkeypatch.chdir(REPO)
    try:
        with pytest.raises(SystemExit, match='stop after the first batch'):
            bench_growth.main()
    finally:
        train.load_orchestrator_state(saved)
    names = sorted(re.sub(r'stable\d+$', 'stable', name) for name in batches[0])
    assert names == sorted(['growth-grow-seed1'] + [f'static-{size}-wsd-seed1-{run}' for size in ('small', '2x32-mlp64')
                                                      for run in ('stable', 'stable', 'x0.5', 'x1.5')])
    assert list(batches[0])[0] == 'growth-grow-seed1'  # the growth run starts first


@pytest.mark.slow
def test_lr_sweep_runs_each_size_at_each_factor(tmp_path):
    command, out, _ = tiny_bench(tmp_path, SIZES, ['--lr_sweep=0.5,2', '--sweep_budget=1', '--jobs=2'])
    lines = run(command).strip().splitlines()
    vals = {}
    for name, lr in (('small', 0.0015), ('small', 0.006), ('2x32-mlp64', 0.0005), ('2x32-mlp64', 0.002)):
        evals = evals_of(out / f'sweep-{name}-lr{lr:g}-x1-seed1')
        assert evals[1]['lr'] == lr and evals[-1]['lr'] == pytest.approx(lr / 10)
        vals[name, lr] = final_eval_of(out / f'sweep-{name}-lr{lr:g}-x1-seed1')['val_loss']  # the figure it prints
    assert lines[-3] == "final val at 1 x F_ref (wsd, seed 1), by peak lr:"
    best = min((0.0015, 0.006), key=lambda lr: vals['small', lr])
    assert lines[-2] == (f"small: lr 0.0015: {vals['small', 0.0015]:.4f}, lr 0.006: {vals['small', 0.006]:.4f}; "
                         f"best lr {best:g}")


@pytest.mark.parametrize('rows, message', [
    ("- {n_layer: 1}\n", "entry 0: field learning_rate: missing"),
    ("- {n_layer: 2, learning_rate: 4e-3}\n", "entry 0: field learning_rate: expected a number >= 0, got '4e-3'"),
    ("- {n_layer: 2, learning_rate: 0.001, depth: 3}\n", "entry 0: expected a mapping of"),
    ("- {n_layer: 3, learning_rate: 0.001}\n", "no size has the schedule's final architecture"),
    ("- {n_layer: 2, learning_rate: 0.001}\n- {n_layer: 2, learning_rate: 0.002}\n", "two sizes share a name"),
    ("- {n_layer: [2\n", "not YAML"),
    ("- {n_layer: 2, learning_rate: 0.001, ladder: [3, 4]}\n", "entry 0: field ladder: none of 3,4 is a rung of --ladder (0.5,1.5)"),
    ("- {n_layer: 2, learning_rate: 0.001, ladder: 1.5}\n", "entry 0: field ladder: expected a list of budgets"),
])
@pytest.mark.slow
def test_a_bad_sizes_table_is_one_line(tmp_path, rows, message):
    command, _, _ = tiny_bench(tmp_path, rows)
    result = run_script(command, timeout=120)
    assert result.returncode == 2 and 'train.py' not in result.stdout
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    assert result.stderr.startswith(f"error: --sizes: {tmp_path / 'sizes.yaml'}: ")


@pytest.mark.parametrize('option, message', [
    ('--config=config/nothing.py', "error: config file not found: config/nothing.py"),
    ('--sizes={tmp}/nothing.yaml', "error: --sizes: {tmp}/nothing.yaml: No such file or directory"),
    ('--ladder=0.5,one', "error: --ladder: expected comma-separated numbers, got '0.5,one'"),
    ('--ladder=0.5,-1', "error: --ladder: expected numbers > 0, got '0.5,-1'"),
    ('--seeds=1,b', "error: --seeds: expected comma-separated integers, got '1,b'"),
    ('--report_from={tmp}/nothing.jsonl', "error: --report_from: {tmp}/nothing.jsonl not found"),
    ('--ref_size=big', "error: --ref_size: no size named 'big' (the sizes: small, 2x32-mlp64)"),
])
@pytest.mark.slow
def test_a_bad_option_is_one_line(tmp_path, option, message):
    """issue 21: a bad --config, --sizes or --ladder gave a traceback."""
    command, out, _ = tiny_bench(tmp_path, SIZES, [option.format(tmp=tmp_path)])
    result = run_script(command, timeout=120)
    assert (result.returncode, result.stderr) == (2, message.format(tmp=tmp_path) + '\n')
    assert not out.exists()


@pytest.mark.slow
def test_plot_run_refuses_a_folder_without_events(tmp_path):
    result = run_script(['plot_run.py', str(tmp_path)], timeout=60)
    assert result.returncode == 2
    assert f"{tmp_path}: no events.jsonl (is it a train.py out_dir?)" in result.stderr


def test_default_sizes_are_the_schedules_first_and_final_architectures():
    setting = dict(learning_rate=1e-3, min_lr=1e-4)
    start = argparse.Namespace(n_layer=1, n_head=4, head_size=32, n_embd=128, n_hidden=512)
    final = dict(n_layer=4, n_head=4, head_size=32, n_embd=128, n_hidden=512)
    sizes = bench_growth.read_sizes('', start, final, setting, [1.0])
    assert [(s['name'], s['arch']['n_layer'], s['lr'], s['min_lr']) for s in sizes] == [
        ('1x128', 1, 1e-3, pytest.approx(1e-4)), ('4x128', 4, 1e-3, pytest.approx(1e-4))]


def test_the_shipped_gutenberg_sizes_surround_the_growth_recipes_final_model():
    """config/gutenberg_cpu_sizes.yaml: a size smaller and one larger than the recipe's final 4 x 64,
    that one itself, each with its own lr."""
    final = dict(n_layer=4, n_head=4, head_size=16, n_embd=64, n_hidden=256)
    start = argparse.Namespace(**dict(final, n_layer=1))
    sizes = bench_growth.read_sizes(os.path.join(REPO, 'config', 'gutenberg_cpu_sizes.yaml'), start, final,
                                    dict(learning_rate=2e-3, min_lr=2e-4), [0.25, 0.5, 1.0, 2.0])
    layers = [s['arch']['n_layer'] for s in sizes]
    assert min(layers) < 4 < max(layers) and final in [s['arch'] for s in sizes]
    assert all(s['min_lr'] == pytest.approx(s['lr'] / 10) for s in sizes)
    # each size's rungs (those where it is on or near the envelope), the final size's spanning 0.7 and 1.0
    assert [s['ladder'] for s in sizes] == [[0.25, 0.5], [0.25, 0.5, 1.0], [0.5, 1.0, 2.0], [1.0, 2.0]]


def synthetic_results(path, growth_vals, seeds=(1, 2, 3)):
    """A results.jsonl by hand, F_ref 1e12: size B on the line val = 1.9 - 0.1 log2(budget) at its table lr
    (0.002), 0.05 above it at twice that; size A (the growth run's final size) above B; at the growth
    budget 0.7 both above B's line (B 2.0, A 2.1). Each seed the same statics, its own growth val."""
    def static(size, seed, budget, lr, val, extra=None, matched=False):
        return dict(arm='static', size=size, seed=seed, budget=budget, lr=lr, table_lr=0.002, schedule='wsd',
                    at_growth_budget=matched, flops=budget * 1e12, val=val, extra_val=extra, eval_batches=500,
                    f_ref=1e12)
    records = []
    for seed, val in zip(seeds, growth_vals):
        records.append(dict(arm='growth', recipe='grow', config='c.py', overrides='', size='A', seed=seed,
                            budget=0.7, lr=0.002, flops=0.7e12, val=val, extra_val=2.4 + 0.1 * (seed % 3),
                            eval_batches=500, f_ref=1e12))
        for budget in (0.5, 1.0, 2.0):
            records.append(static('B', seed, budget, 0.002, 1.9 - 0.1 * math.log2(budget)))
            records.append(static('B', seed, budget, 0.004, 1.95 - 0.1 * math.log2(budget)))
            records.append(static('A', seed, budget, 0.002, {0.5: 2.2, 1.0: 2.0, 2.0: 1.85}[budget]))
        records.append(static('B', seed, 0.7, 0.002, 2.0, extra=2.55, matched=True))
        records.append(static('A', seed, 0.7, 0.002, 2.1, extra=2.45, matched=True))
    path.write_text(''.join(json.dumps(r) + '\n' for r in records))
    return path


def growth_val_at(speedup):
    """The growth val (budget 0.7) whose envelope speedup is `speedup` on B's line."""
    return 1.9 - 0.1 * math.log2(0.7 * speedup)


@pytest.mark.slow
def test_the_report_from_raw_results(tmp_path):
    """Per-seed speedups 1.2, 1.5, 0.9 on the hull; the seed at 0.9 beats the best static run at its budget
    (B, 2.0: the hull passes below it), which the old envelope_wins counted as a win. The bootstrap's
    median of three seeds is one of them: 0.9 with probability 7/27 (two or three draws of it), 1.5 too,
    so the 5th and 95th percentiles are 0.9 and 1.5."""
    results = synthetic_results(tmp_path / 'bench.results.jsonl', [growth_val_at(s) for s in (1.2, 1.5, 0.9)])
    stdout = run(['bench_growth.py', f'--report_from={results}'])
    same = [2 ** ((2.0 - growth_val_at(s)) / 0.15) / 0.7 for s in (1.2, 1.5, 0.9)]  # A between 1.0 and 2.0
    assert stdout.strip().splitlines()[-1] == (
        f"speedup_envelope_median=1.200 speedup_same_size_median={sorted(same)[1]:.3f} budget_ratio_median=0.700 "
        f"growth_val_median={growth_val_at(1.2):.4f} envelope_wins=2/3 same_size_wins=3/3 "
        f"speedup_envelope_pooled=1.200 ci90=0.900..1.500 seeds=1,2,3 other_text_wins=1/3")
    table = (tmp_path / 'bench.md').read_text()
    rows = {line.split('|')[1].strip(): [c.strip() for c in line.strip('|').split('|')]
            for line in table.splitlines() if re.match(r'\| (\d|pooled) \| 0\.700 \|', line)}
    assert [rows[seed][5] for seed in ('1', '2', '3', 'pooled')] == ['1.20', '1.50', '0.90', '1.20']
    assert rows['3'][2:5] == [f"{growth_val_at(0.9):.4f}", '2.1000', '2.0000 (B, 0.002)']
    assert rows['1'][7:] == ['2.5000', '2.4500 (A)'] and rows['pooled'][7:] == ['2.5000', '2.4500 (A)']
    assert "| 0.500 | B (0.002) | **2.0000** |\n| 0.700 (growth) | B (0.002) | 2.0000 |" in table
    assert "| 1 | B | **2.0000 (0.002)** | **1.9000 (0.002)** | **1.8000 (0.002)** | **2.0000 (0.002)** |" in table
    assert (tmp_path / 'bench.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


@pytest.mark.slow
def test_a_growth_run_below_every_static_run_gets_a_bound(tmp_path):
    """No line is extended past the lowest static run: the speedup is '>' its FLOPs over the growth budget."""
    results = synthetic_results(tmp_path / 'b.results.jsonl', [1.7, growth_val_at(1.5), 1.75])
    last = run(['bench_growth.py', f'--report_from={results}', f'--report={tmp_path / "r"}']).strip().splitlines()[-1]
    assert last.startswith(f"speedup_envelope_median=>{2 / 0.7:.3f} ")
    assert " envelope_wins=3/3 " in last and f" speedup_envelope_pooled=>{2 / 0.7:.3f} " in last
    assert "2 of 3 seeds' speedups vs the envelope are bounds" in (tmp_path / 'r.md').read_text()


def test_the_envelope_is_the_best_size_at_each_budget():
    """issue 21: sizes whose FLOPs at one budget differ by a rounded iter put a worse size's point just left
    of the best one's, and the hull through every point rose to it: a vertical segment in the picture."""
    def run_at(size, flops, val):
        return dict(arm='static', size=size, seed=1, budget=0.25 if flops < 0.3e12 else 1.0, lr=0.004,
                    flops=flops, val=val)
    statics = [run_at('8x64', 0.2499e12, 2.07), run_at('2x64', 0.25e12, 1.75), run_at('2x64', 1e12, 1.62),
               run_at('8x64', 1.0001e12, 1.64)]
    assert lower_hull([(r['flops'], r['val']) for r in statics])[0] == (pytest.approx(0.2499e12), 2.07)
    at_budget, hull = bench_growth.envelope(bench_growth.best_static(statics))
    assert {k: r['size'] for k, r in at_budget.items()} == {0.25: '2x64', 1.0: '2x64'}
    assert hull == [(pytest.approx(0.25e12), 1.75), (pytest.approx(1e12), 1.62)]


def write_byte_data(folder, book=os.path.join(REPO, '..', 'shared', 'data', 'gutenberg', 'pg1019.txt')):
    """A Gutenberg book as UTF-8 bytes (vocab 256, the gutenberg testbed's tokens): train, then val."""
    text = np.frombuffer(open(book, 'rb').read()[:240_000], dtype=np.uint8).astype(np.uint16)
    os.makedirs(folder)
    text[:200_000].tofile(folder / 'train.bin')
    text[200_000:].tofile(folder / 'val.bin')
    with open(folder / 'meta.pkl', 'wb') as f:
        pickle.dump({'vocab_size': 256, 'tokenizer': 'bytes'}, f)


@pytest.mark.slow
def test_a_rung_is_added_while_growth_ends_below_every_static_run(tmp_path):
    """Static sizes at a peak lr of 1e-9 (and twice it) learn nothing, so the growth run ends below all of
    them: the benchmark adds the 1 x F_ref rung to the 0.5 ladder, once (--add_rungs=1). Every final
    model also scores tiny shakespeare as bytes; without --report the report goes into out_dir. F_ref is
    --ref_iters of the --ref_size row."""
    sizes = "- {name: small, n_layer: 1, n_hidden: 32, learning_rate: 0.000000001}\n" \
            "- {n_layer: 2, learning_rate: 0.000000001}\n"
    command, out, _ = tiny_bench(tmp_path, sizes, ['--ladder=0.5', '--add_rungs=1', '--lr_factors=1,2', '--jobs=2',
                                                   f'--extra_text={SHAKESPEARE}', '--ref_size=small'])
    write_byte_data(tmp_path / 'bytes')
    command = [arg.replace(str(tmp_path / 'data'), str(tmp_path / 'bytes')) for arg in command
               if not arg.startswith(('--report=', '--lr_factors=1', '--add_rungs=0'))] + ['--lr_factors=1,2']
    stdout = run(command)
    growth = final_eval_of(out / 'growth-grow-seed1')
    assert f"bench_growth: growth seed 1 ends below every static run ({growth['val_loss']:.4f}): adding the 1 x F_ref " \
           "rung" in stdout.splitlines()
    results = [json.loads(line) for line in open(out / 'report.results.jsonl')]
    assert sorted((r['size'], r['lr'], r['budget']) for r in results if r['arm'] == 'static'
                  and not r['at_growth_budget']) == sorted(
        (size, lr, budget) for size in ('small', '2x32-mlp64') for lr in (1e-9, 2e-9) for budget in (0.5, 1.0))
    assert (out / 'extra-input' / 'val.bin').read_bytes()[::2] == open(SHAKESPEARE, 'rb').read()
    assert results[0]['arm'] == 'growth' and results[0]['extra_val'] == growth['extra_val_loss']
    # --ref_size=small: F_ref is 40 iters (--ref_iters) of the small size, not of the final one
    small = evals_of(out / 'static-small-wsd-seed1-x0.5')[-1]
    assert small['iter'] == 20 and results[0]['f_ref'] == pytest.approx(40 * small['flops'] / small['iter'])
    assert all(r['extra_val'] is not None for r in results)
    assert (out / 'report.md').is_file() and (out / 'report.png').is_file()
    assert stdout.strip().splitlines()[-1].endswith(" seeds=1 other_text_wins=1/1")
