"""sample.py, bench.py and bench_ops.py on a tiny model that grew during training: layers stacked,
MLP widened, attention LoRA on, and an MSG ramp still rising when the checkpoint was written."""

import pickle
import re
import shutil
from contextlib import nullcontext

import numpy as np
import pytest
import torch

import train
from helpers import SHAKESPEARE, read_events, run_script, run_train, train_args, write_char_data, write_schedule
from model import GPT
from test_prepare import gpt2_cached

pytestmark = pytest.mark.slow  # every test here runs train.py or another script as a subprocess

# stack to 2 layers and widen the MLP 128 -> 256 at iter 10, MSG-widen it to 384 at iter 20 (mask 0.1 at 30)
GROWTH = [('stack_layers', 2, 0.0, 10, False),
          ('widen_mlp', 2.0, 0.0, 0, False),
          ('msg_widen_mlp', {'factor': 1.5, 'anneal_iters': 100}, 0.0, 10, False)]
TINY_SHAPE = ['--n_layer=2', '--n_embd=32', '--n_head=2', '--vocab_size=65', '--block_size=32']
SEPARATOR = '\n---------------\n'


def run(script, *args):
    return run_script([script, *args])


@pytest.fixture(scope='module')
def grown_run(tmp_path_factory):
    """A 30-iter tiny run with GROWTH and attn LoRA rank 4: (data folder, out folder, its train.py args)."""
    root = tmp_path_factory.mktemp('grown')
    data, out = root / 'data', root / 'out'
    write_char_data(data)
    schedule = write_schedule(root / 'grow.json', GROWTH)
    args = train_args(data, out, max_iters=30, always_save_checkpoint=True, attn_lora_rank=4)
    result = run_train(args + [f'--scaling_schedule_file={schedule}'])
    assert result.returncode == 0, result.stderr
    return data, out, args


def sample_texts(stdout):
    """Each printed sample (prompt included), from sample.py's output after its 'Overriding:' lines."""
    lines = stdout.split('\n')
    while lines[0].startswith('Overriding: '):
        lines.pop(0)
    blocks = '\n'.join(lines).split(SEPARATOR)
    assert blocks[-1] == '', stdout[-2000:]
    return blocks[:-1]


def test_sample_from_a_grown_checkpoint(grown_run):
    data, out, _ = grown_run
    args = [f'--out_dir={out}', '--device=cpu', '--num_samples=2', '--max_new_tokens=50', '--seed=7']
    first = run('sample.py', *args)
    assert first.returncode == 0, first.stderr
    texts = sample_texts(first.stdout)
    assert len(texts) == 2
    vocab = set(pickle.load(open(data / 'meta.pkl', 'rb'))['stoi'])
    for text in texts:
        assert len(text) == 51 and text[0] == '\n'  # the prompt "\n", then 50 new characters
        assert set(text) <= vocab
    assert texts[0] != texts[1]
    assert sample_texts(run('sample.py', *args).stdout) == texts  # same seed, same text
    assert sample_texts(run('sample.py', *args[:-1], '--seed=8').stdout) != texts


def test_sample_rebuilds_the_trained_model(grown_run, monkeypatch):
    """GPT.from_checkpoint (sample.py's model) gives the model the run had at its last eval: 2 layers, MLP 384 with 128
    units still masked at 0.1, LoRA on; its val loss on the run's fixed eval batches is the one logged."""
    data, out, _ = grown_run
    checkpoint = train.load_checkpoint(str(out / 'ckpt.pt'))
    model = GPT.from_checkpoint(checkpoint)
    c = model.config
    assert (c.n_layer, c.n_hidden, c.attn_lora_rank, c.ramp) == (2, 384, 4, {'kind': 'mlp', 'n_unmasked': 256})
    assert model.growth_mask.item() == pytest.approx(0.1)  # (30 - 20) / 100
    for key, value in dict(data_dir=str(data), block_size=32, batch_size=4, eval_iters=2, device='cpu').items():
        monkeypatch.setattr(train, key, value)
    logged = [e for e in read_events(out) if e['event'] == 'eval' and e['iter'] == 30][0]
    assert train.estimate_loss(model, nullcontext(), 0, False)['val'] == pytest.approx(logged['val_loss'], abs=1e-6)
    model.set_growth_mask(1.0)  # the mask matters: unmasked, the loss is another
    assert abs(train.estimate_loss(model, nullcontext(), 0, False)['val'] - logged['val_loss']) > 1e-5


