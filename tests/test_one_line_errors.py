"""Mistakes that got a traceback and now get one line: sample.py on a machine without CUDA, a temperature
or top_k it cannot sample with, and a schedule file passed where a config file goes."""

import pytest
import torch

import sample
from configurator import ConfigError, UserError, configure
from helpers import run_script

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where torch sees no CUDA device")


def test_sampling_device_falls_back_to_cpu_only_when_cuda_was_the_default(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert sample.sampling_device('cuda', given=False) == 'cpu'
    assert capsys.readouterr().out == "no CUDA device: sampling on cpu\n"
    with pytest.raises(UserError) as refused:
        sample.sampling_device('cuda:1', given=True)
    assert str(refused.value) == "device: 'cuda:1', but this torch sees no CUDA device; sample with --device=cpu"
    assert sample.sampling_device('cpu', given=True) == 'cpu'
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    assert sample.sampling_device('cuda', given=False) == 'cuda'
    assert capsys.readouterr().out == ''


@pytest.mark.slow
@no_cuda
def test_sample_without_device_on_a_cpu_machine(tmp_path):
    result = run_script(['sample.py', f'--out_dir={tmp_path}'])
    assert result.stdout == f"Overriding: out_dir = '{tmp_path}'\nno CUDA device: sampling on cpu\n"
    assert result.returncode == 2 and result.stderr == f"error: out_dir: no checkpoint at {tmp_path}/ckpt.pt\n"
    explicit = run_script(['sample.py', f'--out_dir={tmp_path}', '--device=cuda'])
    assert explicit.returncode == 2
    assert explicit.stderr == "error: device: 'cuda', but this torch sees no CUDA device; sample with --device=cpu\n"


@pytest.mark.slow
@pytest.mark.parametrize('arg, message', [
    ('--temperature=0', "temperature: expected a number > 0, got 0.0 (the logits are divided by it; "
                        "for greedy sampling use --top_k=1)"),
    ('--temperature=-0.5', "temperature: expected a number > 0, got -0.5 (the logits are divided by it; "
                           "for greedy sampling use --top_k=1)"),
    ('--top_k=0', "top_k: expected an integer >= 1, got 0 (1 samples greedily; a top_k of the vocabulary "
                  "size or more keeps every token)"),
])
def test_sample_refuses_temperature_and_top_k_it_cannot_use(tmp_path, arg, message):
    result = run_script(['sample.py', f'--out_dir={tmp_path}', '--device=cpu', arg])
    assert result.returncode == 2 and result.stderr == f"error: {message}\n", result.stderr


SCHEDULE = "- name: widen_mlp\n  value: 2.0\n  trigger_loss: 0.0\n  max_wait_iters: 10\n"


@pytest.mark.parametrize('name', ['grow.yaml', 'grow.yml', 'grow.json', 'grow.txt'])
def test_schedule_file_passed_as_config(tmp_path, name):
    path = tmp_path / name
    path.write_text(SCHEDULE if name != 'grow.json' else '[{"name": "widen_mlp", "value": 2.0}]')
    with pytest.raises(ConfigError) as refused:
        configure([str(path)], {'batch_size': 12, 'scaling_schedule_file': ''})
    assert str(refused.value) == (f"{path} looks like a schedule file, not a config: pass it as "
                                  f"--scaling_schedule_file={path}")
    with pytest.raises(ConfigError) as refused:  # a script without schedules: no such key to suggest
        configure([str(path)], {'batch_size': 12}, verbose=False)
    assert str(refused.value) == (f"{path} looks like a schedule file, not a config: a config file is Python, "
                                  "`key = value` lines")


def test_python_config_with_a_syntax_error_is_still_a_syntax_error(tmp_path):
    path = tmp_path / 'cfg.py'
    path.write_text("batch_size = 4\nn_embd = = 3\n")
    with pytest.raises(ConfigError) as refused:
        configure([str(path)], {'batch_size': 12, 'n_embd': 768, 'scaling_schedule_file': ''}, verbose=False)
    assert str(refused.value) == f"{path}, line 2: SyntaxError: invalid syntax"


@pytest.mark.slow
def test_train_with_a_schedule_as_config_file():
    result = run_script(['train.py', 'configs/test_scaling_schedule.yaml'])
    assert result.returncode == 2 and result.stdout == ''
    assert result.stderr == ("error: configs/test_scaling_schedule.yaml looks like a schedule file, not a config: "
                             "pass it as --scaling_schedule_file=configs/test_scaling_schedule.yaml\n")
