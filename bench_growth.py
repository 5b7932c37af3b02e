"""
Growth vs static training at matched compute: every run trains on its own complete lr schedule for
its own training-FLOPs budget, on the same data and the same fixed eval batches.

For each seed it trains, through train.py:
  growth     the config with its schedule; its training FLOPs are its budget C_growth
  sizes      every static size of --sizes (a table of architectures, each with the peak lr of its own
             sweep; without one, the schedule's first and final architectures at the config's lr) at
             the budgets --ladder x F_ref and at C_growth. F_ref is --ref_iters iters of the schedule's
             final architecture. max_iters and the lr schedule scale with the budget, warmup does not.
With wsd all budgets of one size share the stable phase: it runs once per size and seed, in segments
that end at each budget's cooldown start, and each budget's cooldown branches from there (resumed
from the segment's checkpoint, bit for bit the run that budget would be on its own). Other families
(--static_schedules=cosine,wsd) run each budget separately; a budget counts its best family.

Per seed it reports the growth run's final val, the same-size static (the schedule's final
architecture) at C_growth, the envelope at C_growth (the best static size there) and two speedups:
vs same size, the static FLOPs of that size that reach growth's final val (linear in log FLOPs along
its budgets) over C_growth; vs envelope, C_env(L) / C_growth, where C_env is the lower convex hull of
every static (FLOPs, final val) against log FLOPs. Beyond the measured range: "extrapolated".

$ python bench_growth.py --jobs=2                     # tiny shakespeare, the shipped CPU recipe, seeds 1,2,3
$ python bench_growth.py --config=config/train_gutenberg_cpu_growth.py --sizes=config/gutenberg_cpu_sizes.yaml \
      --ladder=0.25,0.5,1.0 --ref_iters=12000 --jobs=2 --report=docs/growth_vs_envelope
$ python bench_growth.py ... --lr_sweep=0.5,1,2       # each size at its table lr times each factor, one budget
$ python bench_growth.py ... --ladder_only            # the sizes' table alone; a later run with --reuse keeps it,
                                                       # and with a larger budget added adds one segment a size

Writes REPORT.md and REPORT.png (default docs/growth_vs_static); the run folders go to --out_dir.
Its last line is speedup_envelope_median=.. speedup_same_size_median=.. budget_ratio_median=..
growth_val_median=.. envelope_wins=k/n same_size_wins=k/n.
"""

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import torch
import yaml

import train
from configurator import configure
from model import ARCH_KEYS, GPT, GPTConfig
from plot_run import read_events


def load_setting(config_file, schedule_file, overrides):
    """train set up for the growth config, its schedule file, and the (start, final) architecture
    of the schedule."""
    defaults = {k: getattr(train, k) for k in train.config_keys}
    setting = train.setup(configure([config_file, *overrides], defaults, verbose=False))
    schedule_file = schedule_file or setting['scaling_schedule_file']
    start = train.model_config_from_globals(train.check_data()['vocab_size'])
    entries = train.load_schedule_file(schedule_file)
    train.reset_orchestrator(entries)
    plan = train.validate_schedule(schedule_file, entries, 0, start)
    final = plan[-1] if plan else {k: getattr(start, k) for k in ARCH_KEYS}
    return setting, schedule_file, start, {k: final[k] for k in ARCH_KEYS}


def flops_per_iter(start, arch, setting):
    """Training FLOPs of one iteration of a static model with this architecture."""
    with_arch = {**{k: getattr(start, k) for k in ('block_size', 'vocab_size', 'bias')}, **arch}
    with torch.device('meta'):
        model = GPT(GPTConfig(**with_arch))
    tokens = setting['batch_size'] * setting['gradient_accumulation_steps'] * setting['block_size']
    return model.flops_per_token() * tokens


def size_name(arch):
    return f"{arch['n_layer']}x{arch['n_embd']}" + (f"-mlp{arch['n_hidden']}" if arch['n_hidden'] != 4 * arch['n_embd'] else '')


