"""
Per-layer LoRA ranks (issue 22, item 2):
- layer patterns ('*', '0', '-1', '2-3', int keys) resolved against the depth: the most specific pattern wins
  whatever the order, equally specific ones that disagree are refused, as are patterns naming no layer;
- set_attn_lora_rank (int or mapping) and change_attn_lora_rank on per-layer ranks keep the function (max
  |delta logits| <= 1e-5, bias on and off); only the named layers' adapters start fresh, the others keep their
  adapters and optimizer state;
- stacking copies a layer's adapter and its optimizer state with the layer (AdamW and Muon runs alike: the
  adapters are in AdamW's group); widen_mlp works beside per-layer ranks;
- the config key attn_lora_rank takes the same forms (command line and config file), refused in one line;
- checkpoints hold the ranks as plain types; old ones (one int) load; a resume is exact; export_hf merges.
"""

import os
import shutil

import pytest
import torch

import train
from configurator import ConfigError, configure
from helpers import (assert_same_state, describe_run, read_events, run_script, run_train, trained_runs,
                     without_elapsed)
from model import GPT, GPTConfig, carry_optimizer_state, layer_rank_changes

VOCAB, BLOCK = 32, 16


def tiny(n_layer=4, **overrides):
    args = dict(block_size=BLOCK, vocab_size=VOCAB, n_layer=n_layer, n_head=2, n_embd=16, dropout=0.0, bias=True)
    torch.manual_seed(0)
    return GPT(GPTConfig(**dict(args, **overrides)))


