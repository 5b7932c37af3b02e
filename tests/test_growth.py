"""
Growth operations (issues 3 and 4) on tiny CPU models, fp32, dropout 0:
- every op that claims to preserve the function does (max |delta logit| <= 1e-5), with bias on
  and off and with LoRA adapters perturbed to non-zero values; MSG ops at mask 0, their folded
  model equals the masked one at mask 1, and at mask 0.5 the mask does something;
- stack_layers (which changes the function): the exact structure, weights and lineage;
- AdamW state carried through the lineage by model.carry_optimizer_state; weight-decay groups;
- widened replicas diverge under training, and the loss falls after each op;
- the FLOPs accounting against a hand computation;
- torch.compile across a growth op; a checkpoint round trip after growth, mid-ramp too;
- one train.py run with a growth schedule: the event log shows the new architecture, and the
  val loss re-measured after a function-preserving op equals the one before it.
"""

import copy
from dataclasses import asdict

import numpy as np
import pytest
import torch

import train
from helpers import (SHAKESPEARE, describe_run, entry, read_events, run_train, train_args, write_char_data,
                     write_schedule)
from model import GPT, GPTConfig, carry_optimizer_state

TOL = 1e-5
VOCAB, BLOCK = 32, 16
LORA = dict(attn_lora_rank=2, embedding_lora_rank=2)


def tiny(**overrides):
    """2 layers, 2 heads of size 8, n_embd 16, n_hidden 64, block 16, vocab 32."""
    args = dict(block_size=BLOCK, vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=16, dropout=0.0, bias=True)
    args.update(overrides)
    torch.manual_seed(0)
    return GPT(GPTConfig(**args))


def perturb(model, seed=1, scale=0.1):
    """Noise on every parameter, the adapters' zeroed side included: merges move real values,
    biases and LayerNorm shifts are non-zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def random_batches(n, batch=4, seed=123, vocab=VOCAB):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (batch, BLOCK), generator=g) for _ in range(n)]


FIXED = random_batches(2)


def logits_of(model, data=FIXED):
    """Logits at every position of the fixed batches (targets given, so no last-position shortcut)."""
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(x, x)[0] for x in data])
    model.train()
    return out


def max_diff(a, b):
    return (a - b).abs().max().item()


def gen(seed=7):
    return torch.Generator().manual_seed(seed)


def snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def changed(before, model):
    """Some parameter appeared, vanished, changed shape or value."""
    after = dict(model.named_parameters())
    return set(before) != set(after) or any(
        before[k].shape != after[k].shape or not torch.equal(before[k], after[k]) for k in before)


def assert_adapters_nonzero(model):
    for module in model.modules():
        if getattr(module, 'lora_rank', 0):
            assert module.lora_delta().abs().max().item() > 1e-3


# ------------------------------------------------------------------ 1. function preservation

PRESERVING = {
    # 64 -> 144 hidden units: every unit gets one replica, 16 of them a second (shares 1:2 and 1:2:3)
    'widen_mlp': (dict(), lambda m: m.widen_mlp(144, gen())),
    'widen_mlp_with_lora': (LORA, lambda m: m.widen_mlp(144, gen())),
    'attn_rank_up': (LORA, lambda m: m.set_lora_rank('attn', 4, gen())),
    'attn_rank_down': (LORA, lambda m: m.set_lora_rank('attn', 1, gen())),
    'attn_rank_removed': (LORA, lambda m: m.set_lora_rank('attn', 0, gen())),
    'attn_rank_added': (dict(), lambda m: m.set_lora_rank('attn', 3, gen())),
    'embedding_rank_up': (LORA, lambda m: m.set_lora_rank('embedding', 4, gen())),
    'embedding_rank_removed': (LORA, lambda m: m.set_lora_rank('embedding', 0, gen())),
    'lora_alpha': (LORA, lambda m: m.set_lora_alpha(3.0, gen())),
    'merge_lora': (LORA, lambda m: m.merge_lora(gen())),
}

MSG = {
    'msg_widen_mlp': (dict(), lambda m: m.msg_widen_mlp(96, gen())),
    'msg_widen_mlp_with_lora': (LORA, lambda m: m.msg_widen_mlp(96, gen())),
    'msg_add_heads': (dict(), lambda m: m.msg_add_heads(1, gen())),
    'msg_widen_embd': (dict(), lambda m: m.msg_widen_embd(24, gen())),
    'msg_stack_copy': (dict(), lambda m: m.stack_layers([0, 1, 0, 1], gen(), blend=True, init='copy')),
    'msg_stack_copy_with_lora': (LORA, lambda m: m.stack_layers([0, 1, 0, 1], gen(), blend=True, init='copy')),
    'msg_stack_random': (dict(), lambda m: m.stack_layers([0, 0, 1, 1], gen(), blend=True, init='random')),
}


@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('case', sorted(PRESERVING))
def test_op_preserves_logits(case, bias):
    kwargs, op = PRESERVING[case]
    model = perturb(tiny(bias=bias, **kwargs))
    assert_adapters_nonzero(model)
    before, params = logits_of(model), snapshot(model)
    lineage = op(model)
    assert changed(params, model)
    assert set(lineage) == {name for name, _ in model.named_parameters()}
    diff = max_diff(before, logits_of(model))
    assert diff <= TOL, f"{case} (bias={bias}): max |delta logit| {diff:.3g}"


def test_widen_mlp_splits_outgoing_weights_unequally():
    """Net2WiderNet: a unit's copies share its outgoing column (sum unchanged), in unequal parts."""
    model = perturb(tiny())
    old = snapshot(model)
    lineage = model.widen_mlp(144, gen())
    for i, block in enumerate(model.transformer.h):
        name = f'transformer.h.{i}.mlp.c_proj.weight'
        index, new = lineage[name][2], block.mlp.c_proj.weight
        assert model.config.n_hidden == 144 and new.shape == (16, 144)
        copies = [torch.nonzero(index == unit).flatten() for unit in range(64)]
        assert sorted(len(c) for c in copies) == [2] * 48 + [3] * 16
        for unit, columns in enumerate(copies):
            parts = new[:, columns]
            assert torch.allclose(parts.sum(1), old[name][:, unit], atol=1e-7)
            ratios = (parts / old[name][:, unit:unit + 1]).mean(0)  # the shares 1:2 or 1:2:3, normalized
            expected = torch.arange(1.0, len(columns) + 1) / (len(columns) * (len(columns) + 1) / 2)
            assert torch.allclose(ratios, expected, atol=1e-6)


