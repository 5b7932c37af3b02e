"""wandb: a resumed run's charts are cut back to the checkpoint as events.jsonl is (wandb's rewind,
resume_from), or, where the server refuses a rewind, the run resumes as it is and a note says so.
A stand-in wandb module records the calls; one real offline run checks the arguments against wandb."""

import os
import sys
import types

import pytest
import torch

import train
from helpers import read_events, run_train, train_args, train_env, write_char_data


class Refused(Exception):
    """What the stand-in raises where a server would refuse a rewind."""


def stand_in_wandb(refuse_rewind):
    calls = []

    def init(**kwargs):
        calls.append(kwargs)
        if refuse_rewind and 'resume_from' in kwargs:
            raise Refused('rewind is not enabled for this entity')
        return types.SimpleNamespace(id='run1', log=lambda *args, **kwargs: None)
    return types.SimpleNamespace(init=init, errors=types.SimpleNamespace(Error=Refused)), calls


@pytest.fixture
def logging_settings(tmp_path, monkeypatch):
    for key, value in dict(master_process=True, wandb_log=True, wandb_project='p', wandb_run_name='n',
                           out_dir=str(tmp_path)).items():
        monkeypatch.setattr(train, key, value)


@pytest.mark.parametrize('refuse_rewind', [False, True])
def test_a_resumed_run_rewinds_its_wandb_history_to_the_checkpoint(logging_settings, monkeypatch, capsys,
                                                                    refuse_rewind):
    wandb, calls = stand_in_wandb(refuse_rewind)
    monkeypatch.setitem(sys.modules, 'wandb', wandb)
    train.open_logging({'k': 1}, {'wandb_run_id': 'run1', 'iter_num': 40})
    rewind = dict(project='p', name='n', config={'k': 1}, resume_from='run1?_step=41')  # steps 0..40 stay
    if not refuse_rewind:
        assert calls == [rewind] and 'could not be rewound' not in capsys.readouterr().out
    else:
        assert calls == [rewind, dict(project='p', name='n', config={'k': 1}, id='run1', resume='allow')]
        assert ("wandb: run run1 could not be rewound to iter 40 (rewind is not enabled for this entity); it is "
                "resumed with its history as it is") in capsys.readouterr().out


def test_a_new_run_starts_a_new_wandb_run(logging_settings, monkeypatch):
    wandb, calls = stand_in_wandb(refuse_rewind=False)
    monkeypatch.setitem(sys.modules, 'wandb', wandb)
    train.open_logging({'k': 1}, None)
    assert calls == [dict(project='p', name='n', config={'k': 1}, id=None, resume=None)]


@pytest.mark.slow
def test_offline_wandb_run_stopped_and_resumed(tmp_path):
    """The real wandb (offline): the resumed run keeps the run id and rewinds without an error."""
    pytest.importorskip('wandb')
    write_char_data(tmp_path / 'data', n_chars=20_000)
    env = train_env(WANDB_MODE='offline', WANDB_DIR=str(tmp_path), WANDB_SILENT='true')
    args = train_args(tmp_path / 'data', tmp_path / 'out', max_iters=20, wandb_log=True, always_save_checkpoint=True)
    first = run_train(args, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    run_id = torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)['wandb_run_id']
    resumed = run_train(args + ['--max_iters=30', '--init_from=resume'], env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'could not be rewound' not in resumed.stdout
    assert torch.load(tmp_path / 'out' / 'ckpt.pt', weights_only=True)['wandb_run_id'] == run_id != ''
    assert [e['iter'] for e in read_events(tmp_path / 'out') if e['event'] == 'eval'] == [0, 10, 20, 30]
    runs = sorted(name for name in os.listdir(tmp_path / 'wandb') if name.startswith('offline-run-'))
    assert len(runs) == 2 and all(run_id in name for name in runs)
