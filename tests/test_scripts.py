"""The repo's own checks: the documented commands run as written, the docs' links resolve, the
requirements cover what the scripts import, and the linter finds nothing."""

import ast
import glob
import os
import re
import shlex
import subprocess
import sys

import pytest
import yaml

from helpers import REPO, run_script, write_char_data


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


README = os.path.join(REPO, 'README.md')


def fenced_blocks(path):
    """(language, lines) of each fenced code block of a Markdown file."""
    blocks, language, lines = [], None, []
    with open(path, encoding='utf-8') as f:
        for line in f:
            if line.startswith('```') and language is None:
                language, lines = line[3:].strip(), []
            elif line.startswith('```'):
                blocks.append((language, lines))
                language = None
            elif language is not None:
                lines.append(line.rstrip('\n'))
    return blocks


def readme_commands():
    """The shell commands of README.md (its fenced blocks without a language), one per line, as argv
    lists with the comments cut."""
    return [shlex.split(line, comments=True) for language, lines in fenced_blocks(README) if language == ''
            for line in lines if line.strip()]


def named_files(argv):
    """The repository files a command names: arguments and --key=values that end like a script, config,
    schedule or requirements file (outside paths, ../shared, are the user's)."""
    values = [arg.split('=', 1)[-1] for arg in argv]
    return [v for v in values if re.fullmatch(r'[\w./-]+\.(py|yaml|yml|json|txt)', v) and not v.startswith('..')]


def test_readme_commands_name_files_that_exist():
    commands = readme_commands()
    assert ['python', 'train.py', 'config/train_shakespeare_char_cpu.py'] in commands
    missing = [(' '.join(argv), name) for argv in commands for name in named_files(argv)
               if not os.path.isfile(os.path.join(REPO, name))]
    assert missing == []


def heading_anchors(path):
    """GitHub's anchors for a Markdown file's headings (lowercase, punctuation dropped, spaces to -)."""
    code = {line for _, lines in fenced_blocks(path) for line in lines}
    with open(path, encoding='utf-8') as f:
        headings = [line.lstrip('#').strip() for line in f if line.startswith('#') and line.rstrip('\n') not in code]
    return {re.sub(r'[^\w\- ]', '', h.lower()).replace(' ', '-') for h in headings}


def broken_links(path):
    """The relative links of a Markdown file whose file, or heading anchor, does not exist."""
    with open(path, encoding='utf-8') as f:
        targets = re.findall(r'\]\(([^)\s]+)\)', f.read())
    broken = []
    for target in targets:
        if re.match(r'[a-z]+:', target):
            continue
        name, _, anchor = target.partition('#')
        linked = os.path.join(os.path.dirname(path), name) if name else path
        if not os.path.exists(linked) or anchor and anchor not in heading_anchors(linked):
            broken.append(target)
    return broken


def test_heading_anchors_and_broken_links(tmp_path):
    page = tmp_path / 'page.md'
    page.write_text("# A page\n## bf16 on CPU, `dtype` (GPT-2)\n```\n# not a heading\n```\n"
                    "[a](#bf16-on-cpu-dtype-gpt-2) [b](#not-a-heading) [c](page.md#a-page) [d](gone.md) "
                    "[e](https://example.com/x)\n")
    assert heading_anchors(page) == {'a-page', 'bf16-on-cpu-dtype-gpt-2'}
    assert broken_links(page) == ['#not-a-heading', 'gone.md']


def test_readme_is_short_and_every_link_resolves():
    """README.md was 437 lines, half of it measurement history; that lives in docs/ now."""
    with open(README, encoding='utf-8') as f:
        assert len(f.readlines()) < 250
    pages = [README, os.path.join(REPO, 'README_ORCHESTRATOR.md')] + sorted(glob.glob(os.path.join(REPO, 'docs', '*.md')))
    assert {os.path.relpath(page, REPO): broken_links(page) for page in pages} == {
        os.path.relpath(page, REPO): [] for page in pages}


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


# the README's commands that run in seconds, and what each prints (or writes) when it worked; the rest
# download, train for minutes or need GPUs. A README command spelled differently from its entry here
# fails the test: change both together.
CHEAP_README_COMMANDS = {
    'python train.py config/train_shakespeare_char_cpu_growth.py --dry_run=True': 'plan: 1 operations',
    'python train.py config/train_gpt2_growth.py --dry_run=True': 'plan: 2 operations',
    'python sample.py --out_dir=out-shakespeare-char-cpu --device=cpu': '---------------',
    'python plot_run.py out-shakespeare-char-cpu': 'wrote run.png',
    'python bench.py config/train_shakespeare_char_cpu.py': 'ms/iter ',
}


@pytest.fixture(scope='module')
def user_folder(tmp_path_factory):
    """A folder where the README's commands run as a user types them: the repository's scripts and
    configs linked, tiny character data where the configs read theirs (data/shakespeare_char for the
    CPU recipes, data/corpus for the GPT-2 recipe), and a tiny run in the quick start's out_dir. The
    commands write here, never into the checkout."""
    root = tmp_path_factory.mktemp('user')
    for name in os.listdir(REPO):
        if name.endswith('.py') or name in ('config', 'configs'):
            os.symlink(os.path.join(REPO, name), root / name)
    write_char_data(root / 'data' / 'shakespeare_char')
    write_char_data(root / 'data' / 'corpus')
    tiny = ['--n_layer=1', '--n_head=2', '--n_embd=32', '--block_size=32', '--max_iters=2', '--eval_interval=2',
            '--eval_iters=1', '--warmup_iters=1', '--always_save_checkpoint=True']
    run = run_script(['train.py', 'config/train_shakespeare_char_cpu.py'] + tiny, cwd=root)
    assert run.returncode == 0 and (root / 'out-shakespeare-char-cpu' / 'ckpt.pt').is_file(), run.stderr
    return root


@pytest.mark.slow
@pytest.mark.parametrize('command', CHEAP_README_COMMANDS)
def test_cheap_readme_command_runs_as_written(command, user_folder):
    """The README's dry run of the GPT-2 recipe once failed for want of data/corpus the README never made."""
    assert shlex.split(command) in readme_commands()
    result = run_script(shlex.split(command)[1:], cwd=user_folder)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert CHEAP_README_COMMANDS[command] in result.stdout


@pytest.mark.slow
def test_readme_schedule_example_is_a_valid_schedule(tmp_path, user_folder):
    """The README's YAML schedule plans on the CPU recipe's model."""
    [example] = [lines for language, lines in fenced_blocks(README) if language == 'yaml']
    schedule = tmp_path / 'schedule.yaml'
    schedule.write_text('\n'.join(example) + '\n')
    assert [entry['name'] for entry in yaml.safe_load(schedule.read_text())] == ['change_lr', 'stack_layers']
    result = run_script(['train.py', 'config/train_shakespeare_char_cpu.py', '--dry_run=True',
                         f'--scaling_schedule_file={schedule}'], cwd=user_folder)
    assert result.returncode == 0, result.stderr
    assert 'plan: 2 operations' in result.stdout and 'n_layer 8' in result.stdout
