"""
Sequence-length warmup (issue 22, item 5): change_seq_len / set_seq_len, one row of the settings table.
- training batches have seq_len tokens a sequence, at most block_size; tokens and training FLOPs are
  counted at that length (the attention part of model.flops_per_token grows with it);
- evals stay at block_size: the same weights give the same eval numbers whatever seq_len is;
- the plan, the op log, the eval events and the `tokens per iteration` line show seq_len;
- a run stopped after a seq_len change resumes exactly (events and weights as uninterrupted);
- a value out of range is refused before step 0 in one line.
"""

import pickle
import shutil
from contextlib import nullcontext, redirect_stdout
from io import StringIO

import pytest
import torch

import train
from helpers import (TINY, TORCHRUN, describe_run, entry, read_events, run_train, tiny_run_in_process, trained_runs,
                     without_elapsed)
from model import GPT, GPTConfig

# TINY: block_size 32, batch 4, accum 1, evals every 10 iters
SCHEDULE = [entry('set_seq_len', 8), entry('change_seq_len', 2.0, max_wait_iters=10)]  # 8 tokens from iter 0, 16 from 10


# -----------------------------------------------------------------------------
# in-process: batches and evals


@pytest.fixture
def tiny_run(tmp_path, monkeypatch):
    """train's globals for a tiny CPU run on char data, its model and optimizers built."""
    with tiny_run_in_process(tmp_path, monkeypatch, gradient_accumulation_steps=2) as model_config:
        yield model_config


def fire(name, value):
    train.orch.schedule[:] = [entry(name, value)]
    train.execute_operation(train.orch.schedule[0], 'timeout', 0, 1.0)


def test_training_batches_have_seq_len_tokens_and_count_them(tiny_run, monkeypatch):
    shapes = []

    def recording_get_batch(split, generator, size, length=None):
        x, y = get_batch(split, generator, size, length)
        shapes.append((split, tuple(x.shape), tuple(y.shape)))
        return x, y
    get_batch = train.get_batch
    monkeypatch.setattr(train, 'get_batch', recording_get_batch)
    fire('set_seq_len', 8)
    _, micro_steps, tokens, _ = train.train_step(0)
    assert shapes == [('train', (4, 8), (4, 8))] * 2 and (micro_steps, tokens) == (2, 2 * 4 * 8)
    fire('change_seq_len', 1.5)
    shapes.clear()
    assert train.train_step(1)[2] == 2 * 4 * 12 and shapes == [('train', (4, 12), (4, 12))] * 2


def test_a_batch_is_length_tokens_and_their_next_tokens(tiny_run):
    x, y = train.get_batch('train', torch.Generator().manual_seed(3), 2, 8)
    assert x.shape == y.shape == (2, 8) and torch.equal(y[:, :-1], x[:, 1:])
    assert train.get_batch('train', torch.Generator().manual_seed(3), 2)[0].shape == (2, 32)  # block_size


def test_evals_stay_at_block_size(tiny_run):
    """The same weights, the same eval numbers, whatever seq_len the schedule set (once not: evals at seq_len
    would give another number); and the number is the one of block_size sequences, not of seq_len ones."""
    before = train.estimate_loss(train.model, nullcontext(), 0, False)
    fire('set_seq_len', 4)
    assert train.estimate_loss(train.model, nullcontext(), 0, False) == before
    assert train.eval_flops() == train.model.flops_per_token(training=False) * (2 * 2) * 4 * 32  # 2 splits x 2 iters


def test_flops_per_token_counts_attention_at_the_length(tiny_run):
    model = train.model
    width = model.attention_width()
    assert model.flops_per_token(seq_len=8) == model.flops_per_token() - 12 * width * (32 - 8)
    fire('set_seq_len', 8)
    assert train.step_flops(2 * 4 * 8, 2, 8) == model.flops_per_token(seq_len=8) * 64
    assert train.effective_settings()['flops_per_token'] == model.flops_per_token(seq_len=8)


@pytest.mark.parametrize('schedule, message', [
    ([entry('set_seq_len', 33)], "entry 0, field 'value': set_seq_len: this makes seq_len 33, more than block_size 32; "
                                 "it must stay <= block_size"),
    ([entry('change_seq_len', 1.5)], "entry 0, field 'value': change_seq_len: this makes seq_len 48, more than "
                                     "block_size 32; it must stay <= block_size"),
    ([entry('set_seq_len', 0)], "entry 0, field 'value': set_seq_len: expected an integer >= 1, got 0"),
    ([entry('set_seq_len', 2), entry('change_seq_len', 0.2)],
     "entry 1, field 'value': change_seq_len: this makes seq_len round to 0; it must stay >= 1"),
])
def test_out_of_range_is_refused_before_step_0(tiny_run, schedule, message):
    with pytest.raises(train.ScheduleError) as refused:
        train.validate_schedule('s.json', schedule, 0, tiny_run)
    assert str(refused.value) == f"s.json: {message}"


