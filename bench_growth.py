"""
Growth vs static, side by side, on the same data and the same eval batches.

For each seed it trains three kinds of run through train.py:
  static-large  the growth schedule's final architecture, from scratch, no schedule
  static-small  the growth run's starting architecture, from scratch, no schedule
  growth        the config with a schedule (one run per schedule given)
and reports, per run, the final val loss and the training FLOPs and wall time to reach
static-large's final val loss (the first eval at or below it). A growth recipe wins only if it
reaches that loss with fewer FLOPs than static-large AND ends below static-small.

$ python bench_growth.py                                   # the shipped CPU recipe, 3 seeds
$ python bench_growth.py --schedules=a.yaml,b.yaml --seeds=1 --set max_iters=500

Writes OUT_DIR/results.md and OUT_DIR/growth_vs_static.png; its last line is
flops_ratio_median=<x> wall_ratio_median=<y> for the best growth recipe.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

import train
from configurator import configure
from plot_run import plot_runs, read_events

ARCH_KEYS = ('n_layer', 'n_head', 'head_size', 'n_embd', 'n_hidden')


def architectures(config_file, schedule_file, overrides):
    """(start, final) architecture of a growth run, from the schedule's validated plan."""
    defaults = {k: getattr(train, k) for k in train.config_keys}
    vars(train).update(configure([config_file, *overrides], defaults, verbose=False))
    start = train.model_config_from_globals(train.check_data()['vocab_size'])
    entries = train.load_schedule_file(schedule_file)
    train.reset_orchestrator(entries)
    plan = train.validate_schedule(schedule_file, entries, 0, start)
    final = plan[-1] if plan else {k: getattr(start, k) for k in ARCH_KEYS}
    return {k: getattr(start, k) for k in ARCH_KEYS}, {k: final[k] for k in ARCH_KEYS}