def perturb(model, seed=1):
    """Noise on every parameter, the adapters' zero side included, so that merges move real values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def logits_of(model):
    x = torch.randint(0, VOCAB, (3, BLOCK), generator=torch.Generator().manual_seed(7))
    model.eval()
    with torch.no_grad():
        return model(x, x)[0]


def gen():
    return torch.Generator().manual_seed(3)


def adapter_names(layers):
    return {f'transformer.h.{i}.attn.{m}.{side}' for i in layers for m in ('c_attn', 'c_proj')
            for side in ('lora_A', 'lora_B')}


# ------------------------------------------------------------------ patterns

@pytest.mark.parametrize('spec, expected', [
    (8, {0: 8, 1: 8, 2: 8, 3: 8}),
    ({'0': 4, '2-3': 16, '*': 8}, {0: 4, 1: 8, 2: 16, 3: 16}),
    ({'*': 8, '2-3': 16, '0': 4}, {0: 4, 1: 8, 2: 16, 3: 16}),  # the order given does not matter
    ({'-1': 0, '1-3': 2}, {1: 2, 2: 2, 3: 0}),  # '-1' is the last layer, more specific than a range
    ({0: 4, -2: 1}, {0: 4, 2: 1}),  # int keys are indices
    ({'1': 3, '-3': 3}, {1: 3}),  # two names of one layer agree
])
def test_layer_patterns_resolve_most_specific_first(spec, expected):
    assert layer_rank_changes(spec, 4) == expected


@pytest.mark.parametrize('spec, message', [
    ({'9': 4}, "layer pattern '9' matches no layer of a 4-layer model (layers 0-3)"),
    ({'-5': 4}, "layer pattern '-5' matches no layer of a 4-layer model (layers 0-3)"),
    ({'2-5': 4}, "layer pattern '2-5' reaches past the last layer of a 4-layer model (layers 0-3)"),
    ({'3-1': 4}, "bad layer pattern '3-1': expected '*' (every layer), a layer index ('0'; '-1' the last) or a "
                 "range of layers ('2-3')"),
    ({'h.0': 4}, "bad layer pattern 'h.0': expected '*' (every layer), a layer index ('0'; '-1' the last) or a "
                 "range of layers ('2-3')"),
    ({1.0: 4}, "layer pattern 1.0 (float) is neither text nor an integer; expected '*' (every layer), a layer "
               "index ('0'; '-1' the last) or a range of layers ('2-3')"),
    ({'0': -1}, "rank of layer pattern '0': expected an integer >= 0, got -1 (int)"),
    ({'0': 2.5}, "rank of layer pattern '0': expected an integer >= 0, got 2.5 (float)"),
    ({'0': True}, "rank of layer pattern '0': expected an integer >= 0, got True (bool)"),
    ({'0-1': 4, '1-2': 8}, "layer 1 is named by '0-1' and '1-2', equally specific, with ranks 4 and 8; give it one"),
    ({}, "an empty mapping names no layer; expected layer patterns ('*' (every layer), a layer index ('0'; '-1' "
         "the last) or a range of layers ('2-3')) to ranks"),
    (-2, "expected an integer >= 0 or a mapping of layer patterns to ranks, got -2 (int)"),
    ('4', "expected an integer >= 0 or a mapping of layer patterns to ranks, got '4' (str)"),
])
def test_bad_patterns_and_ranks_are_refused(spec, message):
    with pytest.raises(ValueError) as e:
        layer_rank_changes(spec, 4)
    assert str(e.value) == message


def test_config_resolves_and_stores_plain_types():
    assert GPTConfig(n_layer=4, n_head=2, n_embd=16, attn_lora_rank={'0': 4, '*': 8}).attn_lora_rank == [4, 8, 8, 8]
    assert GPTConfig(n_layer=4, n_head=2, n_embd=16, attn_lora_rank={'*': 8}).attn_lora_rank == 8  # uniform: an int
    assert GPTConfig(n_layer=2, n_head=2, n_embd=16, attn_lora_rank=(3, 3)).attn_lora_rank == 3
    assert GPTConfig(n_layer=4, n_head=2, n_embd=16, attn_lora_rank={'1-2': 2}).attn_lora_rank == [0, 2, 2, 0]
    with pytest.raises(ValueError, match=r"^attn_lora_rank: 3 ranks for a 4-layer model$"):
        GPTConfig(n_layer=4, n_head=2, n_embd=16, attn_lora_rank=[1, 2, 3])
    model = tiny(attn_lora_rank={'0': 4, '-1': 2})
    ranks = [(b.attn.c_attn.lora_rank, b.attn.c_proj.lora_rank) for b in model.transformer.h]
    assert ranks == [(4, 4), (0, 0), (0, 0), (2, 2)]
    assert [b.attn.c_attn.weight.requires_grad for b in model.transformer.h] == [False, True, True, False]


# ------------------------------------------------------------------ function kept, lineage

@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('start, change, ranks, fresh_layers', [
    (2, 6, [6, 6, 6, 6], [0, 1, 2, 3]),
    (2, {'0': 4, '2-3': 16, '*': 8}, [4, 8, 16, 16], [0, 1, 2, 3]),
    ({'0': 4, '-1': 2}, {'-1': 0, '1': 3}, [4, 3, 0, 0], [1, 3]),
    (0, {'2': 5}, [0, 0, 5, 0], [2]),
])
def test_set_ranks_keeps_the_function(bias, start, change, ranks, fresh_layers):
    model = perturb(tiny(bias=bias, attn_lora_rank=start))
    before = logits_of(model)
    kept = {n: p.clone() for n, p in model.named_parameters() if '.lora_' in n}
    lineage = model.set_layer_lora_ranks(layer_rank_changes(change, 4), gen())
    assert (logits_of(model) - before).abs().max().item() <= 1e-5
    assert model.config.attn_lora_rank == (ranks if len(set(ranks)) > 1 else ranks[0])
    fresh = {n for n, (old, _, _) in lineage.items() if old is None}
    assert fresh == {n for n in adapter_names(fresh_layers) if n in lineage}  # layers now at rank 0 have none
    for name, p in model.named_parameters():  # the layers not named keep their adapters as they were
        if name in kept and name not in fresh:
            assert torch.equal(p, kept[name]), name
    for i, block in enumerate(model.transformer.h):
        assert block.attn.c_attn.lora_rank == ranks[i] and block.attn.c_attn.weight.requires_grad == (ranks[i] == 0)
        if ranks[i] and i in fresh_layers:  # a fresh adapter adds nothing: its output side is zero
            assert not block.attn.c_proj.lora_B.any()


def test_change_rank_multiplies_each_layer(monkeypatch):
    model = perturb(tiny(attn_lora_rank={'0': 2, '1': 4, '-1': 1}))
    before, weight_2 = logits_of(model), model.transformer.h[2].attn.c_attn.weight.clone()
    monkeypatch.setattr(train, 'model', model)
    lineage = train.change_lora_rank('attn')(2.0)
    assert model.config.attn_lora_rank == [4, 8, 0, 2]
    assert (logits_of(model) - before).abs().max().item() <= 1e-5
    assert {n for n, (old, _, _) in lineage.items() if old is None} == adapter_names([0, 1, 3])
    assert torch.equal(model.transformer.h[2].attn.c_attn.weight, weight_2)  # no adapter there: untouched


def adamw_steps(model, optimizers, steps=3):
    x = torch.randint(0, VOCAB, (4, BLOCK), generator=torch.Generator().manual_seed(5))
    for _ in range(steps):
        model(x, torch.roll(x, -1, dims=1))[1].backward()
        optimizers.step()
        optimizers.zero_grad()


@pytest.mark.parametrize('optimizer', ['adamw', 'muon'])
def test_stacked_copies_inherit_adapter_and_state(optimizer):
    model = perturb(tiny(n_layer=2, attn_lora_rank={'0': 2, '1': 4}))
    optimizers = model.configure_optimizers(0.1, 1e-2, (0.9, 0.95), 'cpu', optimizer)
    adamw_steps(model, optimizers)
    names = {p: n for n, p in model.named_parameters()}
    old_state = {names[p]: {k: v.clone() for k, v in s.items()} for p, s in optimizers.state.items()}
    old_params = {n: p.clone() for n, p in model.named_parameters()}
    assert {n for n in old_state if '.lora_' in n} == {n for n in old_params if '.lora_' in n and '.attn.' in n}
    lineage = model.stack_layers([0, 1, 1, 0])
    assert model.config.attn_lora_rank == [2, 4, 4, 2] and model.config.n_layer == 4
    new_optimizers = model.configure_optimizers(0.1, 1e-2, (0.9, 0.95), 'cpu', optimizer)
    carry_optimizer_state(model, old_state, new_optimizers, lineage)
    in_adamw = {id(p) for group in new_optimizers.by_name['adamw'].param_groups for p in group['params']}
    assert all(id(p) in in_adamw for n, p in model.named_parameters() if '.lora_' in n)  # Muon's run too
    for new, source in ((2, 1), (3, 0)):
        for m in ('c_attn', 'c_proj'):
            for side in ('lora_A', 'lora_B'):
                name, source_name = f'transformer.h.{new}.attn.{m}.{side}', f'transformer.h.{source}.attn.{m}.{side}'
                assert lineage[name] == (source_name, None, None)
                assert torch.equal(model.get_parameter(name), old_params[source_name])
                state = new_optimizers.state[model.get_parameter(name)]
                assert_same_state(state, old_state[source_name], name)
    assert model.transformer.h[3].attn.c_attn.lora_rank == 2 and model.transformer.h[2].attn.c_attn.lora_rank == 4


def test_widen_mlp_beside_per_layer_ranks():
    model = perturb(tiny(attn_lora_rank={'0': 2, '-1': 3}))
    before = logits_of(model)
    model.widen_mlp(96, gen())
    assert model.config.attn_lora_rank == [2, 0, 0, 3] and model.config.n_hidden == 96
    assert (logits_of(model) - before).abs().max().item() <= 1e-5


def test_checkpoint_args_are_plain_and_old_ints_load(tmp_path):
    model = perturb(tiny(attn_lora_rank={'0': 2, '-1': 3}))
    path = tmp_path / 'ckpt.pt'
    torch.save(dict(model=model.state_dict(), model_args=vars(model.config), growth_mask=torch.zeros(())), path)
    loaded = GPT.from_checkpoint(str(path))  # torch.load(weights_only=True)
    assert loaded.config.attn_lora_rank == [2, 0, 0, 3]
    assert torch.equal(logits_of(loaded), logits_of(model))
    old = tiny(attn_lora_rank=2)
    args = dict(vars(old.config))
    assert args['attn_lora_rank'] == 2  # a uniform rank is stored as before: one int
    assert GPT.from_checkpoint(dict(model=old.state_dict(), model_args=args, growth_mask=None,
                                    orchestrator=dict(active_ramp=None), iter_num=0)).config.attn_lora_rank == 2


# ------------------------------------------------------------------ train.py: op checks and the config key

def plan_error(schedule, n_layer=2, attn_lora_rank=2):
    config = GPTConfig(block_size=BLOCK, vocab_size=VOCAB, n_layer=n_layer, n_head=2, n_embd=16,
                       attn_lora_rank=attn_lora_rank)
    saved = train.orchestrator_state()
    try:
        train.reset_orchestrator(schedule)
        train.validate_schedule('s.json', schedule, 0, config)
    except train.UserError as e:
        return str(e)
    finally:
        train.load_orchestrator_state(saved)
    return None


def entry(name, value):
    return dict(name=name, value=value, trigger_loss=0.0, max_wait_iters=0, reevaluate=False)


@pytest.mark.parametrize('schedule, message', [
    ([entry('set_attn_lora_rank', {'3': 4})],
     "s.json: entry 0, field 'value': set_attn_lora_rank: layer pattern '3' matches no layer of a 2-layer model "
     "(layers 0-1)"),
    ([entry('stack_layers', 2), entry('set_attn_lora_rank', {'3': 4}), entry('set_attn_lora_rank', {'4-5': 1})],
     "s.json: entry 2, field 'value': set_attn_lora_rank: layer pattern '4-5' matches no layer of a 4-layer model "
     "(layers 0-3)"),
    ([entry('set_attn_lora_rank', -1)],
     "s.json: entry 0, field 'value': set_attn_lora_rank: expected an integer >= 0 or a mapping of layer patterns "
     "to ranks, got -1 (int)"),
    ([entry('set_attn_lora_rank', {'0': 'x'})],
     "s.json: entry 0, field 'value': set_attn_lora_rank: rank of layer pattern '0': expected an integer >= 0, "
     "got 'x' (str)"),
    ([entry('set_attn_lora_rank', {'one': 1})],
     "s.json: entry 0, field 'value': set_attn_lora_rank: bad layer pattern 'one': expected '*' (every layer), a "
     "layer index ('0'; '-1' the last) or a range of layers ('2-3')"),
    ([entry('set_attn_lora_rank', [1, 2])],
     "s.json: entry 0, field 'value': set_attn_lora_rank: expected an integer >= 0 or a mapping of layer patterns "
     "to ranks, got [1, 2] (list)"),
    ([entry('set_attn_lora_rank', {'0': 1}), entry('change_attn_lora_rank', 0.4)],
     "s.json: entry 1, field 'value': change_attn_lora_rank: factor 0.4 rounds attn_lora_rank 1 (layer 0) to 0, "
     "which would remove the adapters and train the full weights; to remove LoRA on purpose, give the value 0"),
])
def test_set_attn_lora_rank_refused_before_step_0(schedule, message):
    assert plan_error(schedule) == message


def test_set_attn_lora_rank_planned():
    saved = train.orchestrator_state()
    schedule = [entry('stack_layers', 2), entry('set_attn_lora_rank', {'-1': 0, '1-2': 4}),
                entry('change_attn_lora_rank', 2.0)]
    train.reset_orchestrator(schedule)
    config = GPTConfig(block_size=BLOCK, vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=16, attn_lora_rank=2)
    plan = train.validate_schedule('s.json', schedule, 0, config)
    train.load_orchestrator_state(saved)
    assert [row['attn_lora_rank'] for row in plan] == [2, [2, 4, 4, 0], [4, 8, 8, 0]]


def defaults():
    return {k: getattr(train, k) for k in train.config_keys}


def test_config_key_takes_a_mapping(tmp_path):
    assert 'attn_lora_rank' in train.config_keys
    config = configure(["--attn_lora_rank={'0': 4, '*': 8}"], defaults(), verbose=False, types=train.CONFIG_TYPES)
    assert config['attn_lora_rank'] == {'0': 4, '*': 8}
    path = tmp_path / 'c.py'
    path.write_text("attn_lora_rank = {'-1': 2, 0: 1}\n")
    assert configure([str(path)], defaults(), verbose=False, types=train.CONFIG_TYPES)['attn_lora_rank'] \
        == {'-1': 2, 0: 1}
    with pytest.raises(ConfigError) as e:
        configure(["--attn_lora_rank=[4, 8]"], defaults(), verbose=False, types=train.CONFIG_TYPES)
    assert str(e.value) == "command line: --attn_lora_rank=[4, 8] is a list, expected an int or a dict"
    with pytest.raises(ConfigError) as e:  # other keys keep their strict type
        configure(["--n_layer={'0': 4}"], defaults(), verbose=False, types=train.CONFIG_TYPES)
    assert str(e.value) == "command line: --n_layer={'0': 4} is a dict, expected an int"


# ------------------------------------------------------------------ runs

SCHEDULE = [  # eval every 10 iters
    ('set_attn_lora_rank', {'0': 4, '*': 2}, 0.0, 10, True),  # iter 10
    ('stack_layers', [0, 1, 1], 0.0, 10, True),  # iter 20: layer 2 copies layer 1, its adapter and state
    ('change_attn_lora_rank', 2.0, 0.0, 10, True),  # iter 30: ranks 8, 4, 4
    ('set_attn_lora_rank', {'-1': 0}, 0.0, 20, True),  # iter 50: the last layer's weights train again
]
RANK_KEY = "{'-1': 3}"  # the config key: a 2-layer model with an adapter on its last layer only


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    runs = trained_runs(tmp_path_factory.mktemp('lora_layers'), SCHEDULE, n_layer=2, attn_lora_rank=RANK_KEY,
                        lora_alpha=2.0, learning_rate=1e-2, always_save_checkpoint=True)
    for name, iters in (('full', 60), ('half', 40)):
        result = run_train(runs['args'](runs['root'] / name, max_iters=iters))
        assert result.returncode == 0, describe_run(result)
    return runs


@pytest.mark.slow
def test_run_logs_the_ranks_and_keeps_the_function(runs):
    events = read_events(runs['root'] / 'full')
    ops = {e['name'] + str(e['iter']): e for e in events if e['event'] == 'op'}
    assert list(ops) == ['set_attn_lora_rank10', 'stack_layers20', 'change_attn_lora_rank30', 'set_attn_lora_rank50']
    assert ops['set_attn_lora_rank10']['changes']['attn_lora_rank'] == [[0, 3], [4, 2]]
    assert ops['stack_layers20']['changes']['attn_lora_rank'] == [[4, 2], [4, 2, 2]]
    assert ops['change_attn_lora_rank30']['changes']['attn_lora_rank'] == [[4, 2, 2], [8, 4, 4]]
    assert ops['set_attn_lora_rank50']['changes']['attn_lora_rank'] == [[8, 4, 4], [8, 4, 0]]
    for key in ('set_attn_lora_rank10', 'change_attn_lora_rank30', 'set_attn_lora_rank50'):
        assert abs(ops[key]['val_loss_after'] - ops[key]['val_loss_before']) <= 1e-5, key


@pytest.mark.slow
def test_resume_is_exact(runs, tmp_path):
    out = tmp_path / 'out'
    shutil.copytree(runs['root'] / 'half', out)
    result = run_train(runs['args'](out, max_iters=60, init_from='resume'))
    assert result.returncode == 0, describe_run(result)
    full_dir = runs['root'] / 'full'
    assert without_elapsed(read_events(out)) == without_elapsed(read_events(full_dir))
    full = torch.load(full_dir / 'ckpt.pt', map_location='cpu', weights_only=True)
    resumed = torch.load(out / 'ckpt.pt', map_location='cpu', weights_only=True)
    assert full['config']['attn_lora_rank'] == resumed['config']['attn_lora_rank'] == {'-1': 3}
    assert resumed['model_args']['attn_lora_rank'] == [8, 4, 0]
    for key in ('config', 'wandb_run_id'):
        del full[key], resumed[key]
    assert_same_state(resumed, full)


@pytest.mark.slow
def test_resume_without_arguments_keeps_the_mapping(runs, tmp_path):
    """The run's settings come from its checkpoint: the mapping too (equal, so no 'resume: ... =' line)."""
    out = tmp_path / 'out'
    shutil.copytree(runs['root'] / 'half', out)
    result = run_train([f'--out_dir={out}', '--init_from=resume', '--max_iters=50', '--device=cpu', '--compile=False'])
    assert result.returncode == 0, describe_run(result)
    assert 'resume: attn_lora_rank' not in result.stdout
    resumed = torch.load(out / 'ckpt.pt', map_location='cpu', weights_only=True)
    assert resumed['config']['attn_lora_rank'] == {'-1': 3}


