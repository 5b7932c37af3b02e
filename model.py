"""
The GPT language model (GPT-2 style, nanoGPT layout) and its growth operations.

The model knows *how* to change; train.py decides *when*. Every growth method changes the
model in place and returns its lineage: for every parameter name of the new model, where
its values came from, as (old_name, dim, index):
  (name, None, None)  the whole tensor of old parameter `name`
  (name, dim, index)  slices of `name` along `dim`; index[i] is the old slice that new slice i
                      copies, -1 marks a fresh slice
  (None, None, None)  a fresh tensor
carry_optimizer_state (below) carries the optimizer state (AdamW's moments, Muon's momentum) through
this lineage; train.py calls it. The frozen set (config.frozen, the freeze op's) goes through the same
lineage inside the model (carries_frozen): a copy of a frozen tensor is frozen.

Masked structural growth (MSG): new structure is multiplied by `growth_mask`, a scalar that
train.py raises from 0 to 1; at 0 the network computes exactly what it computed before.
config.ramp says which structure is masked; fold_ramp() drops the mask once it is 1.

Hugging Face interop (GPT.from_hf, GPT.to_hf and their helpers): GPT-2
weights from transformers in and out; a rope model goes out as GPT-NeoX. transformers is optional
(requirements-hf.txt) and only imported by from_hf and to_hf.
"""

import copy
import functools
import inspect
import math
import re
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

LN_EPS = 1e-5
INIT_STD = 0.02
# the mlp's GELU: 'gelu' exact (this repository's models), 'gelu_tanh' the tanh approximation (GPT-2's)
ACTIVATIONS = ('gelu', 'gelu_tanh')
# where a token's position enters: 'learned' adds a trained table (wpe, GPT-2's), 'rope' turns each attention
# head's queries and keys by angles that grow with the position (rotary embeddings, GPT-NeoX's layout; no parameters)
POS_EMBS = ('learned', 'rope')
# the shape growth changes and the adapters LoRA ops change, by the names that logs, the dry-run plan,
# events and benchmarks use
ARCH_KEYS = ('n_layer', 'n_head', 'head_size', 'n_embd', 'n_hidden')
LORA_KEYS = ('attn_lora_rank', 'embedding_lora_rank', 'lora_alpha')


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for efficiency
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_hidden: int = 0  # mlp width; 0 means 4 * n_embd
    head_size: int = 0  # 0 means n_embd // n_head; it stays fixed when heads are added
    dropout: float = 0.0
    bias: bool = True  # bias in Linears and LayerNorms, like GPT-2; False is a bit better and faster
    # 0 = no adapters on the attention projections; one int for every layer, a list of one rank per layer, or
    # (given) a mapping of layer patterns to ranks, resolved here (see layer_rank_changes; unnamed layers get 0)
    attn_lora_rank: int = 0
    embedding_lora_rank: int = 0  # 0 = no adapter on the token embedding (and tied head)
    lora_alpha: float = 1.0
    ramp: dict = None  # the MSG growth still masked: {'kind': 'mlp'|'heads'|'layers'|'embd', ...}
    activation: str = 'gelu'  # one of ACTIVATIONS; checkpoints from before this key ran exact GELU
    pos_emb: str = 'learned'  # one of POS_EMBS; checkpoints from before this key learned their positions
    rope_base: float = 10000.0  # rope: pair i of a head turns by position * rope_base^(-2i / head_size)
    frozen: list = None  # names of the parameters the freeze op froze (see GPT.set_frozen); None: none

    def __post_init__(self):
        for key, allowed in (('activation', ACTIVATIONS), ('pos_emb', POS_EMBS)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key}: expected one of {', '.join(allowed)}, got {getattr(self, key)!r}")
        if not self.rope_base > 0:
            raise ValueError(f"rope_base: expected a number > 0, got {self.rope_base}")
        self.frozen = list(self.frozen or ())
        if self.n_hidden == 0:
            self.n_hidden = 4 * self.n_embd
        if self.head_size == 0:
            if self.n_embd % self.n_head != 0:
                raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
            self.head_size = self.n_embd // self.n_head
        if self.pos_emb == 'rope' and self.head_size % 2:
            raise ValueError(f"pos_emb 'rope' turns pairs of dimensions in each head: head_size must be even, "
                             f"got {self.head_size}")
        self.attn_lora_rank = compact_ranks(initial_attn_ranks(self.attn_lora_rank, self.n_layer))


# per-layer attention LoRA ranks: config.attn_lora_rank is stored as one int when every layer has the same rank
# (as in checkpoints from before per-layer ranks), else as a list of one int per layer

def attn_lora_ranks(config):
    """One attention LoRA rank per layer."""
    rank = config.attn_lora_rank
    return list(rank) if isinstance(rank, (list, tuple)) else [rank] * config.n_layer


def compact_ranks(ranks):
    return ranks[0] if len(set(ranks)) == 1 else list(ranks)


def check_rank(rank, where):
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise ValueError(f"{where}: expected an integer >= 0, got {rank!r} ({type(rank).__name__})")
    return rank


def initial_attn_ranks(spec, n_layer):
    """The per-layer ranks of a new model from attn_lora_rank: an int, a list of n_layer ints, or a mapping
    of layer patterns (layers it does not name get 0). ValueError naming attn_lora_rank."""
    if isinstance(spec, (list, tuple)):
        if len(spec) != n_layer:
            raise ValueError(f"attn_lora_rank: {len(spec)} ranks for a {n_layer}-layer model")
        return [check_rank(rank, f"attn_lora_rank: layer {i}") for i, rank in enumerate(spec)]
    try:
        changes = layer_rank_changes(spec, n_layer)
    except ValueError as e:
        raise ValueError(f"attn_lora_rank: {e}") from None
    return [changes.get(i, 0) for i in range(n_layer)]


LAYER_PATTERNS = "'*' (every layer), a layer index ('0'; '-1' the last) or a range of layers ('2-3')"


def pattern_layers(pattern, n_layer):
    """The layers a pattern names at a depth of n_layer (an int is a layer index). ValueError for a pattern
    that is not one, or one that names a layer the model does not have."""
    if isinstance(pattern, bool) or not isinstance(pattern, (int, str)):
        raise ValueError(f"layer pattern {pattern!r} ({type(pattern).__name__}) is neither text nor an integer; "
                         f"expected {LAYER_PATTERNS}")
    text = str(pattern)
    if text == '*':
        return list(range(n_layer))
    index, span = re.fullmatch(r'-?[0-9]+', text), re.fullmatch(r'([0-9]+)-([0-9]+)', text)
    if index:
        layer = int(text) + n_layer if int(text) < 0 else int(text)
        if not 0 <= layer < n_layer:
            raise ValueError(f"layer pattern {text!r} matches no layer of a {n_layer}-layer model "
                             f"(layers 0-{n_layer - 1})")
        return [layer]
    if not span or int(span[1]) > int(span[2]):
        raise ValueError(f"bad layer pattern {text!r}: expected {LAYER_PATTERNS}")
    first, last = int(span[1]), int(span[2])
    if last >= n_layer:
        what = 'matches no layer' if first >= n_layer else 'reaches past the last layer'
        raise ValueError(f"layer pattern {text!r} {what} of a {n_layer}-layer model (layers 0-{n_layer - 1})")
    return list(range(first, last + 1))