def test_lora_ops_set_the_config_and_freezing():
    model = perturb(tiny(**LORA))
    model.set_lora_rank('attn', 4, gen())
    c_attn = model.transformer.h[0].attn.c_attn
    assert model.config.attn_lora_rank == 4 and c_attn.lora_A.shape == (4, 16) and c_attn.lora_B.shape == (48, 4)
    assert not c_attn.weight.requires_grad and torch.equal(c_attn.lora_B, torch.zeros(48, 4))
    model.set_lora_rank('embedding', 0, gen())
    wte = model.transformer.wte
    assert model.config.embedding_lora_rank == 0 and wte.weight.requires_grad and not hasattr(wte, 'lora_A')
    model.set_lora_alpha(3.0, gen())
    assert model.config.lora_alpha == 3.0 and c_attn.lora_scale == 3.0 / 4


@pytest.mark.parametrize('bias', [True, False])
@pytest.mark.parametrize('case', sorted(MSG))
def test_msg_op_masks(case, bias):
    kwargs, op = MSG[case]
    model = perturb(tiny(bias=bias, **kwargs))
    before = logits_of(model)
    op(model)
    assert model.config.ramp is not None
    masked = {}
    for mask in (0.0, 0.5, 1.0):
        model.set_growth_mask(mask)
        masked[mask] = logits_of(model)
    model.fold_ramp()
    assert model.config.ramp is None
    folded = logits_of(model)
    model.set_growth_mask(0.0)  # folded away: the mask no longer does anything
    folded_at_0 = logits_of(model)
    assert max_diff(before, masked[0.0]) <= TOL, f"{case} at mask 0: {max_diff(before, masked[0.0]):.3g}"
    assert max_diff(masked[1.0], folded) <= TOL, f"{case} folded vs mask 1: {max_diff(masked[1.0], folded):.3g}"
    assert torch.equal(folded, folded_at_0)
    assert max_diff(masked[0.5], before) > 1e-3 and max_diff(masked[0.5], masked[1.0]) > 1e-3
    for block in model.transformer.h:  # no trace of the ramp left: no extra cost after growth
        assert not block.blended and not block.mlp.n_unmasked and not block.attn.n_unmasked_heads
        assert not block.ln_1.n_unmasked and not block.ln_2.n_unmasked
    assert not model.transformer.ln_f.n_unmasked


# ------------------------------------------------------------------ 2. stack_layers structure

@pytest.mark.parametrize('layers, expected_map', [(3, [0, 1, 0, 1, 0, 1]), ([0, 0, 1, 1], [0, 0, 1, 1])])
def test_stack_layers_structure(layers, expected_map):
    model = perturb(tiny(attn_lora_rank=2))  # adapters and frozen weights are copied too
    old = snapshot(model)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    layer_map = train.check_layer_map(layers, 2)
    assert layer_map == expected_map
    lineage = model.stack_layers(layer_map)
    n = len(expected_map)
    assert model.config.n_layer == n and len(model.transformer.h) == n
    assert model.config.ramp is None and not any(block.blended for block in model.transformer.h)
    new = dict(model.named_parameters())
    per_block = [k[len('transformer.h.0.'):] for k in old if k.startswith('transformer.h.0.')]
    outside = [k for k in old if not k.startswith('transformer.h.')]
    assert set(new) == set(outside) | {f'transformer.h.{i}.{s}' for i in range(n) for s in per_block}
    assert set(lineage) == set(new)
    for name, p in new.items():
        if name.startswith('transformer.h.'):
            i, suffix = name[len('transformer.h.'):].split('.', 1)
            source = f'transformer.h.{expected_map[int(i)]}.{suffix}'
        else:
            source = name
        assert torch.equal(p, old[source]), name
        assert lineage[name] == (source, None, None)
        assert p.requires_grad == (source not in frozen)
    pointers = [p.data_ptr() for p in model.parameters()]
    assert len(set(pointers)) == len(pointers)  # copies are independent tensors


