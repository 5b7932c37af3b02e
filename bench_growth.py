"""
Growth vs static training at matched compute: every run trains on its own complete lr schedule for
its own training-FLOPs budget, on the same data, and is scored by one final eval on the same fixed
batches (--final_eval_iters, train.py's final_eval_iters: windows spread over the whole val split).

For each seed it trains, through train.py:
  growth     the config with its schedule; its training FLOPs are its budget C_growth
  sizes      every static size of --sizes (a table of architectures, each with the peak lr of its own
             sweep; without one, the schedule's first and final architectures at the config's lr), at its
             table lr times each of --lr_factors (0.5,1,2: the best lr per size, budget and seed counts),
             at the budgets --ladder x F_ref (a row's ladder: those rungs only) and at C_growth. F_ref is
             --ref_iters iters of the schedule's final architecture (of the --ref_size row, if given:
             recipes of other final sizes then share F_ref, and with --reuse the static runs). max_iters
             and the lr schedule scale with the budget, warmup does not.
With wsd all budgets of one size and lr share the stable phase: it runs once per size, lr and seed, in
segments that end at each budget's cooldown start, and each budget's cooldown branches from there
(resumed from the segment's checkpoint, bit for bit the run that budget would be on its own). Other
families (--static_schedules=cosine,wsd) run each budget separately; a budget counts its best family.
While a growth run ends below every static run of its seed, a rung twice the largest budget is added
(at most --add_rungs times). With --extra_text every final model also scores that text as UTF-8 bytes.

Per seed it reports the growth run's final val, the same-size static (the schedule's final
architecture) at C_growth, the best static at C_growth, and two speedups: vs same size, the static
FLOPs of that size that reach growth's final val (linear in log FLOPs along its budgets) over
C_growth; vs envelope, C_env(L) / C_growth, where C_env is the lower convex hull through the best
static (size, lr) at each budget against log FLOPs. No line is extended beyond the measured range: a
growth val below every static run gives a lower bound ">X" (above every one: "<X"). A win is a speedup
above 1. Pooled: each size, budget and lr averaged over the seeds, then the same, for the seeds' median
growth val; beside it a bootstrap over seeds (10000 resamples) gives a 90% interval of the median speedup.

$ python bench_growth.py --jobs=2                     # tiny shakespeare, the shipped CPU recipe, seeds 1,2,3
$ python bench_growth.py --config=config/train_gutenberg_cpu_growth.py --sizes=config/gutenberg_cpu_sizes.yaml \
      --ladder=0.25,0.5,1.0,2.0 --ref_iters=12000 --seeds=11,12,13,14,15 --jobs=2 \
      --extra_text=../shared/data/tinyshakespeare/input.txt --report=docs/growth_vs_envelope
$ python bench_growth.py --report_from=docs/growth_vs_envelope.results.jsonl   # the report again, no training
$ python bench_growth.py ... --lr_sweep=0.5,1,2       # each size at its table lr times each factor, one budget
$ python bench_growth.py ... --ladder_only            # the sizes' table alone; a later run with --reuse keeps it,
                                                       # and with a larger budget added adds one segment a size

Writes REPORT.md, REPORT.png and REPORT.results.jsonl (one line per run: arm, size, seed, budget, lr,
FLOPs, final val, other-text val; default REPORT: OUT_DIR/report); the run folders go to --out_dir.
Its last line is speedup_envelope_median=.. speedup_same_size_median=.. budget_ratio_median=..
growth_val_median=.. envelope_wins=k/n same_size_wins=k/n speedup_envelope_pooled=.. ci90=LO..HI
seeds=a,b,c (and other_text_wins=k/n with --extra_text).
"""

import argparse
import json
import math
import os
import pickle
import shutil
import statistics
import subprocess
import sys
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import numpy as np
import torch
import yaml

import train
from configurator import ConfigError, UserError, configure
from model import ARCH_KEYS, GPT, GPTConfig
from plot_run import read_events


def load_setting(config_file, schedule_file, overrides):
    """train set up for the growth config, its schedule file, and the (start, final) architecture
    of the schedule."""
    setting = train.setup(configure([config_file, *overrides], train.config_defaults, verbose=False))
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


