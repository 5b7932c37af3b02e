"""The repo's own checks: the documented test commands run as written, and the linter finds nothing."""

import ast
import glob
import os
import re
import subprocess
import sys

import pytest

from helpers import REPO


def collected(args, cwd):
    """The test names a pytest collection lists (args give -q once: one 'file::test' line each)."""
    out = subprocess.run([sys.executable] + args + ['--collect-only'], cwd=cwd, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    return [line.split('::', 1)[1] for line in out.stdout.splitlines() if '::' in line]


@pytest.mark.parametrize('script', ['test_manual.py', 'test_integration.py'])
@pytest.mark.slow
def test_documented_test_command_runs_from_anywhere(script, tmp_path):
    """`python test_manual.py` (README_ORCHESTRATOR's Testing section) collects its tests, also from
    another working directory (it once stopped at `import helpers`, which only pytest.ini put on the path)."""
    assert len(collected([os.path.join(REPO, script)], cwd=tmp_path)) > 30  # 35 and 172 today; the script adds -q


@pytest.mark.slow
def test_both_orchestrator_state_round_trips_run():
    """test_manual.py once defined test_orchestrator_state_round_trip twice, and the first never ran."""
    names = collected(['test_manual.py', '-k', 'state_round_trip or sets_every_key'], cwd=REPO)
    assert names == ['test_orchestrator_state_round_trip', 'test_load_orchestrator_state_sets_every_key']


@pytest.mark.slow
def test_ruff_finds_no_redefined_or_undefined_name():
    out = subprocess.run([sys.executable, '-m', 'ruff', 'check', '--no-cache', '.'], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# the first torch release with each API the code calls (PyTorch's release notes and docs)
TORCH_API_SINCE = {
    'torch.amp.GradScaler(': (2, 3),  # device-generic, and the first GradScaler for cpu
    'torch.compile(': (2, 0),
    'F.scaled_dot_product_attention(': (2, 0),
    "with torch.device('meta')": (2, 0),
    'weights_only=True': (1, 13),
    'ReduceOp.AVG': (2, 8),  # on gloo (cpu DDP); nccl had it long before
}


def test_requirements_torch_bound_covers_the_apis_used():
    """requirements.txt once said torch>=2.1 while train.py called torch.amp.GradScaler(device), new in 2.3."""
    with open(os.path.join(REPO, 'requirements.txt')) as f:
        bound = next(tuple(int(x) for x in line.split('>=')[1].split()[0].split('.')[:2])
                     for line in f if line.startswith('torch>='))
    code = ''
    for name in sorted(os.listdir(REPO)):
        if name.endswith('.py') and not name.startswith('test_'):
            with open(os.path.join(REPO, name)) as f:
                code += f.read()
    used = {api: since for api, since in TORCH_API_SINCE.items() if api in code}
    assert 'torch.amp.GradScaler(' in used and 'torch.compile(' in used  # the search finds what is there
    assert {api: since for api, since in used.items() if since > bound} == {}
    assert bound == max(used.values())  # and the bound is no higher than they need


def writes_to_train(source):
    """Where a script writes train.py's globals: `train.x = ...`, `vars(train)...`, `setattr(train, ...)`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AugAssign, ast.AnnAssign)) else []
        for target in targets:
            for t in (target.elts if isinstance(target, ast.Tuple) else [target]):
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == 'train':
                    found.append(f'train.{t.attr} = (line {t.lineno})')
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ('vars', 'setattr') \
                and node.args and isinstance(node.args[0], ast.Name) and node.args[0].id == 'train':
            found.append(f'{node.func.id}(train, ...) (line {node.lineno})')
    return found


def test_writes_to_train_are_found():
    assert writes_to_train("import train\ntrain.model = m\nvars(train).update(a=1)\ntrain.a, b = 1, 2\n") == [
        'train.model = (line 2)', 'train.a = (line 4)', 'vars(train, ...) (line 3)']
    assert writes_to_train("import train\nx = train.model\ntrain.setup({'seed': 1})\n") == []


def test_no_script_writes_train_globals_and_readers_of_runs_do_not_import_train():
    """bench.py, bench_ops.py and bench_growth.py once wrote train's globals (vars(train).update, train.model
    = ..., train.get_batch = ...): they call train.setup() now. sample.py and export_hf.py read checkpoints
    through checkpoint.py and GPT.from_checkpoint, without train.py."""
    scripts = sorted(n for n in os.listdir(REPO) if n.endswith('.py') and not n.startswith('test_') and n != 'train.py')
    assert {'bench.py', 'bench_ops.py', 'bench_growth.py', 'sample.py'} <= set(scripts)
    for name in scripts:
        with open(os.path.join(REPO, name)) as f:
            source = f.read()
        assert writes_to_train(source) == [], name
        if name in ('sample.py', 'export_hf.py'):
            assert 'import train' not in source, name


def test_setup_sets_the_config_and_refuses_unknown_keys(monkeypatch):
    import train
    for key in ('seed', 'n_layer', 'device', 'dtype', 'ddp', 'device_type', 'ctx', 'data_generator'):
        monkeypatch.setattr(train, key, getattr(train, key, None))  # put back after the test
    settings = train.setup(dict(seed=7, n_layer=3, device='cpu', dtype='float32'))
    assert (train.seed, train.n_layer, train.device_type) == (7, 3, 'cpu')
    assert settings == {k: getattr(train, k) for k in train.config_keys} and settings['n_layer'] == 3
    assert train.data_generator.initial_seed() == 7  # the runtime started with the new seed
    with pytest.raises(train.UserError, match="setup: not config keys: model, n_layers"):
        train.setup(dict(n_layers=2, model=None))


# third-party modules the scripts import, by the distribution name a requirements file gives them
DISTRIBUTION = {'yaml': 'pyyaml'}


def test_requirements_cover_what_the_scripts_import():
    """plot_run.py, a README command, imports matplotlib, which only requirements-dev.txt had: the README's
    install left it failing. Every third-party module a script imports is in requirements.txt, or in
    requirements-hf.txt (the optional Hugging Face interop)."""
    scripts = [path for path in glob.glob(os.path.join(REPO, '*.py')) + glob.glob(os.path.join(REPO, 'data', '**', '*.py'), recursive=True)
               if not os.path.basename(path).startswith('test_') and os.path.basename(path) != 'conftest.py']
    local = {os.path.basename(path)[:-3] for path in glob.glob(os.path.join(REPO, '**', '*.py'), recursive=True)}
    imported = set()
    for path in scripts:
        with open(path) as f:
            for node in ast.walk(ast.parse(f.read())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
                imported |= {name.split('.')[0] for name in names}
    third_party = {DISTRIBUTION.get(m, m) for m in imported - set(sys.stdlib_module_names) - local}
    assert {'torch', 'numpy', 'matplotlib', 'transformers'} <= third_party  # the search finds what is there
    required = {}
    for name in ('requirements.txt', 'requirements-hf.txt'):
        with open(os.path.join(REPO, name)) as f:
            required[name] = {re.match(r'[\w-]+', line)[0].lower() for line in f if re.match(r'[\w-]', line)}
    assert third_party - required['requirements.txt'] == {'transformers'}
    assert 'transformers' in required['requirements-hf.txt']
