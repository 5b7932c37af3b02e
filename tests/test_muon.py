"""
optimizer = 'muon' (issue 22, item 3): torch.optim.Muon for the blocks' weight matrices, AdamW for the rest.
- the split: which parameters Muon takes (with and without LoRA adapters), Muon's settings;
- the checkpoint format: AdamW's state dict as before, Muon's under 'muon'; a round trip is exact;
- float16 loss scaling through both optimizers: an inf anywhere skips both steps;
- Muon's momentum buffer (and AdamW's moments beside it) carried through every growth op, compared tensor
  by tensor with the op's lineage: copies (stacked layers, widen_mlp replicas) their source's, fresh
  slices zero, fresh tensors no state;
- change_lr / set_lr move the lr of both optimizers' groups;
- refused in one line: an unknown optimizer, Muon on a torch without torch.optim.Muon, a resume with
  another optimizer than the checkpoint's; the dry-run plan names the optimizer;
- kill -9 mid-run (in an MSG ramp, after growth), then a resume: the uninterrupted run's events and
  checkpoint exactly. (2-rank gloo DDP with Muon: tests/test_ddp.py.)
"""

import os
import signal
import sys

import pytest
import torch

import train
from helpers import (TINY, assert_same_state, describe_run, entry, file_state, read_events, run_train, train_env,
                     trained_runs, without_elapsed, write_char_data)
from model import GPT, GPTConfig, carry_optimizer_state

VOCAB, BLOCK = 32, 16
LORA = dict(attn_lora_rank=2, embedding_lora_rank=2)


def tiny(**overrides):
    """2 layers, 2 heads of size 8, n_embd 16, n_hidden 64, with biases; every parameter perturbed
    (adapters' zero sides, biases and LayerNorm shifts non-zero)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**dict(dict(block_size=BLOCK, vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=16,
                                      dropout=0.0, bias=True), **overrides)))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def muon(model):
    return model.configure_optimizers(0.1, 1e-2, (0.9, 0.95), 'cpu', 'muon')


def names_in(optimizer, model):
    names = {p: name for name, p in model.named_parameters()}
    return sorted(names[p] for group in optimizer.param_groups for p in group['params'])


def train_steps(model, optimizers, steps=3):
    g = torch.Generator().manual_seed(5)
    for _ in range(steps):
        x = torch.randint(0, VOCAB, (4, BLOCK), generator=g)
        _, loss = model(x, torch.roll(x, -1, dims=1))
        loss.backward()
        optimizers.step()
        optimizers.zero_grad(set_to_none=True)


def gen():
    return torch.Generator().manual_seed(7)


# ------------------------------------------------------------------ the split and the state dict

BLOCK_MATRICES = ['attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight']


@pytest.mark.parametrize('lora', [False, True], ids=['plain', 'lora'])
def test_muon_takes_the_blocks_weight_matrices(lora):
    model = tiny(**(LORA if lora else {}))
    optimizers = muon(model)
    assert list(optimizers.by_name) == ['adamw', 'muon']
    # with attention adapters the attention weights are frozen: in neither optimizer; their adapters train with AdamW
    matrices = BLOCK_MATRICES[2:] if lora else BLOCK_MATRICES
    assert names_in(optimizers.by_name['muon'], model) == sorted(f'transformer.h.{i}.{m}' for i in range(2)
                                                                 for m in matrices)
    trainable = sorted(name for name, p in model.named_parameters() if p.requires_grad)
    assert names_in(optimizers.by_name['adamw'], model) == sorted(set(trainable) - set(names_in(optimizers.by_name['muon'], model)))
    adapters = [name for name in trainable if 'lora_' in name]
    assert len(adapters) == (10 if lora else 0) and set(adapters) <= set(names_in(optimizers.by_name['adamw'], model))
    (group,) = optimizers.by_name['muon'].param_groups
    assert (group['lr'], group['weight_decay'], group['momentum'], group['nesterov'], group['adjust_lr_fn']) == \
        (1e-2, 0.1, 0.95, True, 'match_rms_adamw')
    decay, no_decay = optimizers.by_name['adamw'].param_groups
    assert decay['weight_decay'] == 0.1 and no_decay['weight_decay'] == 0.0
    assert list(model.configure_optimizers(0.1, 1e-2, (0.9, 0.95), 'cpu').by_name) == ['adamw']


def test_state_dict_is_adamws_with_muons_beside_it():
    model = tiny()
    adamw_only = model.configure_optimizers(0.1, 1e-2, (0.9, 0.95), 'cpu')
    train_steps(model, adamw_only, 1)
    assert sorted(adamw_only.state_dict()) == ['param_groups', 'state']  # the format of checkpoints before Muon
    optimizers = muon(model)
    train_steps(model, optimizers, 2)
    saved = optimizers.state_dict()
    assert sorted(saved) == ['muon', 'param_groups', 'state'] and len(saved['muon']['state']) == 8
    restored = muon(model)
    restored.load_state_dict(saved)
    assert_same_state(restored.state_dict(), saved)


def test_grad_scaler_steps_both_or_neither():
    """float16's loss scaling through Optimizers: an inf in one Muon matrix's gradient skips AdamW's step
    too (no parameter changes, no state starts); a finite step moves both optimizers' parameters."""
    model = tiny()
    optimizers = muon(model)
    scaler = torch.amp.GradScaler('cpu', init_scale=2.0**4)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    x = torch.randint(0, VOCAB, (4, BLOCK), generator=torch.Generator().manual_seed(5))
    for poisoned in (True, False):
        _, loss = model(x, torch.roll(x, -1, dims=1))
        scaler.scale(loss).backward()
        if poisoned:
            model.transformer.h[0].mlp.c_fc.weight.grad[0, 0] = float('inf')
        scaler.unscale_(optimizers)
        scaler.step(optimizers)
        scaler.update()
        optimizers.zero_grad(set_to_none=True)
        changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
        if poisoned:
            assert not changed and not optimizers.state and scaler.get_scale() == 2.0**3
    assert changed == set(before) and len(optimizers.by_name['muon'].state) == 8


