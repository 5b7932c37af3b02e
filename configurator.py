"""
A small, strict configurator: defaults, then config files and --key=value
overrides applied in command-line order. Usage from a training script:

    $ python train.py config/train_shakespeare_char.py --batch_size=32 --device=cpu

    config = configure(sys.argv[1:], defaults)

A config file is plain Python, executed with the current config as its
namespace, so it can read earlier values (e.g. `n_hidden = 4 * n_embd`).
A schedule file (.yaml, .yml, .json, or YAML entries with a `name`) given in
its place is refused with a pointer to --scaling_schedule_file.
Every name it sets that does not start with `_` (and is not a module,
function or class) must be a known config key.

Values must keep the type of their default; the only conversions are
int -> float and list <-> tuple. A script may let some keys hold other types
too (a structured value, e.g. a mapping): configure's `types` names each such
key's types, and the script checks the value's content. Ranges are not checked here: nan and inf are
accepted for float keys, and train.py validates the values it uses.

--help or -h: a script checks help_requested(argv) before configure and calls
print_help(usage, defaults, key_comments(its own file)), which lists every key
with its default and the comment its `key = value  # comment` line has.
"""

import ast
import copy
import difflib
import io
import tokenize
import traceback
import types

_NOT_CONFIG = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type)
SCHEDULE_SUFFIXES = (".yaml", ".yml", ".json")  # schedule files; a config file is Python


class ConfigError(Exception):
    """A mistake in the user's config; its message is meant to be shown without a traceback."""


class UserError(Exception):
    """Bad input from the user (a schedule, data, a checkpoint): shown as one message, no traceback, exit code 2."""


def configure(argv: list[str], defaults: dict, *, verbose: bool = True, types: dict | None = None) -> dict:
    """Return a new dict: `defaults` with the overrides in `argv` applied in order. types: {key: the types
    it takes} for keys that take other types than their default's (e.g. {'attn_lora_rank': (int, dict)})."""
    config = copy.deepcopy(defaults)
    types = types or {}
    for arg in argv:
        if arg.startswith("--"):
            _apply_cli_arg(config, arg, verbose, types)
        else:
            _apply_config_file(config, arg, verbose, types)
    return config


def _apply_config_file(config: dict, path: str, verbose: bool, types: dict) -> None:
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    if path.endswith(SCHEDULE_SUFFIXES):
        _refuse_schedule(config, path)
    if verbose:
        print(f"Overriding config with {path}:")
        print(source)

    try:
        code = compile(source, path, "exec")
    except SyntaxError as e:
        if _parses_as_schedule(source):
            _refuse_schedule(config, path)
        raise ConfigError(f"{path}, line {e.lineno}: SyntaxError: {e.msg}") from None
    namespace = copy.deepcopy(config)
    try:
        exec(code, namespace)
    except Exception as e:
        # the innermost frame that belongs to the config file itself
        lineno = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == path][-1].lineno
        raise ConfigError(f"{path}, line {lineno}: {type(e).__name__}: {e}") from None

    for key, value in namespace.items():
        if key.startswith("_") or isinstance(value, _NOT_CONFIG):
            continue
        _check_known(config, key, path)
        config[key] = _coerce(value, config[key], f"{path}: {key} = {value!r}", types.get(key))


def _parses_as_schedule(source: str) -> bool:
    """Whether text that is not Python reads as a schedule: a YAML list of entries with a `name`."""
    import yaml
    try:
        entries = yaml.safe_load(source)
    except (yaml.YAMLError, RecursionError):
        return False
    return isinstance(entries, list) and any(isinstance(entry, dict) and "name" in entry for entry in entries)


def _refuse_schedule(config: dict, path: str) -> None:
    fix = (f"pass it as --scaling_schedule_file={path}" if "scaling_schedule_file" in config
           else "a config file is Python, `key = value` lines")
    raise ConfigError(f"{path} looks like a schedule file, not a config: {fix}")


def help_requested(argv: list[str]) -> bool:
    """Whether the command line asks for the usage (--help or -h, anywhere in it)."""
    return any(arg in ('--help', '-h') for arg in argv)


def key_comments(path: str) -> dict:
    """{key: comment} from a script's config section: its module-level `key = value  # comment` lines
    and the `key=value,  # comment` lines of a module-level `NAME = dict(...)`."""
    with open(path, encoding="utf-8") as f:
        source = f.read()
    comment_on_line = {token.start[0]: token.string.lstrip("#").strip()
                       for token in tokenize.generate_tokens(io.StringIO(source).readline)
                       if token.type == tokenize.COMMENT}
    comments = {}
    for node in ast.parse(source, path).body:
        if not isinstance(node, ast.Assign):
            continue
        keys = [(target.id, node.lineno) for target in node.targets if isinstance(target, ast.Name)]
        if isinstance(node.value, ast.Call) and getattr(node.value.func, "id", None) == "dict":
            keys += [(keyword.arg, keyword.lineno) for keyword in node.value.keywords if keyword.arg]
        for key, line in keys:
            if line in comment_on_line:
                comments.setdefault(key, comment_on_line[line])
    return comments


def print_help(usage: str, defaults: dict, comments: dict) -> None:
    """The usage line, then one line per key: `key = default`, and its comment where it has one."""
    settings = {key: f"{key} = {value!r}" for key, value in defaults.items()}
    width = min(40, max(map(len, settings.values()), default=0))
    print(usage)
    print("config keys and their defaults:")
    for key, setting in settings.items():
        print(f"  {setting:<{width}}  # {comments[key]}" if key in comments else f"  {setting}")


def _apply_cli_arg(config: dict, arg: str, verbose: bool, types: dict) -> None:
    key, eq, text = arg[2:].partition("=")
    if not eq or not key:
        raise ConfigError(f"command line: expected --key=value, got {arg!r}")
    _check_known(config, key, "command line")
    try:
        value = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        value = text  # not a Python literal: take it as a plain string, e.g. --device=cpu
    if isinstance(config[key], str) and not isinstance(value, str):
        value = text  # a string key takes the text as it is: --out_dir=123 is the folder '123'
    shown = arg if arg.isprintable() else repr(arg)  # a newline in a value must not break the one-line message
    config[key] = _coerce(value, config[key], f"command line: {shown}", types.get(key))
    if verbose:
        print(f"Overriding: {key} = {config[key]!r}")


def _check_known(config: dict, key: str, source: str) -> None:
    if key in config:
        return
    close = difflib.get_close_matches(key, config, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"{source}: unknown config key {key!r}{hint}")


def _coerce(value, default, where: str, allowed: tuple | None = None):
    """Return `value` converted to the type of `default`, or raise ConfigError naming `where`. allowed: the
    types the key takes instead (its first one is what an int -> float or list <-> tuple conversion aims at)."""
    if allowed is not None and type(value) in allowed:
        return value
    expected, found = allowed[0] if allowed else type(default), type(value)
    if found is expected:
        return value
    if expected is float and found is int:  # bool is deliberately not accepted here
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"{where} is too large for a float") from None
    if expected in (list, tuple) and found in (list, tuple):
        return expected(value)
    raise ConfigError(f"{where} is {_a(found)}, expected {' or '.join(_a(t) for t in allowed or (expected,))}")


def _a(t: type) -> str:
    name = t.__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"
