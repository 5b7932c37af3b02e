"""
Growth vs static at matched compute: every run trains on its own complete lr schedule for its own
training-FLOPs budget, on the same data and the same fixed eval batches.

For each seed it trains, through train.py:
  growth        the config with its schedule, as shipped; its training FLOPs / F_ref is its budget
  static-large  the schedule's final architecture from scratch, at budgets --ladder x F_ref, where
                F_ref is --ref_iters iters of it; max_iters and the lr schedule (lr_decay_iters and
                an explicit cooldown_iters) scale with the budget, warmup does not. Each budget runs
                with every --static_schedules family and the better final val counts
  matched       static-large at exactly the growth run's budget (both families again)
  static-small  the schedule's first architecture at the growth run's budget, the growth run's family
and reports per seed: growth's final val, static-large's at the same budget and at 1.0, and the
compute-equivalent speedup: the static FLOPs that reach growth's final val (linear interpolation of
final val against log FLOPs along the ladder, matched run included; "extrapolated" beyond its ends)
divided by the growth run's FLOPs.

$ python bench_growth.py                                   # the shipped CPU recipe, seeds 1,2,3
$ python bench_growth.py --seeds=1 --jobs=2 --reuse        # two runs at a time, one thread each

Writes REPORT.md and REPORT.png (default docs/growth_vs_static); the run folders go to --out_dir.
Its last line is speedup_median=.. budget_ratio_median=.. growth_val_median=.. static_ref_val_median=..
matched_wins=k/n.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import torch

import train
from configurator import configure
from model import GPT, GPTConfig
from plot_run import read_events

ARCH_KEYS = ('n_layer', 'n_head', 'head_size', 'n_embd', 'n_hidden')


def load_setting(config_file, schedule_file, overrides):
    """train's globals for the growth config, and the (start, final) architecture of its schedule."""
    defaults = {k: getattr(train, k) for k in train.config_keys}
    setting = configure([config_file, *overrides], defaults, verbose=False)
    vars(train).update(setting)
    start = train.model_config_from_globals(train.check_data()['vocab_size'])
    entries = train.load_schedule_file(schedule_file)
    train.reset_orchestrator(entries)
    plan = train.validate_schedule(schedule_file, entries, 0, start)
    final = plan[-1] if plan else {k: getattr(start, k) for k in ARCH_KEYS}
    return setting, start, {k: final[k] for k in ARCH_KEYS}


def flops_per_iter(start, arch, setting):
    """Training FLOPs of one iteration of a static model with this architecture."""
    with_arch = {**{k: getattr(start, k) for k in ('block_size', 'vocab_size', 'bias')}, **arch}
    with torch.device('meta'):
        model = GPT(GPTConfig(**with_arch))
    tokens = setting['batch_size'] * setting['gradient_accumulation_steps'] * setting['block_size']
    return model.flops_per_token() * tokens


def static_args(arch, iters, family, setting):
    """A static run of `iters` iters with its own complete lr schedule of this family; a wsd
    cooldown takes the same fraction of the run as in the growth config."""
    args = ['--scaling_schedule_file=', *[f'--{k}={v}' for k, v in arch.items()], f'--max_iters={iters}',
            f'--lr_decay_iters={iters}', f'--lr_schedule={family}']
    if family == 'wsd':
        fraction = (setting['cooldown_iters'] or setting['lr_decay_iters'] / 5) / setting['lr_decay_iters']
        args.append(f"--cooldown_iters={max(1, round(fraction * iters))}")
    return args


# keys that cannot change a run without a schedule, and what only names or logs a run
GROWTH_ONLY_KEYS = ('growth_optimizer_state', 'growth_lr_rewarm_iters', 'trigger_slope_evals', 'check_rank_consistency')
NAMING_KEYS = ('out_dir', 'log_interval', 'wandb_log', 'wandb_project', 'wandb_run_name', 'always_save_checkpoint')


def run_identity(config_file, args):
    """What makes a run what it is: its resolved settings (and its schedule's text), so that --reuse
    keeps a finished run only if it would train the same way today."""
    defaults = {k: getattr(train, k) for k in train.config_keys}
    resolved = configure([config_file, *args], defaults, verbose=False)
    dropped = NAMING_KEYS + (GROWTH_ONLY_KEYS if not resolved['scaling_schedule_file'] else ())
    dropped += ('cooldown_iters',) if resolved['lr_schedule'] == 'cosine' else ()
    identity = {k: v for k, v in resolved.items() if k not in dropped}
    if resolved['scaling_schedule_file']:
        with open(resolved['scaling_schedule_file']) as f:
            identity['schedule_text'] = f.read()
    return identity


