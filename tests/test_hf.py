"""Hugging Face GPT-2 in and out, offline: small random GPT2LMHeadModels saved to tmp folders are
imported (GPT.from_hf, train.py --init_from=FOLDER), tiny runs (trained, grown, LoRA, imported and
stacked) are exported with export_hf.py and read back with transformers. Logits agree to 1e-4 (fp32)."""

import json
import os
import pickle
import sys
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F
import transformers

import export_hf
import train
from helpers import (TINY, describe_run, read_events, run_script, run_train, train_args, write_char_data,
                     write_schedule)
from model import GPT, GPTConfig

TOLERANCE = 1e-4
# GPT-2's own init (std 0.02) gives near-uniform logits on which exact and tanh GELU agree to 1e-6; at
# std 0.2 the logits reach a few units and the two GELUs differ by ~1e-3, so a 1e-4 match means something
HF_SHAPE = dict(n_positions=64, n_embd=32, n_layer=2, n_head=2, initializer_range=0.2)
SHAPE_FROM_WEIGHTS = dict(n_layer=None, n_head=None, n_embd=None, bias=None)  # drops TINY's shape keys


def save_random_gpt2(folder, vocab_size, seed=0, **config):
    """A random transformers GPT2LMHeadModel (HF_SHAPE, overridden by config) saved to folder."""
    torch.manual_seed(seed)
    hf_config = transformers.GPT2Config(vocab_size=vocab_size, bos_token_id=None, eos_token_id=None,
                                        **dict(HF_SHAPE, **config))
    model = transformers.GPT2LMHeadModel(hf_config).eval()
    model.save_pretrained(folder)
    return model


def write_tiny_bpe(folder):
    """A GPT-2 byte-level BPE tokenizer's files: printable ASCII, space (Ġ), newline (Ċ), one merge, <|endoftext|>."""
    tokens = [chr(c) for c in range(33, 127)] + ['\u0120', '\u010a', 'hi', '<|endoftext|>']
    (folder / 'vocab.json').write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / 'merges.txt').write_text('#version: 0.2\nh i\n')
    return len(tokens)


@torch.no_grad()
def our_logits(model, idx):
    model.eval()
    return model(idx, torch.zeros_like(idx))[0]  # with targets, the logits of every position


@torch.no_grad()
def hf_logits(hf_model, idx):
    return hf_model.eval()(idx).logits


def max_diff(a, b):
    return (a - b).abs().max().item()


class HFLoss(torch.nn.Module):
    """A transformers model behind our forward's (logits, loss) interface, for train.estimate_loss."""

    def __init__(self, hf_model):
        super().__init__()
        self.hf_model = hf_model

    def forward(self, idx, targets):
        logits = self.hf_model(idx).logits
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def eval_losses(model, monkeypatch, data, block_size):
    """train.estimate_loss on the run's fixed eval batches (TINY's batch size and eval iters)."""
    for key, value in dict(data_dir=str(data), block_size=block_size, batch_size=TINY['batch_size'],
                           eval_iters=TINY['eval_iters'], device='cpu').items():
        monkeypatch.setattr(train, key, value)
    monkeypatch.setattr(train, 'orch', train.Orchestrator())  # multipliers 1
    return train.estimate_loss(model, nullcontext(), 0, False)


def load_run_model(out):
    """sample.py's model of a run's checkpoint."""
    checkpoint = train.load_checkpoint(str(out / 'ckpt.pt'))
    return GPT.from_checkpoint(checkpoint).eval(), checkpoint


def export(out, hf_dir, tokenizer_from=''):
    saved = train.orchestrator_state()
    try:
        export_hf.export(str(out), str(hf_dir), tokenizer_from)
    finally:
        train.load_orchestrator_state(saved)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """Char-level data: (folder, vocabulary size)."""
    folder = tmp_path_factory.mktemp('hf_data') / 'data'
    return folder, write_char_data(folder, n_chars=20_000)


@pytest.fixture(scope='module')
def hf_folder(tmp_path_factory, data):
    """A random GPT-2 (2 layers x 32, tanh GELU, 64 positions) over the char vocabulary: (folder, model)."""
    folder = tmp_path_factory.mktemp('hf_model')
    return folder, save_random_gpt2(folder, data[1])


# -----------------------------------------------------------------------------
# import

