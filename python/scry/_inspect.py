"""``inspect``: what only the inside of a process can tell a stack dump.

``scry dump`` reads every stack from outside (py-spy's reader, no agent needed). When an agent
is connected the dump also asks it, through the ``call`` method ``inspect``, for:

- the Python name of every thread (``threading.Thread.name``, set in Python, which the outside
  reader sees only for some versions), keyed by the OS thread id;
- the asyncio tasks of every running event loop, each with its coroutine, its state, the chain
  of coroutines it is suspended in and what the innermost one awaits.

Runs on the link thread and only reads: no loop is touched, no task is woken, nothing is
imported that the program did not import (an asyncio-free program pays nothing for asyncio).
Bounded: at most ``max_tasks`` tasks per loop and ``max_depth`` frames per await chain.
"""

import gc
import sys
import threading

from . import _calls

MAX_TASKS = 1000
MAX_DEPTH = 30
MAX_TEXT = 200


def _short(text):
    text = str(text)
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "\u2026"


def _threads():
    main = threading.main_thread()
    out = []
    for t in threading.enumerate():
        out.append(
            {
                "ident": t.ident,
                "native_id": getattr(t, "native_id", None),
                "name": t.name,
                "daemon": t.daemon,
                "main": t is main,
            }
        )
    return out


def _loops(frames_by_ident):
    """Running event loops, found as ``self`` of a ``run_forever`` frame on some thread's stack
    (there is no registry of loops): ``[(loop, thread ident)]``."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return []
    base = getattr(getattr(asyncio, "base_events", None), "BaseEventLoop", None)
    if base is None:
        return []
    found = []
    seen = set()
    for ident, frame in frames_by_ident.items():
        f = frame
        while f is not None:
            if f.f_code.co_name in ("run_forever", "_run_once"):
                loop = f.f_locals.get("self")
                if isinstance(loop, base) and id(loop) not in seen:
                    seen.add(id(loop))
                    found.append((loop, ident))
                    break
            f = f.f_back
    return found


def _await_chain(coro):
    """The coroutines a task is suspended in, outermost first, and what the innermost awaits."""
    chain = []
    awaiting = None
    obj = coro
    for _ in range(MAX_DEPTH):
        frame = getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None) or getattr(
            obj, "ag_frame", None
        )
        code = getattr(obj, "cr_code", None) or getattr(obj, "gi_code", None) or getattr(
            obj, "ag_code", None
        )
        if code is not None:
            chain.append(
                {
                    "function": getattr(code, "co_qualname", code.co_name),
                    "file": code.co_filename,
                    "line": frame.f_lineno if frame is not None else code.co_firstlineno,
                }
            )
        nxt = getattr(obj, "cr_await", None)
        if nxt is None:
            nxt = getattr(obj, "gi_yieldfrom", None)
        if nxt is None:
            break
        if not (hasattr(nxt, "cr_frame") or hasattr(nxt, "gi_frame")):
            awaiting = nxt
            break
        obj = nxt
    return chain, awaiting


def _describe_awaited(obj, asyncio):
    if obj is None:
        return None
    if asyncio is not None and not isinstance(obj, asyncio.Future):
        # `await future` suspends in the future's C iterator (`FutureIter`, up to 3.11), which
        # does not expose its future; the garbage collector knows what it refers to.
        for ref in gc.get_referents(obj):
            if isinstance(ref, asyncio.Future):
                obj = ref
                break
    if asyncio is not None and isinstance(obj, asyncio.Task):
        return "task {}".format(_short(obj.get_name()))
    if asyncio is not None and isinstance(obj, asyncio.Future):
        return _short(repr(obj))
    return _short(type(obj).__name__)


def _tasks(loop, asyncio):
    try:
        tasks = list(asyncio.all_tasks(loop))
    except Exception:  # a set changing size while the loop runs: one retry
        try:
            tasks = list(asyncio.all_tasks(loop))
        except Exception as exc:
            return [], "could not list the tasks: {!r}".format(exc)
    out = []
    for task in tasks[:MAX_TASKS]:
        try:
            coro = task.get_coro()
            chain, awaiting = _await_chain(coro)
            if task.done():
                state = "cancelled" if task.cancelled() else "done"
            else:
                state = "pending"
            out.append(
                {
                    "name": _short(task.get_name()),
                    "coro": getattr(coro, "__qualname__", type(coro).__name__),
                    "state": state,
                    "awaiting": _describe_awaited(awaiting, asyncio),
                    "stack": chain,
                }
            )
        except Exception as exc:
            out.append({"name": "?", "coro": "?", "state": "unreadable", "error": repr(exc)})
    note = None
    if len(tasks) > MAX_TASKS:
        note = "{} more tasks not shown".format(len(tasks) - MAX_TASKS)
    return out, note


@_calls.method("inspect")
def inspect(params, call):
    """Threads with their Python names; asyncio tasks per running loop."""
    frames = sys._current_frames()
    natives = {t.ident: getattr(t, "native_id", None) for t in threading.enumerate()}
    asyncio = sys.modules.get("asyncio")
    loops = []
    for loop, ident in _loops(frames):
        tasks, note = _tasks(loop, asyncio)
        loops.append(
            {
                "thread_ident": ident,
                "thread_native_id": natives.get(ident),
                "tasks": tasks,
                "note": note,
            }
        )
    del frames
    return {"threads": _threads(), "asyncio": loops}
