"""sample.py, bench.py and bench_ops.py on a tiny model that grew during training."""

import pickle
import re
import subprocess
import sys

import pytest

from helpers import REPO, run_train, train_args, train_env, write_char_data, write_schedule

TINY_SHAPE = ['--n_layer=2', '--n_embd=32', '--n_head=2', '--vocab_size=65', '--block_size=32']


def run(script, *args):
    return subprocess.run([sys.executable, script, *args], cwd=REPO, env=train_env(), capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope='module')
def grown_run(tmp_path_factory):
    """A tiny run that stacked its layers and widened its mlp: (data folder, out folder)."""
    root = tmp_path_factory.mktemp('grown')
    data, out = root / 'data', root / 'out'
    write_char_data(data)
    schedule = write_schedule(root / 'grow.json', [('stack_layers', 2, 0.0, 10, False),
                                                   ('widen_mlp', 2.0, 0.0, 10, False)])
    result = run_train(train_args(data, out, scaling_schedule_file=schedule, max_iters=30, always_save_checkpoint=True))
    assert result.returncode == 0, result.stderr
    return data, out


def samples(stdout, new_tokens=50):
    """The generated text of each sample: its last new_tokens characters (after the prompt "\\n")."""
    blocks = stdout.split('---------------\n')[:-1]
    for block in blocks:
        assert block[-new_tokens - 2] == '\n' and block.endswith('\n')  # the prompt; print's newline
    return [block[-new_tokens - 1:-1] for block in blocks]


def test_sample_from_a_grown_checkpoint(grown_run):
    data, out = grown_run
    args = [f'--out_dir={out}', '--device=cpu', '--num_samples=2', '--max_new_tokens=50', '--seed=7']
    first, second = run('sample.py', *args), run('sample.py', *args)
    assert first.returncode == 0, first.stderr
    texts = samples(first.stdout)
    assert len(texts) == 2
    vocab = set(pickle.load(open(data / 'meta.pkl', 'rb'))['stoi'])
    for text in texts:
        assert len(text) == 50 and set(text) <= vocab
    assert samples(second.stdout) == texts  # same seed, same text
    assert samples(run('sample.py', *args[:-1], '--seed=8').stdout) != texts


def test_sample_without_a_checkpoint(tmp_path):
    result = run('sample.py', f'--out_dir={tmp_path}', '--device=cpu')
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: init_from='resume': no checkpoint at {tmp_path}/ckpt.pt"


def summary(stdout):
    match = re.search(r'^ms/iter ([\d.]+), tokens/s ([\d,]+), mfu ([\d.]+)%$', stdout, re.M)
    assert match, stdout[-2000:]
    return float(match[1]), int(match[2].replace(',', '')), float(match[3])


def test_bench_fresh_and_grown(grown_run):
    data, out = grown_run
    common = [f'--data_dir={data}', '--device=cpu', '--compile=False', '--batch_size=4', '--block_size=32',
              '--num_steps=3', '--warmup_steps=1']
    fresh = run('bench.py', *common, '--n_layer=1', '--n_head=2', '--n_embd=32')
    assert fresh.returncode == 0, fresh.stderr
    ms, tokens_per_s, mfu = summary(fresh.stdout)
    assert ms > 0 and tokens_per_s > 0 and mfu > 0
    assert 'model: n_layer 1, n_head 2, n_embd 32, n_hidden 128,' in fresh.stdout
    assert len(re.findall(r'^step \d+: loss', fresh.stdout, re.M)) == 4

    grown = run('bench.py', *common, f'--out_dir={out}', '--init_from=resume')
    assert grown.returncode == 0, grown.stderr
    assert 'model: n_layer 2, n_head 2, n_embd 32, n_hidden 256,' in grown.stdout
    assert all(x > 0 for x in summary(grown.stdout))


def test_bench_ops_tiny():
    result = run('bench_ops.py', *TINY_SHAPE)
    assert result.returncode == 0, result.stderr
    rows = re.findall(r'^(\w+)\s+([\d.]+)\s+([\d,]+) ->\s+([\d,]+)\s+(yes|no)$', result.stdout, re.M)
    assert [r[0] for r in rows] == ['stack_layers', 'widen_mlp', 'change_attn_lora_rank', 'merge_lora_weights',
                                    'change_lora_alpha', 'msg_widen_mlp', 'msg_add_heads', 'msg_stack_layers',
                                    'msg_widen_embd']
    growing = {r[0] for r in rows if int(r[3].replace(',', '')) > int(r[2].replace(',', ''))}
    assert growing == {'stack_layers', 'widen_mlp', 'change_attn_lora_rank', 'msg_widen_mlp', 'msg_add_heads',
                       'msg_stack_layers', 'msg_widen_embd'}