def read_sizes(path, start, final, setting, ladder):
    """The static sizes: [{name, arch, lr, min_lr, ladder}]. A table (YAML or JSON list) gives per row any
    architecture keys (the rest are the final architecture's), learning_rate, and optionally min_lr,
    name and ladder; min_lr defaults to the config's min_lr / learning_rate ratio; ladder (x F_ref) the
    budgets the size runs at, those of them on --ladder, default all of --ladder (a size far off the
    envelope at some budgets need not pay for them). Without a table: the schedule's first and final
    architectures at the config's lr."""
    ratio = setting['min_lr'] / setting['learning_rate']
    if not path:
        rows = [{k: getattr(start, k) for k in ARCH_KEYS}, final]
        rows = [dict(row, learning_rate=setting['learning_rate']) for i, row in enumerate(rows) if row not in rows[:i]]
    else:
        try:
            with open(path) as f:
                rows = yaml.safe_load(f)
        except OSError as e:
            raise UserError(f"--sizes: {path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise UserError(f"--sizes: {path}: not YAML ({' '.join(str(e).split())})") from None
        if not isinstance(rows, list) or not rows:
            raise UserError(f"--sizes: {path}: expected a non-empty list of sizes")
    sizes = []
    for i, row in enumerate(rows):
        where = f"--sizes: {path}: entry {i}"
        unknown = set(row) - {*ARCH_KEYS, 'learning_rate', 'min_lr', 'name', 'ladder'} if isinstance(row, dict) else None
        if unknown is None or unknown:
            raise UserError(f"{where}: expected a mapping of {', '.join(ARCH_KEYS)}, learning_rate, min_lr, name, ladder; "
                     f"got {sorted(unknown) if unknown else row!r}")
        for key in ('learning_rate', 'min_lr', *ARCH_KEYS):
            if key in row and (isinstance(row[key], bool) or not isinstance(row[key], (int, float)) or row[key] < 0):
                raise UserError(f"{where}: field {key}: expected a number >= 0, got {row[key]!r} (YAML reads 4e-3 as text: write 0.004)")
        if 'learning_rate' not in row:
            raise UserError(f"{where}: field learning_rate: missing (each size runs at the peak lr of its own sweep)")
        arch = {k: row.get(k, final[k]) for k in ARCH_KEYS}
        sizes.append(dict(name=str(row.get('name', size_name(arch))), arch=arch, lr=row['learning_rate'],
                          min_lr=row.get('min_lr', row['learning_rate'] * ratio),
                          ladder=size_ladder(row['ladder'], ladder, where) if 'ladder' in row else None))
    names = [s['name'] for s in sizes]
    if len(set(names)) < len(names):
        raise UserError(f"--sizes: {path}: two sizes share a name ({', '.join(names)}); give each row a name")
    if final not in [s['arch'] for s in sizes]:
        raise UserError(f"--sizes: {path}: no size has the schedule's final architecture {final}")
    return sizes


def size_ladder(rungs, ladder, where):
    """A size row's ladder: its rungs that are on --ladder, sorted (the others skipped, with a line)."""
    if not isinstance(rungs, list) or not rungs or any(isinstance(b, bool) or not isinstance(b, (int, float))
                                                       for b in rungs):
        raise UserError(f"{where}: field ladder: expected a list of budgets (x F_ref), got {rungs!r}")
    on, off = sorted(set(rungs) & set(ladder)), sorted(set(rungs) - set(ladder))
    if not on:
        raise UserError(f"{where}: field ladder: none of {budgets_text(off)} is a rung of --ladder ({budgets_text(ladder)})")
    if off:
        print(f"bench_growth: {where}: rungs {budgets_text(off)} are not on --ladder ({budgets_text(ladder)}): skipped",
              flush=True)
    return on


def budgets_text(budgets):
    return ','.join(f'{b:g}' for b in budgets)


def size_budgets(size, budgets, nominal, final):
    """The budgets {label: FLOPs} a size runs at: the rungs of its ladder (all without one), and the
    growth budget where its rungs span it, always for the final size (the same-size arm)."""
    rungs = size['ladder']
    if rungs is None:
        return dict(budgets)
    return {label: flops for label, flops in budgets.items()
            if nominal[label] in rungs or label == 'matched' and (size['arch'] == final or rungs[0] <= nominal[label] <= rungs[-1])}


def add_rung(ladder, sizes):
    """A rung twice the ladder's top, for every size whose own ladder reached the top."""
    top = max(ladder)
    ladder.append(2 * top)
    for size in sizes:
        if size['ladder'] and size['ladder'][-1] == top:
            size['ladder'].append(2 * top)


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
                       '--always_save_checkpoint=True', '--final_eval_iters=0'], parent)  # no report reads a segment
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
    identity = settings_identity(configure([config_file, *args], train.config_defaults, verbose=False))
    if identity['scaling_schedule_file']:
        with open(identity['scaling_schedule_file']) as f:
            identity['schedule_text'] = f.read()
    return identity