def test_msg_stack_random_lineage():
    model = perturb(tiny())
    old = snapshot(model)
    lineage = model.stack_layers([0, 0, 1, 1], gen(), blend=True, init='random')
    assert model.config.ramp == {'kind': 'layers', 'new_layers': [1, 3]}
    assert [b.blended for b in model.transformer.h] == [False, True, False, True]
    for name, p in model.named_parameters():
        layer = int(name.split('.')[2]) if name.startswith('transformer.h.') else None
        if layer in (1, 3):
            assert lineage[name] == (None, None, None)
        else:
            source = name if layer is None else name.replace(f'h.{layer}.', f'h.{[0, 0, 1, 1][layer]}.', 1)
            assert lineage[name] == (source, None, None) and torch.equal(p, old[source])
    # fresh init: zero biases, unit LayerNorm gains, GPT-2 scaled residual projections
    block = model.transformer.h[3]
    assert torch.equal(block.mlp.c_fc.bias, torch.zeros(64)) and torch.equal(block.ln_1.weight, torch.ones(16))
    assert 0.005 < block.mlp.c_proj.weight.std().item() < 0.015  # 0.02 / sqrt(2 * 4) = 0.0071


# ------------------------------------------------------------------ 3. optimizer state carry-over

def adamw(model):
    return model.configure_optimizers(0.1, 1e-2, (0.9, 0.95), 'cpu')