def run_train(out_dir, config_file, args, reuse, threads):
    """One train.py run, its log in out_dir/train.log. With --reuse a finished run is read back
    instead of run again, if it would train the same way (run_identity)."""
    log = os.path.join(out_dir, 'train.log')
    command = [sys.executable, 'train.py', config_file, f'--out_dir={out_dir}', *args]
    stamp = os.path.join(out_dir, 'identity.json')
    identity = run_identity(config_file, args)
    if reuse and os.path.isfile(stamp) and json.load(open(stamp)) == identity \
            and open(log).read().endswith('RUN FINISHED\n'):
        return read_events(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    for name in ('events.jsonl', 'ckpt.pt', 'identity.json'):
        if os.path.isfile(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))
    print(' '.join(command), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else None
    with open(log, 'w') as f:
        result = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        sys.exit(f"bench_growth: run failed (exit {result.returncode}), see {log}")
    with open(log, 'a') as f:
        f.write('RUN FINISHED\n')
    with open(stamp, 'w') as f:
        json.dump(identity, f, indent=1)
    return read_events(out_dir)


def run_all(runs, args):
    """runs: {name: train.py args}. Returns {name: (evals, ops)}, args.jobs at a time."""
    threads = 1 if args.jobs > 1 else 0

    def one(name):
        return name, run_train(os.path.join(args.out_dir, name), args.config, runs[name], args.reuse, threads)
    with ThreadPoolExecutor(args.jobs) as pool:
        return dict(pool.map(one, runs))


def final_val(result):
    evals, _ = result
    return evals[-1]['val_loss']


def final_flops(result):
    evals, _ = result
    return evals[-1]['flops']


def compute_equivalent(points, target):
    """Static FLOPs that reach `target`: linear in log FLOPs between the two ladder points around it,
    (flops, extrapolated?). points: (flops, final val) sorted by flops, val falling with flops."""
    for (f0, v0), (f1, v1) in zip(points, points[1:]):
        if min(v0, v1) <= target <= max(v0, v1) and v0 != v1:
            return math.exp(math.log(f0) + (target - v0) / (v1 - v0) * (math.log(f1) - math.log(f0))), False
    (f0, v0), (f1, v1) = points[-2:] if target < points[-1][1] else points[:2]
    if v0 == v1:
        return math.nan, True
    return math.exp(math.log(f0) + (target - v0) / (v1 - v0) * (math.log(f1) - math.log(f0))), True


def best_of(results, names):
    """The better (lower final val) of a budget's runs: (name, result)."""
    return min(((n, results[n]) for n in names), key=lambda nr: final_val(nr[1]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--config', default='config/train_shakespeare_char_cpu_growth.py')
    parser.add_argument('--schedule', default='configs/shakespeare_char_cpu_growth.yaml')
    parser.add_argument('--seeds', default='1,2,3', help="comma-separated seeds")
    parser.add_argument('--ladder', default='0.4,0.6,0.8,1.0', help="static-large budgets, fractions of F_ref")
    parser.add_argument('--ref_iters', type=int, default=5000, help="iters of static-large that make F_ref")
    parser.add_argument('--static_schedules', default='cosine,wsd', help="lr schedule families for static runs")
    parser.add_argument('--jobs', type=int, default=1, help="runs at a time (each on one thread when > 1)")
    parser.add_argument('--out_dir', default='bench-growth')
    parser.add_argument('--report', default='docs/growth_vs_static', help="writes REPORT.md and REPORT.png")
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                        help="a train.py override for every run, e.g. --set eval_iters=10 (repeatable)")
    parser.add_argument('--reuse', action='store_true', help="keep runs that already finished in out_dir")
    parser.add_argument('--ladder_only', action='store_true',
                        help="run the static-large ladder and stop (it does not depend on the recipe)")
    args = parser.parse_args()
    overrides = [f'--{kv}' for kv in args.set]
    seeds = [int(s) for s in args.seeds.split(',')]
    ladder = [float(b) for b in args.ladder.split(',')]
    families = args.static_schedules.split(',')

    setting, start, final = load_setting(args.config, args.schedule, overrides)
    small = {k: getattr(start, k) for k in ARCH_KEYS}
    large_per_iter, small_per_iter = flops_per_iter(start, final, setting), flops_per_iter(start, small, setting)
    f_ref = large_per_iter * args.ref_iters
    growth_name = os.path.splitext(os.path.basename(args.schedule))[0]

    def ladder_name(budget, family, seed):
        return f"static-large-{family}-x{budget:g}-seed{seed}"

    # phase 1: the growth runs and the static ladder
    runs = {}
    for seed in seeds:
        common = [f'--seed={seed}', *overrides]
        if not args.ladder_only:
            runs[f"growth-{growth_name}-seed{seed}"] = [*common, f'--scaling_schedule_file={args.schedule}']
        for budget in ladder:
            for family in families:
                iters = round(budget * args.ref_iters)
                runs[ladder_name(budget, family, seed)] = [*common, *static_args(final, iters, family, setting)]
    results = run_all(runs, args)
    if args.ladder_only:
        for name, result in results.items():
            print(f"{name}: final val {final_val(result):.4f}, training flops {final_flops(result):.3e}")
        return

    # phase 2: static-large and static-small at exactly each growth run's budget
    runs = {}
    for seed in seeds:
        common = [f'--seed={seed}', *overrides]
        growth = results[f"growth-{growth_name}-seed{seed}"]
        budget = final_flops(growth)
        for family in families:
            runs[f"matched-{family}-{growth_name}-seed{seed}"] = [*common, *static_args(
                final, max(1, round(budget / large_per_iter)), family, setting)]
        runs[f"static-small-{growth_name}-seed{seed}"] = [*common, *static_args(
            small, max(1, round(budget / small_per_iter)), setting['lr_schedule'], setting)]
    results.update(run_all(runs, args))

    rows = []
    for seed in seeds:
        growth = results[f"growth-{growth_name}-seed{seed}"]
        budget = final_flops(growth)
        matched = best_of(results, [f"matched-{f}-{growth_name}-seed{seed}" for f in families])
        statics = [best_of(results, [ladder_name(b, f, seed) for f in families])[1] for b in ladder] + [matched[1]]
        equivalent, extrapolated = compute_equivalent(sorted((final_flops(r), final_val(r)) for r in statics),
                                                      final_val(growth))
        reference = best_of(results, [ladder_name(1.0, f, seed) for f in families]) if 1.0 in ladder else None
        rows.append(dict(seed=seed, growth=final_val(growth), budget=budget / f_ref,
                         matched=final_val(matched[1]), matched_family=matched[0].split('-')[1],
                         reference=final_val(reference[1]) if reference else math.nan,
                         reference_family=reference[0].split('-')[2] if reference else '-',
                         small=final_val(results[f"static-small-{growth_name}-seed{seed}"]),
                         speedup=equivalent / budget, extrapolated=extrapolated))

    lines = [f"# growth vs static at matched compute: {args.config} + {args.schedule}",
             '', f"seeds {','.join(map(str, seeds))}; overrides {' '.join(overrides) or 'none'}; "
             f"F_ref = {args.ref_iters} iters of static-large = {f_ref:.3e} training FLOPs; ladder "
             f"{args.ladder} x F_ref, each budget the better of {', '.join(families)}",
             '', f"start architecture {small}, final architecture {final}", '',
             "| seed | growth budget (x F_ref) | growth final val | static-large same budget | "
             "static-large 1.0 x F_ref | static-small same budget | compute-equivalent speedup | "
             "growth wins matched |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['budget']:.3f} | {r['growth']:.4f} | {r['matched']:.4f} "
                     f"({r['matched_family']}) | {r['reference']:.4f} ({r['reference_family']}) | "
                     f"{r['small']:.4f} | {r['speedup']:.2f}{' (extrapolated)' if r['extrapolated'] else ''} | "
                     f"{r['growth'] < r['matched']} |")
    lines += ['', "static-large final val along the ladder (better family):", '',
              "| seed | " + ' | '.join(f"{b:g} x F_ref" for b in ladder) + " |",
              "|---|" + '---|' * len(ladder)]
    for seed in seeds:
        vals = [final_val(best_of(results, [ladder_name(b, f, seed) for f in families])[1]) for b in ladder]
        lines.append(f"| {seed} | " + ' | '.join(f"{v:.4f}" for v in vals) + " |")
    lines += ['', "every static run, final val by family:", '', "| seed | budget | " + ' | '.join(families) + " |",
              "|---|---|" + '---|' * len(families)]
    for seed in seeds:
        for budget in ladder:
            vals = [final_val(results[ladder_name(budget, f, seed)]) for f in families]
            lines.append(f"| {seed} | {budget:g} | " + ' | '.join(f"{v:.4f}" for v in vals) + " |")
        vals = [final_val(results[f"matched-{f}-{growth_name}-seed{seed}"]) for f in families]
        lines.append(f"| {seed} | matched | " + ' | '.join(f"{v:.4f}" for v in vals) + " |")

    median = statistics.median
    wins = sum(r['growth'] < r['matched'] for r in rows)
    summary = (f"speedup_median={median(r['speedup'] for r in rows):.3f} "
               f"budget_ratio_median={median(r['budget'] for r in rows):.3f} "
               f"growth_val_median={median(r['growth'] for r in rows):.4f} "
               f"static_ref_val_median={median(r['reference'] for r in rows):.4f} matched_wins={wins}/{len(rows)}")
    lines += ['', f"medians: {summary}"]
    os.makedirs(os.path.dirname(args.report) or '.', exist_ok=True)
    with open(args.report + '.md', 'w') as f:
        f.write('\n'.join(lines) + '\n')
    plot(results, seeds[0], growth_name, ladder_name, ladder, families, f_ref, args.report + '.png')
    print('\n'.join(lines))
    print(f"wrote {args.report}.md and {args.report}.png")
    print(summary)


def plot(results, seed, growth_name, ladder_name, ladder, families, f_ref, path):
    """Val loss against training FLOPs (x F_ref) for every run of one seed, the static envelope
    (final vals along the ladder) and the growth run's operations."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6))
    styles = {'cosine': '-', 'wsd': '--'}
    for budget in ladder:
        for family in families:
            evals, _ = results[ladder_name(budget, family, seed)]
            ax.plot([e['flops'] / f_ref for e in evals], [e['val_loss'] for e in evals], color='tab:blue',
                    linestyle=styles.get(family, ':'), alpha=0.35, linewidth=1)
    envelope = sorted((final_flops(best_of(results, [ladder_name(b, f, seed) for f in families])[1]) / f_ref,
                       final_val(best_of(results, [ladder_name(b, f, seed) for f in families])[1])) for b in ladder)
    ax.plot(*zip(*envelope), color='tab:blue', marker='o', linewidth=2, label='static-large: final val per budget')
    for name, color, label in ((f"static-small-{growth_name}-seed{seed}", 'tab:gray', 'static-small, growth budget'),
                               (f"growth-{growth_name}-seed{seed}", 'tab:red', f"growth: {growth_name}")):
        evals, ops = results[name]
        ax.plot([e['flops'] / f_ref for e in evals], [e['val_loss'] for e in evals], color=color, label=label)
        ax.plot([evals[-1]['flops'] / f_ref], [evals[-1]['val_loss']], color=color, marker='*', markersize=12)
        flops_at = {e['iter']: e['flops'] for e in evals}
        for op in ops:
            x = flops_at[op['iter']] / f_ref
            ax.axvline(x, color=color, linestyle=':', alpha=0.5)
            ax.annotate(op['name'], (x, op['val_loss_before']), rotation=90, fontsize=7, color=color,
                        xytext=(2, 8), textcoords='offset points')
    for family in families:
        evals, _ = results[f"matched-{family}-{growth_name}-seed{seed}"]
        ax.plot([evals[-1]['flops'] / f_ref], [evals[-1]['val_loss']], color='tab:green', marker='s',
                linestyle='none', label=f"static-large at the growth budget ({family})")
    finals = [final_val(results[ladder_name(b, f, seed)]) for b in ladder for f in families]
    ax.set_ylim(min(finals) - 0.05, max(finals) + 0.35)
    ax.set_xlabel('training FLOPs / F_ref')
    ax.set_ylabel('val loss (fixed eval batches)')
    ax.set_title(f"growth vs static at matched compute, seed {seed} (solid: cosine, dashed: wsd)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == '__main__':
    main()
