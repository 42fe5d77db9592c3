"""Time-bounded calls: a SIGALRM timer on the main thread, killable worker processes anywhere else.

A verifier call is bounded by ``timeout_s`` seconds of wall-clock time whichever thread or process makes it:

* on the main thread of a process, :func:`run_with_alarm` arms ``ITIMER_REAL`` and its handler raises inside the
  callee (restoring any previous handler and timer afterwards);
* off the main thread, :func:`run_bounded` sends the call to a persistent worker process owned by the calling
  thread and kills and replaces that worker when it overruns;
* :class:`WorkerPool` spreads many calls over several such workers, each call keeping its own budget.

A caller may also pass ``cut``, a function polled about every :data:`POLL_S` seconds while a call runs (in the
SIGALRM handler, or between waits on the workers): when it returns a reason (a batch budget ran out, a stop was
requested), the calls not finished end at once as ``Outcome("timeout", cut=reason)`` and busy workers are killed.
Workers die with the process that started them, even when it is killed: see :func:`_die_with_owner`.

Workers come from the ``forkserver`` start method where the platform has it (else ``spawn``), never from a bare
``fork`` of a possibly multi-threaded parent. As with any ``spawn``/``forkserver`` pool, a script that calls them must
guard its entry point with ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing as mp
import os
import pickle
import signal
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from real_lightning.utils.main_module import refers_to_main, without_main_module

log = logging.getLogger(__name__)

#: After the first SIGALRM the timer re-fires every this many seconds, in case the callee swallowed the exception.
_REFIRE_S = 0.05
#: Seconds a worker may take to start (import its modules) before the pool gives up on it.
START_TIMEOUT_S = 120.0
#: How often a caller's ``cut`` function is polled while calls run.
POLL_S = 0.05


@dataclass(frozen=True)
class Outcome:
    """Result of one time-bounded call.

    Attributes:
        status: ``"ok"``, ``"timeout"`` or ``"error"``.
        value: the callee's return value when ``status == "ok"``, else ``None``.
        error: ``"ExceptionType: message"`` when ``status == "error"``, else ``None``.
        cut: for a ``"timeout"`` that the caller's ``cut`` function caused (not the call's own budget), its reason.
    """

    status: str
    value: Any = None
    error: str | None = None
    cut: str | None = None


class _AlarmTimeout(BaseException):
    """Raised by the SIGALRM handler; a ``BaseException`` so that a callee's ``except Exception`` cannot swallow it.

    Its argument is the caller's cut reason, or ``None`` when the call's own budget ran out.
    """


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def signals_usable() -> bool:
    """Whether :func:`run_with_alarm` can be used here (POSIX, main thread, a Python-visible SIGALRM handler)."""
    return (
        hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGALRM) is not None
    )


def run_with_alarm(
    fn: Callable[..., Any], args: Sequence[Any], timeout_s: float, *, cut: Callable[[], str | None] | None = None
) -> Outcome:
    """Call ``fn(*args)`` on the main thread, interrupting it after ``timeout_s`` seconds with SIGALRM.

    The previous SIGALRM handler and ``ITIMER_REAL`` timer are restored afterwards (a previous timer keeps its
    remaining time). Code stuck inside one long C call is interrupted only when that call returns.

    Args:
        fn: the callable; its exceptions become ``Outcome("error")``.
        args: positional arguments.
        timeout_s: budget in seconds (> 0).
        cut: polled every :data:`POLL_S` seconds (from the SIGALRM handler, so it must be quick and take no
            locks); a reason it returns interrupts the call as ``Outcome("timeout", cut=reason)``.

    Returns:
        The :class:`Outcome`.

    Raises:
        ValueError: if called off the main thread (use :func:`run_bounded`).
    """
    active = True
    start = time.monotonic()
    deadline = start + timeout_s

    def on_alarm(signum: int, frame: object) -> None:
        if not active:
            return
        if cut is None or time.monotonic() >= deadline:
            raise _AlarmTimeout(None)
        reason = cut() if cut is not None else None
        if reason is not None:
            raise _AlarmTimeout(reason)

    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    first = timeout_s if cut is None else min(timeout_s, POLL_S)
    previous_delay, previous_interval = signal.setitimer(signal.ITIMER_REAL, first, min(_REFIRE_S, POLL_S))
    try:
        try:
            value = fn(*args)
        finally:
            active = False
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _AlarmTimeout as timeout:
        return Outcome("timeout", cut=timeout.args[0] if timeout.args else None)
    except Exception as exc:
        return Outcome("error", error=_describe(exc))
    finally:
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_delay > 0:
            remaining = previous_delay - (time.monotonic() - start)
            signal.setitimer(signal.ITIMER_REAL, max(remaining, 1e-6), previous_interval)
    return Outcome("ok", value)


def can_start_processes() -> bool:
    """Whether this process may start worker processes (daemonic processes, e.g. ``multiprocessing.Pool`` workers,
    may not)."""
    return not mp.current_process().daemon


def loadable_in_worker(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` pickles by reference in a way a fresh worker process can load (module-level, not a lambda or a
    closure, not defined in an interactive ``__main__``)."""
    if getattr(fn, "__module__", None) == "__main__" and not hasattr(sys.modules["__main__"], "__file__"):
        return False
    try:
        pickle.dumps(fn)
    except Exception:
        return False
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _die_with_owner(owner_pid: int, via_forkserver: bool) -> None:
    """End this worker when the process that started it dies, even abruptly and in the middle of a call.

    A daemon thread exits the worker once the owner is gone (it needs the GIL: a call stuck in one C call ends
    first). A fork-server worker also gives up its copy of the fork server's liveness pipe, so that the fork server
    exits with the owner (once no other child of it holds one), and on Linux asks the kernel to kill it when its
    parent, the single-threaded fork server, exits (``PR_SET_PDEATHSIG``), which no C call can delay.
    """
    if via_forkserver:
        from multiprocessing import forkserver

        server = getattr(forkserver, "_forkserver", None)
        alive_fd = getattr(server, "_forkserver_alive_fd", None)
        if alive_fd is not None:
            with contextlib.suppress(OSError):
                os.close(alive_fd)
            server._forkserver_alive_fd = None
        if sys.platform.startswith("linux"):
            parent = os.getppid()
            try:
                import ctypes

                requested = ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0) == 0  # PDEATHSIG
                if requested and os.getppid() != parent:  # it exited before the request took effect
                    os._exit(1)
            except (OSError, AttributeError):
                pass

    def watch() -> None:
        while _pid_alive(owner_pid):
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="real-lightning-verifier-watch").start()