# ------------------------------------------------------------------ state through every growth op

def through_lineage(tensor, dim, index, fill):
    """What the lineage says a state tensor becomes, slice by slice: index[i] >= 0 copies that old slice,
    -1 is a fresh slice filled with `fill`."""
    if index is None:
        return tensor
    return torch.stack([tensor.select(dim, i) if i >= 0 else torch.full_like(tensor.select(dim, 0), fill)
                        for i in index.tolist()], dim)


GROWTH_OPS = {  # case: (model overrides, op)
    'stack_layers': ({}, lambda m: m.stack_layers([0, 1, 0, 1])),
    'widen_mlp': ({}, lambda m: m.widen_mlp(144, gen())),
    'msg_widen_mlp': ({}, lambda m: m.msg_widen_mlp(96, gen())),
    'msg_add_heads': ({}, lambda m: m.msg_add_heads(1, gen())),
    'msg_widen_embd': ({}, lambda m: m.msg_widen_embd(24, gen())),
    'msg_stack_layers': ({}, lambda m: m.stack_layers([0, 0, 1, 1], gen(), blend=True, init='random')),
    'change_attn_lora_rank': (LORA, lambda m: m.set_lora_rank('attn', 4, gen())),
    'remove_attn_lora': (LORA, lambda m: m.set_lora_rank('attn', 0, gen())),
    'merge_lora_weights': (LORA, lambda m: m.merge_lora(gen())),
}