@pytest.mark.slow
def test_bad_config_key_is_one_line(runs, tmp_path):
    result = run_train(runs['args'](tmp_path / 'out', attn_lora_rank="{'9': 4}"))
    assert (result.returncode, result.stdout.count('Traceback'), result.stderr) == \
        (2, 0, "error: config: attn_lora_rank: layer pattern '9' matches no layer of a 2-layer model (layers 0-1)\n")
    assert not os.path.exists(tmp_path / 'out')


@pytest.mark.slow
def test_export_merges_per_layer_adapters(runs, tmp_path):
    transformers = pytest.importorskip('transformers')
    result = run_script(['export_hf.py', f"--out_dir={runs['root'] / 'half'}", f"--hf_dir={tmp_path / 'hf'}"])
    assert result.returncode == 0, describe_run(result)
    model = GPT.from_checkpoint(str(runs['root'] / 'half' / 'ckpt.pt'))
    assert model.config.attn_lora_rank == [8, 4, 4]  # iter 40: after change_attn_lora_rank
    exported = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / 'hf').eval()
    vocab = model.config.vocab_size
    idx = torch.randint(0, vocab, (2, 32), generator=torch.Generator().manual_seed(2))
    model.eval()
    with torch.no_grad():
        ours = model(idx, idx)[0]
        theirs = exported(idx).logits
    assert (ours - theirs).abs().max().item() <= 1e-4
    bare = GPT(GPTConfig(**dict(vars(model.config), attn_lora_rank=0)))  # the main weights alone differ: merged
    bare.load_state_dict({k: v for k, v in model.state_dict().items() if '.lora_' not in k})
    with torch.no_grad():
        assert (bare.eval()(idx, idx)[0] - ours).abs().max().item() > 1e-3


