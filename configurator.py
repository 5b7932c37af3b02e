"""
A small, strict configurator: defaults, then config files and --key=value
overrides applied in command-line order. Usage from a training script:

    $ python train.py config/train_shakespeare_char.py --batch_size=32 --device=cpu

    config = configure(sys.argv[1:], defaults)

A config file is plain Python, executed with the current config as its
namespace, so it can read earlier values (e.g. `n_hidden = 4 * n_embd`).
Every name it sets that does not start with `_` (and is not a module,
function or class) must be a known config key.

Values must keep the type of their default; the only conversions are
int -> float and list <-> tuple. Ranges are not checked here: nan and inf are
accepted for float keys, and train.py validates the values it uses.
"""

import ast
import copy
import difflib
import traceback
import types

_NOT_CONFIG = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type)


class ConfigError(Exception):
    """A mistake in the user's config; its message is meant to be shown without a traceback."""


class UserError(Exception):
    """Bad input from the user (a schedule, data, a checkpoint): shown as one message, no traceback, exit code 2."""


def configure(argv: list[str], defaults: dict, *, verbose: bool = True) -> dict:
    """Return a new dict: `defaults` with the overrides in `argv` applied in order."""
    config = copy.deepcopy(defaults)
    for arg in argv:
        if arg.startswith("--"):
            _apply_cli_arg(config, arg, verbose)
        else:
            _apply_config_file(config, arg, verbose)
    return config


def _apply_config_file(config: dict, path: str, verbose: bool) -> None:
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    if verbose:
        print(f"Overriding config with {path}:")
        print(source)

    try:
        code = compile(source, path, "exec")
    except SyntaxError as e:
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
        config[key] = _coerce(value, config[key], f"{path}: {key} = {value!r}")


def _apply_cli_arg(config: dict, arg: str, verbose: bool) -> None:
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
    config[key] = _coerce(value, config[key], f"command line: {shown}")
    if verbose:
        print(f"Overriding: {key} = {config[key]!r}")


def _check_known(config: dict, key: str, source: str) -> None:
    if key in config:
        return
    close = difflib.get_close_matches(key, config, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"{source}: unknown config key {key!r}{hint}")


def _coerce(value, default, where: str):
    """Return `value` converted to the type of `default`, or raise ConfigError naming `where`."""
    expected, found = type(default), type(value)
    if found is expected:
        return value
    if expected is float and found is int:  # bool is deliberately not accepted here
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"{where} is too large for a float") from None
    if expected in (list, tuple) and found in (list, tuple):
        return expected(value)
    raise ConfigError(f"{where} is {_a(found)}, expected {_a(expected)}")


def _a(t: type) -> str:
    name = t.__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"
