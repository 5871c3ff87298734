"""Debugger REPLs relayed to one terminal: ``scry.pause()``, ``scry.post_mortem()``,
``scry.crash_handler()``, and what ``scry run`` loads into every process of its tree.

A REPL is a :class:`pdb.Pdb` whose stdin and stdout are a :class:`_Relay`: what pdb writes goes
to the daemon as ``notify repl.output`` / ``repl.prompt``; the lines typed in ``scry run``'s
terminal come back as ``notify repl.input``. Before pdb talks, the relay asks the daemon for the
terminal (``repl.request``) and waits for ``repl.grant``: the daemon keeps one FIFO queue per
session, so REPLs of any number of processes and threads take turns. ``continue`` and ``quit``
give the terminal back (``repl.release``); ``quit`` also detaches the debugger so that the
process runs on. A process whose agent cannot reach a session (no ``scry run``, no daemon)
falls back to a plain local pdb on its own terminal.

Not for: anything on a hot path. Nothing here runs unless a pause or a crash happens, except the
crash hooks that ``scry run --debug`` installs (they run only when an exception is uncaught).
"""

import logging
import os
import pdb
import collections
import sys
import threading
import uuid

from . import _calls, _state

log = logging.getLogger("scry")

#: Environment set by ``scry run`` for every process of its tree.
ENV_SESSION = "SCRY_RUN_SESSION"
ENV_DEBUG = "SCRY_RUN_DEBUG"
ENV_DEBUG_FILTER = "SCRY_RUN_DEBUG_FILTER"

#: Exceptions that never open a crash REPL (by class name anywhere in the MRO).
DEFAULT_IGNORED = ("KeyboardInterrupt", "SystemExit", "CancelledError", "BdbQuit", "GeneratorExit")

_INTERRUPT = object()
_CANCEL = object()

_relays = {}  # repl id -> _Relay
_relays_lock = threading.Lock()
_debuggers = {}  # thread ident -> _RelayPdb (repeated pauses of one thread reuse it)
_break_session = [None]  # the session of a `scry repl PID` that asked us to break in
_run_mode = [False]


# -- public API ------------------------------------------------------------------------------


def pause(frame=None):
    """Stop here in a debugger (what ``breakpoint()`` calls under ``scry run``).

    In a ``scry run`` tree (or after ``scry repl PID``) the REPL opens in that terminal when it
    is this process's turn; elsewhere it is a plain pdb on this process's own terminal.
    """
    if frame is None:
        frame = sys._getframe(1)
    session = _session()
    if session is None or _link() is None:
        pdb.Pdb().set_trace(frame)
        return
    debugger = _debugger_for_thread(session, "breakpoint")
    debugger.set_trace(frame)


def post_mortem(tb=None):
    """A post-mortem REPL on ``tb`` (default: the exception being handled).

    Relayed to ``scry run``'s terminal when in a session, else a local pdb.
    """
    if tb is None:
        exc = sys.exc_info()[1]
        tb = exc.__traceback__ if exc is not None else None
    if tb is None:
        raise ValueError("scry.post_mortem() needs a traceback or an exception being handled")
    session = _session()
    if session is None or _link() is None:
        pdb.post_mortem(tb)
        return
    _relay_post_mortem(session, tb, exc_text=None)


class crash_handler(object):
    """``with scry.crash_handler(ignore=(MyError,)):`` opens a post-mortem REPL on an exception
    leaving the block (relayed in a session, local otherwise), then lets it propagate.

    ``ignore`` holds exception classes (or class names) that never open a REPL; KeyboardInterrupt,
    SystemExit and asyncio cancellation are always ignored.
    """

    def __init__(self, ignore=()):
        if isinstance(ignore, (type, str)):
            ignore = (ignore,)
        self.ignore = tuple(ignore)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is not None and not _ignored(exc, self.ignore):
            try:
                post_mortem(tb)
            except Exception as err:
                log.warning("scry: crash REPL failed: %r", err)
        return False


# -- sessions and the link -------------------------------------------------------------------


def _session():
    return os.environ.get(ENV_SESSION) or _break_session[0]


def _link():
    """The awake agent's link, waking it first in a ``scry run`` tree (e.g. after a fork)."""
    agent = _state._agent
    link = agent.link
    if link is not None and link.connected:
        return link
    if _run_mode[0] and agent.state != _state.AWAKE:
        try:
            _start_agent()
        except Exception as err:
            log.warning("scry: cannot connect to the daemon for a REPL: %r", err)
            return None
        link = _state._agent.link
        if link is not None and link.connected:
            return link
    return None