def adamw_steps(model, optimizer, steps, seed=5):
    for x in random_batches(steps, seed=seed):
        _, loss = model(x, torch.roll(x, -1, dims=1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def carried_optimizer(model, old, lineage):
    """A new AdamW for the grown model, the old states (by name) carried through the lineage as
    train.py does. Returns (new optimizer, carried count)."""
    new_optimizer = adamw(model)
    return new_optimizer, carry_optimizer_state(model, old, new_optimizer, lineage)


def grow_with_state(model, op, optimizer=None, steps=3):
    """AdamW steps, the op, a new optimizer with the state carried as train.py does.
    Returns (old states by name, cloned; lineage; new optimizer; carried count)."""
    optimizer = optimizer or adamw(model)
    adamw_steps(model, optimizer, steps)
    names = {p: name for name, p in model.named_parameters()}
    old = {names[p]: {k: v.clone() for k, v in state.items()} for p, state in optimizer.state.items()}
    lineage = op(model)
    new_optimizer, carried = carried_optimizer(model, old, lineage)
    return old, lineage, new_optimizer, carried


def state_of(optimizer, model):
    return {name: optimizer.state[p] for name, p in model.named_parameters() if p in optimizer.state}


def assert_groups(model, optimizer):
    """Every >=2-D trainable tensor decays, the rest do not, frozen ones are absent."""
    names = {p: name for name, p in model.named_parameters()}
    decay, no_decay = optimizer.param_groups
    assert decay['weight_decay'] == 0.1 and no_decay['weight_decay'] == 0.0
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert sorted(names[p] for p in decay['params']) == sorted(n for n, p in trainable.items() if p.dim() >= 2)
    assert sorted(names[p] for p in no_decay['params']) == sorted(n for n, p in trainable.items() if p.dim() < 2)


def assert_same_state(new, old):
    assert torch.equal(new['step'], old['step'])
    assert torch.equal(new['exp_avg'], old['exp_avg']) and torch.equal(new['exp_avg_sq'], old['exp_avg_sq'])


def test_carry_stack_layers():
    model = perturb(tiny())
    old, lineage, optimizer, carried = grow_with_state(model, lambda m: m.stack_layers([0, 1, 0, 1]))
    states = state_of(optimizer, model)
    # 4 tensors outside the blocks (wte, wpe, ln_f weight and bias), the 24 in the blocks twice
    assert carried == len(states) == len(list(model.parameters())) == 2 * len(old) - 4
    for name, state in states.items():
        assert_same_state(state, old[lineage[name][0]])
    # the two copies of a layer have their own moment tensors (AdamW updates them in place)
    a, b = states['transformer.h.0.mlp.c_fc.weight'], states['transformer.h.2.mlp.c_fc.weight']
    assert a['exp_avg'].data_ptr() != b['exp_avg'].data_ptr()
    assert_groups(model, optimizer)


def test_carry_widen_mlp():
    model = perturb(tiny())
    weights = {}

    def widen(m):
        weights.update(snapshot(m))  # after the AdamW steps
        return m.widen_mlp(144, gen())

    old, lineage, optimizer, carried = grow_with_state(model, widen)
    states = state_of(optimizer, model)
    assert carried == len(states) == len(old)
    for i, block in enumerate(model.transformer.h):
        prefix = f'transformer.h.{i}.mlp.'
        index = lineage[prefix + 'c_fc.weight'][2]
        assert torch.equal(index[:64], torch.arange(64))
        # the lineage names the unit each replica really copies (its incoming weights and bias)
        assert torch.equal(block.mlp.c_fc.weight, weights[prefix + 'c_fc.weight'][index])
        assert torch.equal(block.mlp.c_fc.bias, weights[prefix + 'c_fc.bias'][index])
        for name, dim in (('c_fc.weight', 0), ('c_fc.bias', 0), ('c_proj.weight', 1)):
            assert lineage[prefix + name] == (prefix + name, dim, index)
            new, src = states[prefix + name], old[prefix + name]
            assert torch.equal(new['step'], src['step'])
            for key in ('exp_avg', 'exp_avg_sq'):
                kept = new[key].narrow(dim, 0, 64)
                assert torch.equal(kept, src[key])  # the old units' moments exactly
                for j in range(64, 144):  # each replica: a copy of its source unit's moments
                    assert torch.equal(new[key].select(dim, j), src[key].select(dim, int(index[j])))
    for name, state in states.items():
        if lineage[name][2] is None:
            assert_same_state(state, old[name])
    assert_groups(model, optimizer)


MSG_FRESH = {  # op, {parameter: (dim, number of fresh slices)} in layer 0
    'msg_widen_mlp': (lambda m: m.msg_widen_mlp(96, gen()),
                      {'mlp.c_fc.weight': (0, 32), 'mlp.c_fc.bias': (0, 32), 'mlp.c_proj.weight': (1, 32)}),
    'msg_add_heads': (lambda m: m.msg_add_heads(1, gen()),
                      {'attn.c_attn.weight': (0, 24), 'attn.c_attn.bias': (0, 24), 'attn.c_proj.weight': (1, 8)}),
    'msg_widen_embd': (lambda m: m.msg_widen_embd(24, gen()),
                       {'ln_1.weight': (0, 8), 'attn.c_attn.weight': (1, 8), 'attn.c_proj.weight': (0, 8),
                        'attn.c_proj.bias': (0, 8), 'mlp.c_fc.weight': (1, 8), 'mlp.c_proj.weight': (0, 8)}),
}


@pytest.mark.parametrize('case', sorted(MSG_FRESH))
def test_carry_msg_fresh_slices(case):
    op, expected = MSG_FRESH[case]
    model = perturb(tiny())
    old, lineage, optimizer, carried = grow_with_state(model, op)
    states = state_of(optimizer, model)
    assert carried == len(states) == len(old)
    sliced = {name: entry for name, entry in lineage.items() if entry[2] is not None}
    assert {n[len('transformer.h.0.'):]: (e[1], int((e[2] < 0).sum())) for n, e in sliced.items()
            if n.startswith('transformer.h.0.') and n[len('transformer.h.0.'):] in expected} == expected
    for name, state in states.items():
        source, dim, index = lineage[name]
        assert source == name and torch.equal(state['step'], old[name]['step'])
        if index is None:
            assert_same_state(state, old[name])
            continue
        src = old[name]
        kept, fresh = torch.nonzero(index >= 0).flatten(), torch.nonzero(index < 0).flatten()
        # the old slices, in order (for c_attn rows: within each of q, k and v)
        assert torch.equal(index[kept], torch.arange(src['exp_avg'].shape[dim]))
        for key in ('exp_avg', 'exp_avg_sq'):
            assert torch.equal(state[key].index_select(dim, kept), src[key])
        new_sq = state['exp_avg_sq'].index_select(dim, fresh)
        assert torch.equal(state['exp_avg'].index_select(dim, fresh), torch.zeros_like(new_sq))
        assert torch.equal(new_sq, torch.full_like(new_sq, src['exp_avg_sq'].mean().item()))
    if case == 'msg_widen_embd':  # the embeddings grow columns too
        assert lineage['transformer.wte.weight'][1] == 1 and lineage['transformer.wpe.weight'][1] == 1
    assert_groups(model, optimizer)


def test_carry_msg_stack_random():
    model = perturb(tiny())
    old, lineage, optimizer, carried = grow_with_state(
        model, lambda m: m.stack_layers([0, 0, 1, 1], gen(), blend=True, init='random'))
    states = state_of(optimizer, model)
    new_layers = {name for name, _ in model.named_parameters()
                  if name.startswith(('transformer.h.1.', 'transformer.h.3.'))}
    assert not new_layers & set(states)  # fresh blocks start with no state
    assert carried == len(states) == len(old)
    for name, state in states.items():
        assert_same_state(state, old[lineage[name][0]])
    assert_groups(model, optimizer)


def test_carry_lora_ops():
    model = perturb(tiny(**LORA))
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {'transformer.wte.weight'} | {f'transformer.h.{i}.attn.{m}.weight'
                                                  for i in range(2) for m in ('c_attn', 'c_proj')}
    optimizer = adamw(model)
    assert_groups(model, optimizer)

    # rank 2 -> 4 on attention: new attention adapters start fresh, the embedding's keep their state
    old, lineage, optimizer, carried = grow_with_state(model, lambda m: m.set_lora_rank('attn', 4, gen()), optimizer)
    states = state_of(optimizer, model)
    attn_adapters = {n for n in lineage if '.attn.' in n and n.endswith(('lora_A', 'lora_B'))}
    assert len(attn_adapters) == 8 and not attn_adapters & set(states)
    assert not frozen & set(states) and not frozen & set(optimizer_names(optimizer, model))
    assert set(states) == set(old) - attn_adapters and carried == len(states)
    for name, state in states.items():
        assert_same_state(state, old[name])
    assert_groups(model, optimizer)

    # attention LoRA removed: its main weights are trained again, starting with no state
    old, lineage, optimizer, carried = grow_with_state(model, lambda m: m.set_lora_rank('attn', 0, gen()), optimizer)
    states = state_of(optimizer, model)
    attn_weights = frozen - {'transformer.wte.weight'}
    assert attn_weights <= set(optimizer_names(optimizer, model)) and not attn_weights & set(states)
    assert set(states) == set(old) - attn_adapters and carried == len(states)
    assert_groups(model, optimizer)

    # alpha change and merge: every adapter starts fresh; the rest keep their state
    for op in (lambda m: m.set_lora_alpha(2.0, gen()), lambda m: m.merge_lora(gen())):
        old, lineage, optimizer, carried = grow_with_state(model, op, optimizer)
        states = state_of(optimizer, model)
        adapters = {n for n in lineage if n.endswith(('lora_A', 'lora_B'))}
        assert adapters == {'transformer.wte.lora_A', 'transformer.wte.lora_B'}
        assert not adapters & set(states) and set(states) == set(old) - adapters and carried == len(states)
        for name, state in states.items():
            assert_same_state(state, old[name])
        assert 'transformer.wte.weight' not in optimizer_names(optimizer, model)
        assert_groups(model, optimizer)


def optimizer_names(optimizer, model):
    names = {p: name for name, p in model.named_parameters()}
    return [names[p] for group in optimizer.param_groups for p in group['params']]


# ------------------------------------------------------------------ 4. symmetry breaking, loss falls

def shakespeare_tokens(n_chars=100_000):
    with open(SHAKESPEARE, encoding='utf-8') as f:
        text = f.read(n_chars)
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    return np.array([stoi[c] for c in text], dtype=np.uint16), chars


def test_replicas_diverge_and_loss_falls_after_each_op():
    data, chars = shakespeare_tokens()
    tokens = torch.from_numpy(data.astype(np.int64))
    g = torch.Generator().manual_seed(0)

    def batch(generator, size=8):
        ix = torch.randint(len(tokens) - BLOCK - 1, (size,), generator=generator)
        return (torch.stack([tokens[i:i + BLOCK] for i in ix]), torch.stack([tokens[i + 1:i + 1 + BLOCK] for i in ix]))

    eval_batches = [batch(torch.Generator().manual_seed(99), 16) for _ in range(2)]

    def eval_loss():
        model.eval()
        with torch.no_grad():
            loss = sum(model(x, y)[1].item() for x, y in eval_batches) / len(eval_batches)
        model.train()
        return loss

    def steps(optimizer, n, ramp=False):
        for k in range(n):
            if ramp:
                model.set_growth_mask(min(1.0, k / 20))
            x, y = batch(g)
            _, loss = model(x, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if ramp:
            model.set_growth_mask(1.0)
            model.fold_ramp()

    def grow(optimizer, op):
        names = {p: name for name, p in model.named_parameters()}
        old = {names[p]: state for p, state in optimizer.state.items()}
        return carried_optimizer(model, old, op(model))[0]

    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=BLOCK, vocab_size=len(chars), n_layer=1, n_head=2, n_embd=32, n_hidden=32,
                          dropout=0.0, bias=True))
    optimizer = adamw(model)
    steps(optimizer, 30)

    fc = model.transformer.h[0].mlp.c_fc
    before = eval_loss()
    optimizer = grow(optimizer, lambda m: m.widen_mlp(56, gen()))
    after_op = eval_loss()
    assert abs(after_op - before) <= 1e-5
    replicas = range(32, 56)
    sources = [int(torch.nonzero((fc.weight[:32] == fc.weight[j]).all(1))[0]) for j in replicas]
    assert all(torch.equal(fc.weight[j], fc.weight[s]) for j, s in zip(replicas, sources))
    steps(optimizer, 30)
    gaps = [(fc.weight[j] - fc.weight[s]).abs().max().item() for j, s in zip(replicas, sources)]
    assert min(gaps) > 1e-4, f"a replica still equals its source unit: {min(gaps):.3g}"
    losses = [(after_op, eval_loss())]

    for op, ramp in ((lambda m: m.stack_layers([0, 0]), False),
                     (lambda m: m.msg_add_heads(1, gen()), True),
                     (lambda m: m.set_lora_rank('attn', 2, gen()), False)):
        optimizer = grow(optimizer, op)
        if ramp:
            model.set_growth_mask(0.0)
        after_op = eval_loss()
        steps(optimizer, 30, ramp)
        losses.append((after_op, eval_loss()))
    assert all(end < start - 0.01 for start, end in losses), losses


# ------------------------------------------------------------------ 5. FLOPs accounting

def test_flops_per_token_hand_computed():
    """T = block 16, vocab 32, n_embd 16, 2 heads of 8. Matmul weights per layer: c_attn 16x48,
    attn c_proj 16x16, c_fc 16xH, mlp c_proj Hx16; the head is wte (32x16), counted once.
    Training: 6 per trained weight, 4 per frozen one, attention 12 * L * heads * head_size * T.
    Eval: 2 per weight, attention 4 * L * heads * head_size * T."""
    model = tiny()
    layer = 16 * 48 + 16 * 16 + 16 * 64 + 64 * 16  # 3072
    assert model.flops_per_token() == 6 * (2 * layer + 32 * 16) + 12 * 2 * 16 * 16 == 46080
    assert model.flops_per_token(training=False) == 2 * (2 * layer + 32 * 16) + 4 * 2 * 16 * 16 == 15360

    model.stack_layers([0, 1, 0, 1])
    assert model.flops_per_token() == 6 * (4 * layer + 32 * 16) + 12 * 4 * 16 * 16 == 89088
    assert model.flops_per_token(training=False) == 2 * (4 * layer + 32 * 16) + 4 * 4 * 16 * 16 == 29696

    model.widen_mlp(96, gen())
    layer = 16 * 48 + 16 * 16 + 16 * 96 + 96 * 16  # 4096
    assert model.flops_per_token() == 6 * (4 * layer + 32 * 16) + 12 * 4 * 16 * 16 == 113664

    model.msg_add_heads(1, gen())  # 3 heads of 8: c_attn 16x72, attn c_proj 24x16; masked heads count in full
    layer = 16 * 72 + 24 * 16 + 16 * 96 + 96 * 16  # 4608
    assert model.flops_per_token() == 6 * (4 * layer + 32 * 16) + 12 * 4 * 24 * 16 == 132096
    assert model.flops_per_token(training=False) == 2 * (4 * layer + 32 * 16) + 4 * 4 * 24 * 16 == 44032
    model.fold_ramp()
    assert model.flops_per_token() == 132096


def test_flops_per_token_with_lora_frozen_weights():
    """attn rank 2: c_attn (16x48) and attn c_proj (16x16) frozen (4 per weight); adapters
    c_attn A 2x16 + B 48x2, c_proj A 2x16 + B 16x2 trained. embedding rank 2: wte frozen, but the
    head's weight gradient is still computed (it trains the adapters through the effective matrix),
    so wte counts as trained. The embedding adapter B A (32x2 @ 2x16) is formed once per forward, not
    per token: 2 * 32 * 2 * 16 flops, three times that in training (the gradients of B and of A)."""
    model = tiny(**LORA)
    frozen = 2 * (16 * 48 + 16 * 16)  # 2048
    trained = 2 * (16 * 64 + 64 * 16 + 2 * 16 + 48 * 2 + 2 * 16 + 16 * 2) + 32 * 16  # 4992
    assert model.matmul_params() == (trained, frozen) == (4992, 2048)
    assert model.flops_per_token() == 6 * trained + 4 * frozen + 12 * 2 * 16 * 16 == 44288
    assert model.flops_per_token(training=False) == 2 * (trained + frozen) + 4 * 2 * 16 * 16 == 16128
    assert model.flops_per_forward() == 3 * 2 * 32 * 2 * 16 == 6144
    assert model.flops_per_forward(training=False) == 2 * 32 * 2 * 16 == 2048
    model.set_lora_rank('attn', 0, gen())  # attention weights trained again, their adapters gone
    trained, frozen = 2 * 3072 + 32 * 16, 0
    assert model.flops_per_token() == 6 * trained + 12 * 2 * 16 * 16 == 46080
    model.set_lora_rank('embedding', 0, gen())
    assert model.flops_per_token() == 46080 and model.flops_per_forward() == 0


def test_training_flops_count_the_embedding_adapter_once_per_forward(monkeypatch):
    """train.py's counters: tokens x flops per token, plus the embedding adapter once per forward of
    every rank; MFU is per GPU, each rank's share of the step's flops against one GPU's peak."""
    model = tiny(**LORA)
    monkeypatch.setattr(train, 'model', model)
    monkeypatch.setattr(train, 'ddp_world_size', 2)
    for name, value in dict(device_type='cpu', optimizers=None, optimizer_names={}, flops_per_token=0,
                            flops_per_forward=0).items():
        monkeypatch.setattr(train, name, value)  # build_optimizer sets them
    train.build_optimizer()
    micro_steps, tokens = 3, 3 * 2 * 4 * 16  # 3 micro steps of batch 4 x block 16 on each of 2 ranks
    assert train.step_flops(tokens, micro_steps) == 44288 * tokens + 6144 * 3 * 2
    assert train.per_gpu_mfu(1248e12, 2.0) == pytest.approx(1.0)  # 624 TFLOP per GPU in 2 s: a 312 TFLOPS peak
    monkeypatch.setattr(train, 'ddp_world_size', 1)
    assert train.per_gpu_mfu(1248e12, 2.0) == pytest.approx(2.0)


# ------------------------------------------------------------------ 6. torch.compile across growth

def test_compile_across_widen_mlp():
    """Compiled forward/backward, widen_mlp, recompile: the compiled logits equal the eager ones
    and a training step runs. Logits and loss come from one training-mode call per graph (dropout
    0, so training mode computes what eval mode does): two compilations, not four."""
    model = perturb(tiny())
    optimizer = adamw(model)
    x = FIXED[0]
    y = torch.roll(x, -1, dims=1)
    torch._dynamo.reset()
    try:
        compiled = torch.compile(model)
        logits, loss = compiled(x, y)
        assert max_diff(logits.detach(), logits_of(model, [x])) <= TOL
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        before = logits_of(model, [x])

        old = {name: optimizer.state[p] for name, p in model.named_parameters()}
        optimizer, _ = carried_optimizer(model, old, model.widen_mlp(144, gen()))
        torch._dynamo.reset()
        compiled = torch.compile(model)
        eager = logits_of(model, [x])
        logits, loss = compiled(x, y)
        assert max_diff(eager, before) <= TOL
        assert max_diff(logits.detach(), eager) <= TOL
        weight = model.transformer.h[0].mlp.c_fc.weight
        assert weight.shape == (144, 16)
        start = weight.detach().clone()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss) and not torch.equal(weight, start)
    finally:
        torch._dynamo.reset()


