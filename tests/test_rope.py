"""
Rotary position embeddings (pos_emb = 'rope', issue 22 item 4) on tiny CPU models, fp32, dropout 0:
- a rope model has no wpe parameter and no rotary tables in its state dict, and positions matter to it;
- every growth op keeps the function on a rope model where it does on a learned one (the tables of
  test_growth.py: max |delta logit| <= 1e-5; MSG ops at mask 0, folded = mask 1), and stacking works;
- the bad values are refused in one line (GPTConfig, train.py's check_inputs, an import of GPT-2 weights);
- export as a transformers GPTNeoXForCausalLM gives our logits to 1e-4;
- train.py trains and grows a rope model; sample.py and export_hf.py read its checkpoint.
"""

import os
import pickle
from dataclasses import asdict

import pytest
import torch
import transformers

import train
from helpers import describe_run, read_events, run_script, run_train, train_args, write_char_data, write_schedule
from model import GPT, GPTConfig
from test_sample_bench import sample_texts
from test_growth import LORA, MSG, PRESERVING, TOL, changed, logits_of, max_diff, perturb, snapshot, tiny

HF_TOLERANCE = 1e-4
ROPE = dict(pos_emb='rope', rope_base=100.0)  # a small base: every pair turns noticeably over 16 positions


def refused(call, *args, error=train.UserError):
    with pytest.raises(error) as info:
        call(*args)
    return str(info.value)


# ------------------------------------------------------------------ the model

def test_rope_model_has_no_position_table_and_positions_matter():
    model = perturb(tiny(n_layer=1, **ROPE))  # one layer: without positions, its last output ignores the order
    names = [name for name, _ in model.named_parameters()]
    assert not any('wpe' in name for name in names)
    assert sorted(model.state_dict()) == sorted(names)  # the rotary tables are not saved
    learned = tiny(n_layer=1)
    assert learned.get_num_params() == model.get_num_params()  # wpe is not counted in either
    assert learned.get_num_params(non_embedding=False) - model.get_num_params(non_embedding=False) == 16 * 16
    # the last position's logits see the order of the tokens before it: swap two of them
    x = torch.randint(0, 32, (1, 16), generator=torch.Generator().manual_seed(5))
    swapped = x.clone()
    swapped[0, [2, 9]] = x[0, [9, 2]]
    assert max_diff(logits_of(model, [x])[0, -1], logits_of(model, [swapped])[0, -1]) > 1e-3
    # without the rotation (a learned model with the same weights and a zero position table) the
    # last position cannot tell the order apart
    plain = GPT(GPTConfig(**dict(asdict(model.config), pos_emb='learned')))
    plain.load_state_dict(dict(model.state_dict(), **{'transformer.wpe.weight': torch.zeros(16, 16)}))
    assert max_diff(logits_of(plain, [x])[0, -1], logits_of(plain, [swapped])[0, -1]) <= TOL
    assert max_diff(logits_of(plain, [x]), logits_of(model, [x])) > 1e-3


def test_rope_checkpoint_loads_with_weights_only(tmp_path):
    model = perturb(tiny(**ROPE))
    model.stack_layers([0, 1, 1])
    path = tmp_path / 'ckpt.pt'
    torch.save(dict(model=model.state_dict(), model_args=asdict(model.config), growth_mask=0.0), path)
    loaded = GPT.from_checkpoint(str(path))  # torch.load(weights_only=True)
    assert (loaded.config.pos_emb, loaded.config.rope_base, loaded.config.n_layer) == ('rope', 100.0, 3)
    assert torch.equal(logits_of(loaded), logits_of(model))


def test_rope_under_bf16_autocast():
    """The tables are fp32; under autocast q and k are bf16, and SDPA needs q, k and v of one dtype."""
    model = tiny(**ROPE)
    x = torch.randint(0, 32, (2, 16), generator=torch.Generator().manual_seed(6))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        logits, loss = model(x, x)
    assert torch.isfinite(loss) and max_diff(logits.float(), logits_of(model, [x])) < 0.1


CONFIG_REFUSALS = [
    ('pos_emb', dict(pos_emb='alibi'), "pos_emb: expected one of learned, rope, got 'alibi'"),
    ('rope_base', dict(pos_emb='rope', rope_base=0.0), "rope_base: expected a number > 0, got 0.0"),
    ('odd_head_size', dict(pos_emb='rope', n_head=2, n_embd=18),
     "pos_emb 'rope' turns pairs of dimensions in each head: head_size must be even, got 9"),
]