def _start_agent():
    if _state._agent.state == _state.UNINITIALISED:
        _state.init(start_state="awake")
    else:
        _state.wake()


def _process_name():
    mp = sys.modules.get("multiprocessing")
    if mp is not None:
        try:
            name = mp.current_process().name
            if name and name != "MainProcess":
                return name
        except Exception:
            pass
    config = _state._agent.config
    if config is not None and config.name:
        return config.name
    argv = getattr(sys, "argv", None) or [""]
    return os.path.basename(argv[0] or sys.executable or "python")


# -- the relay -------------------------------------------------------------------------------


class _Relay(object):
    """pdb's stdin and stdout, carried over the agent link; one per debugger (thread)."""

    def __init__(self, session, kind):
        self.id = uuid.uuid4().hex[:12]
        self.session = session
        self.kind = kind
        # Lines typed in the terminal; `reading` says whether pdb waits for one (under `lock`).
        self.inbox = collections.deque()
        self.lock = threading.Condition()
        self.reading = False
        self.cancel_next_line = False
        self.granted = threading.Event()
        self.cancelled = False
        self.holding = False
        self.thread_ident = threading.get_ident()
        self.debugger = None
        self._out = []
        with _relays_lock:
            _relays[self.id] = self

    # file-like side, used by pdb
    def write(self, text):
        if not self.holding:
            return len(text)
        self._out.append(text)
        if "\n" in text:
            self._flush_lines()
        return len(text)

    def flush(self):
        pass

    def isatty(self):
        return False

    @property
    def encoding(self):
        return "utf-8"

    def _flush_lines(self):
        text = "".join(self._out)
        cut = text.rfind("\n") + 1
        self._out = [text[cut:]] if cut < len(text) else []
        if cut:
            self._notify("repl.output", {"text": text[:cut]})

    def readline(self):
        text = "".join(self._out)
        self._out = []
        prompt = self.debugger.prompt if self.debugger is not None else ""
        if prompt and text.endswith(prompt):
            text = text[: -len(prompt)]
        if text:
            self._notify("repl.output", {"text": text})
        self._notify("repl.prompt", {"prompt": prompt})
        item = None
        cancel = False
        try:
            while item is None:
                with self.lock:
                    self.reading = True
                    if not self.inbox:
                        self.lock.wait(1.0)
                    if self.inbox:
                        # Taking the line and leaving `reading` is one step for interrupt().
                        item = self.inbox.popleft()
                        self.reading = False
                        cancel = self.cancel_next_line
                        self.cancel_next_line = False
                if item is None and _link() is None:
                    item = _CANCEL  # the daemon went away: let the program run on
        finally:
            self.reading = False
        if cancel and isinstance(item, str):
            raise KeyboardInterrupt  # ctrl-c came before the command could start
        if item is _INTERRUPT:
            raise KeyboardInterrupt
        if item is _CANCEL:
            self.cancelled = True
            return "quit\n"
        return item + "\n"

    # the terminal
    def _notify(self, topic, data):
        link = _link()
        if link is None:
            return False
        data = dict(data)
        data["repl"] = self.id
        data["session"] = self.session
        return link.notify(topic, data)

    def acquire(self, frame, exc_text=None):
        """Waits for this process's turn at the terminal; False if there is no terminal."""
        if self.holding:
            return True
        if self.cancelled:
            return False
        thread = threading.current_thread()
        where = ""
        if frame is not None:
            where = "{}:{} in {}".format(
                frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name
            )
        self.granted.clear()
        sent = self._notify(
            "repl.request",
            {
                "pid": os.getpid(),
                "name": _process_name(),
                "thread": thread.name,
                "tid": threading.get_ident(),
                "kind": self.kind,
                "where": where,
                "exception": exc_text,
            },
        )
        if not sent:
            return False
        while not self.granted.wait(1.0):
            if self.cancelled or _link() is None:
                return False
        if self.cancelled:
            return False
        self.holding = True
        return True

    def release(self):
        if not self.holding:
            return
        text = "".join(self._out)
        self._out = []
        if text:
            self._notify("repl.output", {"text": text})
        self.holding = False
        self._notify("repl.release", {})

    def put(self, item):
        with self.lock:
            self.inbox.append(item)
            self.lock.notify()

    def interrupt(self):
        """ctrl-c in the terminal: a fresh prompt when pdb waits for a line, else a
        KeyboardInterrupt in the command it runs."""
        with self.lock:
            if self.reading:
                if self.inbox:
                    self.cancel_next_line = True
                else:
                    self.inbox.append(_INTERRUPT)
                    self.lock.notify()
                return
        _interrupt_thread(self.thread_ident)

    def close(self):
        self.release()
        with _relays_lock:
            _relays.pop(self.id, None)