# ------------------------------------------------------------------ 7. checkpoint round trip

@pytest.mark.parametrize('case', ['stack_widen_lora', 'msg_add_heads_mid_ramp', 'msg_widen_embd_mid_ramp',
                                  'msg_stack_mid_ramp'])
def test_checkpoint_round_trip_after_growth(case):
    model = perturb(tiny(**(LORA if case == 'stack_widen_lora' else {})))
    if case == 'stack_widen_lora':
        model.stack_layers([0, 1, 1])
        model.widen_mlp(100, gen())
        model.set_lora_rank('attn', 3, gen())
        perturb(model, seed=2)
    elif case == 'msg_add_heads_mid_ramp':
        model.msg_add_heads(2, gen())
    elif case == 'msg_widen_embd_mid_ramp':
        model.msg_widen_embd(24, gen())
    else:
        model.stack_layers([0, 0, 1, 1], gen(), blend=True, init='random')
    model.set_growth_mask(0.3)
    expected = logits_of(model)

    loaded = GPT(GPTConfig(**asdict(model.config)))
    loaded.load_state_dict(model.state_dict())
    assert loaded.config == model.config and loaded.config.ramp == model.config.ramp
    assert [(n, p.requires_grad) for n, p in loaded.named_parameters()] == \
           [(n, p.requires_grad) for n, p in model.named_parameters()]
    if model.config.ramp is not None:
        # the mask is not part of the state dict: train.py sets it from the orchestrator's ramp
        assert max_diff(logits_of(loaded), expected) > 1e-3
    loaded.set_growth_mask(0.3)
    assert torch.equal(logits_of(loaded), expected)


