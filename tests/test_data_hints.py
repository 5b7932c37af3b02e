"""
What train.py says when the data is missing (issue 21): the command it prints makes the data as printed
(data/text/prepare.py needs --tokenizer), and a dataset name close to a prepared one gets a "did you mean".
"""

import os
import shlex

import pytest

import train
from helpers import SHAKESPEARE, describe_run, run_script, train_args


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    """A working directory whose data/ holds shakespeare_char (prepared: train.bin), shakespeare (its
    prepare.py only) and an empty folder; check_data reads data/ from the working directory."""
    for folder, files in (('shakespeare_char', ('train.bin', 'prepare.py')), ('shakespeare', ('prepare.py',)),
                          ('empty', ())):
        os.makedirs(tmp_path / 'data' / folder)
        for name in files:
            (tmp_path / 'data' / folder / name).write_text('')
    monkeypatch.chdir(tmp_path)
    for key, value in dict(data_dir='', init_from='scratch', block_size=32).items():
        monkeypatch.setattr(train, key, value)


def refused(dataset, monkeypatch):
    monkeypatch.setattr(train, 'dataset', dataset)
    with pytest.raises(train.UserError) as info:
        train.check_data()
    return str(info.value)


@pytest.mark.parametrize('dataset, expected', [
    ('shakespeare_chr', "data: data/shakespeare_chr/train.bin not found (did you mean --dataset=shakespeare_char?); "
                        "make it with: python data/text/prepare.py --input YOUR_TEXT --out_dir data/shakespeare_chr "
                        "--tokenizer char"),
    ('Shakespeare_char', "data: data/Shakespeare_char/train.bin not found (did you mean --dataset=shakespeare_char?); "
                         "make it with: python data/text/prepare.py --input YOUR_TEXT --out_dir data/Shakespeare_char "
                         "--tokenizer char"),
    # a folder with prepare.py but no train.bin is not a suggestion: its own prepare.py is
    ('shakespeare', "data: data/shakespeare/train.bin not found; make it with: python data/shakespeare/prepare.py"),
    ('openwebtext', "data: data/openwebtext/train.bin not found; make it with: python data/text/prepare.py --input "
                    "YOUR_TEXT --out_dir data/openwebtext --tokenizer char"),
])
def test_missing_dataset_hint(data_root, monkeypatch, dataset, expected):
    assert refused(dataset, monkeypatch) == expected


def test_gpt2_weights_get_the_gpt2_tokenizer(data_root, monkeypatch):
    monkeypatch.setattr(train, 'init_from', 'gpt2')
    assert refused('mytext', monkeypatch) == (
        "data: data/mytext/train.bin not found; make it with: python data/text/prepare.py --input YOUR_TEXT "
        "--out_dir data/mytext --tokenizer gpt2")


def test_no_data_folder_no_suggestion(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for key, value in dict(data_dir='', init_from='scratch', dataset='shakespeare_char').items():
        monkeypatch.setattr(train, key, value)
    with pytest.raises(train.UserError) as info:
        train.check_data()
    assert str(info.value) == ("data: data/shakespeare_char/train.bin not found; make it with: python "
                               "data/text/prepare.py --input YOUR_TEXT --out_dir data/shakespeare_char --tokenizer char")


@pytest.mark.slow
def test_printed_command_makes_the_data(tmp_path):
    """The hint, YOUR_TEXT replaced by a text file, run as printed: then train.py finds its data."""
    args = train_args(tmp_path / 'corpus', tmp_path / 'out', dry_run=True)
    missing = run_script(['train.py'] + args)
    assert missing.returncode == 2, describe_run(missing)
    command = missing.stderr.strip().split('make it with: ')[1]
    assert command == f"python data/text/prepare.py --input YOUR_TEXT --out_dir {tmp_path / 'corpus'} --tokenizer char"
    made = run_script(shlex.split(command.replace('YOUR_TEXT', SHAKESPEARE))[1:])
    assert made.returncode == 0, describe_run(made)
    found = run_script(['train.py'] + args)
    assert found.returncode == 0 and 'plan: 0 operations' in found.stdout, describe_run(found)