class _RelayPdb(pdb.Pdb):
    """pdb talking through a relay; takes the terminal at each stop, gives it back on
    continue, detaches on quit."""

    def __init__(self, relay):
        pdb.Pdb.__init__(self, stdin=relay, stdout=relay, nosigint=True, readrc=False)
        self.use_rawinput = False
        self.relay = relay
        relay.debugger = self
        self.prompt = "(Pdb {} pid {}) ".format(_process_name(), os.getpid())
        self.exc_text = None

    def interaction(self, frame, tb_or_exc):
        if not self.relay.acquire(frame or _tb_frame(tb_or_exc), self.exc_text):
            self._detach()
            return
        if self.exc_text:
            self.message(self.exc_text.rstrip("\n"))
        try:
            pdb.Pdb.interaction(self, frame, tb_or_exc)
        finally:
            if self.relay.cancelled:
                self._detach()

    def set_continue(self):
        pdb.Pdb.set_continue(self)
        self.relay.release()

    def _detach(self):
        self.clear_all_breaks()
        try:
            pdb.Pdb.set_continue(self)
        except Exception:
            pass
        sys.settrace(None)
        self.relay.release()

    def do_quit(self, arg):
        """q(uit) | exit: detach the debugger; the program runs on (it is not killed)."""
        self.message("scry: debugger detached; the process runs on")
        self._detach()
        return 1

    do_q = do_exit = do_quit

    def do_EOF(self, arg):
        self.message("")
        return self.do_quit(arg)


def _tb_frame(tb_or_exc):
    tb = getattr(tb_or_exc, "__traceback__", tb_or_exc)
    frame = None
    while tb is not None:
        frame = tb.tb_frame
        tb = tb.tb_next
    return frame


def _debugger_for_thread(session, kind):
    ident = threading.get_ident()
    debugger = _debuggers.get(ident)
    if debugger is None or debugger.relay.cancelled or debugger.relay.session != session:
        debugger = _RelayPdb(_Relay(session, kind))
        _debuggers[ident] = debugger
    return debugger


def _relay_post_mortem(session, tb, exc_text):
    relay = _Relay(session, "post_mortem")
    debugger = _RelayPdb(relay)
    debugger.exc_text = exc_text
    try:
        debugger.reset()
        debugger.interaction(None, tb)
    finally:
        relay.close()


# scry's own package: its frames (the wrapper that catches a worker's exception) are not the
# user's, so post-mortem tracebacks and REPLs start below them.
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _user_tb(tb):
    """``tb`` without its outermost frames that are scry's own (all of it if nothing else)."""
    first = tb
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        tb = tb.tb_next
    return tb if tb is not None else first


def _format_exc(exc, tb=None):
    import traceback

    tb = _user_tb(tb if tb is not None else exc.__traceback__)
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _ignored(exc, extra=()):
    names = set(DEFAULT_IGNORED)
    for item in extra:
        if isinstance(item, type):
            if isinstance(exc, item):
                return True
        else:
            names.add(str(item))
    for cls in type(exc).__mro__:
        if cls.__name__ in names or "{}.{}".format(cls.__module__, cls.__qualname__) in names:
            return True
    return False


def _crash(exc, tb=None):
    """Opens a crash REPL for ``exc`` if this is a ``scry run --debug`` tree and not filtered."""
    if not _debug_on() or _ignored(exc, _debug_filter()):
        return
    session = _session()
    if session is None or _link() is None:
        return
    # Once per exception and process (the attribute travels with a pickled exception to the
    # parent, whose own REPL must still open).
    if getattr(exc, "_scry_crash_seen", None) == os.getpid():
        return
    try:
        exc._scry_crash_seen = os.getpid()
    except Exception:
        pass
    try:
        tb = _user_tb(tb or exc.__traceback__)
        _relay_post_mortem(session, tb, _format_exc(exc, tb))
    except Exception as err:
        log.warning("scry: crash REPL failed: %r", err)


def _debug_on():
    return os.environ.get(ENV_DEBUG) == "1"


def _debug_filter():
    text = os.environ.get(ENV_DEBUG_FILTER) or ""
    return tuple(n.strip() for n in text.split(",") if n.strip())