def test_sample_errors(grown_run, tmp_path):
    _, out, _ = grown_run
    missing = run('sample.py', f'--out_dir={tmp_path}', '--device=cpu')
    assert missing.returncode == 2
    assert missing.stderr == f"error: out_dir: no checkpoint at {tmp_path}/ckpt.pt\n"

    checkpoint = torch.load(out / 'ckpt.pt', weights_only=True)
    checkpoint['config']['data_dir'] = str(tmp_path / 'gone')
    torch.save(checkpoint, tmp_path / 'ckpt.pt')
    no_meta = run('sample.py', f'--out_dir={tmp_path}', '--device=cpu')
    assert no_meta.returncode == 2
    assert no_meta.stderr == (f"error: {tmp_path}/gone/meta.pkl not found: sample.py decodes with the "
                              "meta.pkl of the run's data\n")

    no_prompt = run('sample.py', f'--out_dir={out}', '--device=cpu', f'--start=FILE:{tmp_path}/none.txt')
    assert no_prompt.returncode == 2
    assert no_prompt.stderr.startswith(f"error: start: cannot read the prompt file {tmp_path}/none.txt: ")
    assert 'Traceback' not in no_prompt.stderr


def test_sample_with_a_prompt_file(grown_run, tmp_path):
    _, out, _ = grown_run
    (tmp_path / 'prompt.txt').write_text('ROMEO:\nO', encoding='utf-8')
    result = run('sample.py', f'--out_dir={out}', '--device=cpu', '--num_samples=2', '--max_new_tokens=10',
                 f'--start=FILE:{tmp_path / "prompt.txt"}')
    assert result.returncode == 0, result.stderr
    texts = sample_texts(result.stdout)
    assert len(texts) == 2 and all(t.startswith('ROMEO:\nO') and len(t) == 18 for t in texts)

    (tmp_path / 'prompt.txt').write_text('ROMEO: \u00e9', encoding='utf-8')
    unknown = run('sample.py', f'--out_dir={out}', '--device=cpu', f'--start=FILE:{tmp_path / "prompt.txt"}')
    assert unknown.returncode == 2
    assert unknown.stderr == "error: start: the character '\u00e9' is not in the vocabulary\n"