def test_import_matches_transformers(hf_folder):
    folder, hf_model = hf_folder
    model = GPT.from_hf(str(folder))
    c = model.config
    assert (c.n_layer, c.n_head, c.n_embd, c.n_hidden, c.head_size, c.block_size, c.bias, c.activation) == \
        (2, 2, 32, 128, 16, 64, True, 'gelu_tanh')
    idx = torch.randint(0, c.vocab_size, (2, 64), generator=torch.Generator().manual_seed(1))
    theirs = hf_logits(hf_model, idx)
    assert theirs.abs().max() > 2.0  # logits far from uniform
    assert max_diff(our_logits(model, idx), theirs) <= TOLERANCE
    # the activation is part of the match: the same weights with exact GELU are off by far more
    exact = GPT(GPTConfig(**dict(vars(c), activation='gelu')))
    exact.load_state_dict(model.state_dict())
    assert max_diff(our_logits(exact, idx), theirs) > 10 * TOLERANCE
    # block_size crops the position table; the first 16 positions compute what they did
    cropped = GPT.from_hf(str(folder), block_size=16, dropout=0.1)
    assert cropped.transformer.wpe.weight.shape == (16, 32) and cropped.config.dropout == 0.1
    assert max_diff(our_logits(cropped, idx[:, :16]), hf_logits(hf_model, idx[:, :16])) <= TOLERANCE


def test_checkpoints_without_activation_keep_exact_gelu():
    """model_args written before GPTConfig had `activation` load as exact GELU, today's default."""
    old_args = dict(block_size=8, vocab_size=10, n_layer=1, n_head=2, n_embd=8, n_hidden=32, head_size=4,
                    dropout=0.0, bias=False, attn_lora_rank=0, embedding_lora_rank=0, lora_alpha=1.0, ramp=None)
    mlp = GPT(GPTConfig(**old_args)).transformer.h[0].mlp
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in mlp.parameters():  # unit-scale weights: hidden values of a few units, where the GELUs differ
            p.normal_(generator=generator)
        x = torch.randn(2, 3, 8, generator=generator)
        hidden = mlp.c_fc(x)
        assert torch.equal(mlp(x, None), mlp.c_proj(F.gelu(hidden)))
        assert max_diff(mlp(x, None), mlp.c_proj(F.gelu(hidden, approximate='tanh'))) > 1e-4


@pytest.fixture
def hf_run(monkeypatch, data, hf_folder):
    """train's globals for a tiny run from hf_folder (check_inputs in process); the orchestrator put back."""
    defaults = {k: train.config_defaults[k] for k in ('n_layer', 'n_head', 'n_embd', 'bias')}
    for key, value in dict(TINY, data_dir=str(data[0]), init_from=str(hf_folder[0]), scaling_schedule_file='',
                           model=None, **defaults).items():
        monkeypatch.setattr(train, key, value)
    saved = train.orchestrator_state()
    yield
    train.load_orchestrator_state(saved)


def refused(function, *args):
    with pytest.raises(train.UserError) as e:
        function(*args)
    return str(e.value)


def test_import_config_comes_from_the_weights(hf_run, monkeypatch, tmp_path, hf_folder):
    """Keys the config leaves at their defaults take the weights' values; the schedule is walked on the
    imported model before step 0 (a layer map past its 2 layers is refused, 2 -> 4 layers is planned)."""
    monkeypatch.setattr(train, 'dropout', 0.1)
    monkeypatch.setattr(train, 'attn_lora_rank', 2)
    config, _, plan = train.check_inputs()
    assert (config.n_layer, config.n_embd, config.n_hidden, config.bias, config.activation, config.block_size,
            config.dropout, config.attn_lora_rank) == (2, 32, 128, True, 'gelu_tanh', 32, 0.1, 2)
    assert plan == []
    schedule = write_schedule(tmp_path / 's.json', [('stack_layers', 2, 0.0, 10, True)])
    monkeypatch.setattr(train, 'scaling_schedule_file', schedule)
    _, _, plan = train.check_inputs()
    stacked = GPT(config)
    stacked.stack_layers([0, 1, 0, 1])
    assert [(row['n_layer'], row['params']) for row in plan] == [(4, stacked.get_num_params())]
    bad = write_schedule(tmp_path / 'bad.json', [('stack_layers', [0, 1, 2], 0.0, 10, True)])
    monkeypatch.setattr(train, 'scaling_schedule_file', bad)
    assert refused(train.check_inputs) == (
        f"{bad}: entry 0, field 'value': stack_layers: layer index 2 is out of range: the model has 2 layers "
        "at this point (indices 0..1)")


def contradiction(key, value, weights):
    return (f"config: {key} = {value!r} contradicts the weights of {{folder}} ({key} = {weights!r}); an imported "
            f"model's shape comes from its weights: leave {key} out of the config (the schedule can grow the model)")