# -- daemon -> agent ---------------------------------------------------------------------------


def _relay_of(data):
    if not isinstance(data, dict):
        return None
    with _relays_lock:
        return _relays.get(data.get("repl"))


@_calls.topic("repl.grant")
def _on_grant(data, link):
    relay = _relay_of(data)
    if relay is not None:
        relay.granted.set()


@_calls.topic("repl.input")
def _on_input(data, link):
    relay = _relay_of(data)
    line = data.get("line") if isinstance(data, dict) else None
    if relay is not None and isinstance(line, str):
        relay.put(line.replace("\n", " "))


@_calls.topic("repl.cancel")
def _on_cancel(data, link):
    relay = _relay_of(data)
    if relay is not None:
        relay.cancelled = True
        relay.put(_CANCEL)
        relay.granted.set()


@_calls.topic("repl.interrupt")
def _on_interrupt(data, link):
    relay = _relay_of(data)
    if relay is None or not relay.holding:
        return
    relay.interrupt()


def _interrupt_thread(ident):
    """KeyboardInterrupt in the REPL's thread, which is running a command."""
    import signal

    main = threading.main_thread().ident
    if ident == main and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        # A signal also interrupts a blocking call (time.sleep, a lock) in the main thread.
        signal.pthread_kill(main, signal.SIGINT)
        return
    import ctypes

    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(KeyboardInterrupt)
    )


@_calls.method("repl.complete")
def _complete(params, call):
    """Completions of ``text`` in the REPL's current frame, as pdb's tab completion gives them."""
    relay = _relay_of(params)
    if relay is None or relay.debugger is None:
        raise _calls.CallError("not_found", "no such REPL in this process")
    text = params.get("text") or ""
    line = params.get("line") or ""
    begidx = int(params.get("begidx") or 0)
    endidx = int(params.get("endidx") or len(line))
    debugger = relay.debugger
    stripped = len(line) - len(line.lstrip())
    line = line.lstrip()
    begidx = max(begidx - stripped, 0)
    endidx = max(endidx - stripped, 0)
    matches = []
    try:
        if begidx > 0:
            cmd, _args, _rest = debugger.parseline(line)
            fn = getattr(debugger, "complete_" + cmd, None) if cmd else None
            matches = (fn or debugger.completedefault)(text, line, begidx, endidx) or []
        else:
            matches = debugger.completenames(text, line, begidx, endidx) or []
        expression = getattr(debugger, "_complete_expression", None)
        if not matches and expression is not None and debugger.curframe is not None:
            matches = expression(text, line, begidx, endidx) or []
    except Exception as err:
        log.debug("scry: completion failed: %r", err)
    return {"matches": sorted(set(str(m) for m in matches))[:200]}


@_calls.method("repl.break")
def _break(params, call):
    """``scry repl PID``: stop a thread (main by default) at its next Python line and open a
    REPL for the session named in ``params``."""
    session = params.get("session")
    if not isinstance(session, str) or not session:
        raise _calls.CallError("bad_request", "`session` is required")
    want = params.get("thread")
    frames = sys._current_frames()
    target = None
    for t in threading.enumerate():
        if want in (None, "") and t is threading.main_thread():
            target = t
        elif want not in (None, "") and (t.name == want or str(t.ident) == str(want)):
            target = t
    if target is None or target.ident not in frames:
        raise _calls.CallError("not_found", "no Python thread {!r} in this process".format(want))
    _break_session[0] = session
    _arm_break(target.ident, frames[target.ident])
    return {"thread": target.name, "tid": target.ident}


def _arm_break(ident, frame):
    """Makes thread ``ident`` call :func:`pause` at its next line, then removes the hook."""
    fired = threading.Event()

    def hit(frame_now):
        if fired.is_set():
            return
        fired.set()
        session = _break_session[0]
        debugger = _debugger_for_thread(session, "break")
        debugger.set_trace(frame_now)

    monitoring = getattr(sys, "monitoring", None)
    if monitoring is not None:
        tool = None
        for candidate in (monitoring.DEBUGGER_ID, 4, 3):
            if monitoring.get_tool(candidate) is None:
                tool = candidate
                break
        if tool is None:
            raise _calls.CallError("busy", "no free sys.monitoring tool id")
        monitoring.use_tool_id(tool, "scry-repl-break")
        events = monitoring.events

        def on_line(code, line):
            if threading.get_ident() != ident or fired.is_set():
                return None
            monitoring.set_events(tool, 0)
            monitoring.register_callback(tool, events.LINE, None)
            monitoring.free_tool_id(tool)
            hit(sys._getframe(1))
            return None

        monitoring.register_callback(tool, events.LINE, on_line)
        monitoring.set_events(tool, events.LINE)
        return

    # Older Pythons: a trace function on the frames of that thread (settrace from here would
    # set ours); f_trace on its running frames fires on their next line.
    def tracer(frame_now, event, arg):
        if threading.get_ident() != ident or fired.is_set():
            return None
        if event == "line":
            clear()
            hit(frame_now)
            return None
        return tracer

    touched = []

    def clear():
        for f in touched:
            try:
                f.f_trace = None
            except Exception:
                pass

    f = frame
    while f is not None:
        f.f_trace = tracer
        f.f_trace_lines = True
        touched.append(f)
        f = f.f_back
    # f_trace fires only while the thread has a global trace function too.
    _set_thread_trace(ident, tracer)