@pytest.mark.parametrize('case', sorted(GROWTH_OPS))
def test_state_carried_through_the_lineage(case):
    overrides, op = GROWTH_OPS[case]
    model = tiny(**overrides)
    optimizers = muon(model)
    train_steps(model, optimizers)
    names = {p: name for name, p in model.named_parameters()}
    old = {names[p]: {k: v.clone() for k, v in state.items()} for p, state in optimizers.state.items()}
    assert all(old[name]['momentum_buffer'].abs().min() > 0 for name in names_in(optimizers.by_name['muon'], model))
    lineage = op(model)
    new_optimizers = muon(model)
    carried = carry_optimizer_state(model, old, new_optimizers, lineage)
    states = {name: new_optimizers.state[p] for name, p in model.named_parameters() if p in new_optimizers.state}
    with_source_state = {name for name, p in model.named_parameters() if p.requires_grad and lineage[name][0] in old}
    assert set(states) == with_source_state and carried == len(states) > 0
    replicas = layer_copies = fresh_slices = 0  # in Muon's matrices
    for name, state in states.items():
        source, dim, index = lineage[name]
        in_muon = name in names_in(new_optimizers.by_name['muon'], model)
        assert sorted(state) == (['momentum_buffer'] if in_muon else ['exp_avg', 'exp_avg_sq', 'step']), name
        for key, value in state.items():
            old_value = old[source][key]
            if key == 'step':
                assert torch.equal(value, old_value)
                continue
            fill = old_value.mean().item() if key == 'exp_avg_sq' else 0.0
            assert torch.equal(value, through_lineage(old_value, dim, index, fill)), (name, key)
        if not in_muon:
            continue
        layer_copies += source != name
        if index is not None:
            replicas += len(index[index >= 0]) - len(index[index >= 0].unique())
            fresh = torch.nonzero(index < 0).flatten()
            fresh_slices += len(fresh)
            assert not state['momentum_buffer'].index_select(dim, fresh).any()  # fresh slices: zero
    # each case exercises what it should: copies of layers, widen_mlp's replicas, MSG's fresh slices
    assert (layer_copies > 0) == (case in ('stack_layers', 'msg_stack_layers'))
    assert (replicas > 0) == (case == 'widen_mlp')
    assert (fresh_slices > 0) == (case in ('msg_widen_mlp', 'msg_add_heads', 'msg_widen_embd'))
    if case == 'msg_stack_layers':  # the fresh blocks start with no state
        assert not any(name.startswith(('transformer.h.1.', 'transformer.h.3.')) for name in states)
    if case == 'remove_attn_lora':  # the attention weights train again, with Muon, from no state
        unfrozen = {f'transformer.h.{i}.attn.{m}' for i in range(2) for m in ('c_attn.weight', 'c_proj.weight')}
        assert unfrozen <= set(names_in(new_optimizers.by_name['muon'], model)) and not unfrozen & set(states)


# ------------------------------------------------------------------ the lr of both optimizers

def test_change_lr_and_set_lr_move_both_optimizers(tmp_path, monkeypatch):
    """decay_lr off: the lr is the peak; change_lr 0.5 halves it, set_lr 2e-3 sets it, in AdamW's two
    groups and Muon's one alike."""
    vocab_size = write_char_data(tmp_path / 'data', n_chars=20_000)
    settings = dict(TINY, data_dir=str(tmp_path / 'data'), decay_lr=False, optimizer='muon', ddp=False,
                    ddp_world_size=1, device_type='cpu')
    for key, value in settings.items():
        monkeypatch.setattr(train, key, value)
    monkeypatch.setattr(train, 'data_generator', torch.Generator().manual_seed(0))
    monkeypatch.setattr(train, 'ctx', train.nullcontext())
    monkeypatch.setattr(train, 'model', GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, bias=False,
                                                      vocab_size=vocab_size)))
    monkeypatch.setattr(train, 'train_model', train.model)
    monkeypatch.setattr(train, 'scaler', torch.amp.GradScaler('cpu', enabled=False))
    change, set_lr = entry('change_lr', 0.5), entry('set_lr', 2e-3)
    train.reset_orchestrator([change, set_lr])
    train.build_optimizer()

    def lrs_after_a_step(it):
        train.train_step(it)
        return {name: [group['lr'] for group in optimizer.param_groups]
                for name, optimizer in train.optimizers.by_name.items()}

    assert lrs_after_a_step(0) == dict(adamw=[1e-3, 1e-3], muon=[1e-3])
    train.execute_operation(change, 'timeout', 1, 4.0)
    assert lrs_after_a_step(1) == dict(adamw=[5e-4, 5e-4], muon=[5e-4])
    train.execute_operation(set_lr, 'timeout', 2, 4.0)
    assert lrs_after_a_step(2) == dict(adamw=[2e-3, 2e-3], muon=[2e-3])
    assert len(train.optimizers.by_name['muon'].state) == 4  # Muon stepped its 4 matrices