IMPORT_REFUSALS = [
    ('n_layer', dict(n_layer=4), contradiction('n_layer', 4, 2)),
    ('n_hidden', dict(n_hidden=64), contradiction('n_hidden', 64, 128)),
    ('n_embd', dict(n_embd=64), contradiction('n_embd', 64, 32)),
    ('n_head', dict(activation='gelu_tanh', n_head=4), contradiction('n_head', 4, 2)),  # the activation agrees
    ('block_size', dict(block_size=128),
     "init_from='{folder}': block_size 128 is longer than the weights' n_positions 64: the position table can be "
     "cropped, not extended"),
    ('hub_name_char_data', dict(init_from='gpt2'),
     "data: gpt2 reads GPT-2 BPE tokens, but {data}/meta.pkl says tokenizer 'char'; prepare the data with the gpt2 "
     "tokenizer"),
]


@pytest.mark.parametrize('settings, expected', [pytest.param(*c[1:], id=c[0]) for c in IMPORT_REFUSALS])
def test_import_refusals(hf_run, monkeypatch, hf_folder, data, settings, expected):
    for key, value in settings.items():
        monkeypatch.setattr(train, key, value)
    assert refused(train.check_inputs) == expected.format(folder=hf_folder[0], data=data[0])


def test_import_refuses_what_this_gpt_cannot_compute(hf_run, monkeypatch, tmp_path, data):
    """Configs alone (no weights needed): another activation than the config's, a vocabulary smaller than
    the data's, attention this GPT does not compute, another kind of model."""
    cases = [(dict(activation_function='gelu'), dict(activation='gelu_tanh'),
              contradiction('activation', 'gelu_tanh', 'gelu')),
             (dict(vocab_size=data[1] - 1), {},
              f"data: meta.pkl's vocab_size {data[1]} is larger than the vocabulary of {{folder}} "
              f"({data[1] - 1} tokens)"),
             (dict(activation_function='relu'), {},
              "init_from='{folder}': activation_function 'relu' is not one this GPT has (gelu_new, gelu_pytorch_tanh, "
              "gelu)"),
             (dict(scale_attn_by_inverse_layer_idx=True), {},
              "init_from='{folder}': scale_attn_by_inverse_layer_idx is True; this GPT computes "
              "scale_attn_by_inverse_layer_idx = False")]
    for i, (hf_config, settings, expected) in enumerate(cases):
        folder = tmp_path / str(i)
        hf_config = {**HF_SHAPE, 'vocab_size': data[1], 'bos_token_id': None, 'eos_token_id': None, **hf_config}
        transformers.GPT2Config(**hf_config).save_pretrained(folder)
        for key, value in dict(settings, init_from=str(folder)).items():
            monkeypatch.setattr(train, key, value)
        assert refused(train.check_inputs) == expected.format(folder=folder)
        monkeypatch.setattr(train, 'activation', train.config_defaults['activation'])
    llama = tmp_path / 'llama'
    transformers.LlamaConfig(hidden_size=32, num_attention_heads=2, num_hidden_layers=1).save_pretrained(llama)
    monkeypatch.setattr(train, 'init_from', str(llama))
    assert refused(train.check_inputs) == f"init_from='{llama}': model_type is 'llama', this GPT imports 'gpt2' only"


def test_missing_transformers_is_one_message(hf_run, monkeypatch, hf_folder, tmp_path):
    monkeypatch.setitem(sys.modules, 'transformers', None)  # `import transformers` now raises ImportError
    missing = "Hugging Face GPT-2 weights need the transformers package: pip install -r requirements-hf.txt"
    assert refused(train.check_inputs) == f"init_from='{hf_folder[0]}': {missing}"
    assert refused(export_hf.export, str(tmp_path), str(tmp_path / 'hf')) == missing  # before anything else


