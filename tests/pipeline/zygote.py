"""A process that has imported ``real-lightning`` once and forks each rank of a test launch from there.

A rank started as ``python -m real_lightning.cli`` spends ~4 s of its life importing torch, Lightning and
transformers before it reads its first argument; the multi-process tests start ~140 of them. The zygote imports
those modules once, then, for each request on its stdin (a JSON line: module, args, env, cwd, log file), forks a
child that starts a session of its own (so a test kills it with its process group, as before), sends its output to
the log file, takes the request's environment and working directory and runs the module as ``python -m`` does
(``runpy``, ``__main__``), then exits as the interpreter would: non-daemon threads joined, ``atexit`` handlers run,
streams flushed, the exit code of ``SystemExit`` (1 and a traceback for an uncaught exception).

What the zygote cannot give a child is an environment read at import time: the test side
(``tests/pipeline/launch.py``) sends a request only when the launch's environment, less the per-rank variables
(rank, world size, master address), equals the one the zygote was started with, and starts a fresh interpreter
otherwise. The zygote answers each request with ``{"pid": ...}`` and each child's end with
``{"exit": pid, "code": ...}`` (negative: killed by that signal), and exits when its stdin closes.

The zygote imports nothing that starts a thread (checked at start), so a fork copies a single-threaded process.
"""

from __future__ import annotations

import atexit
import contextlib
import faulthandler
import json
import os
import runpy
import selectors
import sys
import threading
import traceback

PRELOAD = (
    "real_lightning.cli",
    "tests.pipeline.collective_trace",
    "tests.pipeline.callbacks_for_tests",
    # imported by every rank later, at its first use (~0.35 s together); none starts a thread (pandas and pyarrow,
    # which the gradient-weight records import, do: they stay out)
    "torch.utils.tensorboard",
    "transformers.models.qwen2.modeling_qwen2",
    "peft",
)


def _exit_code(error: SystemExit) -> int:
    """The process exit code Python gives ``sys.exit(code)``."""
    if error.code is None:
        return 0
    if isinstance(error.code, int):
        return error.code & 0xFF
    print(error.code, file=sys.stderr)
    return 1


def _run_child(request: dict) -> None:
    """In the forked child: become the rank the request describes, run it, exit. Never returns."""
    code = 1
    try:
        os.setsid()
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        faulthandler.enable()
        sys.argv = [request["module"], *request["args"]]
        # `python -m` runs a module that nothing has imported yet: drop the preloaded copy (its imports stay cached), so
        # runpy runs it once, as __main__, instead of beside a second copy
        sys.modules.pop(request["module"], None)
        try:
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as error:
            code = _exit_code(error)
        except BaseException:  # uncaught: the traceback and exit code 1, as python gives
            traceback.print_exc()
            code = 1
        threading._shutdown()  # the interpreter's exit: join non-daemon threads, then atexit
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a closed stream at exit
                stream.flush()
        os._exit(code)


def _answer(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _reap(children: set[int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        _answer({"exit": pid, "code": os.waitstatus_to_exitcode(status)})


def main() -> None:
    for name in PRELOAD:
        __import__(name)
    tasks = "/proc/self/task"
    threads = len(os.listdir(tasks)) if os.path.isdir(tasks) else threading.active_count()
    if threads != 1:  # e.g. OpenBLAS's pool without OMP_NUM_THREADS=1: a fork would copy one thread of several
        raise SystemExit(f"the zygote has {threads} threads after its imports; it forks only a single-threaded process")
    _answer({"ready": os.getpid()})
    children: set[int] = set()
    selector = selectors.DefaultSelector()
    selector.register(sys.stdin, selectors.EVENT_READ)
    while True:
        ready = selector.select(timeout=0.1)
        _reap(children)
        if not ready:
            continue
        line = sys.stdin.readline()
        if not line:  # the test process is gone: leave the children to their process groups
            return
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            selector.close()
            _run_child(request)
        children.add(pid)
        _answer({"pid": pid})


if __name__ == "__main__":
    main()