# ------------------------------------------------------------------ 8. end to end through train.py

@pytest.mark.slow
def test_train_run_with_growth_schedule(tmp_path):
    vocab = write_char_data(tmp_path / 'data')
    schedule = [
        entry('stack_layers', 2, max_wait_iters=20, reevaluate=True),
        entry('widen_mlp', 2.0, max_wait_iters=20, reevaluate=True),
        entry('msg_add_heads', dict(n_new_heads=1, anneal_iters=20), max_wait_iters=20, reevaluate=True),
    ]
    schedule_file = write_schedule(tmp_path / 'schedule.json', schedule)
    out = tmp_path / 'out'
    result = run_train(train_args(tmp_path / 'data', out, scaling_schedule_file=schedule_file, batch_size=8,
                                  eval_iters=3, log_interval=10, max_iters=80, learning_rate=1e-2,
                                  lr_decay_iters=80, min_lr=1e-3))
    assert result.returncode == 0, describe_run(result)
    assert 'msg_add_heads mask reached 1 at iter 80, folded away' in result.stdout
    events = read_events(out)
    evals = {e['iter']: e for e in events if e['event'] == 'eval'}
    ops = [e for e in events if e['event'] == 'op']
    assert sorted(evals) == list(range(0, 90, 10))
    assert [(e['iter'], e['name']) for e in ops] == [(20, 'stack_layers'), (40, 'widen_mlp'), (60, 'msg_add_heads')]

    def params(**arch):
        args = dict(block_size=32, vocab_size=vocab, n_layer=1, n_head=2, n_embd=32, bias=False)
        args.update(arch)
        with torch.device('meta'):
            return GPT(GPTConfig(**args)).get_num_params()

    archs = [dict(n_layer=1), dict(n_layer=2), dict(n_layer=2, n_hidden=256),
             dict(n_layer=2, n_hidden=256, n_head=3, head_size=16)]
    for it, e in evals.items():
        arch = archs[sum(it > op['iter'] for op in ops)]  # an eval at an op's iter runs before the op
        expected = dict(n_layer=1, n_head=2, n_hidden=128, params=params(**arch))
        expected.update({k: v for k, v in arch.items() if k != 'head_size'})
        assert {k: e[k] for k in expected} == expected, it
    stack, widen, heads = ops
    assert stack['changes']['n_layer'] == [1, 2] and widen['changes']['n_hidden'] == [128, 256]
    assert heads['changes']['n_head'] == [2, 3]
    for op, before, after in zip(ops, archs, archs[1:]):
        assert op['changes']['params'] == [params(**before), params(**after)]
        assert op['val_loss_before'] == evals[op['iter']]['val_loss']
    # the measured claim: function-preserving ops leave the val loss where it was
    assert abs(widen['val_loss_after'] - widen['val_loss_before']) <= 1e-5, widen
    assert abs(heads['val_loss_after'] - heads['val_loss_before']) <= 1e-5, heads
    assert abs(stack['val_loss_after'] - stack['val_loss_before']) > 1e-3, stack  # stacking changes it
    assert [evals[it]['mask'] for it in (60, 70, 80)] == [1.0, 0.5, 1.0]  # no ramp at 60 before the op
    # compute accounting in a real run: 10 iters of 8 x 32 tokens at the final architecture's rate
    with torch.device('meta'):
        final = GPT(GPTConfig(block_size=32, vocab_size=vocab, n_layer=2, n_head=3, head_size=16, n_embd=32,
                              n_hidden=256, bias=False))
    assert evals[80]['flops'] - evals[70]['flops'] == final.flops_per_token() * 10 * 8 * 32
    assert evals[80]['tokens'] == 80 * 8 * 32