@pytest.mark.slow
def test_train_from_import_and_stack(tmp_path, monkeypatch, data, hf_folder):
    """train.py --init_from=FOLDER: the first eval is transformers' own loss on the eval batches; stack_layers
    at iter 10 logs the val loss of the stacked model (the checkpoint's, re-evaluated here); the run
    exports back to a GPT2LMHeadModel with the tanh GELU whose logits are ours."""
    folder, hf_model = hf_folder
    out = tmp_path / 'out'
    schedule = write_schedule(tmp_path / 'stack.json', [('stack_layers', 2, 0.0, 10, True)])
    result = run_train(train_args(data[0], out, init_from=str(folder), max_iters=10, scaling_schedule_file=schedule,
                                  **SHAPE_FROM_WEIGHTS))
    assert result.returncode == 0, describe_run(result)
    events = read_events(out)
    first = events[0]
    assert (first['event'], first['iter'], first['n_layer']) == ('eval', 0, 2)
    assert first['val_loss'] == pytest.approx(eval_losses(HFLoss(hf_model), monkeypatch, data[0], 32)['val'], abs=1e-5)
    op = [e for e in events if e['event'] == 'op'][0]
    assert (op['name'], op['iter'], op['changes']['n_layer']) == ('stack_layers', 10, [2, 4])
    model, checkpoint = load_run_model(out)
    assert (checkpoint['iter_num'], model.config.n_layer, model.config.activation) == (10, 4, 'gelu_tanh')
    assert op['val_loss_after'] == pytest.approx(eval_losses(model, monkeypatch, data[0], 32)['val'], abs=1e-6)
    assert abs(op['val_loss_after'] - op['val_loss_before']) > 1e-3  # stacking changed the function

    export(out, tmp_path / 'hf')
    exported = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / 'hf')
    hc = exported.config
    assert (hc.n_layer, hc.n_positions, hc.n_inner, hc.activation_function) == (4, 32, None, 'gelu_new')
    idx = torch.randint(0, data[1], (2, 32), generator=torch.Generator().manual_seed(2))
    assert max_diff(hf_logits(exported, idx), our_logits(model, idx)) <= TOLERANCE


# -----------------------------------------------------------------------------
# export

EXPORT_RUNS = {
    # a plain run: no bias (exported as zero biases), exact GELU
    'trained': (dict(max_iters=20), [], (1, 128, None, 'gelu')),
    # 1 layer, mlp 48 -> 2 layers at iter 10 -> mlp 72 (not 4 * 32: written as n_inner) at iter 20
    'grown': (dict(max_iters=30, n_hidden=48),
              [('stack_layers', 2, 0.0, 10, False), ('widen_mlp', 1.5, 0.0, 10, False)], (2, 72, 72, 'gelu')),
    # LoRA on attention and embedding, trained with a large lr so the adapters move; merged on the way out
    'lora': (dict(max_iters=20, attn_lora_rank=4, embedding_lora_rank=2, lora_alpha=2.0, learning_rate=1e-2,
                  activation='gelu_tanh'), [], (1, 128, None, 'gelu_new')),
}


@pytest.mark.parametrize('case', list(EXPORT_RUNS))
@pytest.mark.slow
def test_export_matches_our_logits(tmp_path, data, case):
    settings, entries, (n_layer, n_hidden, n_inner, activation) = EXPORT_RUNS[case]
    out = tmp_path / 'out'
    args = train_args(data[0], out, **settings)
    if entries:
        args.append(f"--scaling_schedule_file={write_schedule(tmp_path / 's.json', entries)}")
    result = run_train(args)
    assert result.returncode == 0, describe_run(result)
    model, checkpoint = load_run_model(out)
    assert (model.config.n_layer, model.config.n_hidden) == (n_layer, n_hidden)
    if case == 'lora':
        # the adapter sides that start at zero: attention's B, the embedding's A
        adapters = [v for k, v in checkpoint['model'].items()
                    if '.attn.' in k and k.endswith('lora_B') or k.endswith('wte.lora_A')]
        assert len(adapters) == 3 and min(a.abs().max().item() for a in adapters) > 1e-3  # trained, not zero

    export(out, tmp_path / 'hf')
    assert sorted(os.listdir(tmp_path / 'hf')) == ['config.json', 'generation_config.json', 'model.safetensors']
    if case == 'trained':  # a char-level run takes no GPT-2 tokenizer
        assert refused(export, out, tmp_path / 'hf2', str(tmp_path)) == (
            "tokenizer_dir: the run's tokens are char, not GPT-2 BPE, so a GPT-2 tokenizer does not belong with it")
    exported = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / 'hf')
    hc = exported.config
    assert (hc.n_layer, hc.n_inner, hc.activation_function, hc.vocab_size) == (n_layer, n_inner, activation, data[1])
    idx = torch.randint(0, data[1], (3, 32), generator=torch.Generator().manual_seed(3))
    assert max_diff(hf_logits(exported, idx), our_logits(model, idx)) <= TOLERANCE
    if case == 'lora':  # the main weights alone are not the model: the merge mattered
        bare = GPT(GPTConfig(**dict(vars(model.config), attn_lora_rank=0, embedding_lora_rank=0)))
        bare.load_state_dict({k: v for k, v in checkpoint['model'].items() if '.lora_' not in k})
        assert max_diff(our_logits(bare, idx), our_logits(model, idx)) > 10 * TOLERANCE