@pytest.mark.skipif(not gpt2_cached(), reason="tiktoken's gpt2 BPE files are not cached and tests stay offline")
def test_sample_gpt2_tokens(tmp_path):
    """A BPE run (meta.pkl tokenizer 'gpt2') encodes the prompt and decodes the samples through tiktoken."""
    import tiktoken
    enc = tiktoken.get_encoding('gpt2')
    with open(SHAKESPEARE, encoding='utf-8') as f:
        tokens = np.array(enc.encode_ordinary(f.read(20_000)), dtype=np.uint16)
    data = tmp_path / 'data'
    data.mkdir()
    tokens[:len(tokens) * 9 // 10].tofile(data / 'train.bin')
    tokens[len(tokens) * 9 // 10:].tofile(data / 'val.bin')
    with open(data / 'meta.pkl', 'wb') as f:
        pickle.dump({'vocab_size': enc.n_vocab, 'tokenizer': 'gpt2'}, f)
    trained = run_train(train_args(data, tmp_path / 'out', max_iters=2, eval_interval=1))
    assert trained.returncode == 0, trained.stderr

    result = run('sample.py', f'--out_dir={tmp_path / "out"}', '--device=cpu', '--num_samples=2',
                 '--max_new_tokens=5', '--start=ROMEO:')
    assert result.returncode == 0, result.stderr
    texts = sample_texts(result.stdout)
    assert len(texts) == 2 and all(t.startswith('ROMEO:') and len(t) > len('ROMEO:') for t in texts)


def model_line(stdout):
    match = re.search(r'^model: n_layer (\d+), n_head (\d+), n_embd (\d+), n_hidden (\d+), vocab (\d+), '
                      r'params [\d.]+M; batch (\d+) x accum (\d+) x block (\d+), (real|random) data', stdout, re.M)
    assert match, stdout[-2000:]
    return tuple(int(x) for x in match.groups()[:-1]) + (match[9],)


def summary(stdout):
    """ms/iter and tokens/s of bench.py's last line; on the cpu it has no mfu (that is against a GPU's peak)."""
    match = re.search(r'^ms/iter ([\d.]+), tokens/s (\d+)$', stdout, re.M)
    assert match, stdout[-2000:]
    return float(match[1]), int(match[2])


def step_losses(stdout, pattern=r'^step \d+: loss ([\d.]+), [\d.]+ms'):
    return re.findall(pattern, stdout, re.M)


def test_bench_random_and_real_data(grown_run, tmp_path):
    data, _, _ = grown_run
    common = ['--device=cpu', '--compile=False', '--batch_size=4', '--block_size=32', '--gradient_accumulation_steps=1',
              '--n_layer=1', '--n_head=2', '--n_embd=32', '--num_steps=3', '--warmup_steps=1']
    # random tokens need no data at all
    fresh = run('bench.py', *common, f'--data_dir={tmp_path / "none"}', '--real_data=False', '--vocab_size=65')
    assert fresh.returncode == 0, fresh.stderr
    assert model_line(fresh.stdout) == (1, 2, 32, 128, 65, 4, 1, 32, 'random')
    assert len(step_losses(fresh.stdout)) == 4
    assert all(x > 0 for x in summary(fresh.stdout))

    real = run('bench.py', *common, f'--data_dir={data}')
    assert real.returncode == 0, real.stderr
    vocab_size = pickle.load(open(data / 'meta.pkl', 'rb'))['vocab_size']
    assert model_line(real.stdout) == (1, 2, 32, 128, vocab_size, 4, 1, 32, 'real')
    assert all(x > 0 for x in summary(real.stdout))

    no_data = run('bench.py', *common, f'--data_dir={tmp_path / "none"}')
    assert no_data.returncode == 2
    assert no_data.stderr.startswith(f"error: data: {tmp_path / 'none'}/train.bin not found")


def test_bench_a_grown_checkpoint(grown_run, tmp_path):
    """From the checkpoint alone (its settings, architecture, optimizer state, data stream, mask ramp),
    bench.py takes the very steps train.py takes when it resumes: the same losses."""
    data, out, args = grown_run
    grown = run('bench.py', '--init_from=resume', f'--out_dir={out}', '--device=cpu', '--num_steps=2',
                '--warmup_steps=1')
    assert grown.returncode == 0, grown.stderr
    c = torch.load(out / 'ckpt.pt', weights_only=True)['model_args']
    assert model_line(grown.stdout) == (c['n_layer'], c['n_head'], c['n_embd'], c['n_hidden'], c['vocab_size'],
                                        4, 1, 32, 'real')
    assert (c['n_layer'], c['n_hidden']) == (2, 384)
    assert all(x > 0 for x in summary(grown.stdout))

    shutil.copytree(out, tmp_path / 'resumed')
    resumed = run_train(args + [f'--out_dir={tmp_path / "resumed"}', '--init_from=resume', '--max_iters=33'])
    assert resumed.returncode == 0, resumed.stderr
    logged = step_losses(resumed.stdout, r'^iter 3[012]/33: loss ([\d.]+),')
    assert len(logged) == 3 and step_losses(grown.stdout) == logged


@pytest.mark.parametrize('optimizer', ['adamw', 'muon'])
def test_bench_ops_tiny(optimizer):
    result = run('bench_ops.py', *TINY_SHAPE, f'--optimizer={optimizer}')
    assert result.returncode == 0, result.stderr
    rows = re.findall(r'^(\w+)\s+([\d.]+)\s+([\d,]+) ->\s+([\d,]+)\s+(\d+)/(\d+)\s+(yes|no)\s+([\d.]+)\s+([\d.]+)$',
                      result.stdout, re.M)
    assert [r[0] for r in rows] == ['stack_layers', 'widen_mlp', 'change_attn_lora_rank', 'merge_lora_weights',
                                    'change_lora_alpha', 'msg_widen_mlp', 'msg_add_heads', 'msg_stack_layers',
                                    'msg_widen_embd']
    growing = {r[0] for r in rows if int(r[3].replace(',', '')) > int(r[2].replace(',', ''))}
    assert growing == {'stack_layers', 'widen_mlp', 'change_attn_lora_rank', 'msg_widen_mlp', 'msg_add_heads',
                       'msg_stack_layers', 'msg_widen_embd'}
    # carried / trainable tensors: 2 layers x 6 + wte, wpe, ln_f = 15, all carried; with attn LoRA a block's
    # 2 attention weights are frozen (out of the optimizer) and its 4 adapters (A, B of both) start fresh
    carried = {r[0]: (int(r[4]), int(r[5])) for r in rows}
    lora_ops = {'change_attn_lora_rank', 'merge_lora_weights', 'change_lora_alpha'}
    assert carried == {name: (11, 19) if name in lora_ops else (15, 15) for name in carried}
    # each op as a multiple of its floor (a clone of the grown model's weights and moments); the worst named last
    ratios = {r[0]: float(r[8]) for r in rows}
    assert all(ratio > 0 for ratio in ratios.values())
    worst = max(ratios, key=ratios.get)
    assert result.stdout.strip().splitlines()[-1] == f"worst_op_ratio={ratios[worst]:.2f} ({worst})"

