"""
Do copies made by growth learn apart? A 1-layer char model is trained, then widened (widen_mlp,
exact or with noise) or stacked (stack_layers [0, 0]), its AdamW state carried through the lineage
as train.py does, and trained on. Printed for each: the loss jump at the op (fixed val batches), the
mean cosine between each copy's weights and its source's right after the op and N steps later, the
same for two independently initialised units (the baseline), and the val loss at the end.

$ python bench_symmetry.py                     # data/shakespeare_char, 500 + 500 steps, seed 1
$ python bench_symmetry.py --steps=1000 --noise=0.3,1.0
"""

import argparse
import copy
import os

import numpy as np
import torch
import torch.nn.functional as F

from model import GPT, GPTConfig, carry_optimizer_state


def batches(data, generator, count, batch_size, block_size):
    for _ in range(count):
        ix = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)
        x = torch.stack([torch.from_numpy(data[i:i + block_size].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block_size].astype(np.int64)) for i in ix])
        yield x, y


def fit(model, optimizer, data, steps, seed, lr):
    for group in optimizer.param_groups:
        group['lr'] = lr
    for x, y in batches(data, torch.Generator().manual_seed(seed), steps, 12, 64):
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def val_loss(model, val_batches):
    return sum(model(x, y)[1].item() for x, y in val_batches) / len(val_batches)


def grow(model, optimizer, op):
    """Apply op(model) -> lineage, and rebuild AdamW with its state carried, as train.py does."""
    names = {p: name for name, p in model.named_parameters()}
    old_states = {names[p]: state for p, state in optimizer.state.items()}
    lineage = op(model)
    new_optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), 'cpu')
    carry_optimizer_state(model, old_states, new_optimizer, lineage)
    return new_optimizer, lineage


def row_cosines(weight, index, first_new):
    """Mean cosine between each copy (rows first_new..) and its source row index[k]."""
    copies, sources = weight[first_new:], weight[index[first_new:]]
    return F.cosine_similarity(copies, sources, dim=1).mean().item()


def independent_cosine(weight, n_units):
    """Mean |cosine| between unit k and unit k+1 of the original units (initialised independently)."""
    return F.cosine_similarity(weight[:n_units - 1], weight[1:n_units], dim=1).abs().mean().item()


def layer_cosine(model):
    """Mean cosine between the two layers' weight matrices (flattened), over the matrices of a block."""
    first, second = model.transformer.h
    pairs = [(a, b) for (name, a), (_, b) in zip(first.named_parameters(), second.named_parameters()) if a.dim() == 2]
    return sum(F.cosine_similarity(a.flatten(), b.flatten(), dim=0).item() for a, b in pairs) / len(pairs)


def rebind(base_optimizer, model):
    """An AdamW for the copied model holding a copy of the base optimizer's state (a state dict numbers the
    parameters in order, which the copy shares)."""
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), 'cpu')
    optimizer.load_state_dict(copy.deepcopy(base_optimizer.state_dict()))
    return optimizer


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data_dir', default=os.path.join('data', 'shakespeare_char'),
                        help="a char-level train.bin and val.bin (vocab 65)")
    parser.add_argument('--steps', type=int, default=500, help="steps before the op, and after it")
    parser.add_argument('--noise', default='0.3,1.0', help="widen_mlp noise levels to try besides exact (0)")
    parser.add_argument('--seed', type=int, default=1, help="seeds the model's init, the batches and the widening")
    args = parser.parse_args()
    data = {split: np.memmap(os.path.join(args.data_dir, f'{split}.bin'), dtype=np.uint16, mode='r')
            for split in ('train', 'val')}
    val_batches = list(batches(data['val'], torch.Generator().manual_seed(0), 20, 12, 64))

    torch.manual_seed(args.seed)
    base = GPT(GPTConfig(block_size=64, vocab_size=65, n_layer=1, n_head=4, n_embd=128, n_hidden=256, bias=False))
    base_optimizer = base.configure_optimizers(0.1, 1e-3, (0.9, 0.99), 'cpu')
    fit(base, base_optimizer, data['train'], args.steps, args.seed, 1e-3)
    print(f"base: 1 layer, n_hidden 256, {args.steps} steps, val {val_loss(base, val_batches):.4f}")
    baseline = independent_cosine(base.transformer.h[0].mlp.c_fc.weight, 256)
    print(f"independently initialised units: mean |cosine| of c_fc rows {baseline:.3f}")

    for noise in [0.0] + [float(n) for n in args.noise.split(',')]:
        model = copy.deepcopy(base)
        optimizer = rebind(base_optimizer, model)
        before = val_loss(model, val_batches)
        optimizer, lineage = grow(model, optimizer,
                                  lambda m: m.widen_mlp(512, torch.Generator().manual_seed(args.seed), noise))
        jump = val_loss(model, val_batches) - before
        _, _, index = lineage['transformer.h.0.mlp.c_fc.weight']
        at_op = row_cosines(model.transformer.h[0].mlp.c_fc.weight, index, 256)
        fit(model, optimizer, data['train'], args.steps, args.seed + 1, 1e-3)
        later = row_cosines(model.transformer.h[0].mlp.c_fc.weight, index, 256)
        print(f"widen_mlp 256 -> 512, noise {noise:g}: loss jump {jump:+.2e}, replica-vs-source cosine "
              f"{at_op:.3f} at the op, {later:.3f} after {args.steps} steps; val {val_loss(model, val_batches):.4f}")

    model = copy.deepcopy(base)
    optimizer = rebind(base_optimizer, model)
    before = val_loss(model, val_batches)
    optimizer, _ = grow(model, optimizer, lambda m: m.stack_layers([0, 0]))
    jump = val_loss(model, val_batches) - before
    at_op = layer_cosine(model)
    fit(model, optimizer, data['train'], args.steps, args.seed + 1, 1e-3)
    print(f"stack_layers [0, 0]: loss jump {jump:+.2e}, copy-vs-source weight cosine {at_op:.3f} at the op, "
          f"{layer_cosine(model):.3f} after {args.steps} steps; val {val_loss(model, val_batches):.4f}")


if __name__ == '__main__':
    main()