def read_sizes(path, start, final, setting):
    """The static sizes: [{name, arch, lr, min_lr}]. A table (YAML or JSON list) gives per row any
    architecture keys (the rest are the final architecture's), learning_rate, and optionally min_lr
    and name; min_lr defaults to the config's min_lr / learning_rate ratio. Without a table: the
    schedule's first and final architectures at the config's lr."""
    ratio = setting['min_lr'] / setting['learning_rate']
    if not path:
        rows = [{k: getattr(start, k) for k in ARCH_KEYS}, final]
        rows = [dict(row, learning_rate=setting['learning_rate']) for i, row in enumerate(rows) if row not in rows[:i]]
    else:
        with open(path) as f:
            rows = yaml.safe_load(f)
        if not isinstance(rows, list) or not rows:
            sys.exit(f"bench_growth: {path}: expected a non-empty list of sizes")
    sizes = []
    for i, row in enumerate(rows):
        where = f"bench_growth: {path}: entry {i}"
        unknown = set(row) - {*ARCH_KEYS, 'learning_rate', 'min_lr', 'name'} if isinstance(row, dict) else None
        if unknown is None or unknown:
            sys.exit(f"{where}: expected a mapping of {', '.join(ARCH_KEYS)}, learning_rate, min_lr, name; "
                     f"got {sorted(unknown) if unknown else row!r}")
        for key in ('learning_rate', 'min_lr', *ARCH_KEYS):
            if key in row and (isinstance(row[key], bool) or not isinstance(row[key], (int, float)) or row[key] < 0):
                sys.exit(f"{where}: field {key}: expected a number >= 0, got {row[key]!r} (YAML reads 4e-3 as text: write 0.004)")
        if 'learning_rate' not in row:
            sys.exit(f"{where}: field learning_rate: missing (each size runs at the peak lr of its own sweep)")
        arch = {k: row.get(k, final[k]) for k in ARCH_KEYS}
        sizes.append(dict(name=str(row.get('name', size_name(arch))), arch=arch, lr=row['learning_rate'],
                          min_lr=row.get('min_lr', row['learning_rate'] * ratio)))
    names = [s['name'] for s in sizes]
    if len(set(names)) < len(names):
        sys.exit(f"bench_growth: {path}: two sizes share a name ({', '.join(names)}); give each row a name")
    if final not in [s['arch'] for s in sizes]:
        sys.exit(f"bench_growth: {path}: no size has the schedule's final architecture {final}")
    return sizes


def cooldown(iters, setting):
    """The wsd cooldown of a run of `iters`: the same fraction of the run as in the growth config."""
    fraction = (setting['cooldown_iters'] or setting['lr_decay_iters'] / 5) / setting['lr_decay_iters']
    return max(1, round(fraction * iters))


def cooldown_start(iters, setting):
    """The iter where a wsd run of `iters` leaves the peak lr (train.scheduled_lr's cooldown_start)."""
    return max(setting['warmup_iters'], iters - cooldown(iters, setting))


def static_args(size, iters, family, setting, decay_iters=None):
    """A static run of `iters` iters of this size; its lr schedule ends at decay_iters (default iters)."""
    decay_iters = decay_iters or iters
    args = ['--scaling_schedule_file=', *[f'--{k}={v}' for k, v in size['arch'].items()],
            f"--learning_rate={size['lr']}", f"--min_lr={size['min_lr']}", f'--max_iters={iters}',
            f'--lr_decay_iters={decay_iters}', f'--lr_schedule={family}']
    if family == 'wsd':
        args.append(f"--cooldown_iters={cooldown(decay_iters, setting)}")
    return args


