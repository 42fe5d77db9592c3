"""Start a ``spawn``/``forkserver`` worker without re-running the program's main module in it.

A process started by ``spawn`` or ``forkserver`` first re-imports the parent's ``__main__`` (as ``__mp_main__``), so
that objects defined there unpickle. When the program is ``real-lightning`` (or ``python -m real_lightning.cli``),
that is the CLI module: Lightning, torch, transformers, ~4 s of CPU and a few hundred MB in every verifier worker,
at every start and every replacement after a timeout, for workers that only grade strings. (Python 3.11's fork
server does not do that import once for its children either: it asks for a ``main_path`` the preparation data
never holds.)

:func:`without_main_module` suppresses that step for the processes the calling thread starts inside it: their
preparation data (``multiprocessing.spawn.get_preparation_data``, called by both start methods in the starting
thread) loses its ``init_main_from_name`` / ``init_main_from_path`` entries. The hook is installed once and acts
only in a thread inside the context, so process starts elsewhere keep the standard behaviour. A worker that will
run a function defined in ``__main__``, or receive an object that refers to one (:func:`refers_to_main`), is started
outside the block.
"""

from __future__ import annotations

import logging
import pickle
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing import spawn
from typing import Any

_MAIN_KEYS = ("init_main_from_name", "init_main_from_path")
#: What a script's objects give as ``__module__``: ``__main__``, or ``__mp_main__`` in a process that was itself
#: started by re-running it (a spawned worker, a ``ddp_spawn`` rank).
MAIN_NAMES = frozenset({"__main__", "__mp_main__"})
log = logging.getLogger(__name__)
_state = threading.local()
_install_lock = threading.Lock()
_original: Callable[[str], dict[str, Any]] | None = None


def _preparation_data(name: str) -> dict[str, Any]:
    data = _original(name)
    if getattr(_state, "depth", 0):
        for key in _MAIN_KEYS:
            data.pop(key, None)
    return data


def _install() -> None:
    global _original
    with _install_lock:
        if _original is None:
            _original = spawn.get_preparation_data
            spawn.get_preparation_data = _preparation_data


@contextmanager
def without_main_module() -> Iterator[None]:
    """Processes that this thread starts (``spawn`` or ``forkserver``) inside the block skip the re-import of
    ``__main__``."""
    _install()
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1


class _Discard:
    def write(self, data: bytes) -> int:
        return len(data)


class _MainFinder(pickle.Pickler):
    """Pickles into nothing (the bytes are discarded), noting whether any class, function or instance on the way
    belongs to ``__main__``."""

    found = False

    def reducer_override(self, obj: Any) -> Any:
        if getattr(obj, "__module__", None) in MAIN_NAMES or getattr(type(obj), "__module__", None) in MAIN_NAMES:
            self.found = True
        return NotImplemented


def refers_to_main(obj: Any) -> bool:
    """Whether unpickling ``obj`` needs ``__main__`` (some class, function or instance in it was defined there);
    True where plain pickle cannot tell (an object only a special pickler handles)."""
    finder = _MainFinder(_Discard(), protocol=pickle.HIGHEST_PROTOCOL)
    try:
        finder.dump(obj)
    except Exception as error:
        log.debug("cannot tell whether %s refers to __main__ (%s): assuming it does", type(obj).__name__, error)
        return True
    return finder.found