def settings_identity(resolved):
    """The settings of a run that change how it trains: not what only names or logs it, nor the keys
    its schedule or lr family never reads."""
    dropped = NAMING_KEYS + (GROWTH_ONLY_KEYS if not resolved['scaling_schedule_file'] else ())
    dropped += ('cooldown_iters',) if resolved['lr_schedule'] == 'cosine' else ()
    return {k: v for k, v in resolved.items() if k not in dropped}


def stamped_identity(stored):
    """A finished run's identity.json as today's train.py reads it: a key train.py gained after the run
    is at its default (a new key's default keeps the old behaviour), a key it has since lost is gone.
    So a run is not run again only because train.py grew a setting it does not use."""
    defaults = train.config_defaults
    identity = settings_identity({**defaults, **{k: v for k, v in stored.items() if k in defaults}})
    if 'schedule_text' in stored:
        identity['schedule_text'] = stored['schedule_text']
    if 'parent' in stored:
        identity['parent'] = stamped_identity(stored['parent'])
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
    if identity['lr_schedule'] == 'wsd':
        decay = identity['lr_decay_iters']
        if identity['max_iters'] <= max(identity['warmup_iters'], decay - (identity['cooldown_iters'] or decay / 5)):
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
            identity['parent'] = stamped_identity(json.load(f))
    if reuse and os.path.isfile(stamp) and comparable(stamped_identity(json.load(open(stamp)))) == comparable(identity) \
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--config', default='config/train_shakespeare_char_cpu_growth.py')
    parser.add_argument('--schedule', default='', help="the growth schedule (default: the config's scaling_schedule_file)")
    parser.add_argument('--sizes', default='', help="YAML/JSON table of static sizes, each with its tuned learning_rate")
    parser.add_argument('--seeds', default='1,2,3', help="comma-separated seeds")
    parser.add_argument('--ladder', default='0.4,0.6,0.8,1.0', help="static budgets, fractions of F_ref")
    parser.add_argument('--ref_iters', type=int, default=5000, help="iters of the final architecture that make F_ref")
    parser.add_argument('--ref_size', default='', help="the --sizes row (its name, e.g. 4x64) whose --ref_iters make "
                        "F_ref, instead of the final architecture")
    parser.add_argument('--static_schedules', default='wsd', help="lr schedule families for static runs (cosine,wsd)")
    parser.add_argument('--lr_sweep', default='', help="factors: run each size at its lr times each factor at "
                        "--sweep_budget x F_ref (wsd, first seed), print the table, and stop")
    parser.add_argument('--sweep_budget', type=float, default=0.5)
    parser.add_argument('--jobs', type=int, default=1, help="runs at a time (each on one thread when > 1)")
    parser.add_argument('--out_dir', default='bench-growth')
    parser.add_argument('--report', default='', help="writes REPORT.md and REPORT.png")
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                        help="a train.py override for every run, e.g. --set eval_iters=10 (repeatable)")
    parser.add_argument('--reuse', action='store_true', help="keep runs that already finished in out_dir")
    parser.add_argument('--ladder_only', action='store_true',
                        help="every size at the ladder budgets only (no growth run): print the table and stop")
    parser.add_argument('--lr_factors', default='0.5,1,2', help="each static size at its table lr times each factor, "
                        "at every budget; the envelope takes the best lr per size, budget and seed")
    parser.add_argument('--final_eval_iters', type=int, default=500, help="batches of every run's final eval "
                        "(train.py's final_eval_iters), the figure every table uses")
    parser.add_argument('--extra_text', default='', help="a text file every final model also scores, as UTF-8 "
                        "bytes (byte-level training data only), e.g. ../shared/data/tinyshakespeare/input.txt")
    parser.add_argument('--add_rungs', type=int, default=2, help="while a growth run ends below every static run "
                        "of its seed, add a budget twice the largest, at most this many times")
    parser.add_argument('--report_from', default='', help="a results.jsonl: rebuild its report without training")
    args = parser.parse_args()
    try:
        if args.report_from:
            write_report(read_results(args.report_from), args.report or report_beside(args.report_from))
        else:
            run_benchmark(args)
    except (UserError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def parse_list(option, text, kind=float):
    """The numbers of a comma-separated option, each > 0 (a UserError naming the option otherwise)."""
    try:
        values = [kind(x) for x in text.split(',')]
    except ValueError:
        raise UserError(f"--{option}: expected comma-separated {'integers' if kind is int else 'numbers'}, "
                        f"got {text!r}") from None
    if any(v <= 0 for v in values) and option != 'seeds':
        raise UserError(f"--{option}: expected numbers > 0, got {text!r}")
    return values


def prepare_extra_text(path, out_dir):
    """path's text as UTF-8 bytes, the way data/gutenberg/prepare.py tokenizes the books (line endings \\n,
    vocab 256), into out_dir/extra-NAME/val.bin and meta.pkl: the folder train.py's final_eval_extra scores."""
    if not os.path.isfile(path):
        raise UserError(f"--extra_text: {path} not found")
    with open(path, 'rb') as f:
        text = f.read().replace(b'\r\n', b'\n')
    folder = os.path.join(out_dir, 'extra-' + os.path.splitext(os.path.basename(path))[0])
    os.makedirs(folder, exist_ok=True)
    np.frombuffer(text, dtype=np.uint8).astype(np.uint16).tofile(os.path.join(folder, 'val.bin'))
    with open(os.path.join(folder, 'meta.pkl'), 'wb') as f:
        pickle.dump({'vocab_size': 256, 'tokenizer': 'bytes'}, f)
    return folder


def run_benchmark(args):
    """Train the growth runs and every static size at every budget and lr, write the raw results beside
    the report, then the report."""
    overrides = [f'--{kv}' for kv in args.set]
    seeds = parse_list('seeds', args.seeds, int)
    ladder = sorted(set(parse_list('ladder', args.ladder)))
    factors = parse_list('lr_factors', args.lr_factors)
    families = args.static_schedules.split(',')
    report = args.report or os.path.join(args.out_dir, 'report')
    if args.final_eval_iters < 0:
        raise UserError(f"--final_eval_iters: expected an integer >= 0 (0: the last periodic eval), got "
                        f"{args.final_eval_iters}")

    setting, schedule, start, final = load_setting(args.config, args.schedule, overrides)
    sizes = read_sizes(args.sizes, start, final, setting, ladder)
    per_iter = {s['name']: flops_per_iter(start, s['arch'], setting) for s in sizes}
    same = next(s['name'] for s in sizes if s['arch'] == final)
    if args.ref_size and args.ref_size not in per_iter:
        raise UserError(f"--ref_size: no size named {args.ref_size!r} (the sizes: {', '.join(per_iter)})")
    f_ref = per_iter[args.ref_size or same] * args.ref_iters
    growth_name = os.path.splitext(os.path.basename(schedule))[0]
    if args.extra_text and train.check_data().get('tokenizer') != 'bytes':
        raise UserError(f"--extra_text: the training data ({train.data_path()}) is not UTF-8 bytes, so its tokens "
                        f"cannot score {args.extra_text}")
    scoring = [f'--final_eval_iters={args.final_eval_iters}'] + (
        [f'--final_eval_extra={prepare_extra_text(args.extra_text, args.out_dir)}'] if args.extra_text else [])

    def iters_at(size, flops):
        return max(1, round(flops / per_iter[size['name']]))

    if args.lr_sweep:
        lr_sweep(args, sizes, setting, overrides + scoring, seeds[0], iters_at, f_ref)
        return

    def static_plan(matched):
        """Every seed's static runs: each size at the budgets of its ladder and, for a seed in matched
        {seed: growth FLOPs}, at its growth run's budget."""
        runs, named = {}, []
        for seed in seeds:
            budgets = {f"x{b:g}": b * f_ref for b in ladder}
            if seed in matched:
                budgets['matched'] = matched[seed]
            nominal = {label: float(label[1:]) if label != 'matched' else flops / f_ref for label, flops in budgets.items()}
            seed_runs, seed_named = static_runs(sizes, factors, families, budgets, nominal, seed,
                                                [f'--seed={seed}', *overrides, *scoring], setting, iters_at, growth_name,
                                                final)
            runs.update(seed_runs)
            named += seed_named
        return runs, named

    # the growth runs and the static runs at the ladder's budgets first, side by side (no lane waits for a
    # growth run); then the growth budgets' branches, keeping what ran (a stable phase is the same run
    # however it is cut into segments)
    growth_runs = {} if args.ladder_only else {f"growth-{growth_name}-seed{seed}": (
        [f'--seed={seed}', *overrides, *scoring, f'--scaling_schedule_file={schedule}'], None) for seed in seeds}
    results = run_all({**growth_runs, **static_plan({})[0]}, args)
    args.reuse = True
    growth = [dict(arm='growth', recipe=growth_name, config=args.config, overrides=' '.join(overrides), size=same,
                   seed=seed, **run_figures(results[f"growth-{growth_name}-seed{seed}"], f_ref),
                   lr=setting['learning_rate']) for seed in seeds if growth_runs]
    for rung in range(args.add_rungs + 1):
        runs, named = static_plan({g['seed']: g['flops'] for g in growth})
        results = run_all(runs, args)
        statics = [dict(run_figures(results[name], f_ref), **fields) for name, fields in named]
        if args.ladder_only:
            print('\n'.join(size_table(statics)))
            return
        below = [g for g in growth if g['val'] < min(r['val'] for r in statics if r['seed'] == g['seed'])]
        if not below or rung == args.add_rungs:
            break
        add_rung(ladder, sizes)
        print(f"bench_growth: growth seed {below[0]['seed']} ends below every static run ({below[0]['val']:.4f}): "
              f"adding the {ladder[-1]:g} x F_ref rung", flush=True)
    records = growth + statics
    os.makedirs(os.path.dirname(report) or '.', exist_ok=True)
    with open(report + '.results.jsonl', 'w') as f:
        f.writelines(json.dumps(r) + '\n' for r in records)
    write_report(records, report)


def run_figures(result, f_ref):
    """What results.jsonl keeps of a run: its FLOPs, budget, final val and extra val, and the eval's batches."""
    evals, _, final = result
    return dict(budget=evals[-1]['flops'] / f_ref, flops=evals[-1]['flops'], val=final_val(result),
                extra_val=final.get('extra_val_loss') if final else None,
                eval_batches=final['batches'] if final else evals[-1]['eval_iters'], f_ref=f_ref)


def static_runs(sizes, factors, families, budgets, nominal, seed, common, setting, iters_at, growth_name, final):
    """Every size at every lr factor and family through the budgets {label: flops} ({label: x F_ref} in
    nominal; each size at those of its ladder, size_budgets): the runs {name: (train.py args, parent)} and,
    per run that ends at a budget, (name, its results.jsonl fields).
    The table lr's runs keep their names from before lr factors (so --reuse keeps them)."""
    runs, named = {}, []
    for size in sizes:
        at = size_budgets(size, budgets, nominal, final)
        for factor in factors:
            tuned = dict(size, lr=size['lr'] * factor, min_lr=size['min_lr'] * factor)
            for family in families:
                prefix = f"static-{size['name']}" + (f"-lr{tuned['lr']:g}" if factor != 1 else '') + f"-{family}"
                labels = {label: (label if label != 'matched' else f"matched-{growth_name}") for label in at}
                if family == 'wsd':
                    branch_runs, names = wsd_branches(f"{prefix}-seed{seed}", tuned, {
                        labels[label]: iters_at(size, flops) for label, flops in at.items()}, setting, common)
                    runs.update(branch_runs)
                else:
                    names = {labels[label]: f"{prefix}-{labels[label]}-seed{seed}" for label in at}
                    runs.update({names[labels[label]]: ([*common, *static_args(tuned, iters_at(size, flops), family,
                                                                               setting)], None)
                                 for label, flops in at.items()})
                for label in at:
                    named.append((names[labels[label]], dict(
                        arm='static', size=size['name'], seed=seed, budget=nominal[label], lr=tuned['lr'],
                        table_lr=size['lr'], schedule=family, at_growth_budget=label == 'matched')))
    return runs, named


RESULT_FIELDS = ('arm', 'size', 'seed', 'budget', 'lr', 'flops', 'val', 'f_ref')


def read_results(path):
    """The records of a results.jsonl, one run a line (a UserError naming the line if one is not)."""
    if not os.path.isfile(path):
        raise UserError(f"--report_from: {path} not found")
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}, line {number}: not JSON ({e.msg})") from None
            missing = [k for k in RESULT_FIELDS if not isinstance(record, dict) or k not in record]
            if missing or record['arm'] not in ('growth', 'static'):
                raise UserError(f"{path}, line {number}: expected a run with {', '.join(RESULT_FIELDS)} "
                                f"(arm growth or static)" + (f"; missing {missing[0]}" if missing else ''))
            records.append(record)
    if not any(r['arm'] == 'growth' for r in records):
        raise UserError(f"{path}: no growth run")
    for g in (r for r in records if r['arm'] == 'growth'):
        if not any(r['arm'] == 'static' and r.get('at_growth_budget') and (r['seed'], r['size']) == (g['seed'], g['size'])
                   for r in records):
            raise UserError(f"{path}: no static run of size {g['size']} at the growth budget of seed {g['seed']} "
                            "(at_growth_budget: true)")
    return records