@pytest.mark.parametrize('settings, expected', [pytest.param(*c[1:], id=c[0]) for c in CONFIG_REFUSALS])
def test_config_refusals(settings, expected):
    assert refused(lambda: GPTConfig(**settings), error=ValueError) == expected


@pytest.fixture
def scratch(monkeypatch, tmp_path):
    """train's globals for a tiny run from scratch (check_inputs in process); the orchestrator put back."""
    write_char_data(tmp_path / 'data', n_chars=5000)
    for key, value in dict(device='cpu', dtype='float32', init_from='scratch', data_dir=str(tmp_path / 'data'),
                           out_dir=str(tmp_path / 'out'), scaling_schedule_file='', n_layer=1, n_head=2,
                           n_embd=32, block_size=32, ddp_world_size=1, model=None).items():
        monkeypatch.setattr(train, key, value)
    saved = train.orchestrator_state()
    yield monkeypatch
    train.load_orchestrator_state(saved)


TRAIN_REFUSALS = [
    ('pos_emb', dict(pos_emb='alibi'), "pos_emb: expected one of learned, rope, got 'alibi'"),
    ('rope_base', dict(pos_emb='rope', rope_base=-1.0), "config: rope_base: expected a number > 0, got -1.0"),
    ('odd_head_size', dict(pos_emb='rope', head_size=5),
     "config: pos_emb 'rope' turns pairs of dimensions in each head: head_size must be even, got 5"),
]


@pytest.mark.parametrize('settings, expected', [pytest.param(*c[1:], id=c[0]) for c in TRAIN_REFUSALS])
def test_train_refusals(scratch, settings, expected):
    for key, value in settings.items():
        scratch.setattr(train, key, value)
    assert refused(train.check_inputs) == expected


def test_train_config_reaches_the_model(scratch):
    scratch.setattr(train, 'pos_emb', 'rope')
    scratch.setattr(train, 'rope_base', 500.0)
    config, _, _ = train.check_inputs()
    assert (config.pos_emb, config.rope_base) == ('rope', 500.0)


def test_gpt2_weights_are_learned_positions(scratch, tmp_path):
    """GPT-2 weights have a position table: a config asking for rope contradicts them."""
    folder = tmp_path / 'gpt2'
    config = transformers.GPT2Config(vocab_size=65, n_positions=64, n_embd=32, n_layer=1, n_head=2,
                                     bos_token_id=None, eos_token_id=None)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    for key in ('n_layer', 'n_head', 'n_embd', 'bias'):
        scratch.setattr(train, key, train.config_defaults[key])
    scratch.setattr(train, 'init_from', str(folder))
    scratch.setattr(train, 'pos_emb', 'rope')
    assert refused(train.check_inputs) == (
        f"config: pos_emb = 'rope' contradicts the weights of {folder} (pos_emb = 'learned'); an imported model's "
        "shape comes from its weights: leave pos_emb out of the config (the schedule can grow the model)")


# ------------------------------------------------------------------ growth keeps the function

@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('case', sorted(PRESERVING))
def test_op_preserves_rope_logits(case, bias):
    kwargs, op = PRESERVING[case]
    model = perturb(tiny(bias=bias, **kwargs, **ROPE))
    before, params = logits_of(model), snapshot(model)
    lineage = op(model)
    assert changed(params, model)
    assert set(lineage) == {name for name, _ in model.named_parameters()}
    diff = max_diff(before, logits_of(model))
    assert diff <= TOL, f"{case} (bias={bias}): max |delta logit| {diff:.3g}"


@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('case', sorted(MSG))
def test_msg_op_keeps_rope_logits_at_mask_0(case, bias):
    kwargs, op = MSG[case]
    model = perturb(tiny(bias=bias, **kwargs, **ROPE))
    before = logits_of(model)
    lineage = op(model)
    assert set(lineage) == {name for name, _ in model.named_parameters()}
    assert not any('wpe' in name for name in lineage)
    model.set_growth_mask(0.0)
    at_0 = logits_of(model)
    model.set_growth_mask(1.0)
    at_1 = logits_of(model)
    model.fold_ramp()
    assert max_diff(before, at_0) <= TOL, f"{case} at mask 0: {max_diff(before, at_0):.3g}"
    assert max_diff(at_1, logits_of(model)) <= TOL
    assert max_diff(at_1, before) > 1e-3