def layer_rank_changes(spec, n_layer):
    """{layer: new rank} from an int (every layer) or a mapping of layer patterns to ranks. Where patterns
    overlap, the most specific one (naming the fewest layers) wins: {'*': 8, '0': 4} gives layer 0 rank 4
    whatever the order; two equally specific patterns that give one layer different ranks are refused."""
    if not isinstance(spec, dict):
        if isinstance(spec, bool) or not isinstance(spec, int) or spec < 0:
            raise ValueError(f"expected an integer >= 0 or a mapping of layer patterns to ranks, got {spec!r} "
                             f"({type(spec).__name__})")
        return {layer: spec for layer in range(n_layer)}
    if not spec:
        raise ValueError(f"an empty mapping names no layer; expected layer patterns ({LAYER_PATTERNS}) to ranks")
    chosen = {}  # layer -> (number of layers its pattern names, pattern, rank)
    for pattern, rank in spec.items():
        layers = pattern_layers(pattern, n_layer)
        check_rank(rank, f"rank of layer pattern {str(pattern)!r}")
        for layer in layers:
            size, other, other_rank = chosen.get(layer, (n_layer + 1, None, None))
            if len(layers) == size and rank != other_rank:
                raise ValueError(f"layer {layer} is named by {str(other)!r} and {str(pattern)!r}, equally specific, "
                                 f"with ranks {other_rank} and {rank}; give it one")
            if len(layers) < size:
                chosen[layer] = (len(layers), pattern, rank)
    return {layer: rank for layer, (_, _, rank) in sorted(chosen.items())}


# freeze / unfreeze name components: 'wte' (the token embedding, and so the tied head), 'wpe', 'ln_f', or layers:
# 'h.3', 'h.-1' (the last), 'h.0-3' (0 to 3), 'h.*' (all), each optionally narrowed to '.attn', '.mlp', '.ln_1', '.ln_2'
COMPONENT = re.compile(r'(wte|wpe|ln_f)|h\.(\*|-?\d+|\d+-\d+)(?:\.(attn|mlp|ln_1|ln_2))?')


def component_modules(pattern, n_layer):
    """The module names (e.g. 'transformer.h.3.attn') a component pattern names in a model of n_layer layers.
    A ValueError says why a pattern is not one, or names a layer the model does not have."""
    match = COMPONENT.fullmatch(pattern) if isinstance(pattern, str) else None
    if match is None:
        raise ValueError(f"expected a component (wte, wpe, ln_f, or h.3, h.-1, h.0-3, h.* optionally followed by "
                         f".attn, .mlp, .ln_1 or .ln_2), got {pattern!r}")
    top, layers, part = match.groups()
    if top:
        return [f'transformer.{top}']
    if layers == '*':
        indices = range(n_layer)
    elif '-' in layers[1:]:
        first, last = map(int, layers.split('-'))
        if first > last:
            raise ValueError(f"{pattern!r}: the range {layers} is empty (write the lower layer first)")
        indices = range(first, last + 1)
    else:
        indices = [int(layers) + n_layer if layers.startswith('-') else int(layers)]
    missing = [i for i in indices if not 0 <= i < n_layer]
    if missing:
        what = 'matches nothing' if len(missing) == len(indices) else 'reaches past the last layer'
        raise ValueError(f"{pattern!r} {what} at this point: the model has {n_layer} layers (h.0 to "
                         f"h.{n_layer - 1}), no layer {layers if layers.startswith('-') else missing[0]}")
    return [f'transformer.h.{i}' + (f'.{part}' if part else '') for i in indices]


def layer_runs(layers):
    """Sorted layer indices as patterns, a run of consecutive ones as one range: [0, 1, 2, 5] -> ['h.0-2', 'h.5']."""
    runs = []
    for i in layers:
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return [f'h.{first}' if first == last else f'h.{first}-{last}' for first, last in runs]


def carries_frozen(grow):
    """A growth method whose lineage the frozen set goes through: a new tensor is frozen when the tensor it
    comes from was (a stacked copy of a frozen layer is frozen, a widened frozen matrix stays frozen, fresh
    slices included: train.py refuses an op that would put fresh values into a frozen tensor). A fresh
    tensor is not frozen."""
    @functools.wraps(grow)
    def method(self, *args, **kwargs):
        frozen = set(self.config.frozen)
        lineage = grow(self, *args, **kwargs)
        self.set_frozen(new for new, (old, _, _) in lineage.items() if old in frozen)
        return lineage
    return method


def ramp_vector(like, n_unmasked, mask, dim=-1):
    """1 for the first n_unmasked entries of like's dimension dim, the mask value for the rest, in
    like's dtype (under autocast a float32 vector would promote bf16 activations to float32)."""
    mask = mask.to(like.dtype)
    ones = torch.ones(n_unmasked, device=mask.device, dtype=mask.dtype)
    return torch.cat([ones, mask.expand(like.shape[dim] - n_unmasked)])


def fresh_normal(shape, std, generator, like):
    # drawn on the cpu from a seeded generator, so every DDP rank draws the same numbers
    return torch.randn(shape, generator=generator).mul_(std).to(device=like.device, dtype=like.dtype)


def with_copies(old, dim, sources):
    """old, then copies of its slices `sources` along dim."""
    return torch.cat([old, old.index_select(dim, sources)], dim=dim)


def expand_tensor(old, dim, new_size, fresh):
    """old's slices along dim, then fresh ones (a tensor of the missing shape); returns
    (new tensor, lineage index)."""
    n_old = old.shape[dim]
    new = torch.cat([old, fresh], dim=dim)
    assert new.shape[dim] == new_size
    index = torch.cat([torch.arange(n_old), torch.full((new_size - n_old,), -1)])
    return new, index


def rotary_tables(block_size, head_size, base):
    """cos and sin (block_size x head_size) of the rotary embedding in GPT-NeoX's layout: dimension i of a
    head and dimension i + head_size / 2 form a pair, turned at position t by the angle t * base^(-2i / head_size).
    No growth op changes head_size, so a grown model turns its heads as before."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_size, 2, dtype=torch.float) / head_size))
    angles = torch.outer(torch.arange(block_size, dtype=torch.float), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def rotate(x, cos, sin):
    """x (..., T, head_size) with each pair of dimensions turned by its position's angle."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


# the optimizers: AdamW alone, or Muon for the blocks' weight matrices beside AdamW for the rest

OPTIMIZERS = ('adamw', 'muon')


def trains_with_muon(name, p):
    """Muon takes the blocks' weight matrices (attention and mlp projections); AdamW keeps the
    embeddings and head, LayerNorms, biases and LoRA adapters (Muon's lr grows with a matrix's
    aspect, which would multiply a thin adapter's lr many times)."""
    return name.startswith('transformer.h.') and name.endswith('.weight') and p.dim() == 2


class Optimizers:
    """A model's optimizers used as one, by name: {'adamw': AdamW} or {'adamw': AdamW, 'muon': Muon}.
    The loop sets the lr of every param group, the grad scaler goes through param_groups and step(),
    the growth carry fills each optimizer's own state. state_dict() is AdamW's (the format of
    checkpoints from before Muon), with Muon's under 'muon'."""

    def __init__(self, **by_name):
        self.by_name = by_name

    @property
    def param_groups(self):
        return [group for optimizer in self.by_name.values() for group in optimizer.param_groups]

    @property
    def state(self):
        """parameter -> its state, over all optimizers (a new dict: write into by_name[...].state)"""
        return {p: state for optimizer in self.by_name.values() for p, state in optimizer.state.items()}

    def step(self):
        for optimizer in self.by_name.values():
            optimizer.step()

    def zero_grad(self, set_to_none=True):
        for optimizer in self.by_name.values():
            optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        state = self.by_name['adamw'].state_dict()
        if 'muon' in self.by_name:
            state['muon'] = self.by_name['muon'].state_dict()
        return state

    def load_state_dict(self, state):
        state = dict(state)
        if 'muon' in self.by_name:
            self.by_name['muon'].load_state_dict(state.pop('muon'))
        self.by_name['adamw'].load_state_dict(state)


