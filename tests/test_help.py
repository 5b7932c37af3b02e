"""--help and -h: the config-key scripts print their usage and every key with its default and the comment
it has in the script's source, and exit 0; the argparse scripts print their whole description."""

import ast
import re

import pytest

import train
from configurator import help_requested, key_comments, print_help
from helpers import run_script

KEY_LINE = re.compile(r'^  (\w+) = (.*?)(?:  +# (.*))?$')


def listed_keys(stdout):
    """{key: (default as printed, comment or None)} from the key lines of a help text, in order."""
    return {m[1]: (m[2], m[3]) for m in map(KEY_LINE.match, stdout.splitlines()[2:])}


def test_help_requested():
    assert help_requested(['--help']) and help_requested(['-h'])
    assert help_requested(['config/train_shakespeare_char.py', '--batch_size=4', '--help'])
    assert not help_requested([]) and not help_requested(['--hf_dir=-h', 'config/help.py'])


def test_key_comments_come_from_the_config_section(tmp_path):
    path = tmp_path / 'script.py'
    path.write_text('import os\n'
                    'x = 1  # the x\n'
                    's = "a # inside a string"  # the s\n'
                    't = 2\n'
                    'def f():\n'
                    '    t = 3  # a local, not a key\n'
                    'DEFAULTS = dict(\n'
                    '    k=1,  # the k\n'
                    '    m=2,\n'
                    ')\n')
    assert key_comments(str(path)) == {'x': 'the x', 's': 'the s', 'k': 'the k'}


def test_print_help_lists_keys_with_defaults_and_comments(capsys):
    print_help('usage: python x.py [--key=value ...]', {'a': 1, 'long_name': 'text', 'flag': True},
               {'a': 'the a', 'flag': 'on or off'})
    assert capsys.readouterr().out == ("usage: python x.py [--key=value ...]\n"
                                       "config keys and their defaults:\n"
                                       "  a = 1               # the a\n"
                                       "  long_name = 'text'\n"
                                       "  flag = True         # on or off\n")


@pytest.mark.slow
@pytest.mark.parametrize('flag', ['--help', '-h'])
def test_train_help(flag):
    result = run_script(['train.py', flag])
    assert result.returncode == 0 and result.stderr == '', result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ['usage: python train.py [config.py ...] [--key=value ...]', 'config keys and their defaults:']
    keys = listed_keys(result.stdout)
    assert list(keys) == train.config_keys and len(lines) == 2 + len(train.config_keys)
    assert keys['out_dir'] == ("'out'", None)
    assert keys['eval_only'] == ('False', "if True, evaluate the model (on a resume: the checkpoint's), print the losses "
                                            "and exit; writes nothing")
    assert keys['gradient_accumulation_steps'] == ('40', 'used to simulate larger batch sizes; summed over DDP ranks')
    assert keys['scaling_schedule_file'] == ("''", "a YAML or JSON schedule; '' = none (on resume: the schedule "
                                                   "stored in the checkpoint)")


# (script, its usage line, {key: (default as printed, comment)} that its help must list)
SCRIPTS = [
    ('sample.py', 'usage: python sample.py [--key=value ...]',
     {'temperature': ('0.8', '1.0 = no change, < 1.0 = less random, > 1.0 = more random, in predictions'),
      'top_k': ('200', 'retain only the top_k most likely tokens, clamp others to have 0 probability'),
      'out_dir': ("'out'", 'the checkpoint {out_dir}/ckpt.pt')}),
    ('bench.py', 'usage: python bench.py [config.py ...] [--key=value ...]',
     {'num_steps': ('20', 'timed steps'),
      'real_data': ('True', 'batches from train.bin of data_dir (or data/{dataset}); False: random tokens'),
      'batch_size': ('12', 'if gradient_accumulation_steps > 1, this is the micro-batch size')}),
    ('bench_ops.py', 'usage: python bench_ops.py [--key=value ...]',
     {'n_layer': ('12', 'the model the ops grow: GPT-2 124M by default'),
      'repeats': ('1', 'each op this many times: the fastest op against the fastest floor')}),
    ('export_hf.py', 'usage: python export_hf.py --out_dir=RUN --hf_dir=FOLDER [--key=value ...]',
     {'hf_dir': ("''", 'the folder to write (created if needed)'),
      'out_dir': ("'out'", 'the run: {out_dir}/ckpt.pt')}),
]


@pytest.mark.slow
@pytest.mark.parametrize('script, usage, expected', SCRIPTS, ids=[s[0] for s in SCRIPTS])
def test_script_help(script, usage, expected):
    for flag in ('--help', '-h'):
        result = run_script([script, flag])
        assert result.returncode == 0 and result.stderr == '', result.stderr
        assert result.stdout.splitlines()[:2] == [usage, 'config keys and their defaults:']
        keys = listed_keys(result.stdout)
        assert {key: keys[key] for key in expected} == expected


def first_paragraph(path):
    with open(path) as f:
        return ' '.join(ast.get_docstring(ast.parse(f.read())).split('\n\n')[0].split())


@pytest.mark.slow
@pytest.mark.parametrize('script', ['bench_growth.py', 'plot_run.py', 'bench_symmetry.py'])
def test_argparse_help_has_whole_sentences(script):
    result = run_script([script, '--help'])
    assert result.returncode == 0, result.stderr
    assert first_paragraph(script) in ' '.join(result.stdout.split())
    assert first_paragraph(script).endswith(('.', '?', '"', ')'))
