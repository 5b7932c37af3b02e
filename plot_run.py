"""
Draw one or more runs from their events.jsonl: train/val loss against iterations and against
cumulative training FLOPs, with a marker labelled with the op name wherever an operation fired.

$ python plot_run.py out-growth out-static --out=compare.png
"""

import argparse
import json
import os


def read_events(out_dir):
    with open(os.path.join(out_dir, 'events.jsonl')) as f:
        events = [json.loads(line) for line in f if line.strip()]
    evals = [e for e in events if e['event'] == 'eval']
    ops = [e for e in events if e['event'] == 'op']
    return evals, ops


def plot_runs(runs, path, title=''):
    """runs: a list of (label, evals, ops). Writes a PNG with two panels to path."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    for (label, evals, ops), color in zip(runs, plt.rcParams['axes.prop_cycle'].by_key()['color'] * 10):
        flops_at = {e['iter']: e['flops'] for e in evals}
        for ax, x_key in zip(axes, ('iter', 'flops')):
            xs = [e[x_key] for e in evals]
            ax.plot(xs, [e['val_loss'] for e in evals], color=color, label=f"{label} val")
            ax.plot(xs, [e['train_loss'] for e in evals], color=color, linestyle=':', alpha=0.6,
                    label=f"{label} train")
            for op in ops:
                x = op['iter'] if x_key == 'iter' else flops_at.get(op['iter'])
                if x is None:
                    continue
                ax.axvline(x, color=color, linestyle='--', alpha=0.35)
                ax.annotate(op['name'], (x, op['val_loss_before']), rotation=90, fontsize=7, color=color,
                            xytext=(2, 8), textcoords='offset points')
    axes[0].set_xlabel('iteration')
    axes[1].set_xlabel('cumulative training FLOPs')
    for ax in axes:
        ax.set_ylabel('loss')
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('out_dirs', nargs='+', help="run folders holding events.jsonl")
    parser.add_argument('--out', default='run.png', help="the PNG to write")
    args = parser.parse_args()
    runs = []
    for out_dir in args.out_dirs:
        if not os.path.isfile(os.path.join(out_dir, 'events.jsonl')):
            parser.error(f"{out_dir}: no events.jsonl (is it a train.py out_dir?)")
        runs.append((os.path.basename(os.path.normpath(out_dir)), *read_events(out_dir)))
    plot_runs(runs, args.out)
    print(f"wrote {args.out}")


if __name__ == '__main__':
    main()
