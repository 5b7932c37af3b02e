"""
A resume continues the run it resumes (issue 21, items 2 and 9), on a tiny CPU fp32 run of 20 iters:
- the run's settings come from the checkpoint: a resume given only out_dir, max_iters and the
  run-local keys (device, compile) logs exactly the events of an uninterrupted run;
- `resuming from iter N (path)` first, then one `resume: key = value (the checkpoint's run: old)` line
  per setting given on the command line (or in a config file) that differs from the run's; a config
  file that repeats the run's values prints none;
- a change that cannot work is refused in one line, exit 2, nothing touched: another architecture
  (the model is the checkpoint's), a block_size larger than the model's, data of another vocabulary.
"""

import shutil

import pytest
import torch

from helpers import (TINY, describe_run, file_state, read_events, run_train, train_args, without_elapsed,
                     write_char_data)

pytestmark = pytest.mark.slow  # every test here runs train.py as a subprocess


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """Data, a 20-iter run ('half') and the same run trained for 30 iters without a stop ('full')."""
    root = tmp_path_factory.mktemp('resume_settings')
    write_char_data(root / 'data', n_chars=20_000)
    for name, max_iters in (('half', 20), ('full', 30)):
        result = run_train(train_args(root / 'data', root / name, max_iters=max_iters))
        assert result.returncode == 0, describe_run(result)
    return root


def copy_of_half(runs, tmp_path):
    out = tmp_path / 'out'
    shutil.copytree(runs / 'half', out)
    return out


def resume_lines(stdout):
    return [line for line in stdout.splitlines() if line.startswith(('resume', 'resuming'))]


def test_resume_without_the_settings_continues_the_run(runs, tmp_path):
    """Once: `AssertionError: sequence of length 1024 > block_size 32` (the default block_size), and
    where it matched, the default lr, batch size and max_iters."""
    out = copy_of_half(runs, tmp_path)
    result = run_train([f'--out_dir={out}', '--init_from=resume', '--max_iters=30', '--device=cpu',
                        '--compile=False'])
    assert result.returncode == 0, describe_run(result)
    assert resume_lines(result.stdout) == [f"resuming from iter 20 ({out}/ckpt.pt)",
                                           "resume: max_iters = 30 (the checkpoint's run: 20)"]
    assert without_elapsed(read_events(out)) == without_elapsed(read_events(runs / 'full'))
    config = torch.load(out / 'ckpt.pt', weights_only=True)['config']
    assert (config['learning_rate'], config['batch_size'], config['block_size'], config['data_dir']) == \
        (TINY['learning_rate'], TINY['batch_size'], TINY['block_size'], str(runs / 'data'))


def test_each_changed_setting_is_one_line(runs, tmp_path):
    """The rest of the command line repeats the run's values (TINY): no line for them."""
    out = copy_of_half(runs, tmp_path)
    result = run_train(train_args(runs / 'data', out, init_from='resume', max_iters=30, learning_rate=0.002,
                                  eval_iters=3, dropout=0.1))
    assert result.returncode == 0, describe_run(result)
    assert resume_lines(result.stdout) == [f"resuming from iter 20 ({out}/ckpt.pt)",
                                           "resume: eval_iters = 3 (the checkpoint's run: 2)",
                                           "resume: dropout = 0.1 (the checkpoint's run: 0.0)",
                                           "resume: learning_rate = 0.002 (the checkpoint's run: 0.001)",
                                           "resume: max_iters = 30 (the checkpoint's run: 20)"]
    checkpoint = torch.load(out / 'ckpt.pt', weights_only=True)
    assert (checkpoint['config']['learning_rate'], checkpoint['config']['eval_iters'], checkpoint['config']['max_iters'],
            checkpoint['model_args']['dropout']) == (0.002, 3, 30, 0.1)
    assert [e['iter'] for e in read_events(out) if e['event'] == 'eval'] == [0, 10, 20, 30]


def test_a_config_file_with_the_runs_values_resumes_without_a_line(runs, tmp_path):
    """The file repeats the half run's settings (n_hidden read from the values before it): no line for them."""
    out = copy_of_half(runs, tmp_path)
    config_file = tmp_path / 'my_config.py'
    config_file.write_text(''.join(f"{k} = {v!r}\n" for k, v in dict(TINY, max_iters=20).items()) +
                           f"data_dir = {str(runs / 'data')!r}\nn_hidden = 4 * n_embd if n_hidden else 0\n")
    result = run_train([str(config_file), f'--out_dir={out}', '--init_from=resume', '--max_iters=30'])
    assert result.returncode == 0, describe_run(result)
    assert resume_lines(result.stdout) == [f"resuming from iter 20 ({out}/ckpt.pt)",
                                           "resume: max_iters = 30 (the checkpoint's run: 20)"]
    assert without_elapsed(read_events(out)) == without_elapsed(read_events(runs / 'full'))


@pytest.mark.parametrize('override, message', [
    (dict(n_layer=6), "resume: n_layer = 6, but the run in {out}/ckpt.pt started with n_layer = 1 and its model is "
                      "now n_layer 1, n_head 2, head_size 16, n_embd 32, n_hidden 128, attn_lora_rank 0, "
                      "embedding_lora_rank 0, lora_alpha 1.0; a resume trains the "
                      "checkpoint's model: grow it with a scaling_schedule_file, or start a new run in another "
                      "--out_dir"),
    (dict(bias=True), "resume: bias = True, but the run in {out}/ckpt.pt started with bias = False and its model is "
                      "now n_layer 1, n_head 2, head_size 16, n_embd 32, n_hidden 128, attn_lora_rank 0, "
                      "embedding_lora_rank 0, lora_alpha 1.0; a resume trains the "
                      "checkpoint's model: grow it with a scaling_schedule_file, or start a new run in another "
                      "--out_dir"),
    (dict(block_size=64), "resume: block_size = 64 is larger than the block_size of the model in {out}/ckpt.pt (32); "
                          "a resumed run trains on blocks of at most 32 tokens"),
])
def test_a_change_that_cannot_work_is_refused(runs, tmp_path, override, message):
    """--n_layer=6 on a resume once went on with the checkpoint's 1 layer, exit 0; --block_size=64 ended in a
    traceback."""
    out = copy_of_half(runs, tmp_path)
    before = {name: file_state(out / name) for name in ('ckpt.pt', 'events.jsonl')}
    result = run_train(train_args(runs / 'data', out, init_from='resume', max_iters=30, **override))
    assert (result.returncode, result.stderr) == (2, f"error: {message.format(out=out)}\n"), describe_run(result)
    assert {name: file_state(out / name) for name in ('ckpt.pt', 'events.jsonl')} == before


def test_data_of_another_vocabulary_is_refused(runs, tmp_path):
    """The run's data has 61 tokens; data made of the first 2000 characters has fewer: once it trained on."""
    out = copy_of_half(runs, tmp_path)
    vocab_size = write_char_data(tmp_path / 'other', n_chars=2000)
    before = file_state(out / 'ckpt.pt')
    result = run_train(train_args(tmp_path / 'other', out, init_from='resume', max_iters=30))
    model_vocab = torch.load(out / 'ckpt.pt', weights_only=True)['model_args']['vocab_size']
    assert vocab_size != model_vocab
    assert (result.returncode, result.stderr) == (
        2, f"error: data: {tmp_path / 'other'}/meta.pkl has vocab_size {vocab_size}, but the model in {out}/ckpt.pt "
           f"has {model_vocab} tokens; resume on the data the run trained on\n"), describe_run(result)
    assert file_state(out / 'ckpt.pt') == before