# optimizer state through a growth op's lineage

def carried_moment(moment, dim, index, fill):
    """A new state tensor whose slice i along dim is moment's slice index[i], or `fill` where
    index[i] is -1 (a fresh slice). One copy: the leading slices that stay where they were are
    copied as one block, and only the rest is gathered (a gather across columns is slow)."""
    n_kept = int((index == torch.arange(len(index))).cumprod(0).sum())
    rest = index[n_kept:]
    parts = [moment.narrow(dim, 0, n_kept)]
    if len(rest):
        fresh = rest < 0
        shape = list(moment.shape)
        shape[dim] = len(rest)
        if bool(fresh.all()):
            tail = moment.new_empty(shape).fill_(fill)
        else:
            tail = moment.index_select(dim, rest.clamp(min=0).to(moment.device))
            if bool(fresh.any()):
                tail.index_fill_(dim, fresh.nonzero().flatten().to(moment.device), fill)
        parts.append(tail)
    return torch.cat(parts, dim)


def fresh_slice_fill(key, tensor):
    """What a fresh slice of state `key` starts at: AdamW's second moment at the source tensor's mean
    (so that the slice's first steps are not oversized), every other state (AdamW's first moment,
    Muon's momentum buffer) at 0."""
    return tensor.mean() if key == 'exp_avg_sq' else tensor.new_zeros(())


def carried_state(old, dim, index, copy):
    """One parameter's optimizer state through its lineage entry: every tensor shaped like the
    parameter goes through (dim, index), scalars (AdamW's step) are kept as they are. copy: another
    new parameter already took old's tensors as they are."""
    state = {}
    for key, value in old.items():
        if value.dim() == 0:
            state[key] = value.clone()
        elif index is not None:
            state[key] = carried_moment(value, dim, index, fresh_slice_fill(key, value))
        else:
            state[key] = value.clone() if copy else value
    return state


def carry_optimizer_state(model, old_states, new_optimizers, lineage):
    """After a growth op: the old parameters' optimizer state (old_states: old name -> state) into
    new_optimizers (an Optimizers built for the grown model), following the model's lineage, whatever
    the optimizer: AdamW's exp_avg / exp_avg_sq / step and Muon's momentum_buffer alike (see
    carried_state; fresh slices: fresh_slice_fill). Fresh tensors start with no state (the optimizer
    starts it at 0). Returns how many tensors carried state over."""
    carried = 0
    taken = set()  # old tensors whose state a new parameter took as it is (no copy); later ones copy
    names = {p: name for name, p in model.named_parameters()}
    for optimizer in new_optimizers.by_name.values():
        for group in optimizer.param_groups:
            for p in group['params']:
                old_name, dim, index = lineage[names[p]]
                old = old_states.get(old_name)
                if not old:
                    continue
                optimizer.state[p] = carried_state(old, dim, index, copy=old_name in taken)
                taken.add(old_name)
                carried += 1
    return carried


def mask_at(ramp, iter_num):
    """The MSG mask at iter_num of a ramp {'start_iter', 'anneal_iters', ...} (None: no ramp, 1): 0 at the
    op, rising linearly to 1 after anneal_iters."""
    if ramp is None:
        return 1.0
    return min(1.0, (iter_num - ramp['start_iter']) / ramp['anneal_iters'])


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias. While an MSG ramp widens the residual stream, the
    statistics are weighted by the channel mask (old channels 1, new channels m), so at m = 0
    they are the old statistics and at m = 1 the plain ones; the output is masked the same way."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None
        self.n_unmasked = 0  # > 0 while the channels from n_unmasked on are masked

    def forward(self, x, mask):
        if not self.n_unmasked:
            return F.layer_norm(x, self.weight.shape, self.weight, self.bias, LN_EPS)
        channel_weight = ramp_vector(x, self.n_unmasked, mask)
        total = channel_weight.sum()
        mean = (x * channel_weight).sum(-1, keepdim=True) / total
        var = ((x - mean).pow(2) * channel_weight).sum(-1, keepdim=True) / total
        y = (x - mean) * torch.rsqrt(var + LN_EPS) * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y * channel_weight


class AdaptedWeight(nn.Module):
    """A weight matrix (rows x cols) with an optional LoRA adapter:
    effective weight = weight + (alpha / rank) * lora_B @ lora_A, lora_B (rows x rank),
    lora_A (rank x cols). The adapter starts with its output side zeroed, so it adds nothing.
    While an adapter is on, the main weight is frozen."""

    # which adapter factor is zero at the start: the one that produces the output
    zero_side = 'B'

    def __init__(self, rows, cols):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(rows, cols))
        self.lora_rank = 0
        self.lora_scale = 0.0

    def lora_delta(self):
        return (self.lora_B @ self.lora_A) * self.lora_scale

    def effective_weight(self):
        return self.weight + self.lora_delta() if self.lora_rank else self.weight

    @torch.no_grad()
    def merge_lora(self):
        if self.lora_rank:
            self.weight.add_(self.lora_delta())

    @torch.no_grad()
    def set_lora(self, rank, alpha, generator):
        """Merge the current adapter into the weight, then start a fresh one of `rank`."""
        self.merge_lora()
        for name in ('lora_A', 'lora_B'):
            if hasattr(self, name):
                delattr(self, name)
        self.lora_rank, self.lora_scale = rank, (alpha / rank if rank else 0.0)
        self.weight.requires_grad_(rank == 0)
        if rank == 0:
            return
        rows, cols = self.weight.shape
        lora_A = fresh_normal((rank, cols), INIT_STD, generator, self.weight)
        lora_B = fresh_normal((rows, rank), INIT_STD, generator, self.weight)
        (lora_B if self.zero_side == 'B' else lora_A).zero_()
        self.lora_A, self.lora_B = nn.Parameter(lora_A), nn.Parameter(lora_B)


class Linear(AdaptedWeight):
    def __init__(self, in_features, out_features, bias):
        super().__init__(out_features, in_features)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        if self.lora_rank:
            # two thin matmuls are cheaper than forming the full delta
            y = y + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.lora_scale
        return y


class TokenEmbedding(AdaptedWeight):
    """The token embedding (vocab x n_embd); the output head uses the same effective matrix."""

    # lora_B (vocab x rank) is a per-token code, lora_A (rank x n_embd) projects it up
    zero_side = 'A'

    def forward(self, idx):
        return F.embedding(idx, self.effective_weight())