def run_train(out_dir, config_file, args, reuse):
    """One train.py run, its log in out_dir/train.log; skipped with --reuse if it already finished."""
    events = os.path.join(out_dir, 'events.jsonl')
    log = os.path.join(out_dir, 'train.log')
    if reuse and os.path.isfile(log) and open(log).read().endswith('RUN FINISHED\n'):
        return read_events(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    if os.path.isfile(events):
        os.remove(events)
    command = [sys.executable, 'train.py', config_file, f'--out_dir={out_dir}', *args]
    print(' '.join(command), flush=True)
    with open(log, 'w') as f:
        result = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        sys.exit(f"bench_growth: run failed (exit {result.returncode}), see {log}")
    with open(log, 'a') as f:
        f.write('RUN FINISHED\n')
    return read_events(out_dir)


def reach(evals, target):
    """(iter, flops, seconds) of the first eval at or below target, or None."""
    for e in evals:
        if e['val_loss'] <= target:
            return e['iter'], e['flops'], e['elapsed_s']
    return None


def spread(values):
    return f"{min(values):.3f}..{max(values):.3f}" if values else '-'


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--config', default='config/train_shakespeare_char_cpu_growth.py')
    parser.add_argument('--schedules', default='configs/shakespeare_char_cpu_growth.yaml',
                        help="comma-separated growth schedules; the best one is summarised last")
    parser.add_argument('--seeds', type=int, default=3)
    parser.add_argument('--out_dir', default='bench-growth')
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                        help="a train.py override for every run, e.g. --set max_iters=500 (repeatable)")
    parser.add_argument('--reuse', action='store_true', help="keep runs that already finished in out_dir")
    args = parser.parse_args()
    overrides = [f'--{kv}' for kv in args.set]
    schedules = args.schedules.split(',')

    start, final = architectures(args.config, schedules[0], overrides)
    for schedule in schedules[1:]:
        if architectures(args.config, schedule, overrides) != (start, final):
            sys.exit(f"bench_growth: {schedule} does not start and end where {schedules[0]} does")
    no_schedule = '--scaling_schedule_file='
    kinds = [('static-large', [no_schedule, *[f'--{k}={v}' for k, v in final.items()]]),
             ('static-small', [no_schedule])]
    kinds += [(f"growth:{os.path.splitext(os.path.basename(s))[0]}", [f'--scaling_schedule_file={s}'])
              for s in schedules]

    rows = []  # one per run
    for seed in range(1, args.seeds + 1):
        for kind, kind_args in kinds:
            out_dir = os.path.join(args.out_dir, f"{kind.replace(':', '-')}-seed{seed}")
            evals, ops = run_train(out_dir, args.config, [f'--seed={seed}', *overrides, *kind_args], args.reuse)
            rows.append(dict(kind=kind, seed=seed, evals=evals, ops=ops, final=evals[-1]['val_loss']))

    # per seed: static-large's final val loss is the target
    for row in rows:
        large = next(r for r in rows if r['kind'] == 'static-large' and r['seed'] == row['seed'])
        small = next(r for r in rows if r['kind'] == 'static-small' and r['seed'] == row['seed'])
        row['target'] = large['final']
        row['reached'] = reach(row['evals'], large['final'])
        large_reached = reach(large['evals'], large['final'])
        row['flops_ratio'] = row['reached'][1] / large_reached[1] if row['reached'] else None
        row['wall_ratio'] = row['reached'][2] / large_reached[2] if row['reached'] else None
        row['below_small'] = row['final'] < small['final']
        row['run_flops_ratio'] = row['evals'][-1]['flops'] / large['evals'][-1]['flops']
        row['run_wall_ratio'] = row['evals'][-1]['elapsed_s'] / large['evals'][-1]['elapsed_s']

    lines = [f"# growth vs static: {args.config}, {args.seeds} seed(s), overrides {' '.join(overrides) or 'none'}",
             '', f"start architecture {start}, final architecture {final}", '',
             "| run | seed | final val | target (static-large final) | iter reached | FLOPs to target "
             "| wall s to target | FLOPs ratio | wall ratio | ends below static-small | whole run: FLOPs, wall vs static-large |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        reached = (f"{r['reached'][0]} | {r['reached'][1]:.3e} | {r['reached'][2]:.1f} | {r['flops_ratio']:.3f} | "
                   f"{r['wall_ratio']:.3f}") if r['reached'] else 'not reached | - | - | - | -'
        lines.append(f"| {r['kind']} | {r['seed']} | {r['final']:.4f} | {r['target']:.4f} | {reached} | "
                     f"{r['below_small']} | {r['run_flops_ratio']:.3f}, {r['run_wall_ratio']:.3f} |")
    lines += ['', "| run | median final val | final spread | median FLOPs ratio | FLOPs ratio spread "
              "| median wall ratio | wall ratio spread | reached | wins |", "|---|---|---|---|---|---|---|---|---|"]
    summaries = {}
    for kind, _ in kinds:
        mine = [r for r in rows if r['kind'] == kind]
        flops = [r['flops_ratio'] for r in mine if r['flops_ratio'] is not None]
        walls = [r['wall_ratio'] for r in mine if r['wall_ratio'] is not None]
        finals = [r['final'] for r in mine]
        all_reached = len(flops) == len(mine)
        med_flops = statistics.median(flops) if all_reached else None
        med_wall = statistics.median(walls) if all_reached else None
        small_final = statistics.median(r['final'] for r in rows if r['kind'] == 'static-small')
        wins = kind.startswith('growth') and all_reached and med_flops < 1 and statistics.median(finals) < small_final
        summaries[kind] = (med_flops, med_wall)
        lines.append(f"| {kind} | {statistics.median(finals):.4f} | {spread(finals)} | "
                     f"{'-' if med_flops is None else f'{med_flops:.3f}'} | {spread(flops)} | "
                     f"{'-' if med_wall is None else f'{med_wall:.3f}'} | {spread(walls)} | "
                     f"{len(flops)}/{len(mine)} | {wins} |")
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, 'results.md'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    print('\n'.join(lines))

    first_seed = [r for r in rows if r['seed'] == 1]
    png = os.path.join(args.out_dir, 'growth_vs_static.png')
    plot_runs([(r['kind'], r['evals'], r['ops']) for r in first_seed], png,
              title=f"val loss, seed 1: growth vs static ({args.config})")
    print(f"wrote {os.path.join(args.out_dir, 'results.md')} and {png}")

    growth = {k: v for k, v in summaries.items() if k.startswith('growth') and v[0] is not None}
    best = min(growth.items(), key=lambda kv: kv[1][0]) if growth else None
    if best:
        print(f"best growth recipe: {best[0]}")
        print(f"flops_ratio_median={best[1][0]:.3f} wall_ratio_median={best[1][1]:.3f}")
    else:
        print("no growth recipe reached static-large's final val loss in every seed")
        print("flops_ratio_median=nan wall_ratio_median=nan")


if __name__ == '__main__':
    main()