def _set_thread_trace(ident, tracer):
    """Installs ``tracer`` as the global trace function of thread ``ident`` (3.8-3.11).

    ``sys.settrace`` acts on the calling thread only; a pending call (``Py_AddPendingCall``)
    runs in the main thread at its next bytecode boundary, so only the main thread is reachable.
    """
    import ctypes

    if ident != threading.main_thread().ident:
        raise _calls.CallError(
            "unsupported", "on Python < 3.12 only the main thread can be broken into"
        )
    done = []

    def install(_arg):
        sys.settrace(tracer)
        done.append(True)
        return 0

    callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)(install)
    _keep.append(callback)
    ctypes.pythonapi.Py_AddPendingCall(callback, None)


_keep = []


# -- scry run ---------------------------------------------------------------------------------


def bootstrap_run():
    """Called by ``scry run``'s ``sitecustomize``: connect this process to the daemon (origin
    ``run``), make ``breakpoint()`` ours and, with ``--debug``, install the crash hooks."""
    if not os.environ.get(ENV_SESSION):
        return
    _run_mode[0] = True
    _state.ORIGIN = "run"
    if not os.environ.get("PYTHONBREAKPOINT"):
        os.environ["PYTHONBREAKPOINT"] = "scry.pause"
    try:
        _start_agent()
    except Exception as err:
        log.warning("scry: cannot connect to the daemon: %r", err)
    if _debug_on():
        _install_crash_hooks()


def _install_crash_hooks():
    previous = sys.excepthook

    def excepthook(exc_type, exc, tb):
        if exc is not None:
            _crash(exc, tb)
        previous(exc_type, exc, tb)

    sys.excepthook = excepthook
    previous_thread_hook = threading.excepthook

    def thread_excepthook(args):
        if args.exc_value is not None:
            _crash(args.exc_value, args.exc_traceback)
        previous_thread_hook(args)

    threading.excepthook = thread_excepthook
    sys.meta_path.insert(0, _PatchingFinder())


_PATCHES = {
    "multiprocessing.pool": "_patch_pool",
    "multiprocessing.process": "_patch_process",
    "concurrent.futures.process": "_patch_futures",
}


class _PatchingFinder(object):
    """Patches the places where multiprocessing and concurrent.futures workers catch a task's
    exception, as those modules are imported (so that nothing is imported early)."""

    def find_spec(self, name, path=None, target=None):
        if name not in _PATCHES:
            return None
        import importlib.machinery

        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        original = getattr(spec.loader, "exec_module", None)
        if original is None:
            return spec
        patch = globals()[_PATCHES[name]]

        def exec_module(module):
            original(module)
            try:
                patch(module)
            except Exception as err:
                log.debug("scry: cannot patch %s: %r", name, err)

        spec.loader.exec_module = exec_module
        return spec


def _wrap_exc_init(cls):
    original = cls.__init__

    def __init__(self, exc, tb, *args, **kwargs):
        if isinstance(exc, BaseException):
            _crash(exc, exc.__traceback__)
        original(self, exc, tb, *args, **kwargs)

    cls.__init__ = __init__


def _patch_pool(module):
    _wrap_exc_init(module.ExceptionWithTraceback)


def _patch_futures(module):
    _wrap_exc_init(module._ExceptionWithTraceback)


def _patch_process(module):
    original = module.BaseProcess.run

    def run(self):
        try:
            original(self)
        except BaseException as exc:
            _crash(exc, exc.__traceback__)
            raise

    module.BaseProcess.run = run


def _after_fork_in_child():
    with _relays_lock:
        _relays.clear()
    _debuggers.clear()
    _break_session[0] = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