def wsd_branches(prefix, size, budgets, setting, common):
    """A size's wsd runs at several budgets {label: iters} sharing one stable phase: segments that stop
    at each budget's cooldown start ({prefix}-stable{iter}), each budget's run resumed from its segment
    (one run for budgets of the same iters, named by the first). Returns {name: (train.py args, parent name or None)}, the segments first, and {label: name}."""
    last = max(budgets.values())
    runs, names, parent = {}, {}, None
    for stop in sorted({cooldown_start(iters, setting) for iters in budgets.values()}):
        name = f"{prefix}-stable{stop}"
        runs[name] = ([*common, *static_args(size, stop, 'wsd', setting, decay_iters=last),
                       '--always_save_checkpoint=True'], parent)
        parent = name
    by_iters = {}  # budgets of the same iters (a growth run's budget on the ladder) share one run
    for label, iters in budgets.items():
        names[label] = by_iters.setdefault(iters, f"{prefix}-{label}")
        runs[names[label]] = ([*common, *static_args(size, iters, 'wsd', setting)],
                              f"{prefix}-stable{cooldown_start(iters, setting)}")
    return runs, names


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


def comparable(identity):
    """An identity as --reuse compares it. A wsd run that stops before its cooldown starts trains at the
    peak lr throughout and never uses lr_decay_iters or cooldown_iters, so a stable segment is the same
    run whatever the ladder's largest budget (a larger one added later keeps the segments run before);
    and a run resumed from a parent it only continues is the run of its own settings (resume is exact),
    so the parent counts only where it trained otherwise."""
    identity = dict(identity)
    parent = identity.pop('parent', None)
    if parent is not None and not continues(parent, identity):
        identity['parent'] = comparable(parent)
    decay = identity['lr_decay_iters']
    cooldown_begins = max(identity['warmup_iters'], decay - (identity['cooldown_iters'] or decay / 5))
    if identity['lr_schedule'] == 'wsd' and identity['max_iters'] <= cooldown_begins:
        del identity['lr_decay_iters'], identity['cooldown_iters']
    return identity


def continues(parent, child):
    """Whether child, resumed from parent's end, trains as its own settings would from scratch: the
    parent is the child's run cut at the parent's last iter."""
    def settings(identity):
        return {k: v for k, v in comparable(identity).items() if k != 'init_from'}
    return settings(parent) == settings({**child, 'max_iters': parent['max_iters']})


def run_train(out_dir, config_file, args, reuse, threads, parent_dir=None):
    """One train.py run, its log in out_dir/train.log; with parent_dir, resumed from that run's
    final checkpoint (its events.jsonl continued). With --reuse a finished run is read back instead
    of run again, if it would train the same way (run_identity, as comparable() compares it: a stable
    phase is the same run however it was cut into segments and however far its decay lies)."""
    args = [*args, '--init_from=resume'] if parent_dir else args
    log = os.path.join(out_dir, 'train.log')
    command = [sys.executable, 'train.py', config_file, f'--out_dir={out_dir}', *args]
    stamp = os.path.join(out_dir, 'identity.json')
    identity = run_identity(config_file, args)
    if parent_dir:  # comparable() keeps the parent only where the run does not just continue it
        with open(os.path.join(parent_dir, 'identity.json')) as f:
            identity['parent'] = json.load(f)
    if reuse and os.path.isfile(stamp) and comparable(json.load(open(stamp))) == comparable(identity) \
            and open(log).read().endswith('RUN FINISHED\n'):
        return read_run(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    for name in ('events.jsonl', 'ckpt.pt', 'identity.json'):
        if os.path.isfile(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))
        if parent_dir and name != 'identity.json':
            shutil.copyfile(os.path.join(parent_dir, name), os.path.join(out_dir, name))
    print(' '.join(command) + '\n', end='', flush=True)  # one write: two jobs' lines do not interleave
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else None
    with open(log, 'w') as f:
        result = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        sys.exit(f"bench_growth: run failed (exit {result.returncode}), see {log}")
    with open(log, 'a') as f:
        f.write('RUN FINISHED\n')
    with open(stamp, 'w') as f:
        json.dump(identity, f, indent=1)
    return read_run(out_dir)