# ------------------------------------------------------------------ symmetry-breaking widen_mlp

def test_widen_noise_cancels_to_first_order():
    """Noise on the replicas' incoming weights sums to zero over each unit's copies (weighted by their
    outgoing shares): the function changes at second order, 100x less for 10x less noise."""
    model = perturb(tiny())
    before = logits_of(model)
    diffs = {}
    for noise in (0.1, 0.01):
        grown = copy.deepcopy(model)
        lineage = grown.widen_mlp(144, gen(), noise)
        diffs[noise] = max_diff(before, logits_of(grown))
        for i, block in enumerate(grown.transformer.h):
            index = lineage[f'transformer.h.{i}.mlp.c_fc.weight'][2]
            old_fc = model.transformer.h[i].mlp.c_fc.weight
            new_fc, new_proj = block.mlp.c_fc.weight, block.mlp.c_proj.weight
            old_proj = model.transformer.h[i].mlp.c_proj.weight
            share = (new_proj / old_proj[:, index]).mean(0)
            eps = new_fc - old_fc[index]
            weighted = torch.zeros_like(old_fc).index_add_(0, index, eps * share[:, None])
            assert weighted.abs().max() < 1e-6
            assert (eps.norm(dim=1) > 0).all()  # every unit has copies here (64 -> 144), so all rows move
            rms = old_fc.pow(2).mean().sqrt()
            assert 0.3 * noise * rms < eps.std() < 1.5 * noise * rms
    assert 0 < diffs[0.01] < 1e-4 and diffs[0.1] > 20 * diffs[0.01], diffs