def report_beside(results_path):
    """docs/x.results.jsonl -> docs/x: the report a results file was written beside."""
    for suffix in ('.results.jsonl', '.jsonl'):
        if results_path.endswith(suffix):
            return results_path[:-len(suffix)]
    return results_path


def budget_key(record):
    return 'growth' if record.get('at_growth_budget') else record['budget']


def best_static(statics):
    """{(size, budget key): the record of the lowest final val over that size's lrs and schedules}."""
    best = {}
    for r in statics:
        key = (r['size'], budget_key(r))
        if key not in best or r['val'] < best[key]['val']:
            best[key] = r
    return best


def envelope(best):
    """The best size at each budget ({budget key: record}) and the lower hull through those points: one
    point a budget, so that sizes whose FLOPs differ by a rounded iter do not make a vertical segment."""
    at_budget = {}
    for (_, key), r in best.items():
        if key not in at_budget or r['val'] < at_budget[key]['val']:
            at_budget[key] = r
    return at_budget, lower_hull([(r['flops'], r['val']) for r in at_budget.values()])


def pooled_statics(statics, seeds):
    """The static runs averaged over seeds, per size, budget, lr and schedule (those run on every seed)."""
    groups = {}
    for r in statics:
        groups.setdefault((r['size'], budget_key(r), r['lr'], r.get('schedule', 'wsd')), []).append(r)
    pooled = []
    for runs in groups.values():
        if sorted(r['seed'] for r in runs) == sorted(seeds):
            extras = [r.get('extra_val') for r in runs]
            pooled.append(dict(runs[0], seed='pooled', val=statistics.fmean(r['val'] for r in runs),
                               flops=statistics.fmean(r['flops'] for r in runs),
                               extra_val=statistics.fmean(extras) if None not in extras else None))
    return pooled