def run_all(runs, args):
    """runs: {name: (train.py args, parent name or None)}. Runs args.jobs at a time, each once its
    parent has finished, in the order given; returns {name: (evals, ops)}."""
    threads = 1 if args.jobs > 1 else 0
    results, pending, running = {}, dict(runs), {}
    with ThreadPoolExecutor(args.jobs) as pool:
        while pending or running:
            ready = [name for name, (_, parent) in pending.items() if parent is None or parent in results]
            for name in ready[:args.jobs - len(running)]:
                train_args, parent = pending.pop(name)
                parent_dir = os.path.join(args.out_dir, parent) if parent else None
                running[pool.submit(run_train, os.path.join(args.out_dir, name), args.config, train_args,
                                    args.reuse, threads, parent_dir)] = name
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                results[running.pop(future)] = future.result()
    return results


def read_run(out_dir):
    """A finished run's (evals, ops, final eval): the final_eval event at its last eval's iter, or None
    (a run without final_eval_iters; a stable segment's own final eval is not its branch's)."""
    evals, ops = read_events(out_dir)
    with open(os.path.join(out_dir, 'events.jsonl')) as f:
        finals = [e for e in map(json.loads, f) if e['event'] == 'final_eval' and e['iter'] == evals[-1]['iter']]
    return evals, ops, finals[-1] if finals else None


def final_val(result):
    """The figure a report uses: the final eval's val, or the last periodic eval's without one."""
    evals, _, final = result
    return final['val_loss'] if final else evals[-1]['val_loss']


def final_flops(result):
    return result[0][-1]['flops']


def compute_equivalent(points, target):
    """Static FLOPs that reach `target`, linear in log FLOPs between the two points around it, and a
    bound: '' inside the measured range; outside it no line is extended: '>' (target below every point:
    more than the lowest point's FLOPs) or '<' (above every point: less than the smallest budget's).
    points: (flops, final val); a point given twice (a growth budget that is a ladder budget's run)
    counts once."""
    points = sorted(set(points))
    if not points:
        return math.nan, ''
    for (f0, v0), (f1, v1) in zip(points, points[1:]):
        if min(v0, v1) <= target <= max(v0, v1) and v0 != v1:
            return math.exp(math.log(f0) + (target - v0) / (v1 - v0) * (math.log(f1) - math.log(f0))), ''
    lowest = min(points, key=lambda p: p[1])
    if target < lowest[1]:
        return lowest[0], '>'
    if target == lowest[1]:
        return lowest[0], ''
    return points[0][0], '<'


def lower_hull(points):
    """The static envelope: the lower convex hull of (flops, val) points against log flops, up to its
    lowest point, so that val falls with flops along it."""
    hull = []
    for x, v in sorted((math.log(f), v) for f, v in points):
        # drop the last point while it lies on or above the line from the one before it to this one
        while len(hull) >= 2 and (hull[-1][0] - hull[-2][0]) * (v - hull[-2][1]) \
                - (hull[-1][1] - hull[-2][1]) * (x - hull[-2][0]) <= 0:
            hull.pop()
        hull.append((x, v))
    lowest = min(range(len(hull)), key=lambda i: hull[i][1])
    return [(math.exp(x), v) for x, v in hull[:lowest + 1]]