def test_a_resume_keeps_the_optimizer(monkeypatch):
    monkeypatch.setattr(train, 'out_dir', 'out')
    monkeypatch.setattr(train, 'optimizer', 'muon')
    with pytest.raises(train.UserError) as raised:
        train.check_same_optimizer({'config': {}})  # a checkpoint from before the key: AdamW
    assert str(raised.value) == ("optimizer: out/ckpt.pt was trained with optimizer='adamw', resumed with 'muon'; "
                                 "the optimizer is fixed for a run: resume with optimizer='adamw'")
    train.check_same_optimizer({'config': {'optimizer': 'muon'}})
    monkeypatch.setattr(train, 'optimizer', 'adamw')
    train.check_same_optimizer({'config': {}})


# ------------------------------------------------------------------ runs of train.py

N = 60
SCHEDULE = [  # (name, value, trigger_loss, max_wait_iters, reevaluate); eval every 10 iters
    ('change_lr', 0.5, 0.0, 10, False),  # iter 10
    ('stack_layers', 2, 0.0, 10, True),  # iter 20
    ('widen_mlp', 2.0, 0.0, 10, True),  # iter 30
    ('msg_widen_mlp', {'factor': 1.5, 'anneal_iters': 20}, 0.0, 10, False),  # iter 40: mask 0 -> 1 at 60
]
EXPECTED_OPS = [(10, 'change_lr'), (20, 'stack_layers'), (30, 'widen_mlp'), (40, 'msg_widen_mlp')]

# train.py killing itself with SIGKILL before the training step of iteration KILL_AT
KILLING_TRAIN = r'''
import os, signal, sys
sys.path.insert(0, os.getcwd())
import train

train_step = train.train_step


def killing_train_step(iter_num, *args):
    if iter_num == int(os.environ['KILL_AT']):
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return train_step(iter_num, *args)


train.train_step = killing_train_step
train.run_from_command_line(sys.argv[1:])
'''
# train.py on a torch without Muon (before 2.9)
NO_MUON_TRAIN = r'''
import os, sys
sys.path.insert(0, os.getcwd())
import torch
del torch.optim.Muon
import train

train.run_from_command_line(sys.argv[1:])
'''


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """The uninterrupted Muon run with growth, and the wrapper scripts."""
    runs = trained_runs(tmp_path_factory.mktemp('muon'), SCHEDULE, always_save_checkpoint=True, max_iters=N,
                        optimizer='muon')
    for name, text in (('killing', KILLING_TRAIN), ('no_muon', NO_MUON_TRAIN)):
        (runs['root'] / f'{name}_train.py').write_text(text)
    result = run_train(runs['args'](runs['root'] / 'full'))
    assert result.returncode == 0, describe_run(result)
    return dict(runs, full=runs['root'] / 'full')


def load(path):
    return torch.load(path, map_location='cpu', weights_only=True)


