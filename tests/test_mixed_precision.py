"""
bf16 / fp16 without a GPU (issue 10): dtype is honoured on the cpu too (autocast, float32 weights and
AdamW state), so the mixed-precision paths run here.
- during an MSG ramp the masked activations stay bf16 under autocast (the mask is cast to them);
- growth ops keep the function under bf16 autocast, within bf16's precision;
- a short train.py run under bf16 with growth ops and an MSG ramp: finite losses, the function-keeping
  ops change the val loss by no more than bf16 rounding, the weights stay float32.
The fp16 GradScaler skip logic runs with PyTorch's cpu GradScaler in test_faults.py.
"""

import math

import pytest
import torch

from helpers import describe_run, entry, read_events, run_train, trained_runs
from model import GPT, GPTConfig

BF16 = dict(device_type='cpu', dtype=torch.bfloat16)


def tiny():
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=16, vocab_size=32, n_layer=2, n_head=2, n_embd=16, bias=True))


def batches():
    g = torch.Generator().manual_seed(3)
    return [torch.randint(0, 32, (4, 16), generator=g) for _ in range(2)]


def logits_bf16(model):
    model.eval()
    with torch.no_grad(), torch.autocast(**BF16):
        out = torch.cat([model(x, x)[0].float() for x in batches()])
    model.train()
    return out


@pytest.mark.parametrize('grow, masked', [
    (lambda m, g: m.msg_widen_mlp(96, g), lambda m: [block.mlp.c_proj for block in m.transformer.h]),
    (lambda m, g: m.msg_add_heads(1, g), lambda m: [block.attn.c_proj for block in m.transformer.h]),
], ids=['msg_widen_mlp', 'msg_add_heads'])
def test_masked_activations_stay_bf16_during_the_ramp(grow, masked):
    model = tiny()
    grow(model, torch.Generator().manual_seed(7))
    model.set_growth_mask(0.5)
    seen = []
    for module in masked(model):  # the projection right after the mask reads the masked activations
        module.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].dtype))
    logits_bf16(model)
    assert seen == [torch.bfloat16] * len(seen) and len(seen) == 2 * 2  # 2 layers x 2 batches


@pytest.mark.parametrize('grow', [
    lambda m, g: m.widen_mlp(96, g),
    lambda m, g: m.msg_widen_mlp(96, g),
    lambda m, g: m.msg_add_heads(1, g),
    lambda m, g: m.msg_widen_embd(24, g),
    lambda m, g: m.stack_layers([0, 0, 1, 1], g, blend=True),
], ids=['widen_mlp', 'msg_widen_mlp', 'msg_add_heads', 'msg_widen_embd', 'msg_stack_layers'])
def test_growth_keeps_the_function_under_bf16(grow):
    """Logits of the grown model at mask 0 against the model's before, both under bf16 autocast: equal
    within a few bf16 roundings (8 bits of mantissa: 2^-8 relative) of logits of size ~1."""
    model = tiny()
    before = logits_bf16(model)
    grow(model, torch.Generator().manual_seed(7))
    model.set_growth_mask(0.0)
    after = logits_bf16(model)
    assert after.dtype == torch.float32 and torch.isfinite(after).all()
    assert (after - before).abs().max().item() <= 4 * 2**-8 * before.abs().max().item()
    assert all(p.dtype == torch.float32 for p in model.parameters())


SCHEDULE = [  # eval every 10 iters
    entry('widen_mlp', 2.0, max_wait_iters=10, reevaluate=True),  # iter 10
    entry('msg_widen_mlp', {'factor': 1.5, 'anneal_iters': 20}, max_wait_iters=10, reevaluate=True),  # 20: ramp to 40
    entry('stack_layers', 2, max_wait_iters=20, reevaluate=True),  # iter 40
]


@pytest.mark.slow
def test_bf16_run_with_growth_and_an_msg_ramp(tmp_path):
    runs = trained_runs(tmp_path, SCHEDULE, max_iters=50, dtype='bfloat16')
    result = run_train(runs['args'](tmp_path / 'out'))
    assert result.returncode == 0, describe_run(result)
    assert 'precision: bfloat16 autocast on cpu, float32 weights\n' in result.stdout
    events = read_events(tmp_path / 'out')
    ops = {e['name']: e for e in events if e['event'] == 'op'}
    assert [ops[name]['iter'] for name in ('widen_mlp', 'msg_widen_mlp', 'stack_layers')] == [10, 20, 40]
    evals = {e['iter']: e for e in events if e['event'] == 'eval'}
    assert [evals[i]['mask'] for i in (20, 30, 40)] == [1.0, 0.5, 1.0]
    assert all(math.isfinite(e['train_loss']) and math.isfinite(e['val_loss']) for e in evals.values())
    assert evals[50]['val_loss'] < evals[0]['val_loss']
    for name in ('widen_mlp', 'msg_widen_mlp'):  # function-keeping ops: the loss moves by bf16 rounding only
        assert abs(ops[name]['val_loss_after'] - ops[name]['val_loss_before']) <= 1e-2, ops[name]
    checkpoint = torch.load(tmp_path / 'out' / 'ckpt.pt', map_location='cpu', weights_only=True)
    assert all(p.dtype == torch.float32 for p in checkpoint['model'].values())
    assert checkpoint['scaler'] == {}  # bf16 needs no loss scaling