class CausalSelfAttention(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.n_head, self.head_size = config.n_head, config.head_size
        inner = config.n_head * config.head_size
        self.c_attn = Linear(config.n_embd, 3 * inner, config.bias)
        self.c_proj = Linear(inner, config.n_embd, config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout
        self.n_unmasked_heads = 0  # > 0 while the heads from n_unmasked_heads on are masked

    def forward(self, x, mask, rotary):
        B, T, C = x.size()
        inner = self.n_head * self.head_size
        q, k, v = self.c_attn(x).split(inner, dim=2)
        q = q.view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.head_size).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_size).transpose(1, 2)
        if rotary is not None:  # rope: (cos, sin) of positions 0..T-1, in q's dtype (bf16 under autocast)
            cos, sin = (table.to(q.dtype) for table in rotary)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        # flash attention on cuda
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=True)
        if self.n_unmasked_heads:
            y = y * ramp_vector(y, self.n_unmasked_heads, mask, dim=1).view(1, -1, 1, 1)
        y = y.transpose(1, 2).contiguous().view(B, T, inner)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.c_fc = Linear(config.n_embd, config.n_hidden, config.bias)
        self.c_proj = Linear(config.n_hidden, config.n_embd, config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.approximate = 'tanh' if config.activation == 'gelu_tanh' else 'none'
        self.n_unmasked = 0  # > 0 while the hidden units from n_unmasked on are masked

    def forward(self, x, mask):
        h = F.gelu(self.c_fc(x), approximate=self.approximate)
        if self.n_unmasked:
            h = h * ramp_vector(h, self.n_unmasked, mask)
        return self.dropout(self.c_proj(h))


class Block(nn.Module):

    def __init__(self, config):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, config.bias)
        self.mlp = MLP(config)
        self.blended = False  # True while this block is new and blended in: m * block(x) + (1 - m) * x

    def forward(self, x, mask, rotary):
        y = x + self.attn(self.ln_1(x, mask), mask, rotary)
        y = y + self.mlp(self.ln_2(y, mask), mask)
        if self.blended:
            return mask * y + (1 - mask) * x
        return y


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        assert config.vocab_size is not None and config.block_size is not None
        self.config = config
        embeddings = dict(wte=TokenEmbedding(config.vocab_size, config.n_embd))
        if config.pos_emb == 'learned':
            embeddings['wpe'] = nn.Embedding(config.block_size, config.n_embd)
        self.transformer = nn.ModuleDict(dict(
            embeddings,
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, config.bias),
        ))
        # the output head is the token embedding's effective matrix (weight tying), no module of its own
        self.register_buffer('growth_mask', torch.zeros(()), persistent=False)
        if config.pos_emb == 'rope':  # computed, not saved: checkpoints hold parameters only
            cos, sin = rotary_tables(config.block_size, config.head_size, config.rope_base)
            self.register_buffer('rope_cos', cos, persistent=False)
            self.register_buffer('rope_sin', sin, persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith('c_proj.weight'):  # scaled init of residual projections, per GPT-2
                nn.init.normal_(p, mean=0.0, std=INIT_STD / math.sqrt(2 * config.n_layer))
        generator = torch.Generator().manual_seed(0)
        self._set_attn_lora(dict(enumerate(attn_lora_ranks(config))), generator)
        self._set_lora('embedding', config.embedding_lora_rank, generator)
        self.set_frozen(config.frozen)
        self._apply_ramp()

    def _init_weights(self, module):
        if isinstance(module, (AdaptedWeight, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
        if isinstance(module, Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    # ---------------------------------------------------------------- forward and friends

    def forward(self, idx, targets=None):
        b, t = idx.size()
        assert t <= self.config.block_size, f"sequence of length {t} > block_size {self.config.block_size}"
        mask = self.growth_mask
        head = self.transformer.wte.effective_weight()
        x = F.embedding(idx, head)
        rotary = None
        if self.config.pos_emb == 'learned':
            x = x + self.transformer.wpe(torch.arange(0, t, dtype=torch.long, device=idx.device))
        else:
            rotary = (self.rope_cos[:t], self.rope_sin[:t])
        if self.transformer.ln_f.n_unmasked:  # residual channels are being widened
            x = x * ramp_vector(x, self.transformer.ln_f.n_unmasked, mask)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, mask, rotary)
        x = self.transformer.ln_f(x, mask)
        if targets is not None:
            logits = F.linear(x, head)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        else:
            # inference-time mini-optimization: only forward the head on the very last position
            logits = F.linear(x[:, [-1], :], head)
            loss = None
        return logits, loss

    def get_num_params(self, non_embedding=True):
        """Parameter count; the position embeddings (if learned) are subtracted by default, like nanoGPT
        (the token embedding is the output head, so it stays in)."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding and self.config.pos_emb == 'learned':
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def matmul_params(self):
        """(trained, frozen) counts of the weights that take part in matmuls per token: the
        Linear weights, their LoRA adapters and the output head. A weight is frozen when it gets no
        gradient (a freeze op, or a LoRA adapter in its place). The head's weight gradient is
        computed while anything in wte trains (embedding adapters train through the effective
        matrix), so it counts as trained even while the embedding weight is under an adapter. The
        embedding adapter is not applied per token but formed once per forward (see flops_per_forward)."""
        counts = {True: 0, False: 0}
        for module in self.modules():
            if isinstance(module, Linear):
                counts[module.weight.requires_grad] += module.weight.numel()
                if module.lora_rank:
                    counts[module.lora_A.requires_grad] += module.lora_A.numel() + module.lora_B.numel()
        wte = self.transformer.wte
        counts[any(p.requires_grad for p in wte.parameters())] += wte.weight.numel()
        return counts[True], counts[False]

    def attention_width(self):
        """Summed over layers, the width of the attention (heads x head size)."""
        return sum(block.attn.n_head * block.attn.head_size for block in self.transformer.h)

    def flops_per_token(self, training=True, seq_len=None):
        """Training: 6 per trained matmul weight (forward, input grad, weight grad), 4 per frozen
        one (no weight grad; its input grad is counted even where nothing below it trains), plus
        attention 12 * L * width * T (T = seq_len, the length of the sequences, block_size if None,
        as in the PaLM appendix). Evaluation (forward only): 2 per
        weight plus 4 * L * width * T."""
        trained, frozen = self.matmul_params()
        attention = self.attention_width() * (seq_len or self.config.block_size)
        if training:
            return 6 * trained + 4 * frozen + 12 * attention
        return 2 * (trained + frozen) + 4 * attention

    def flops_per_forward(self, training=True):
        """Flops paid once per forward pass, whatever its number of tokens: the embedding adapter's
        product lora_B @ lora_A (vocab x rank x n_embd), formed once and used by every token and by
        the head; training adds the two products of its backward (the gradients of both factors) unless
        the adapter is frozen."""
        wte = self.transformer.wte
        product = 2 * wte.weight.numel() * wte.lora_rank
        return 3 * product if training and wte.lora_rank and wte.lora_A.requires_grad else product

    def estimate_mfu(self, flops, dt, peak_flops=312e12):
        """Model flops utilization of `flops` done in dt seconds on one device, against its peak
        (A100 bf16: 312 TFLOPS, like nanoGPT)."""
        return flops / dt / peak_flops

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, optimizer='adamw'):
        """The optimizers of the optimized parameters (frozen ones included, see optimized_parameters),
        as one Optimizers. AdamW: every tensor of 2 or
        more dims is decayed (matmul weights, embeddings, adapters), biases and LayerNorm gains are not.
        optimizer 'muon': Muon (momentum 0.95, Nesterov) takes the blocks' weight matrices instead
        (trains_with_muon), decayed like AdamW (decoupled: w *= 1 - lr * weight_decay), its update
        scaled by 0.2 * sqrt(max(rows, cols)) to the size of an AdamW update (torch's
        'match_rms_adamw'), so that the same learning_rate fits both."""
        params = self.optimized_parameters()
        matrices = [params.pop(name) for name in list(params)
                    if optimizer == 'muon' and trains_with_muon(name, params[name])]
        decay = [p for p in params.values() if p.dim() >= 2]
        no_decay = [p for p in params.values() if p.dim() < 2]
        groups = [{'params': decay, 'weight_decay': weight_decay},
                  {'params': no_decay, 'weight_decay': 0.0}]
        use_fused = device_type == 'cuda' and 'fused' in inspect.signature(torch.optim.AdamW).parameters
        extra = dict(fused=True) if use_fused else dict()
        optimizers = dict(adamw=torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **extra))
        if matrices:
            optimizers['muon'] = torch.optim.Muon(matrices, lr=learning_rate, weight_decay=weight_decay,
                                                  adjust_lr_fn='match_rms_adamw')
        return Optimizers(**optimizers)

    def weights_under_adapter(self):
        """The names of the weights a LoRA adapter trains in their place (LoRA freezes them)."""
        return {f'{name}.weight' for name, module in self.named_modules()
                if isinstance(module, AdaptedWeight) and module.lora_rank}

    def optimized_parameters(self):
        """name -> parameter for the optimizers: all but the weights under a LoRA adapter. A frozen
        parameter stays in: AdamW and Muon skip a parameter without a gradient (no update, no weight
        decay) and keep its state, which it resumes with when unfrozen."""
        under_adapter = self.weights_under_adapter()
        return {name: p for name, p in self.named_parameters() if name not in under_adapter}

    # ---------------------------------------------------------------- freeze

    def component_parameters(self, pattern):
        """The names of the parameters (LoRA adapters aside: they follow their weight) of the components a
        pattern names (see component_modules); a ValueError where it names none."""
        names = [name for module in component_modules(pattern, self.config.n_layer)
                 for name in self._component_names(module)]
        if not names:
            raise ValueError(f"{pattern!r} matches nothing: the model has no {pattern} "
                             f"(pos_emb {self.config.pos_emb!r})" if pattern == 'wpe' else
                             f"{pattern!r} matches no parameter of the model")
        return names

    def _component_names(self, module):
        """The names of the parameters under a module name, LoRA adapters aside (they follow their weight)."""
        return [name for name, _ in self.named_parameters()
                if name.startswith(module + '.') and not name.endswith(('.lora_A', '.lora_B'))]

    def set_frozen(self, names):
        """Freeze exactly these parameters (names; LoRA adapters are not named: an adapter is frozen with its
        weight), and unfreeze the rest. A frozen parameter gets no gradient (requires_grad False); a weight
        under a LoRA adapter gets none either way."""
        frozen = set(names)
        self.config.frozen = [name for name, _ in self.named_parameters() if name in frozen]
        under_adapter = self.weights_under_adapter()
        for name, p in self.named_parameters():
            module, attr = name.rsplit('.', 1)
            owner = f'{module}.weight' if attr in ('lora_A', 'lora_B') else name
            p.requires_grad_(owner not in frozen and name not in under_adapter)

    def frozen_components(self):
        """The frozen set as component patterns, for logs and the plan: wte, wpe, ln_f, whole layers (runs of
        them as h.0-3), parts of layers (h.1.mlp), and a parameter frozen without its component by its name."""
        frozen = set(self.config.frozen)

        def is_frozen(module):
            names = self._component_names(module)
            return bool(names) and frozen.issuperset(names)
        tops = [top for top in ('wte', 'wpe', 'ln_f') if is_frozen(f'transformer.{top}')]
        layers = [i for i in range(self.config.n_layer) if is_frozen(f'transformer.h.{i}')]
        parts = [f'h.{i}.{part}' for i in range(self.config.n_layer) if i not in layers
                 for part in ('attn', 'mlp', 'ln_1', 'ln_2') if is_frozen(f'transformer.h.{i}.{part}')]
        covered = tuple(f'transformer.{pattern}.' for pattern in tops + parts) + \
            tuple(f'transformer.h.{i}.' for i in layers)
        lone = [name.removeprefix('transformer.') for name in self.config.frozen if not name.startswith(covered)]
        return tops + layer_runs(layers) + parts + lone

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        """Complete the sequence idx (b, t) max_new_tokens times, feeding predictions back in."""
        for _ in range(max_new_tokens):
            idx_cond = idx if idx.size(1) <= self.config.block_size else idx[:, -self.config.block_size:]
            logits, _ = self(idx_cond)
            logits = logits[:, -1, :] / temperature
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float('Inf')
            probs = F.softmax(logits, dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx

    # ---------------------------------------------------------------- Hugging Face GPT-2

    @classmethod
    def from_checkpoint(cls, checkpoint):
        """The model a train.py checkpoint (its path, or the dict it holds) was written with, grown, masked
        or with LoRA adapters as it was then. Checkpoints without growth_mask (before issue 16) get the
        mask from their orchestrator state."""
        if not isinstance(checkpoint, dict):
            checkpoint = torch.load(checkpoint, map_location='cpu', weights_only=True)
        model = cls(GPTConfig(**checkpoint['model_args']))
        model.load_state_dict(checkpoint['model'])
        mask = checkpoint.get('growth_mask')
        model.set_growth_mask(mask if mask is not None else
                              mask_at(checkpoint['orchestrator']['active_ramp'], checkpoint['iter_num']))
        return model

    @classmethod
    def from_hf(cls, name_or_path, **overrides):
        """GPT-2 through transformers: a hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl; fetched once
        into the Hugging Face cache) or a local folder written by save_pretrained. The weights fix the
        shape; overrides may set the keys they leave free (HF_FREE_KEYS)."""
        transformers = import_transformers()
        hf_config = transformers.AutoConfig.from_pretrained(name_or_path)
        config = GPTConfig(**hf_model_args(hf_config, **overrides))  # refuses before the weights load
        hf_model = transformers.GPT2LMHeadModel.from_pretrained(name_or_path, config=hf_config)
        model = cls(config)
        model.load_hf_state_dict(hf_model.state_dict())
        return model

    @torch.no_grad()
    def load_hf_state_dict(self, hf_state):
        """Copy in the weights of a transformers GPT2LMHeadModel of this shape. Its Conv1D weights are
        stored transposed (in x out); its position table is cropped to block_size. LoRA adapters, if
        any, are left as they are (a fresh adapter adds nothing)."""
        ours = [name for name, _ in self.named_parameters() if '.lora_' not in name]
        missing = [name for name in ours if name not in hf_state]
        if missing:
            raise ValueError(f"the Hugging Face weights have no {missing[0]}")
        for name in ours:
            p, w = self.get_parameter(name), hf_state[name].float()
            if name.endswith(HF_CONV1D):
                w = w.t()
            if name == 'transformer.wpe.weight':
                w = w[:self.config.block_size]
            if w.shape != p.shape:
                raise ValueError(f"{name}: the Hugging Face weight has shape {tuple(w.shape)}, "
                                 f"this model's {tuple(p.shape)}")
            p.copy_(w)

    def hf_config_args(self):
        """transformers config arguments for this model: GPT2Config (learned positions) or GPTNeoXConfig
        (rope). Neither can express LoRA adapters (merge them first), an MSG mask, or an attention width
        (heads x head size) other than n_embd."""
        c = self.config
        family = HF_EXPORTS[c.pos_emb][0]
        if c.attn_lora_rank or c.embedding_lora_rank:
            raise ValueError("LoRA adapters are on; merge them into the weights first")
        if c.ramp:
            raise ValueError(f"an MSG mask ramp ({c.ramp['kind']}) is still active, and {family} has no mask")
        if c.n_head * c.head_size != c.n_embd:
            raise ValueError(f"the attention width n_head x head_size = {c.n_head} x {c.head_size} = "
                             f"{c.n_head * c.head_size} differs from n_embd = {c.n_embd}, and {family}'s "
                             "attention is always n_embd wide (head size n_embd / n_head)")
        if c.pos_emb == 'rope':  # rotary over whole heads, the mlp after the attention (not beside it)
            return dict(vocab_size=c.vocab_size, max_position_embeddings=c.block_size, hidden_size=c.n_embd,
                        num_hidden_layers=c.n_layer, num_attention_heads=c.n_head, intermediate_size=c.n_hidden,
                        hidden_act=HF_ACTIVATION_NAMES[c.activation], rotary_pct=1.0, rotary_emb_base=c.rope_base,
                        use_parallel_residual=False, attention_dropout=c.dropout, hidden_dropout=c.dropout,
                        layer_norm_eps=LN_EPS, tie_word_embeddings=True, bos_token_id=None, eos_token_id=None)
        return dict(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
                    n_head=c.n_head, n_inner=None if c.n_hidden == 4 * c.n_embd else c.n_hidden,
                    activation_function=HF_ACTIVATION_NAMES[c.activation], resid_pdrop=c.dropout,
                    embd_pdrop=c.dropout, attn_pdrop=c.dropout, layer_norm_epsilon=LN_EPS, tie_word_embeddings=True,
                    bos_token_id=None, eos_token_id=None)  # GPT-2's 50256 only with its tokenizer

    def hf_state_dict(self):
        """The weights under transformers' GPT2LMHeadModel names: Conv1D weights transposed, zero biases
        where this model has none (bias=False), the head tied to the token embedding. A rope model's are
        GPT-NeoX's (neox_state_dict)."""
        if self.config.pos_emb == 'rope':
            return self.neox_state_dict()
        state = {}
        for name, module in self.named_modules():
            if isinstance(module, (Linear, LayerNorm)):
                w = module.weight
                state[f'{name}.weight'] = w.t() if isinstance(module, Linear) else w
                state[f'{name}.bias'] = module.bias if module.bias is not None else w.new_zeros(w.shape[0])
        state['transformer.wte.weight'] = state['lm_head.weight'] = self.transformer.wte.weight
        state['transformer.wpe.weight'] = self.transformer.wpe.weight
        return {name: t.detach().float().contiguous().clone() for name, t in state.items()}

    def neox_state_dict(self):
        """The weights under transformers' GPTNeoXForCausalLM names (weights (out, in) like ours): the
        fused q, k, v rows reordered per head (GPT-NeoX's layout), zero biases where this model has none,
        the head (lm_head, called embed_out before transformers 5) tied to the token embedding."""
        c = self.config
        # NeoX's row h * 3 * head_size + s * head_size + j is our row s * width + h * head_size + j (s: q, k, v)
        qkv_rows = torch.arange(3 * c.n_head * c.head_size).view(3, c.n_head, c.head_size).transpose(0, 1).flatten()
        state = {}
        for name, module in self.named_modules():
            if isinstance(module, (Linear, LayerNorm)):
                w = module.weight
                b = module.bias if module.bias is not None else w.new_zeros(w.shape[0])
                if name.endswith('attn.c_attn'):
                    w, b = w[qkv_rows.to(w.device)], b[qkv_rows.to(w.device)]
                if name == 'transformer.ln_f':
                    neox_name = 'gpt_neox.final_layer_norm'
                else:  # transformer.h.{layer}.{part}
                    _, _, layer, part = name.split('.', 3)
                    neox_name = f'gpt_neox.layers.{layer}.{NEOX_NAMES[part]}'
                state[f'{neox_name}.weight'], state[f'{neox_name}.bias'] = w, b
        state['gpt_neox.embed_in.weight'] = state['lm_head.weight'] = state['embed_out.weight'] = \
            self.transformer.wte.weight
        return {name: t.detach().float().contiguous().clone() for name, t in state.items()}

    @torch.no_grad()
    def to_hf(self, **config_extra):
        """This model as a transformers GPT2LMHeadModel, or GPTNeoXForCausalLM for rope (fp32, eval mode);
        config_extra overrides its config arguments (e.g. bos_token_id, eos_token_id)."""
        transformers = import_transformers()
        _, config_class, model_class = HF_EXPORTS[self.config.pos_emb]
        hf_config = getattr(transformers, config_class)(**dict(self.hf_config_args(), **config_extra))
        hf_model = getattr(transformers, model_class)(hf_config)
        # strict: a name of ours that transformers lacks leaves its own name missing; only the head's
        # spare name (GPT-NeoX's head is lm_head or embed_out, by transformers version) is dropped
        names = set(hf_model.state_dict())
        hf_model.load_state_dict({k: v for k, v in self.hf_state_dict().items() if k in names})
        return hf_model.eval()

    # ---------------------------------------------------------------- growth

    def _identity_lineage(self):
        return {name: (name, None, None) for name, _ in self.named_parameters()}

    def _lora_targets(self, target, layers=None):
        """The modules with adapters of target 'embedding' or 'attn' (of the given layers, default all)."""
        if target == 'embedding':
            return [self.transformer.wte]
        layers = range(self.config.n_layer) if layers is None else layers
        return [m for i in layers for m in (self.transformer.h[i].attn.c_attn, self.transformer.h[i].attn.c_proj)]

    def _set_lora(self, target, rank, generator):
        if target == 'attn':
            return self._set_attn_lora(self._attn_rank_changes(rank), generator)
        for module in self._lora_targets(target):
            module.set_lora(rank, self.config.lora_alpha, generator)
        setattr(self.config, f'{target}_lora_rank', rank)

    def _attn_rank_changes(self, rank):
        """{layer: rank} for every layer from an int, or from a list of one rank per layer."""
        ranks = rank if isinstance(rank, (list, tuple)) else [rank] * self.config.n_layer
        return dict(enumerate(ranks))

    def _set_attn_lora(self, changes, generator):
        """changes {layer: rank}: each layer named merges its adapters into its weights and starts fresh
        ones of that rank; the other layers keep theirs."""
        ranks = attn_lora_ranks(self.config)
        for layer, rank in changes.items():
            for module in self._lora_targets('attn', [layer]):
                module.set_lora(rank, self.config.lora_alpha, generator)
            ranks[layer] = rank
        self.config.attn_lora_rank = compact_ranks(ranks)

    def _fresh_adapter_lineage(self, targets):
        """Every parameter carries over, but the adapters of the target modules, which are new."""
        lineage = self._identity_lineage()
        for module_name, module in self.named_modules():
            if module in targets:
                for name in ('lora_A', 'lora_B'):
                    if hasattr(module, name):
                        lineage[f'{module_name}.{name}'] = (None, None, None)
        return lineage

    @carries_frozen
    @torch.no_grad()
    def set_lora_rank(self, target, rank, generator):
        """target 'attn' or 'embedding'. Merges the adapters into the main weights, then fresh
        adapters of the new rank (0 removes them and unfreezes the main weights); for 'attn', rank
        may be a list of one rank per layer."""
        self._set_lora(target, rank, generator)
        return self._fresh_adapter_lineage(self._lora_targets(target))

    @carries_frozen
    @torch.no_grad()
    def set_layer_lora_ranks(self, changes, generator):
        """changes {layer: rank} (see layer_rank_changes): the attention adapters of those layers are merged
        into their weights and started fresh at the new rank (0: none, the weights train again); the other
        layers' adapters and their optimizer state are kept."""
        self._set_attn_lora(changes, generator)
        return self._fresh_adapter_lineage(self._lora_targets('attn', sorted(changes)))

    @torch.no_grad()
    def set_lora_alpha(self, alpha, generator):
        """Changing alpha rescales the adapters, so merge them first and start fresh ones."""
        self.config.lora_alpha = alpha
        return self.merge_lora(generator)

    @carries_frozen
    @torch.no_grad()
    def merge_lora(self, generator):
        for target in ('attn', 'embedding'):
            self._set_lora(target, getattr(self.config, f'{target}_lora_rank'), generator)
        return self._fresh_adapter_lineage(self._lora_targets('attn') + self._lora_targets('embedding'))

    @carries_frozen
    @torch.no_grad()
    def stack_layers(self, layer_map, generator=None, blend=False, init='copy'):
        """New layer i is a copy of old layer layer_map[i]. With blend (MSG), every layer after
        the first occurrence of its source is blended in through the mask; init 'random' gives
        those new layers fresh weights instead of copies."""
        old_blocks = self.transformer.h
        new_blocks, lineage = [], self._identity_lineage()
        lineage = {k: v for k, v in lineage.items() if not k.startswith('transformer.h.')}
        seen, new_layers = set(), []
        for i, source in enumerate(layer_map):
            block = copy.deepcopy(old_blocks[source])
            is_new = source in seen
            seen.add(source)
            fresh = is_new and init == 'random'
            if fresh:
                self._reinit_block(block, generator, len(layer_map))
            if blend and is_new:
                new_layers.append(i)
            for suffix, _ in block.named_parameters():
                lineage[f'transformer.h.{i}.{suffix}'] = \
                    (None, None, None) if fresh else (f'transformer.h.{source}.{suffix}', None, None)
            new_blocks.append(block)
        self.transformer.h = nn.ModuleList(new_blocks)
        ranks = attn_lora_ranks(self.config)  # a copy has its source's adapters
        self.config.n_layer = len(layer_map)
        self.config.attn_lora_rank = compact_ranks([ranks[source] for source in layer_map])
        if new_layers:
            self.config.ramp = {'kind': 'layers', 'new_layers': new_layers}
        self._apply_ramp()
        return lineage

    def _reinit_block(self, block, generator, n_layer):
        for name, p in block.named_parameters():
            if name.endswith('lora_B') or name.endswith('bias'):
                p.zero_()
            elif name.endswith('lora_A') or name.endswith('c_attn.weight') or name.endswith('c_fc.weight'):
                p.copy_(fresh_normal(p.shape, INIT_STD, generator, p))
            elif name.endswith('c_proj.weight'):
                p.copy_(fresh_normal(p.shape, INIT_STD / math.sqrt(2 * n_layer), generator, p))
            else:  # layernorm gains
                p.fill_(1.0)

    @carries_frozen
    @torch.no_grad()
    def widen_mlp(self, new_hidden, generator, noise=0.0):
        """Net2WiderNet: each new hidden unit replicates an old one (incoming weights and bias
        copied). A unit with c copies hands its outgoing weights to them in the unequal shares
        1:2:..:c (normalized), so the output is unchanged and the copies' gradients differ.
        noise > 0 breaks the symmetry of the copies further: their incoming weights get gaussian
        noise of std noise * (the layer's weight rms), minus its share-weighted mean over the copies
        of a unit, so the function changes at second order only (the first-order terms cancel)."""
        old_hidden = self.config.n_hidden
        lineage = self._identity_lineage()
        for i, block in enumerate(self.transformer.h):
            mlp = block.mlp
            # the new units cycle through the old ones in a random order: the k-th new unit is
            # replica number k // old_hidden + 1 of its source
            replicas = torch.randperm(old_hidden, generator=generator)
            k = torch.arange(new_hidden - old_hidden)
            index = torch.cat([torch.arange(old_hidden), replicas[k % old_hidden]])
            occurrence = torch.cat([torch.zeros(old_hidden), (k // old_hidden + 1).float()])  # 0: the original
            copies = 1 + torch.bincount(index[old_hidden:], minlength=old_hidden).float()
            c = copies[index]
            share = (occurrence + 1) / (c * (c + 1) / 2)
            # the old units stay in place as one block; only the replicas are gathered
            sources = index[old_hidden:].to(mlp.c_fc.weight.device)
            w_fc = with_copies(mlp.c_fc.weight, 0, sources)
            if noise > 0:
                w_fc += self._replica_noise(w_fc, index, share, old_hidden, noise, generator)
            mlp.c_fc.weight = nn.Parameter(w_fc)
            if mlp.c_fc.bias is not None:
                mlp.c_fc.bias = nn.Parameter(with_copies(mlp.c_fc.bias, 0, sources))
            mlp.c_proj.weight = nn.Parameter(
                with_copies(mlp.c_proj.weight, 1, sources).mul_(share.to(mlp.c_proj.weight)))
            prefix = f'transformer.h.{i}.mlp.'
            for name, dim in (('c_fc.weight', 0), ('c_fc.bias', 0), ('c_proj.weight', 1)):
                if prefix + name in lineage:
                    lineage[prefix + name] = (prefix + name, dim, index)
        self.config.n_hidden = new_hidden
        return lineage

    @staticmethod
    def _replica_noise(w_fc, index, share, old_hidden, noise, generator):
        """Noise rows for the widened c_fc weight whose share-weighted sum over each unit's copies is 0
        (a unit without copies gets none)."""
        rms = w_fc.float().pow(2).mean().sqrt().to(w_fc.dtype)  # a tensor: on the meta device too
        eps = fresh_normal(w_fc.shape, noise, generator, w_fc) * rms
        weighted = eps * share.to(eps)[:, None]
        group_sum = torch.zeros((old_hidden, w_fc.shape[1]), dtype=eps.dtype, device=eps.device)
        group_sum.index_add_(0, index.to(eps.device), weighted)
        return eps - group_sum[index.to(eps.device)]

    @carries_frozen
    @torch.no_grad()
    def msg_widen_mlp(self, new_hidden, generator):
        """New hidden units with fresh weights, their activations masked."""
        old_hidden = self.config.n_hidden
        n_new = new_hidden - old_hidden
        lineage = self._identity_lineage()
        std_proj = INIT_STD / math.sqrt(2 * self.config.n_layer)
        for i, block in enumerate(self.transformer.h):
            mlp, prefix = block.mlp, f'transformer.h.{i}.mlp.'
            w = mlp.c_fc.weight
            mlp.c_fc.weight, index = self._expand(w, 0, new_hidden, fresh_normal((n_new, w.shape[1]), INIT_STD, generator, w))
            lineage[prefix + 'c_fc.weight'] = (prefix + 'c_fc.weight', 0, index)
            if mlp.c_fc.bias is not None:
                b = mlp.c_fc.bias
                mlp.c_fc.bias, index = self._expand(b, 0, new_hidden, torch.zeros(n_new).to(b))
                lineage[prefix + 'c_fc.bias'] = (prefix + 'c_fc.bias', 0, index)
            w = mlp.c_proj.weight
            mlp.c_proj.weight, index = self._expand(w, 1, new_hidden, fresh_normal((w.shape[0], n_new), std_proj, generator, w))
            lineage[prefix + 'c_proj.weight'] = (prefix + 'c_proj.weight', 1, index)
        self.config.n_hidden = new_hidden
        self.config.ramp = {'kind': 'mlp', 'n_unmasked': old_hidden}
        self._apply_ramp()
        return lineage

    @carries_frozen
    @torch.no_grad()
    def msg_add_heads(self, n_new_heads, generator):
        """New attention heads of the same head size, their outputs masked. The residual width
        n_embd stays; the attention's inner width (heads x head size) grows, so c_attn gets new
        rows (q, k and v of the new heads) and c_proj new columns."""
        old_heads, hs = self.config.n_head, self.config.head_size
        new_heads = old_heads + n_new_heads
        old_inner, new_inner, n_embd = old_heads * hs, new_heads * hs, self.config.n_embd
        lineage = self._identity_lineage()
        std_proj = INIT_STD / math.sqrt(2 * self.config.n_layer)
        for i, block in enumerate(self.transformer.h):
            attn, prefix = block.attn, f'transformer.h.{i}.attn.'
            # c_attn rows are [q | k | v], each old_inner long: grow each third, in one copy
            w, parts, indices = attn.c_attn.weight, [], []
            for s in range(3):
                parts += [w[s * old_inner:(s + 1) * old_inner],
                          fresh_normal((new_inner - old_inner, n_embd), INIT_STD, generator, w)]
                indices += [torch.arange(s * old_inner, (s + 1) * old_inner), torch.full((new_inner - old_inner,), -1)]
            attn.c_attn.weight = nn.Parameter(torch.cat(parts), requires_grad=w.requires_grad)
            qkv_index = torch.cat(indices)
            lineage[prefix + 'c_attn.weight'] = (prefix + 'c_attn.weight', 0, qkv_index)
            if attn.c_attn.bias is not None:
                b = attn.c_attn.bias
                fresh = torch.zeros(3 * new_inner).to(b)
                fresh[qkv_index >= 0] = b
                attn.c_attn.bias = nn.Parameter(fresh)
                lineage[prefix + 'c_attn.bias'] = (prefix + 'c_attn.bias', 0, qkv_index)
            w = attn.c_proj.weight
            attn.c_proj.weight, index = self._expand(w, 1, new_inner, fresh_normal((n_embd, new_inner - old_inner), std_proj, generator, w))
            lineage[prefix + 'c_proj.weight'] = (prefix + 'c_proj.weight', 1, index)
            attn.n_head = new_heads
        self.config.n_head = new_heads
        self.config.ramp = {'kind': 'heads', 'n_unmasked': old_heads}
        self._apply_ramp()
        return lineage

    @carries_frozen
    @torch.no_grad()
    def msg_widen_embd(self, new_embd, generator):
        """Widen the residual stream: every tensor with an n_embd dimension grows along it.
        The new channels of the embeddings and of every LayerNorm output are masked, and the
        LayerNorm statistics are weighted by the mask (see LayerNorm)."""
        old_embd = self.config.n_embd
        n_new = new_embd - old_embd
        std_proj = INIT_STD / math.sqrt(2 * self.config.n_layer)
        lineage = self._identity_lineage()
        for name, p in list(self.named_parameters()):
            module_name, attr = name.rsplit('.', 1)
            module = self.get_submodule(module_name)
            if isinstance(module, LayerNorm):
                dim, fresh = 0, torch.full((n_new,), 1.0 if attr == 'weight' else 0.0)
            elif module_name.endswith('c_proj'):  # writes into the residual stream: rows grow
                dim = 0
                fresh = torch.zeros(n_new) if attr == 'bias' else \
                    torch.randn((n_new, p.shape[1]), generator=generator).mul_(std_proj)
            elif attr == 'weight':  # reads the residual stream (c_attn, c_fc) or is an embedding: columns grow
                dim, fresh = 1, torch.randn((p.shape[0], n_new), generator=generator).mul_(INIT_STD)
            else:
                continue
            new, index = self._expand(p, dim, p.shape[dim] + n_new, fresh.to(p))
            setattr(module, attr, new)
            lineage[name] = (name, dim, index)
        self.config.n_embd = new_embd
        self.config.ramp = {'kind': 'embd', 'n_unmasked': old_embd}
        self._apply_ramp()
        return lineage

    @staticmethod
    def _expand(p, dim, new_size, fresh):
        new, index = expand_tensor(p.detach(), dim, new_size, fresh)
        return nn.Parameter(new, requires_grad=p.requires_grad), index

    def fold_ramp(self):
        """The mask has reached 1: masked structure is now plain structure. No parameter changes."""
        self.config.ramp = None
        self._apply_ramp()

    def set_growth_mask(self, value):
        self.growth_mask.fill_(value)

    def _apply_ramp(self):
        """Set the modules' mask bookkeeping from config.ramp (the serializable truth)."""
        ramp = self.config.ramp or {}
        kind, n_unmasked = ramp.get('kind'), ramp.get('n_unmasked', 0)
        for i, block in enumerate(self.transformer.h):
            block.blended = kind == 'layers' and i in ramp['new_layers']
            block.mlp.n_unmasked = n_unmasked if kind == 'mlp' else 0
            block.attn.n_unmasked_heads = n_unmasked if kind == 'heads' else 0
            block.ln_1.n_unmasked = block.ln_2.n_unmasked = n_unmasked if kind == 'embd' else 0
        self.transformer.ln_f.n_unmasked = n_unmasked if kind == 'embd' else 0


# -----------------------------------------------------------------------------
# Hugging Face GPT-2: names and checks (transformers itself is imported only when weights are read)

GPT2_HUB_NAMES = ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl')
# transformers' activation_function -> ours, and the name export writes for each of ours
HF_ACTIVATIONS = {'gelu_new': 'gelu_tanh', 'gelu_pytorch_tanh': 'gelu_tanh', 'gelu': 'gelu'}
HF_ACTIVATION_NAMES = {'gelu_tanh': 'gelu_new', 'gelu': 'gelu'}
# transformers' GPT-2 stores these as Conv1D weights, (in, out): ours are (out, in)
HF_CONV1D = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')
# how each pos_emb exports: (the family's name in messages, transformers' config class, model class)
HF_EXPORTS = {'learned': ('GPT-2', 'GPT2Config', 'GPT2LMHeadModel'),
              'rope': ('GPT-NeoX', 'GPTNeoXConfig', 'GPTNeoXForCausalLM')}
# our block's module names -> transformers' GPT-NeoX layer's
NEOX_NAMES = {'ln_1': 'input_layernorm', 'ln_2': 'post_attention_layernorm', 'attn.c_attn': 'attention.query_key_value',
              'attn.c_proj': 'attention.dense', 'mlp.c_fc': 'mlp.dense_h_to_4h', 'mlp.c_proj': 'mlp.dense_4h_to_h'}
# the model keys that imported weights leave free; every other one comes from the weights
HF_FREE_KEYS = ('block_size', 'dropout', 'attn_lora_rank', 'embedding_lora_rank', 'lora_alpha')


def import_transformers():
    try:
        import transformers
    except ImportError:
        raise ImportError("Hugging Face GPT-2 weights need the transformers package: "
                          "pip install -r requirements-hf.txt") from None
    return transformers


def hf_model_args(hf_config, **overrides):
    """GPTConfig arguments for a transformers GPT-2 config: the shape and activation come from it, the
    keys in HF_FREE_KEYS from overrides (block_size may crop the position table, not extend it).
    ValueError, naming the field, for anything this GPT does not compute the same way."""
    if hf_config.model_type != 'gpt2':
        raise ValueError(f"model_type is '{hf_config.model_type}', this GPT imports 'gpt2' only")
    if hf_config.activation_function not in HF_ACTIVATIONS:
        raise ValueError(f"activation_function '{hf_config.activation_function}' is not one this GPT has "
                         f"({', '.join(HF_ACTIVATIONS)})")
    for field, expected in (('layer_norm_epsilon', LN_EPS), ('scale_attn_weights', True),
                            ('scale_attn_by_inverse_layer_idx', False), ('add_cross_attention', False),
                            ('tie_word_embeddings', True)):
        if getattr(hf_config, field, expected) != expected:
            raise ValueError(f"{field} is {getattr(hf_config, field)!r}; this GPT computes {field} = {expected!r}")
    fixed = [key for key in overrides if key not in HF_FREE_KEYS]
    if fixed:
        raise ValueError(f"{fixed[0]} comes from the weights; only {', '.join(HF_FREE_KEYS)} may be set")
    n_embd = hf_config.n_embd
    args = dict(n_layer=hf_config.n_layer, n_head=hf_config.n_head, n_embd=n_embd,
                n_hidden=hf_config.n_inner or 4 * n_embd, head_size=n_embd // hf_config.n_head, bias=True,
                vocab_size=hf_config.vocab_size, block_size=hf_config.n_positions,
                activation=HF_ACTIVATIONS[hf_config.activation_function], dropout=0.0, pos_emb='learned')
    if overrides.get('block_size', args['block_size']) > args['block_size']:
        raise ValueError(f"block_size {overrides['block_size']} is longer than the weights' n_positions "
                         f"{args['block_size']}: the position table can be cropped, not extended")
    return dict(args, **overrides)