@pytest.mark.slow
def test_muon_run_grows_with_its_state(runs):
    events = read_events(runs['full'])
    assert [(e['iter'], e['name']) for e in events if e['event'] == 'op'] == EXPECTED_OPS
    checkpoint = load(runs['full'] / 'ckpt.pt')
    assert (checkpoint['model_args']['n_layer'], checkpoint['model_args']['n_hidden']) == (2, 384)
    assert checkpoint['config']['optimizer'] == 'muon'
    # Muon's momentum for the 2 x 4 block matrices, shaped like them; AdamW's state for the other tensors
    momentum = [state['momentum_buffer'] for state in checkpoint['optimizer']['muon']['state'].values()]
    assert sorted(tuple(m.shape) for m in momentum) == sorted([(96, 32), (32, 32), (384, 32), (32, 384)] * 2)
    assert len(checkpoint['optimizer']['state']) == len(checkpoint['model']) - 8
    widen = [e for e in events if e['event'] == 'op' and e['name'] == 'widen_mlp'][0]
    assert abs(widen['val_loss_after'] - widen['val_loss_before']) <= 1e-5


@pytest.mark.slow
def test_kill_9_then_resume_is_exact(runs, tmp_path):
    """Killed before the step of iter 45 (in the MSG ramp; the checkpoint is iter 40's, after the op),
    resumed to N: the uninterrupted run's events and final checkpoint, Muon's state included."""
    out = tmp_path / 'out'
    result = run_train(runs['args'](out), command=[sys.executable, str(runs['root'] / 'killing_train.py')],
                       env=train_env(KILL_AT='45'))
    assert result.returncode == -signal.SIGKILL, describe_run(result)
    assert load(out / 'ckpt.pt')['iter_num'] == 40
    result = run_train(runs['args'](out, init_from='resume'))
    assert result.returncode == 0, describe_run(result)
    assert without_elapsed(read_events(out)) == without_elapsed(read_events(runs['full']))
    resumed, full = load(out / 'ckpt.pt'), load(runs['full'] / 'ckpt.pt')
    for key in ('config', 'wandb_run_id'):
        del resumed[key], full[key]
    assert_same_state(resumed, full)


@pytest.mark.slow
@pytest.mark.parametrize('case', ['unknown', 'torch_without_muon', 'resume_with_adamw'])
def test_refused_in_one_line(runs, tmp_path, case):
    out, command, overrides = tmp_path / 'out', [sys.executable, 'train.py'], {}
    if case == 'unknown':
        overrides, message = dict(optimizer='sgd'), "optimizer: expected one of adamw, muon, got 'sgd'"
    elif case == 'torch_without_muon':
        command = [sys.executable, str(runs['root'] / 'no_muon_train.py')]
        message = (f"optimizer: 'muon' needs torch.optim.Muon (torch 2.9 or newer); this torch is "
                   f"{torch.__version__}: upgrade torch, or train with optimizer='adamw'")
    else:
        out = runs['full']
        overrides = dict(init_from='resume', optimizer='adamw', max_iters=N + 10)
        message = (f"optimizer: {out}/ckpt.pt was trained with optimizer='muon', resumed with 'adamw'; "
                   "the optimizer is fixed for a run: resume with optimizer='muon'")
    before = [file_state(out / name) for name in ('ckpt.pt', 'events.jsonl')] if out.exists() else None
    result = run_train(runs['args'](out, **overrides), command=command)
    assert (result.returncode, result.stderr) == (2, f"error: {message}\n"), describe_run(result)
    if before is not None:  # the checkpoint and the event log untouched
        assert [file_state(out / name) for name in ('ckpt.pt', 'events.jsonl')] == before
    else:
        assert not os.path.exists(out / 'ckpt.pt')


@pytest.mark.slow
def test_dry_run_plans_the_optimizer(runs, tmp_path):
    result = run_train(runs['args'](tmp_path / 'out', dry_run=True))
    assert result.returncode == 0, describe_run(result)
    assert ("\noptimizer: muon for the blocks' weight matrices, adamw for embeddings and head, norms, biases and "
            "LoRA adapters; its state carried through each growth op\nplan: 4 operations\n") in result.stdout