def test_the_plan_shows_seq_len(tiny_run):
    train.reset_orchestrator(SCHEDULE)
    plan = train.validate_schedule('s.json', SCHEDULE, 0, tiny_run)
    assert [row['seq_len'] for row in plan] == [8, 16]
    out = StringIO()
    with redirect_stdout(out):
        train.print_plan(plan)
    assert ", seq_len 8, " in out.getvalue() and ", seq_len 16, " in out.getvalue()


# -----------------------------------------------------------------------------
# whole runs


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """A 30-iter run with the schedule ('full') and the same run stopped at 20 ('half')."""
    shared = trained_runs(tmp_path_factory.mktemp('seq_len'), SCHEDULE)
    for name, max_iters in (('full', 30), ('half', 20)):
        result = run_train(shared['args'](shared['root'] / name, max_iters=max_iters))
        assert result.returncode == 0, describe_run(result)
        shared[name] = result
    return shared


@pytest.mark.slow
def test_tokens_and_flops_are_counted_at_the_length(runs):
    evals = {e['iter']: e for e in read_events(runs['root'] / 'full') if e['event'] == 'eval'}
    # the eval at an iter is logged before the ops that fire there
    assert [evals[i]['seq_len'] for i in (0, 10, 20, 30)] == [32, 8, 16, 16]
    assert [evals[i]['tokens'] for i in (10, 20, 30)] == [10 * 4 * 8, 10 * 4 * (8 + 16), 10 * 4 * (8 + 32)]
    with open(runs['data'] / 'meta.pkl', 'rb') as f:
        vocab_size = pickle.load(f)['vocab_size']
    model = GPT(GPTConfig(vocab_size=vocab_size, **{k: TINY[k] for k in ('n_layer', 'n_head', 'n_embd', 'block_size',
                                                                           'bias')}))
    assert evals[20]['flops'] == model.flops_per_token(seq_len=8) * 320 + model.flops_per_token(seq_len=16) * 640
    assert "tokens per iteration will be: 128 (grad accum 1 x batch 4 x seq_len 32)" in runs['full'].stdout
    assert "New seq_len: 32 -> 8" in runs['full'].stdout and "New seq_len: 8 -> 16" in runs['full'].stdout
    ops = [e for e in read_events(runs['root'] / 'full') if e['event'] == 'op']
    assert [op['changes']['seq_len'] for op in ops] == [[32, 8], [8, 16]]


@pytest.mark.slow
def test_a_resume_after_a_seq_len_change_is_exact(runs, tmp_path):
    out = tmp_path / 'out'
    shutil.copytree(runs['root'] / 'half', out)
    result = run_train(runs['args'](out, max_iters=30, init_from='resume'))
    assert result.returncode == 0, describe_run(result)
    assert without_elapsed(read_events(out)) == without_elapsed(read_events(runs['root'] / 'full'))
    resumed = torch.load(out / 'ckpt.pt', weights_only=True)
    full = torch.load(runs['root'] / 'full' / 'ckpt.pt', weights_only=True)
    assert resumed['orchestrator']['multipliers'] == {'seq_len': 2.0}
    assert resumed['orchestrator']['set_values'] == {'seq_len': 8}
    assert all(torch.equal(v, full['model'][k]) for k, v in resumed['model'].items())


@pytest.mark.slow
def test_ddp_trains_at_seq_len_on_every_rank(runs, tmp_path):
    """2 gloo ranks, one micro step each: the tokens of both ranks at the length, and the ops logged once."""
    out = tmp_path / 'out'
    result = run_train(runs['args'](out, max_iters=20), command=TORCHRUN + ['train.py'], timeout=180)
    assert result.returncode == 0, describe_run(result)
    events = read_events(out)
    evals = {e['iter']: e for e in events if e['event'] == 'eval'}
    assert evals[20]['tokens'] == 10 * 2 * 4 * 8 + 10 * 2 * 4 * 16 and evals[20]['grad_accum'] == 2
    assert [e['name'] for e in events if e['event'] == 'op'] == ['set_seq_len', 'change_seq_len']
