"""
A fork server for the tests: one process per test worker imports torch, train and friends once, then
forks a child for each script a test runs (train.py, sample.py, python -c CODE, ...). A fresh
`python train.py` spends about 2.5 s importing torch and torch._dynamo (AdamW's step imports it);
a forked child starts with all of that loaded, so a tiny run costs its training only.

Protocol, one JSON line per request on stdin: {"argv", "cwd", "env", "stdout", "stderr"}.
The answer is two lines on stdout: "pid N" once the child runs, then "exit CODE" when it ends
(CODE as subprocess gives it: the exit status, or minus the signal that killed the child).
The child runs the script as `python ARGV...` would: as __main__, with sys.argv, sys.path[0], the
working directory and the environment set, stdin from /dev/null and stdout / stderr into the given
files. helpers.run_script is the client. The server exits when its stdin closes.
"""

import atexit
import json
import os
import runpy
import sys
import threading
import traceback

# what every script the tests run imports; nothing here may start a thread or run a kernel (the
# children get fresh OpenMP pools)
import numpy  # noqa: F401
import torch  # noqa: F401
import torch._dynamo  # noqa: F401  (AdamW's step and every meta-device op import it)
import yaml  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[0] = REPO
import checkpoint  # noqa: E402,F401
import configurator  # noqa: E402,F401
import model  # noqa: E402,F401
import train  # noqa: E402,F401


def exit_code(exc):
    """The status an interpreter exits with for a SystemExit, writing its message as it would."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def print_traceback(exc, script):
    """The traceback as the interpreter prints it: from the script's frame on, not this server's."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != script:
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb or exc.__traceback__)


def run_child(request):
    """In the forked child: become `python ARGV...` and never return."""
    os.chdir(request['cwd'])
    os.environ.clear()
    os.environ.update(request['env'])
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request['stdout'], os.O_WRONLY | os.O_TRUNC),
                            (2, request['stderr'], os.O_WRONLY | os.O_TRUNC)):
        os.dup2(os.open(path, flags), fd)
    argv = request['argv']
    # what the interpreter gives a script: __file__ absolute, sys.argv[0] as typed, sys.path[0] its folder
    script = '<string>' if argv[0] == '-c' else os.path.abspath(argv[0])
    sys.argv = ['-c'] + argv[2:] if argv[0] == '-c' else list(argv)
    sys.path[0] = '' if argv[0] == '-c' else os.path.dirname(script)
    code = 0
    try:
        if argv[0] == '-c':
            exec(compile(argv[1], script, 'exec'), {'__name__': '__main__', '__builtins__': __builtins__})
        else:
            runpy.run_path(script, run_name='__main__')
    except SystemExit as exc:
        code = exit_code(exc)
    except BaseException as exc:
        print_traceback(exc, script)
        code = 1
    for thread in threading.enumerate():  # as the interpreter does at exit: wait for non-daemon threads
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def serve():
    assert threading.active_count() == 1, "a thread before fork: the children would inherit a broken one"
    reply = os.fdopen(os.dup(1), 'w', buffering=1)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            reply.close()
            run_child(request)
        reply.write(f"pid {pid}\n")
        _, status = os.waitpid(pid, 0)
        reply.write(f"exit {os.waitstatus_to_exitcode(status)}\n")


if __name__ == '__main__':
    serve()