def best_match_cosine(fc_weight, n_old):
    """For each new unit of a widened c_fc weight, its cosine with the closest original unit; the mean."""
    new, old = torch.nn.functional.normalize(fc_weight[n_old:], dim=1), torch.nn.functional.normalize(fc_weight[:n_old], dim=1)
    return (new @ old.T).max(1).values.mean().item()


@pytest.mark.slow
def test_widen_noise_in_a_real_run_makes_replicas_learn_apart(tmp_path):
    write_char_data(tmp_path / 'data')
    cosines, ops = {}, {}
    for label, value in (('exact', 2.0), ('noise', {'factor': 2.0, 'noise': 1.0})):
        schedule = write_schedule(tmp_path / f'{label}.json', [('widen_mlp', value, 0.0, 20, True)])
        out = tmp_path / label
        result = run_train(train_args(tmp_path / 'data', out, scaling_schedule_file=schedule, max_iters=120,
                                      n_hidden=32, batch_size=8, learning_rate=3e-3, lr_decay_iters=120))
        assert result.returncode == 0, describe_run(result)
        ops[label] = next(e for e in read_events(out) if e['event'] == 'op')
        weights = torch.load(out / 'ckpt.pt', weights_only=True)['model']
        cosines[label] = best_match_cosine(weights['transformer.h.0.mlp.c_fc.weight'], 32)
    exact, noisy = ops['exact'], ops['noise']
    assert exact['val_loss_after'] == exact['val_loss_before']
    assert 0 < abs(noisy['val_loss_after'] - noisy['val_loss_before']) <= 1e-3, noisy
    assert noisy['value'] == {'factor': 2.0, 'noise': 1.0} and noisy['changes']['n_hidden'] == [32, 64]
    # 100 steps after the op, exact replicas still point where their sources do; noisy ones less so
    assert cosines['exact'] > 0.9 and cosines['noise'] < cosines['exact'] - 0.1, cosines
