import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from configurator import ConfigError, configure  # noqa: E402

DEFAULTS = {
    "batch_size": 12,
    "learning_rate": 6e-4,
    "n_embd": 768,
    "n_hidden": 3072,
    "compile": True,
    "device": "cuda",
    "betas": (0.9, 0.95),
    "eval_iters": [100, 200],
    "max_iters": 600000,
    "extra": {"a": 1},
}


def write(tmp_path, text, name="cfg.py"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def run(*argv, defaults=DEFAULTS):
    return configure(list(argv), defaults, verbose=False)


def error(*argv):
    with pytest.raises(ConfigError) as info:
        run(*argv)
    return str(info.value)


def test_no_overrides_returns_equal_new_dict():
    config = run()
    assert config == DEFAULTS
    assert config is not DEFAULTS


def test_file_override(tmp_path):
    path = write(tmp_path, "batch_size = 64\ndevice = 'cpu'\n")
    assert run(path) == {**DEFAULTS, "batch_size": 64, "device": "cpu"}


def test_file_reads_earlier_value(tmp_path):
    first = write(tmp_path, "n_embd = 128\n", "first.py")
    second = write(tmp_path, "n_hidden = 4 * n_embd\n", "second.py")
    config = run(first, second)
    assert config["n_embd"] == 128
    assert config["n_hidden"] == 512


def test_file_sees_earlier_cli_value(tmp_path):
    path = write(tmp_path, "n_hidden = 4 * n_embd\n")
    assert run("--n_embd=10", path)["n_hidden"] == 40


def test_file_ignores_private_names_modules_functions_classes(tmp_path):
    path = write(
        tmp_path,
        "import math\n"
        "from math import sqrt\n"
        "_scale = 2\n"
        "def _helper(x):\n    return x * _scale\n"
        "class Thing:\n    pass\n"
        "batch_size = _helper(int(sqrt(16)))\n",
    )
    assert run(path) == {**DEFAULTS, "batch_size": 8}


def test_cli_override():
    config = run("--batch_size=32", "--learning_rate=1e-3", "--compile=False")
    assert config == {**DEFAULTS, "batch_size": 32, "learning_rate": 1e-3, "compile": False}


def test_cli_unparseable_literal_kept_as_string():
    assert run("--device=cpu")["device"] == "cpu"
    assert run("--device=cuda:1")["device"] == "cuda:1"
    assert run("--device='mps'")["device"] == "mps"


def test_order_file_then_cli_and_later_wins(tmp_path):
    path = write(tmp_path, "batch_size = 64\nn_embd = 256\n")
    assert run(path, "--batch_size=8")["batch_size"] == 8
    assert run("--batch_size=8", path)["batch_size"] == 64
    assert run("--batch_size=1", "--batch_size=2")["batch_size"] == 2
    assert run(path, "--batch_size=8")["n_embd"] == 256


def test_int_promoted_to_float(tmp_path):
    value = run("--learning_rate=1")["learning_rate"]
    assert value == 1.0 and type(value) is float
    value = run(write(tmp_path, "learning_rate = 2\n"))["learning_rate"]
    assert value == 2.0 and type(value) is float


def test_huge_int_for_float():
    assert error("--learning_rate=1" + "0" * 400).endswith("is too large for a float")


def test_nan_and_inf_accepted_for_float(tmp_path):
    assert math.isnan(run(write(tmp_path, "learning_rate = float('nan')\n"))["learning_rate"])
    assert run("--learning_rate=1e999")["learning_rate"] == math.inf


WRONG_TYPES = [
    # (override, the message after "<where>: "): each on the command line as --override, and in a file
    ("batch_size=True", "batch_size=True is a bool, expected an int"),
    ("compile=1", "compile=1 is an int, expected a bool"),
    ("compile=0", "compile=0 is an int, expected a bool"),
    ("learning_rate=True", "learning_rate=True is a bool, expected a float"),
    ("max_iters=2.5", "max_iters=2.5 is a float, expected an int"),
    ("batch_size=big", "batch_size=big is a str, expected an int"),
    ("learning_rate='1e-3'", "learning_rate='1e-3' is a str, expected a float"),
]


@pytest.mark.parametrize("override, message", WRONG_TYPES)
def test_wrong_type_refused(tmp_path, override, message):
    if override != "batch_size=big":  # unquoted text is a string on the command line only
        path = write(tmp_path, override.replace("=", " = ") + "\n")
        assert error(path) == f"{path}: {message.replace('=', ' = ', 1)}"
    if override != "learning_rate='1e-3'":  # the command line takes the quotes as part of the text
        assert error(f"--{override}") == f"command line: --{message}"


def test_number_for_a_string_key_is_taken_as_text(tmp_path):
    assert run("--device=0")["device"] == "0"
    assert error(write(tmp_path, "device = 0\n")).endswith("device = 0 is an int, expected a str")


def test_list_tuple_conversion(tmp_path):
    config = run("--betas=[0.8, 0.99]", "--eval_iters=(1, 2, 3)")
    assert config["betas"] == (0.8, 0.99) and type(config["betas"]) is tuple
    assert config["eval_iters"] == [1, 2, 3] and type(config["eval_iters"]) is list
    config = run(write(tmp_path, "betas = [0.5, 0.6]\neval_iters = (7,)\n"))
    assert config["betas"] == (0.5, 0.6)
    assert config["eval_iters"] == [7]


def test_dict_value():
    assert run("--extra={'b': 2}")["extra"] == {"b": 2}
    assert error("--extra=[1]") == "command line: --extra=[1] is a list, expected a dict"


@pytest.mark.parametrize("key, hint", [("learning_rat", " (did you mean 'learning_rate'?)"),
                                       ("batch_sise", " (did you mean 'batch_size'?)"),
                                       ("zzzzqqq", ""), ("wandb_project", "")])
def test_unknown_key_refused(tmp_path, key, hint):
    path = write(tmp_path, f"{key} = 1\n")
    assert error(path) == f"{path}: unknown config key '{key}'{hint}"
    assert error(f"--{key}=1") == f"command line: unknown config key '{key}'{hint}"


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.py")
    assert error(path) == f"config file not found: {path}"


def test_file_that_raises_reports_line(tmp_path):
    path = write(tmp_path, "batch_size = 4\n\nn_embd = 1 / 0\n")
    assert error(path) == f"{path}, line 3: ZeroDivisionError: division by zero"


def test_file_that_raises_inside_function_reports_innermost_line(tmp_path):
    path = write(tmp_path, "def _f():\n    return undefined_name\n\nbatch_size = _f()\n")
    assert error(path) == f"{path}, line 2: NameError: name 'undefined_name' is not defined"


def test_file_with_syntax_error_reports_line(tmp_path):
    path = write(tmp_path, "batch_size = 4\nn_embd = = 3\n")
    assert error(path) == f"{path}, line 2: SyntaxError: invalid syntax"


def test_missing_equals_or_empty_key():
    assert error("--batch_size") == "command line: expected --key=value, got '--batch_size'"
    assert error("--=4") == "command line: expected --key=value, got '--=4'"
    assert error("--") == "command line: expected --key=value, got '--'"


def test_defaults_not_mutated(tmp_path):
    defaults = {"batch_size": 12, "eval_iters": [100, 200], "extra": {"a": 1}}
    snapshot = {"batch_size": 12, "eval_iters": [100, 200], "extra": {"a": 1}}
    path = write(tmp_path, "eval_iters.append(300)\nextra['b'] = 2\nbatch_size = 1\n")
    config = run(path, "--batch_size=5", defaults=defaults)
    assert config == {"batch_size": 5, "eval_iters": [100, 200, 300], "extra": {"a": 1, "b": 2}}
    assert defaults == snapshot
    config["eval_iters"].append(400)
    assert defaults == snapshot


def test_error_leaves_no_partial_state():
    defaults = dict(DEFAULTS)
    with pytest.raises(ConfigError):
        configure(["--batch_size=1", "--nope=1"], defaults, verbose=False)
    assert defaults == DEFAULTS


def test_verbose_output(tmp_path, capsys):
    path = write(tmp_path, "batch_size = 64\n")
    configure([path, "--device=cpu", "--learning_rate=1"], DEFAULTS)
    assert capsys.readouterr().out == (
        f"Overriding config with {path}:\nbatch_size = 64\n\n"
        "Overriding: device = 'cpu'\n"
        "Overriding: learning_rate = 1.0\n"
    )


def test_quiet_prints_nothing(tmp_path, capsys):
    run(write(tmp_path, "batch_size = 64\n"), "--device=cpu")
    assert capsys.readouterr().out == ""