def best_of(results, names):
    """The best (lowest final val) of a budget's runs: (name, result)."""
    return min(((n, results[n]) for n in names), key=lambda nr: final_val(nr[1]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--config', default='config/train_shakespeare_char_cpu_growth.py')
    parser.add_argument('--schedule', default='', help="the growth schedule (default: the config's scaling_schedule_file)")
    parser.add_argument('--sizes', default='', help="YAML/JSON table of static sizes, each with its tuned learning_rate")
    parser.add_argument('--seeds', default='1,2,3', help="comma-separated seeds")
    parser.add_argument('--ladder', default='0.4,0.6,0.8,1.0', help="static budgets, fractions of F_ref")
    parser.add_argument('--ref_iters', type=int, default=5000, help="iters of the final architecture that make F_ref")
    parser.add_argument('--static_schedules', default='wsd', help="lr schedule families for static runs (cosine,wsd)")
    parser.add_argument('--lr_sweep', default='', help="factors: run each size at its lr times each factor at "
                        "--sweep_budget x F_ref (wsd, first seed), print the table, and stop")
    parser.add_argument('--sweep_budget', type=float, default=0.5)
    parser.add_argument('--jobs', type=int, default=1, help="runs at a time (each on one thread when > 1)")
    parser.add_argument('--out_dir', default='bench-growth')
    parser.add_argument('--report', default='docs/growth_vs_static', help="writes REPORT.md and REPORT.png")
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                        help="a train.py override for every run, e.g. --set eval_iters=10 (repeatable)")
    parser.add_argument('--reuse', action='store_true', help="keep runs that already finished in out_dir")
    parser.add_argument('--ladder_only', action='store_true',
                        help="every size at the ladder budgets only (no growth run): print the table and stop")
    args = parser.parse_args()
    overrides = [f'--{kv}' for kv in args.set]
    seeds = [int(s) for s in args.seeds.split(',')]
    ladder = sorted({float(b) for b in args.ladder.split(',')})
    families = args.static_schedules.split(',')

    setting, schedule, start, final = load_setting(args.config, args.schedule, overrides)
    sizes = read_sizes(args.sizes, start, final, setting)
    per_iter = {s['name']: flops_per_iter(start, s['arch'], setting) for s in sizes}
    same = next(s['name'] for s in sizes if s['arch'] == final)
    f_ref = per_iter[same] * args.ref_iters
    growth_name = os.path.splitext(os.path.basename(schedule))[0]

    def iters_at(size, flops):
        return max(1, round(flops / per_iter[size['name']]))

    if args.lr_sweep:
        lr_sweep(args, sizes, setting, overrides, seeds[0], iters_at, f_ref)
        return

    # phase 1: the growth runs; phase 2: every size at every ladder budget and at each growth budget
    growth = {} if args.ladder_only else run_all({f"growth-{growth_name}-seed{seed}": (
        [f'--seed={seed}', *overrides, f'--scaling_schedule_file={schedule}'], None) for seed in seeds}, args)
    runs, static = {}, {}  # static: (size, budget label, seed) -> the names of its runs, one per family
    for seed in seeds:
        common = [f'--seed={seed}', *overrides]
        budgets = {f"x{b:g}": b * f_ref for b in ladder}
        if not args.ladder_only:
            budgets[f"matched-{growth_name}"] = final_flops(growth[f"growth-{growth_name}-seed{seed}"])
        for size in sizes:
            for family in families:
                prefix = f"static-{size['name']}-{family}"
                if family == 'wsd':
                    branch_runs, names = wsd_branches(f"{prefix}-seed{seed}", size, {
                        f"{label}": iters_at(size, flops) for label, flops in budgets.items()}, setting, common)
                    runs.update(branch_runs)
                else:
                    names = {label: f"{prefix}-{label}-seed{seed}" for label in budgets}
                    runs.update({names[label]: ([*common, *static_args(size, iters_at(size, flops), family, setting)],
                                                None) for label, flops in budgets.items()})
                for label in budgets:
                    static.setdefault((size['name'], label, seed), []).append(names[label])
    results = {**growth, **run_all(runs, args)}
    if args.ladder_only:
        print('\n'.join(size_table(results, static, sizes, seeds, [f"x{b:g}" for b in ladder])))
        return
    report(args, results, static, sizes, same, seeds, ladder, growth_name, f_ref, overrides, families)


def report(args, results, static, sizes, same, seeds, ladder, growth_name, f_ref, overrides, families):
    """The per-seed table, each size's final val at each budget, the picture and the summary line."""
    matched = f"matched-{growth_name}"
    labels = [f"x{b:g}" for b in ladder] + [matched]

    def best(size, label, seed):
        return best_of(results, static[(size, label, seed)])[1]

    rows = []
    for seed in seeds:
        growth = results[f"growth-{growth_name}-seed{seed}"]
        budget, val = final_flops(growth), final_val(growth)
        points = {s['name']: sorted((final_flops(best(s['name'], label, seed)), final_val(best(s['name'], label, seed)))
                                    for label in labels) for s in sizes}
        hull = lower_hull([p for size_points in points.values() for p in size_points])
        env_flops, env_extrapolated = compute_equivalent(hull, val)
        same_flops, same_extrapolated = compute_equivalent(points[same], val)
        envelope_size = min(sizes, key=lambda s: final_val(best(s['name'], matched, seed)))['name']
        rows.append(dict(seed=seed, growth=val, budget=budget / f_ref, same=final_val(best(same, matched, seed)),
                         envelope=final_val(best(envelope_size, matched, seed)), envelope_size=envelope_size,
                         speedup_envelope=env_flops / budget, envelope_extrapolated=env_extrapolated,
                         speedup_same=same_flops / budget, same_extrapolated=same_extrapolated, hull=hull))

    def extrapolated(flag):
        return ' (extrapolated)' if flag else ''

    lines = [f"# growth vs the static envelope at matched compute: {args.config} + {growth_name}", '',
             f"seeds {','.join(map(str, seeds))}; overrides {' '.join(overrides) or 'none'}; F_ref = {args.ref_iters} "
             f"iters of the final architecture ({same}) = {f_ref:.3e} training FLOPs; static budgets {args.ladder} "
             f"x F_ref and each growth run's budget, each the best of {', '.join(families)}; sizes "
             + ', '.join(f"{s['name']} (lr {s['lr']:g})" for s in sizes), '',
             "| seed | growth budget (x F_ref) | growth final val | same size, same budget | envelope, same budget "
             "(size) | speedup vs envelope | speedup vs same size |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['budget']:.3f} | {r['growth']:.4f} | {r['same']:.4f} | {r['envelope']:.4f} "
                     f"({r['envelope_size']}) | {r['speedup_envelope']:.2f}{extrapolated(r['envelope_extrapolated'])} | "
                     f"{r['speedup_same']:.2f}{extrapolated(r['same_extrapolated'])} |")
    lines += ['', *size_table(results, static, sizes, seeds, labels)]

    median = statistics.median
    summary = (f"speedup_envelope_median={median(r['speedup_envelope'] for r in rows):.3f} "
               f"speedup_same_size_median={median(r['speedup_same'] for r in rows):.3f} "
               f"budget_ratio_median={median(r['budget'] for r in rows):.3f} "
               f"growth_val_median={median(r['growth'] for r in rows):.4f} "
               f"envelope_wins={sum(r['growth'] < r['envelope'] for r in rows)}/{len(rows)} "
               f"same_size_wins={sum(r['growth'] < r['same'] for r in rows)}/{len(rows)}")
    lines += ['', f"medians: {summary}"]
    os.makedirs(os.path.dirname(args.report) or '.', exist_ok=True)
    with open(args.report + '.md', 'w') as f:
        f.write('\n'.join(lines) + '\n')
    plot(results, static, sizes, rows, labels, growth_name, f_ref, args.report + '.png')
    print('\n'.join(lines))
    print(f"wrote {args.report}.md and {args.report}.png")
    print(summary)


def size_table(results, static, sizes, seeds, labels):
    """Each static size's final val at each budget (labels: 'x0.5'.. and the growth budget), the
    envelope there in bold: markdown lines."""
    heads = [f"{label[1:]} x F_ref" if label.startswith('x') else 'growth budget' for label in labels]
    lines = ["each static size's final val at each budget (bold: the envelope there):", '',
             "| seed | size | " + ' | '.join(heads) + " |", "|---|---|" + '---|' * len(labels)]
    for seed in seeds:
        vals = {(s['name'], label): final_val(best_of(results, static[(s['name'], label, seed)])[1])
                for s in sizes for label in labels}
        lowest = {label: min(vals[s['name'], label] for s in sizes) for label in labels}
        for s in sizes:
            lines.append(f"| {seed} | {s['name']} | " + ' | '.join(
                f"**{vals[s['name'], label]:.4f}**" if vals[s['name'], label] == lowest[label]
                else f"{vals[s['name'], label]:.4f}" for label in labels) + " |")
    return lines


def lr_sweep(args, sizes, setting, overrides, seed, iters_at, f_ref):
    """Each size at its table lr times each factor, at one budget: the table to pick each size's lr from."""
    factors = [float(x) for x in args.lr_sweep.split(',')]
    runs, names = {}, {}
    for size in sizes:
        for factor in factors:
            swept = dict(size, lr=size['lr'] * factor, min_lr=size['min_lr'] * factor)
            names[size['name'], factor] = f"sweep-{size['name']}-lr{swept['lr']:g}-x{args.sweep_budget:g}-seed{seed}"
            runs[names[size['name'], factor]] = ([f'--seed={seed}', *overrides, *static_args(
                swept, iters_at(size, args.sweep_budget * f_ref), 'wsd', setting)], None)
    results = run_all(runs, args)
    print(f"final val at {args.sweep_budget:g} x F_ref (wsd, seed {seed}), by peak lr:")
    for size in sizes:
        vals = {size['lr'] * f: final_val(results[names[size['name'], f]]) for f in factors}
        print(f"{size['name']}: " + ', '.join(f"lr {lr:g}: {v:.4f}" for lr, v in vals.items())
              + f"; best lr {min(vals, key=vals.get):g}")


def plot(results, static, sizes, rows, labels, growth_name, f_ref, path):
    """Per seed: val loss against training FLOPs (log x); each static size's final vals through its
    budgets, the envelope (lower hull) thick, the growth run's curve with its operations."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(7 * len(rows), 5.5), squeeze=False)
    for ax, row in zip(axes[0], rows):
        seed = row['seed']
        finals = []
        for size in sizes:
            points = sorted((final_flops(r) / f_ref, final_val(r)) for r in (
                best_of(results, static[(size['name'], label, seed)])[1] for label in labels))
            finals += [v for _, v in points]
            ax.plot(*zip(*points), marker='o', linewidth=1, alpha=0.8, label=f"static {size['name']} (lr {size['lr']:g})")
        ax.plot([f / f_ref for f, _ in row['hull']], [v for _, v in row['hull']], color='black', linewidth=3,
                alpha=0.6, label='static envelope (lower hull)')
        evals, ops = results[f"growth-{growth_name}-seed{seed}"]
        ax.plot([e['flops'] / f_ref for e in evals[1:]], [e['val_loss'] for e in evals[1:]], color='tab:red',
                label=f"growth: {growth_name}")
        ax.plot([evals[-1]['flops'] / f_ref], [evals[-1]['val_loss']], color='tab:red', marker='*', markersize=14)
        flops_at = {e['iter']: e['flops'] for e in evals}
        for op in ops:
            x = max(flops_at[op['iter']], evals[1]['flops']) / f_ref
            ax.axvline(x, color='tab:red', linestyle=':', alpha=0.5)
            ax.annotate(op['name'], (x, op['val_loss_before']), rotation=90, fontsize=7, color='tab:red',
                        xytext=(2, 8), textcoords='offset points')
        ax.set_xscale('log')
        ax.set_ylim(min(finals) - 0.05, max(finals) + 0.3)
        ax.set_xlabel('training FLOPs / F_ref (log)')
        ax.set_ylabel('val loss (fixed eval batches)')
        ax.set_title(f"seed {seed}: speedup vs envelope {row['speedup_envelope']:.2f}, vs same size {row['speedup_same']:.2f}")
        ax.grid(alpha=0.3, which='both')
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == '__main__':
    main()