def test_resume_matches_int_pattern_keys_as_the_checkpoint_stored_them(monkeypatch):
    """A YAML schedule may write a pattern as an int key ({0: 4}); the checkpoint stores the entries as JSON
    (the key '0'): the file still matches the ops already run."""
    saved = train.orchestrator_state()
    ran = entry('set_attn_lora_rank', {0: 4, '*': 2})
    monkeypatch.setattr(train, 'scaling_schedule_file', 's.yaml')
    try:
        train.reset_orchestrator([ran])
        train.orch.executed_ops.append(dict(ran, index=0, iter=10, reason='timeout'))
        train.load_orchestrator_state(train.orchestrator_state())  # as a checkpoint holds it
        assert train.orch.executed_ops[0]['value'] == {'0': 4, '*': 2}
        train.check_schedule_matches([ran, entry('merge_lora_weights', None)])
        assert train.orch.schedule == [entry('merge_lora_weights', None)]
    finally:
        train.load_orchestrator_state(saved)


def test_imported_weights_take_per_layer_ranks(tmp_path, monkeypatch):
    """Patterns resolve against the imported model's depth; one naming a layer it lacks is one line."""
    transformers = pytest.importorskip('transformers')
    folder = tmp_path / 'hf'
    hf_config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=BLOCK, n_embd=16, n_layer=2, n_head=2)
    transformers.GPT2LMHeadModel(hf_config).save_pretrained(folder)
    assert GPT.from_hf(str(folder), attn_lora_rank={'-1': 2}).config.attn_lora_rank == [0, 2]
    for key, value in dict(init_from=str(folder), block_size=BLOCK, attn_lora_rank={'2': 2}).items():
        monkeypatch.setattr(train, key, value)
    with pytest.raises(train.UserError) as e:
        train.model_config_from_hf({'vocab_size': VOCAB})
    assert str(e.value) == "config: attn_lora_rank: layer pattern '2' matches no layer of a 2-layer model (layers 0-1)"
