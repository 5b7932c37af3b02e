"""train.py's final eval (final_eval_iters, final_eval_extra): after the loop ends at max_iters, the val
split scored once more on many fixed batches, windows evenly spaced over the whole split, with no rng, so
the same weights give the same number whatever the run's seed; a second data folder scored the same way."""

import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from helpers import read_events, run_train, train_args, write_char_data
from model import GPT, GPTConfig


def final_eval_by_hand(ckpt_path, folder, batches, batch_size, block_size):
    """The final eval's figure recomputed from the checkpoint: batch k holds windows k*B .. k*B+B-1 of
    batches*B windows spaced evenly from the start of val.bin to its last full window."""
    checkpoint = torch.load(ckpt_path, weights_only=True)
    model = GPT(GPTConfig(**checkpoint['model_args']))
    model.load_state_dict(checkpoint['model'])
    model.eval()
    data = np.fromfile(os.path.join(folder, 'val.bin'), dtype=np.uint16).astype(np.int64)
    n = batches * batch_size
    starts = [i * (len(data) - block_size - 1) // n for i in range(n)]
    losses = []
    with torch.no_grad():
        for k in range(batches):
            ix = starts[k * batch_size:(k + 1) * batch_size]
            x = torch.stack([torch.from_numpy(data[i:i + block_size]) for i in ix])
            y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + block_size]) for i in ix])
            losses.append(model(x, y)[1].item())
    return sum(losses) / batches


@pytest.mark.slow
def test_the_final_eval_scores_fixed_windows_of_val_and_of_another_folder(tmp_path):
    data, other = tmp_path / 'data', tmp_path / 'other'
    write_char_data(data, n_chars=60_000)
    os.makedirs(other)  # the same vocabulary, other text: the start of the train split
    shutil.copyfile(data / 'meta.pkl', other / 'meta.pkl')
    np.fromfile(data / 'train.bin', dtype=np.uint16)[:20_000].tofile(other / 'val.bin')
    out = tmp_path / 'out'
    result = run_train(train_args(data, out, max_iters=20, final_eval_iters=7, final_eval_extra=other, seed=5))
    assert result.returncode == 0, result.stderr
    events = read_events(out)
    assert [e['event'] for e in events[-3:]] == ['eval', 'final_eval', 'summary']
    final = events[-2]
    val = final_eval_by_hand(out / 'ckpt.pt', data, 7, 4, 32)
    extra = final_eval_by_hand(out / 'ckpt.pt', other, 7, 4, 32)
    assert final == dict(event='final_eval', iter=20, val_loss=pytest.approx(val, abs=1e-6), batches=7,
                         extra_val_loss=pytest.approx(extra, abs=1e-6), extra_data=str(other),
                         flops=events[-2]['flops'])
    assert f"final eval (7 batches): val {final['val_loss']:.4f}, {other} {final['extra_val_loss']:.4f}" in \
        result.stdout.splitlines()
    # no rng: resumed at its end, the run scores the same weights to the same number
    again = run_train(train_args(data, out, max_iters=20, final_eval_iters=7, final_eval_extra=other, seed=5,
                                 init_from='resume'))
    assert again.returncode == 0, again.stderr
    assert read_events(out)[-2] == final


@pytest.mark.slow
def test_no_final_eval_by_default(tmp_path):
    data = tmp_path / 'data'
    write_char_data(data, n_chars=60_000)
    result = run_train(train_args(data, tmp_path / 'out', max_iters=10))
    assert result.returncode == 0, result.stderr
    assert [e['event'] for e in read_events(tmp_path / 'out')] == ['eval', 'eval', 'summary']
    assert 'final eval' not in result.stdout


@pytest.mark.parametrize('setting, message', [
    (dict(final_eval_iters=-1), "final_eval_iters: expected an integer >= 0 (0 = no final eval), got -1"),
    (dict(final_eval_extra='{tmp}/nothing'), "final_eval_extra: {tmp}/nothing/val.bin not found"),
    (dict(final_eval_extra='{tmp}/words'),
     "final_eval_extra: {tmp}/words/meta.pkl is not the training data's vocabulary (vocab_size 300 against 58, "
     "tokenizer None against 'char'): prepare it as the training data was"),
])
@pytest.mark.slow
def test_a_bad_final_eval_setting_is_one_line(tmp_path, setting, message):
    data, words = tmp_path / 'data', tmp_path / 'words'
    write_char_data(data, n_chars=20_000)
    write_char_data(words, n_chars=20_000)
    with open(words / 'meta.pkl', 'wb') as f:
        pickle.dump(dict(vocab_size=300), f)
    setting = {k: str(v).format(tmp=tmp_path) for k, v in setting.items()}
    result = run_train(train_args(data, tmp_path / 'out', **{'final_eval_iters': 2, **setting}))
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.strip() == 'error: ' + message.format(tmp=tmp_path)
    assert not os.path.exists(tmp_path / 'out' / 'events.jsonl')


def test_a_resume_drops_the_final_eval_of_the_stopped_run():
    """A run resumed from its last checkpoint with a larger max_iters ends with a final eval of its own:
    the stopped run's, at the same iter as that checkpoint, must not stay in the middle of events.jsonl."""
    import json

    import train
    lines = [json.dumps(dict(event='eval', iter=20, val_loss=2.5)),
             json.dumps(dict(event='final_eval', iter=20, val_loss=2.49, batches=8)),
             json.dumps(dict(event='summary', iter=20)),
             json.dumps(dict(event='eval', iter=30, val_loss=2.4))]
    assert [train.kept_on_resume(line, 20) for line in lines] == [True, False, False, False]