def test_stack_layers_on_rope():
    """stack_layers changes the function (no claim to keep); on a rope model its copies are their sources."""
    model = perturb(tiny(**LORA, **ROPE))
    state, before = model.state_dict(), logits_of(model)
    lineage = model.stack_layers([0, 1, 0, 1])
    assert set(lineage) == {name for name, _ in model.named_parameters()}
    layer_keys = {name.split('.', 3)[3] for name in state if name.startswith('transformer.h.')}
    for new, old in enumerate([0, 1, 0, 1]):
        assert all(torch.equal(model.state_dict()[f'transformer.h.{new}.{key}'], state[f'transformer.h.{old}.{key}'])
                   for key in layer_keys)
    after = logits_of(model)
    assert torch.isfinite(after).all() and max_diff(after, before) > 1e-3


# ------------------------------------------------------------------ export as GPT-NeoX

@torch.no_grad()
def neox_logits(hf_model, idx):
    return hf_model.eval()(idx).logits


@pytest.mark.parametrize('case', ['bias_gelu', 'no_bias_gelu_tanh', 'lora_grown'])
def test_to_hf_is_gpt_neox_with_our_logits(case):
    settings = dict(bias=case == 'bias_gelu', activation='gelu_tanh' if case == 'no_bias_gelu_tanh' else 'gelu')
    model = perturb(tiny(**settings, **ROPE, **(LORA if case == 'lora_grown' else {})), scale=0.3)
    if case == 'lora_grown':
        model.stack_layers([0, 1, 1])
        model.widen_mlp(100, torch.Generator().manual_seed(3))
        perturb(model, seed=4, scale=0.3)
        model.merge_lora(torch.Generator())
        for target in ('attn', 'embedding'):
            model.set_lora_rank(target, 0, torch.Generator())
    hf_model = model.to_hf()
    assert isinstance(hf_model, transformers.GPTNeoXForCausalLM)
    c = hf_model.config
    assert (c.use_parallel_residual, c.rope_parameters['rope_theta'], c.rope_parameters['partial_rotary_factor'],
            c.hidden_act, c.num_hidden_layers, c.intermediate_size) == \
        (False, 100.0, 1.0, 'gelu_new' if case == 'no_bias_gelu_tanh' else 'gelu', model.config.n_layer,
         model.config.n_hidden)
    idx = torch.randint(0, 32, (3, 16), generator=torch.Generator().manual_seed(8))
    ours = logits_of(model, [idx])
    assert ours.abs().max() > 1.0  # far from uniform: the match means something
    assert max_diff(neox_logits(hf_model, idx), ours) <= HF_TOLERANCE


def test_to_hf_refuses_a_rope_model_neox_cannot_hold():
    model = tiny(**ROPE)
    model.msg_add_heads(1, torch.Generator())
    assert refused(model.hf_config_args, error=ValueError) == \
        "an MSG mask ramp (heads) is still active, and GPT-NeoX has no mask"
    model.fold_ramp()
    assert refused(model.hf_config_args, error=ValueError) == (
        "the attention width n_head x head_size = 3 x 8 = 24 differs from n_embd = 16, and GPT-NeoX's attention "
        "is always n_embd wide (head size n_embd / n_head)")


# ------------------------------------------------------------------ train.py, sample.py, export_hf.py