def compare(growth, statics):
    """One row: a growth run (or the seeds' median) against its statics: the envelope (hull) and the same
    size, each speedup with its bound ('' measured, '>' or '<' outside the static range), and on the
    other text, the best static at the growth budget."""
    best = best_static(statics)
    at_budget, hull = envelope(best)
    env_flops, env_bound = compute_equivalent(hull, growth['val'])
    same_flops, same_bound = compute_equivalent(
        [(r['flops'], r['val']) for (size, _), r in best.items() if size == growth['size']], growth['val'])
    matched = {size: r for (size, key), r in best.items() if key == 'growth'}
    extra = {size: r['extra_val'] for size, r in matched.items() if r.get('extra_val') is not None}
    return dict(seed=growth['seed'], growth=growth['val'], budget=growth['budget'], growth_extra=growth.get('extra_val'),
                same=matched[growth['size']]['val'], envelope=at_budget['growth'],
                speedup_envelope=(env_flops / growth['flops'], env_bound),
                speedup_same=(same_flops / growth['flops'], same_bound), hull=hull, best=best,
                extra_best=min(extra.items(), key=lambda kv: kv[1]) if extra else None)


def is_win(speedup):
    """A speedup above 1, measured or a lower bound: the same envelope gives the speedup and the win."""
    value, bound = speedup
    return value > 1 and bound != '<'