def _worker_main(conn: Connection, preload: tuple[str, ...], owner_pid: int, via_forkserver: bool) -> None:
    """Worker loop: receive ``(pickled fn, args, timeout_s)``, run it under SIGALRM, send back an :class:`Outcome`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and kills its workers
    _die_with_owner(owner_pid, via_forkserver)
    for name in preload:
        importlib.import_module(name)
    functions: dict[bytes, Callable[..., Any]] = {}
    try:
        conn.send("ready")
        while (message := conn.recv()) is not None:
            conn.send(_serve(message, functions))
    except (EOFError, OSError):  # the parent went away
        return


def _serve(message: tuple[bytes, tuple[Any, ...], float], functions: dict[bytes, Callable[..., Any]]) -> Outcome:
    """Run one call of a worker; a result that cannot be pickled becomes an error."""
    fn_bytes, args, timeout_s = message
    try:
        fn = functions.get(fn_bytes) or functions.setdefault(fn_bytes, pickle.loads(fn_bytes))
    except Exception as exc:
        return Outcome("error", error=f"the worker cannot load the function: {_describe(exc)}")
    outcome = run_with_alarm(fn, args, timeout_s)
    try:
        pickle.dumps(outcome)
    except Exception as exc:
        return Outcome("error", error=f"the result cannot be sent back: {_describe(exc)}")
    return outcome


_forkserver_pid: int | None = None  # the process that first used the fork server


def _context(preload: tuple[str, ...]) -> mp.context.BaseContext:
    """The ``forkserver`` context (its server preloading ``preload``) where available, else ``spawn``.

    A process forked from one that started the fork server cannot use that server (CPython keeps the parent's), so
    it gets ``spawn``.
    """
    global _forkserver_pid
    if "forkserver" not in mp.get_all_start_methods() or _forkserver_pid not in (None, os.getpid()):
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    if _forkserver_pid is None:
        _forkserver_pid = os.getpid()
        # Takes effect only if the (process-wide) fork server has not started yet; keeps what was asked before.
        from multiprocessing import forkserver

        current = list(getattr(getattr(forkserver, "_forkserver", None), "_preload_modules", None) or ["__main__"])
        ctx.set_forkserver_preload(current + [name for name in preload if name not in current])
    return ctx


class _Worker:
    """One worker process and the parent's end of its pipe; ``with_main``: it re-runs the program's ``__main__``
    (needed only for calls that refer to something defined there; see :mod:`real_lightning.utils.main_module`)."""

    def __init__(self, preload: tuple[str, ...], with_main: bool = False) -> None:
        ctx = _context(preload)
        self.conn, child_conn = ctx.Pipe(duplex=True)
        self.process = ctx.Process(
            target=_worker_main,
            args=(child_conn, preload, os.getpid(), ctx.get_start_method() == "forkserver"),
            daemon=True,
            name="real-lightning-verifier",
        )
        with contextlib.nullcontext() if with_main else without_main_module():
            self.process.start()
        child_conn.close()
        self.started_at = time.monotonic()
        self.ready = False
        self.task: int | None = None
        self.deadline = 0.0

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.conn.close()


def _kill_all(workers: list[_Worker], owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # a forked child must not touch its parent's workers
        for worker in workers:
            worker.kill()
    workers.clear()


class WorkerPool:
    """Persistent worker processes that run calls under a per-call time budget.

    A worker that overruns its budget (plus a short grace period in which it can stop itself with SIGALRM) is
    killed and replaced; one that dies gives that call ``Outcome("error")``. Workers start lazily and persist
    between :meth:`map` calls; one pool must not be used by two threads at once.

    Args:
        num_workers: maximum number of worker processes (≥ 1).
        preload: modules every worker imports before it takes work (also preloaded in the fork server).
    """

    def __init__(self, num_workers: int, preload: Sequence[str] = ()) -> None:
        self.num_workers = max(1, int(num_workers))
        self.preload = tuple(preload)
        self._start()

    def _start(self) -> None:
        self._pid = os.getpid()
        self._workers: list[_Worker] = []
        self._with_main = False  # set once a call refers to __main__ (its function or its arguments)
        self._finalizer = weakref.finalize(self, _kill_all, self._workers, self._pid)

    def close(self) -> None:
        """Kill all workers."""
        self._finalizer()

    def map(
        self,
        fn: Callable[..., Any],
        args_list: Sequence[Sequence[Any]],
        timeout_s: float,
        *,
        cut: Callable[[], str | None] | None = None,
        progress: Callable[[Outcome | None], None] | None = None,
    ) -> list[Outcome]:
        """Run ``fn(*args)`` for every ``args`` of ``args_list`` across the workers.

        Args:
            fn: a callable that pickles by reference (see :func:`loadable_in_worker`).
            args_list: one tuple of picklable arguments per call.
            timeout_s: budget of each call, in seconds.
            cut: polled every :data:`POLL_S` seconds; once it returns a reason, every call not finished gets
                ``Outcome("timeout", cut=reason)``, the busy workers are killed (replaced on the next use) and the
                map returns.
            progress: called with each finished call's :class:`Outcome` and with ``None`` at every poll.

        Returns:
            One :class:`Outcome` per call, in input order.

        Raises:
            RuntimeError: if a worker process cannot start.
        """
        if os.getpid() != self._pid:  # inherited through fork: the workers belong to the parent
            self._finalizer.detach()
            self._start()
        fn_bytes = pickle.dumps(fn)
        # workers that can load the function and its arguments: started with __main__ if they refer to it
        if not self._with_main and refers_to_main((fn, list(args_list))):
            self._with_main = True
            _kill_all(self._workers, self._pid)
        grace_s = max(0.5, 0.1 * timeout_s)
        results: list[Outcome | None] = [None] * len(args_list)
        queue = deque(range(len(args_list)))
        workers = self._workers
        while len(workers) < min(self.num_workers, len(args_list)):
            workers.append(_Worker(self.preload, self._with_main))
        try:
            while queue or any(w.task is not None for w in workers):
                reason = cut() if cut is not None else None
                if reason is not None:
                    cut_tasks = list(queue)
                    queue.clear()
                    for worker in list(workers):
                        if worker.task is not None:
                            cut_tasks.append(worker.task)
                            worker.task = None
                            self._replace(worker, restart=False)
                    for task in sorted(cut_tasks):
                        results[task] = Outcome("timeout", cut=reason)
                        if progress is not None:
                            progress(results[task])
                    break
                now = time.monotonic()
                for worker in workers:
                    if worker.ready and worker.task is None and queue:
                        worker.task = queue.popleft()
                        worker.deadline = now + timeout_s + grace_s
                        try:
                            worker.conn.send((fn_bytes, tuple(args_list[worker.task]), timeout_s))
                        except OSError:  # it died while idle: retry the call on its replacement
                            queue.appendleft(worker.task)
                            worker.task = None
                            self._replace(worker)
                waiting = [w for w in workers if w.task is not None or not w.ready]
                deadlines = [w.deadline if w.ready else w.started_at + START_TIMEOUT_S for w in waiting]
                if cut is not None or progress is not None:
                    deadlines.append(time.monotonic() + POLL_S)
                ready_conns = wait([w.conn for w in waiting], timeout=max(0.0, min(deadlines) - time.monotonic()))
                finished: list[int] = []
                for worker in [w for w in waiting if w.conn in ready_conns]:
                    try:
                        message = worker.conn.recv()
                    except (EOFError, OSError):
                        message = None
                    if message == "ready":
                        worker.ready = True
                    elif isinstance(message, Outcome):
                        results[worker.task] = message
                        finished.append(worker.task)
                        worker.task = None
                    elif not worker.ready:
                        self._replace(worker, restart=False)
                        raise RuntimeError(
                            f"a verifier worker process exited while starting (exit code {worker.process.exitcode})"
                        )
                    else:
                        results[worker.task] = Outcome(
                            "error", error=f"the worker process died (exit code {worker.process.exitcode})"
                        )
                        finished.append(worker.task)
                        self._replace(worker)
                now = time.monotonic()
                for worker in list(workers):
                    if worker.task is not None and now > worker.deadline:
                        results[worker.task] = Outcome("timeout")
                        finished.append(worker.task)
                        self._replace(worker)
                    elif not worker.ready and now > worker.started_at + START_TIMEOUT_S:
                        self._replace(worker, restart=False)
                        raise RuntimeError(f"a verifier worker process did not start within {START_TIMEOUT_S:.0f} s")
                if progress is not None:
                    for task in finished:
                        progress(results[task])
                    progress(None)
        finally:
            for worker in list(workers):
                if worker.task is not None:  # interrupted mid-batch: its result would arrive stale
                    self._replace(worker, restart=False)
        return [r if r is not None else Outcome("error", error="no result") for r in results]

    def _replace(self, worker: _Worker, *, restart: bool = True) -> None:
        worker.kill()
        index = self._workers.index(worker)
        if restart:
            self._workers[index] = _Worker(self.preload, self._with_main)
        else:
            del self._workers[index]


_local = threading.local()
_thread_fallback_warned = False


def _thread_pool(preload: tuple[str, ...]) -> WorkerPool:
    pools: dict[tuple[str, ...], WorkerPool] = _local.__dict__.setdefault("pools", {})
    if preload not in pools:
        pools[preload] = WorkerPool(1, preload)
    return pools[preload]


def _run_in_thread(fn: Callable[..., Any], args: Sequence[Any], timeout_s: float) -> Outcome:
    """Last resort when neither signals nor worker processes are available: a daemon thread that is abandoned (not
    killed) if it overruns."""
    global _thread_fallback_warned
    box: list[Outcome] = []

    def target() -> None:
        try:
            box.append(Outcome("ok", fn(*args)))
        except Exception as exc:
            box.append(Outcome("error", error=_describe(exc)))

    thread = threading.Thread(target=target, daemon=True, name="real-lightning-verifier")
    thread.start()
    thread.join(timeout_s)
    if box:
        return box[0]
    if not _thread_fallback_warned:
        _thread_fallback_warned = True
        log.warning(
            "a verifier call overran its %.3g s budget in a thread that cannot be killed; abandoning it", timeout_s
        )
    return Outcome("timeout")


def run_bounded(
    fn: Callable[..., Any],
    args: Sequence[Any],
    *,
    timeout_s: float,
    preload: Sequence[str] = (),
    cut: Callable[[], str | None] | None = None,
) -> Outcome:
    """Call ``fn(*args)`` within ``timeout_s`` seconds from any thread.

    On the main thread it runs in-process under :func:`run_with_alarm`. Elsewhere it runs in a persistent worker
    process owned by the calling thread (killed and restarted on overrun), or, where no worker process can be
    started or ``fn`` cannot be sent to one, in an abandoned-on-overrun daemon thread.

    Args:
        fn: the callable; its exceptions become ``Outcome("error")``.
        args: positional arguments (picklable when a worker process is used).
        timeout_s: budget in seconds (> 0).
        preload: modules the worker imports before its first call.
        cut: a caller's reason to end the call early (see :meth:`WorkerPool.map`); checked before the call only in
            the last-resort thread.

    Returns:
        The :class:`Outcome`.
    """
    if signals_usable():
        try:
            return run_with_alarm(fn, args, timeout_s, cut=cut)
        except ValueError:  # e.g. a sub-interpreter: signals cannot be installed here
            pass
    if can_start_processes() and loadable_in_worker(fn):
        return _thread_pool(tuple(preload)).map(fn, [args], timeout_s, cut=cut)[0]
    reason = cut() if cut is not None else None
    if reason is not None:
        return Outcome("timeout", cut=reason)
    return _run_in_thread(fn, args, timeout_s)