@pytest.mark.slow
def test_export_refusals(tmp_path, data):
    """A mask ramp still rising, then (ramp folded) heads added by msg_add_heads: refused, nothing written."""
    heads = {'n_new_heads': 1, 'anneal_iters': 100}
    out = tmp_path / 'ramp'
    schedule = write_schedule(tmp_path / 'ramp.json', [('msg_add_heads', heads, 0.0, 10, False)])
    assert run_train(train_args(data[0], out, max_iters=20, scaling_schedule_file=schedule)).returncode == 0
    result = run_script(['export_hf.py', f'--out_dir={out}', f'--hf_dir={tmp_path / "hf"}'])
    assert result.returncode == 2, describe_run(result)
    assert result.stderr == (
        f"error: {out}/ckpt.pt: cannot export the model of iter 20: an MSG mask ramp (heads) is still active, and "
        "GPT-2 has no mask; train on until the msg_add_heads mask reaches 1 at iter 110 (init_from='resume' with "
        "max_iters at least that; the ramp then folds away) and export that checkpoint\n")
    assert not os.path.exists(tmp_path / 'hf')
    no_folder = run_script(['export_hf.py', f'--out_dir={out}'])
    assert (no_folder.returncode, no_folder.stderr) == (2, "error: hf_dir: give the folder to write, e.g. "
                                                           "--hf_dir=hf-model\n")

    out = tmp_path / 'heads'
    schedule = write_schedule(tmp_path / 'heads.json', [('msg_add_heads', dict(heads, anneal_iters=5), 0.0, 10, False)])
    assert run_train(train_args(data[0], out, max_iters=20, scaling_schedule_file=schedule)).returncode == 0
    assert refused(export, out, tmp_path / 'hf') == (
        f"{out}/ckpt.pt: cannot export the model of iter 20: the attention width n_head x head_size = 3 x 16 = 48 "
        "differs from n_embd = 32, and GPT-2's attention is always n_embd wide (head size n_embd / n_head); "
        "msg_add_heads and msg_widen_embd make it so; such a model runs with this repository's sample.py only, "
        "a model to export grows by the other operations")
    assert not os.path.exists(tmp_path / 'hf')


@pytest.mark.slow
def test_round_trip_and_tokenizer(tmp_path, data):
    """import -> train.py (lr 0: the weights stay) -> export_hf.py -> import: the same weights, bit for bit.
    The run's data is tagged GPT-2 BPE and its source folder holds tokenizer files: they are exported."""
    source = tmp_path / 'source'
    hf_model = save_random_gpt2(source, 128, seed=4)
    n_tokens = write_tiny_bpe(source)
    gpt2_data = tmp_path / 'data'
    write_char_data(gpt2_data, n_chars=20_000)
    with open(gpt2_data / 'meta.pkl', 'wb') as f:
        pickle.dump({'vocab_size': data[1], 'tokenizer': 'gpt2'}, f)
    out = tmp_path / 'out'
    result = run_train(train_args(gpt2_data, out, init_from=str(source), block_size=64, max_iters=1, eval_interval=1,
                                  learning_rate=0.0, min_lr=0.0, **SHAPE_FROM_WEIGHTS))
    assert result.returncode == 0, describe_run(result)
    export(out, tmp_path / 'hf')

    exported = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / 'hf')
    theirs, ours = hf_model.state_dict(), exported.state_dict()
    assert sorted(theirs) == sorted(ours)
    assert all(torch.equal(theirs[k], ours[k]) for k in theirs)
    first, second = GPT.from_hf(str(source)).state_dict(), GPT.from_hf(str(tmp_path / 'hf')).state_dict()
    assert sorted(first) == sorted(second) and all(torch.equal(first[k], second[k]) for k in first)
    assert (exported.config.activation_function, exported.config.n_positions) == ('gelu_new', 64)

    tokenizer = transformers.GPT2TokenizerFast.from_pretrained(tmp_path / 'hf', local_files_only=True)
    assert len(tokenizer) == n_tokens and tokenizer('hi there\n').input_ids == [96, 94, 83, 71, 68, 81, 68, 95]
    assert exported.config.eos_token_id is None  # GPT-2's 50256 is not in a 128-token vocabulary
    # --tokenizer_dir: a folder with tokenizer files is taken, one without is refused before anything is written
    export(out, tmp_path / 'hf2', str(tmp_path / 'hf'))
    assert transformers.GPT2TokenizerFast.from_pretrained(tmp_path / 'hf2')('hi there\n').input_ids[0] == 96
    assert refused(export, out, tmp_path / 'hf3', str(gpt2_data)) == (
        f"tokenizer_dir: no tokenizer files in {gpt2_data} (tokenizer.json, or vocab.json and merges.txt)")
    assert not os.path.exists(tmp_path / 'hf3')