def median_speedup(speedups):
    """The median of (value, bound) pairs, bound '' unless a middle one is a bound."""
    ordered = sorted(speedups)
    middle = ordered[(len(ordered) - 1) // 2:len(ordered) // 2 + 1]
    return statistics.fmean(v for v, _ in middle), next((b for _, b in middle if b), '')


def bootstrap_ci90(values, resamples=10_000, seed=0):
    """The 5th and 95th percentiles of the median of seeds resampled with replacement (a fixed rng)."""
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(np.asarray(values), size=(resamples, len(values)), replace=True), axis=1)
    return float(np.percentile(medians, 5)), float(np.percentile(medians, 95))


def shown(speedup, digits=2):
    value, bound = speedup
    return f"{bound}{value:.{digits}f}"


def write_report(records, report):
    """REPORT.md, REPORT.png and the summary line, from results.jsonl's records alone."""
    growths = sorted((r for r in records if r['arm'] == 'growth'), key=lambda r: r['seed'])
    statics = [r for r in records if r['arm'] == 'static']
    seeds = [g['seed'] for g in growths]
    rows = [compare(g, [r for r in statics if r['seed'] == g['seed']]) for g in growths]
    extras = [g.get('extra_val') for g in growths]
    median_growth = dict(growths[0], seed='pooled', val=statistics.median(g['val'] for g in growths),
                         budget=statistics.median(g['budget'] for g in growths),
                         flops=statistics.median(g['flops'] for g in growths),
                         extra_val=statistics.median(extras) if None not in extras else None)
    pooled = compare(median_growth, pooled_statics(statics, seeds))
    env_speedups = [r['speedup_envelope'] for r in rows]
    ci_low, ci_high = bootstrap_ci90([v for v, _ in env_speedups])
    median = statistics.median
    first, f_ref = growths[0], growths[0]['f_ref']
    table_lrs = {r['size']: r.get('table_lr', r['lr']) for r in statics}
    factors = sorted({round(r['lr'] / table_lrs[r['size']], 6) for r in statics})
    batches = sorted({r.get('eval_batches') for r in records}, key=str)

    lines = [f"# growth vs the static envelope at matched compute: {first.get('config', '?')} + {first.get('recipe', '?')}",
             '', f"seeds {','.join(map(str, seeds))}; overrides {first.get('overrides') or 'none'}; F_ref = {f_ref:.3e} "
             f"training FLOPs; final eval on {', '.join(map(str, batches))} batches (the figure of every table); static "
             f"budgets {','.join(f'{b:g}' for b in sorted({r['budget'] for r in statics if not r.get('at_growth_budget')}))} "
             f"x F_ref and each growth run's budget; each size at its table lr times {', '.join(f'{f:g}' for f in factors)} "
             f"(the best per size, budget and seed): " + ', '.join(
                 f"{size} (lr {table:g})" for size, table in table_lrs.items()) + '.', '',
             *[line for source in dict.fromkeys(r['source'] for r in records if 'source' in r)
               for line in (f"raw results: {source}", '')],
             "| seed | growth budget (x F_ref) | growth final val | same size, same budget | envelope, same budget "
             "(size, lr) | speedup vs envelope | speedup vs same size | other text: growth | other text: best static, "
             "same budget (size) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows + [pooled]:
        env = r['envelope']
        extra = (f"{r['growth_extra']:.4f}" if r['growth_extra'] is not None else '-',
                 f"{r['extra_best'][1]:.4f} ({r['extra_best'][0]})" if r['extra_best'] else '-')
        lines.append(f"| {r['seed']} | {r['budget']:.3f} | {r['growth']:.4f} | {r['same']:.4f} | {env['val']:.4f} "
                     f"({env['size']}, {env['lr']:g}) | {shown(r['speedup_envelope'])} | {shown(r['speedup_same'])} | "
                     f"{extra[0]} | {extra[1]} |")
    bounds = sum(bool(b) for _, b in env_speedups)
    lines += ['', "pooled: each static size, budget and lr averaged over the seeds, the best lr per size and budget, "
              "the hull through the best size at each budget; growth: the seeds' median final val and budget. "
              f"The median of the per-seed speedups vs the envelope has a 90% interval of {ci_low:.2f} to {ci_high:.2f} "
              "(bootstrap over seeds: 10000 resamples with replacement, rng seed 0, 5th and 95th percentiles). "
              "A win is a speedup above 1 on the envelope that gives it."
              + (f" {bounds} of {len(rows)} seeds' speedups vs the envelope are bounds ('>': the growth run ends "
                 "below every static run, '<': above every one): a larger or smaller rung is needed to measure them."
                 if bounds else ''), '',
              "the pooled envelope (bold: on the hull):", '', "| budget (x F_ref) | best size (lr) | val |", "|---|---|---|"]
    at_budget, hull = envelope(pooled['best'])
    for key, r in sorted(at_budget.items(), key=lambda kv: kv[1]['flops']):
        cell = f"{r['val']:.4f}"
        lines.append(f"| {r['budget']:.3f}{' (growth)' if key == 'growth' else ''} | {r['size']} ({r['lr']:g}) | "
                     + (f"**{cell}**" if any(math.isclose(f, r['flops']) and v == r['val'] for f, v in hull) else cell)
                     + " |")
    lines += ['', *size_table(statics)]
    extras = [(r['growth_extra'], r['extra_best']) for r in rows if r['growth_extra'] is not None and r['extra_best']]
    summary = (f"speedup_envelope_median={shown(median_speedup(env_speedups), 3)} "
               f"speedup_same_size_median={shown(median_speedup([r['speedup_same'] for r in rows]), 3)} "
               f"budget_ratio_median={median(r['budget'] for r in rows):.3f} "
               f"growth_val_median={median(r['growth'] for r in rows):.4f} "
               f"envelope_wins={sum(is_win(r['speedup_envelope']) for r in rows)}/{len(rows)} "
               f"same_size_wins={sum(is_win(r['speedup_same']) for r in rows)}/{len(rows)} "
               f"speedup_envelope_pooled={shown(pooled['speedup_envelope'], 3)} ci90={ci_low:.3f}..{ci_high:.3f} "
               f"seeds={','.join(map(str, seeds))}"
               + (f" other_text_wins={sum(g < best[1] for g, best in extras)}/{len(extras)}" if extras else ''))
    lines += ['', f"medians: {summary}"]
    os.makedirs(os.path.dirname(report) or '.', exist_ok=True)
    with open(report + '.md', 'w') as f:
        f.write('\n'.join(lines) + '\n')
    plot(rows + [pooled], f_ref, first.get('recipe', 'growth'), report + '.png')
    print('\n'.join(lines))
    print(f"wrote {report}.md and {report}.png")
    print(summary)


def size_table(statics):
    """Each static size's final val at each budget, at its best lr (in brackets where more than one lr
    ran), per seed; the envelope there in bold: markdown lines."""
    keys = sorted({budget_key(r) for r in statics}, key=lambda k: (k == 'growth', k if k != 'growth' else 0))
    several_lrs = len({(r['lr'], r['size']) for r in statics}) > len({r['size'] for r in statics})
    heads = [f"{k:g} x F_ref" if k != 'growth' else 'growth budget' for k in keys]
    lines = ["each static size's final val at each budget" + (" (its best lr)" if several_lrs else '')
             + " (bold: the envelope there):", '', "| seed | size | " + ' | '.join(heads) + " |",
             "|---|---|" + '---|' * len(keys)]
    for seed in sorted({r['seed'] for r in statics}):
        best = best_static([r for r in statics if r['seed'] == seed])
        lowest = {k: min(r['val'] for (_, key), r in best.items() if key == k) for k in keys}
        for size in dict.fromkeys(r['size'] for r in statics):
            cells = []
            for k in keys:
                if (size, k) not in best:
                    cells.append('-')
                    continue
                r = best[size, k]
                cell = f"{r['val']:.4f}" + (f" ({r['lr']:g})" if several_lrs else '')
                cells.append(f"**{cell}**" if r['val'] == lowest[k] else cell)
            lines.append(f"| {seed} | {size} | " + ' | '.join(cells) + " |")
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


def plot(rows, f_ref, recipe, path):
    """Per seed and pooled: each static size's final val (at its best lr) against training FLOPs (log x),
    the envelope thick (the lower hull through the best size at each budget: no vertical segment where
    sizes' FLOPs differ by a rounded iter), the growth run's final val a star."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(7 * len(rows), 5.5), squeeze=False)
    for ax, row in zip(axes[0], rows):
        by_size = {}
        for (size, _), r in row['best'].items():
            by_size.setdefault(size, []).append((r['flops'] / f_ref, r['val']))
        for size, points in by_size.items():
            ax.plot(*zip(*sorted(points)), marker='o', linewidth=1, alpha=0.8, label=f"static {size}")
        ax.plot([f / f_ref for f, _ in row['hull']], [v for _, v in row['hull']], color='black', linewidth=3,
                alpha=0.6, label='static envelope (lower hull)')
        ax.plot([row['budget']], [row['growth']], color='tab:red', marker='*', markersize=14, linestyle='',
                label=f"growth: {recipe}")
        finals = [v for points in by_size.values() for _, v in points] + [row['growth']]
        ax.set_xscale('log')
        ax.set_ylim(min(finals) - 0.05, max(finals) + 0.05)
        ax.set_xlabel('training FLOPs / F_ref (log)')
        ax.set_ylabel('final val loss (fixed eval batches)')
        ax.set_title(f"{'seed ' if row['seed'] != 'pooled' else ''}{row['seed']}: speedup vs envelope "
                     f"{shown(row['speedup_envelope'])}, vs same size {shown(row['speedup_same'])}")
        ax.grid(alpha=0.3, which='both')
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == '__main__':
    main()