@pytest.mark.slow
def test_train_sample_and_export_a_grown_rope_run(tmp_path):
    """A tiny rope run (bias, tanh GELU, attention LoRA) stacked to 2 layers and MLP-widened at iter 10;
    sample.py writes text from its checkpoint and export_hf.py writes a GPTNeoXForCausalLM with our logits."""
    data, out = tmp_path / 'data', tmp_path / 'out'
    vocab = write_char_data(data, n_chars=20_000)
    schedule = write_schedule(tmp_path / 's.json', [('stack_layers', 2, 0.0, 10, False),
                                                    ('widen_mlp', 1.5, 0.0, 0, False)])
    result = run_train(train_args(data, out, max_iters=20, pos_emb='rope', rope_base=1000.0, bias=True,
                                  activation='gelu_tanh', attn_lora_rank=2, scaling_schedule_file=schedule))
    assert result.returncode == 0, describe_run(result)
    checkpoint = torch.load(out / 'ckpt.pt', map_location='cpu', weights_only=True)
    assert (checkpoint['model_args']['pos_emb'], checkpoint['model_args']['n_layer'],
            checkpoint['model_args']['n_hidden']) == ('rope', 2, 192)
    assert not any('wpe' in name for name in checkpoint['model'])

    sampled = run_script(['sample.py', f'--out_dir={out}', '--device=cpu', '--num_samples=1',
                          '--max_new_tokens=40', '--seed=7'])
    assert sampled.returncode == 0, describe_run(sampled)
    [text] = sample_texts(sampled.stdout)
    assert len(text) == 41 and text[0] == '\n' and set(text) <= set(pickle.load(open(data / 'meta.pkl', 'rb'))['stoi'])

    exported = run_script(['export_hf.py', f'--out_dir={out}', f'--hf_dir={tmp_path / "hf"}'])
    assert exported.returncode == 0, describe_run(exported)
    model = GPT.from_checkpoint(str(out / 'ckpt.pt')).eval()
    assert [line for line in exported.stdout.splitlines() if line.startswith('wrote ')] == [
        f"wrote {tmp_path / 'hf'}: GPTNeoXForCausalLM, n_layer 2, n_head 2, n_embd 32, n_inner 192, vocab {vocab}, "
        f"positions 32 (rotary, base 1000), activation gelu_new, {model.get_num_params() / 1e6:.2f}M parameters, "
        "from iter 20"]
    assert sorted(os.listdir(tmp_path / 'hf')) == ['config.json', 'generation_config.json', 'model.safetensors']
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / 'hf')
    assert isinstance(hf_model, transformers.GPTNeoXForCausalLM)
    idx = torch.randint(0, vocab, (2, 32), generator=torch.Generator().manual_seed(9))
    assert max_diff(neox_logits(hf_model, idx), logits_of(model, [idx])) <= HF_TOLERANCE


@pytest.mark.slow
def test_rope_run_keeps_the_val_loss_through_every_function_keeping_op(tmp_path):
    """Through train.py (dry-run plan on a meta rope model, then for real): each op that keeps the function
    leaves the re-measured val loss where it was, every 20 iters, MSG ramps over 10 iters."""
    vocab = write_char_data(tmp_path / 'data', n_chars=20_000)
    ops = [('change_attn_lora_rank', 2.0), ('change_attn_lora_rank', 0), ('widen_mlp', 1.5),
           ('msg_widen_mlp', dict(factor=1.5, anneal_iters=10)), ('msg_add_heads', dict(n_new_heads=1, anneal_iters=10)),
           ('msg_stack_layers', dict(layers=[0, 0], anneal_iters=10)),
           ('msg_widen_embd', dict(factor=1.5, anneal_iters=10))]
    schedule = write_schedule(tmp_path / 's.json', [(name, value, 0.0, 20, True) for name, value in ops])
    args = train_args(tmp_path / 'data', tmp_path / 'out', pos_emb='rope', attn_lora_rank=2, bias=True,
                      max_iters=160, eval_iters=3, log_interval=20, learning_rate=1e-2, lr_decay_iters=160,
                      scaling_schedule_file=schedule)
    planned = run_train(args + ['--dry_run=True'])
    assert planned.returncode == 0, describe_run(planned)
    result = run_train(args)
    assert result.returncode == 0, describe_run(result)
    events = [e for e in read_events(tmp_path / 'out') if e['event'] == 'op']
    assert [(e['iter'], e['name']) for e in events] == [(20 * (i + 1), name) for i, (name, _) in enumerate(ops)]
    for e in events:
        assert abs(e['val_loss_after'] - e['val_loss_before']) <= 1e-5, e
    model = GPT.from_checkpoint(str(tmp_path / 'out' / 'ckpt.pt'))
    c = model.config
    assert (c.pos_emb, c.n_layer, c.n_head, c.n_embd, c.n_hidden, c.vocab_size) == ('rope', 2, 3, 48, 288, vocab)
