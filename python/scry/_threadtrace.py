"""Install one Python trace function in every thread of the interpreter, and remove it (3.8-3.11).

``sys.settrace`` only affects the calling thread and ``threading.settrace`` only threads started
later; a probe must also see threads that already run (3.12 has ``threading.settrace_all_threads``,
but 3.12+ uses ``sys.monitoring`` anyway). This module does what that function does, from Python,
with ``ctypes``:

1. ``sys.settrace(func)`` on the current thread; CPython then stores, in the current
   ``PyThreadState``, ``c_tracefunc`` (the C trampoline of ``sys.settrace``) and ``c_traceobj``
   (``func``). The two are adjacent in every 3.8-3.11 layout (``c_profilefunc, c_tracefunc,
   c_profileobj, c_traceobj``), so the trampoline is found as the word two before the one that
   holds ``id(func)`` (and which was zero before): no struct offsets are hard-coded.
2. For every other thread state of the interpreter (``PyInterpreterState_ThreadHead``,
   ``PyThreadState_Next``, public), 3.9-3.11 call the exported ``_PyEval_SetTrace(tstate,
   trampoline, func)``, the function ``sys.settrace`` itself uses, which takes care of the
   version's bookkeeping (``use_tracing`` / ``cframe->use_tracing``) and audits in the calling
   thread. 3.8 has no such function: the fields are written directly (``c_traceobj`` with a new
   reference, then ``c_tracefunc``, then ``use_tracing``), at offsets verified on the current thread
   first (``use_tracing`` is the int that turned 0 -> 1).

Everything happens under the GIL from one thread; the GIL switch interval is raised for the few
microseconds of a walk so that no other thread (say, one that is exiting and frees its thread
state) runs in between. Removal undoes exactly what was done, and only where the thread state still
holds ``func`` (a thread that installed its own tracer since keeps it).

``ThreadTracer(func, profile=True)`` does the same with a profile function (``sys.setprofile``,
``c_profilefunc``/``c_profileobj``, ``_PyEval_SetProfile``), for call tracing on 3.9-3.11; on 3.8 it
covers the current thread and new threads only.

Any failure (no ctypes, symbols not exported, an unexpected layout) leaves the current thread and
new threads traced and says why in :attr:`ThreadTracer.note`; it never touches memory it has not
verified.
"""

import sys
import threading

from . import _features

#: Words of the current thread state read to find c_traceobj (every 3.8-3.11 layout has more).
_WORDS = 24
#: Words read to find thread_id (index 22-26 in the 3.8-3.11 layouts, which all have more words).
_THREAD_ID_WORDS = 32


class OtherTracer(Exception):
    """Another trace function is installed; ``str()`` says where."""


class ThreadTracer(object):
    """Installs ``func`` as the trace function of every thread; see the module docstring."""

    def __init__(self, func, profile=False):
        self.func = func
        #: Install a profile function (sys.setprofile, for call tracing) instead of a trace function.
        self.profile = profile
        self._set_hook = sys.setprofile if profile else sys.settrace
        self._get_hook = sys.getprofile if profile else sys.gettrace
        self._set_thread_hook = threading.setprofile if profile else threading.settrace
        #: Why threads that already ran are not covered, or None when they are.
        self.note = None
        self._ctypes = None
        self._api = None
        self._index = None  # word index of c_traceobj in PyThreadState
        self._tramp = None
        self._use_tracing_offset = None  # 3.8 only
        self._thread_id_index = None  # word index of thread_id in PyThreadState
        self._prev_thread_hook = None
        self._installed_hook = False
        self._active = False

    # -- checks ------------------------------------------------------------------------------

    def foreign_tracers(self):
        """Descriptions of trace functions that are not ours, in any thread (empty when none)."""
        out = []
        current = self._get_hook()
        if current is not None and current is not self.func:
            out.append("this thread has {!r}".format(current))
        hook = _thread_hook(self.profile)
        if hook is not None and hook is not self.func:
            out.append("threading.{}() was given {!r}".format("setprofile" if self.profile else "settrace", hook))
        if self._index is not None and self._setup():
            with _NoSwitch():
                current = self._api.PyThreadState_Get()
                for tstate in self._tstates():
                    obj = self._word(tstate, self._index)
                    if tstate != current and obj and obj != id(self.func):
                        out.append("another thread has a trace function")
                        break
        return out

    # -- install / remove --------------------------------------------------------------------

    def install(self, only=None):
        """Trace every thread with ``func`` (with ``only``, a set of thread idents: just those, and
        no thread started later). Raises OtherTracer; on any ctypes trouble, traces the current
        thread and new threads only, with the reason in ``note``."""
        foreign = self.foreign_tracers()
        if foreign:
            raise OtherTracer("; ".join(foreign))
        self._active = True
        if only is None:
            self._prev_thread_hook = _thread_hook(self.profile)
            self._set_thread_hook(self.func)
            self._installed_hook = True
        if not self._setup():
            if only is None or threading.get_ident() in only:
                self._set_hook(self.func)
            return
        try:
            self._install_everywhere(only)
        except OtherTracer:
            raise
        except Exception as exc:  # never break the host: this thread and new ones, and why
            self.note = _not_covered("installing through ctypes failed ({!r})".format(exc))
            if self._get_hook() is None and (only is None or threading.get_ident() in only):
                self._set_hook(self.func)

    def _install_everywhere(self, only=None):
        api = self._api
        current = api.PyThreadState_Get()
        before = self._words(current)
        self._set_hook(self.func)
        if self._index is None and not self._discover(before, self._words(current)):
            return
        if self._tramp != self._word(current, self._index - 2) or self._word(current, self._index) != id(self.func):
            self.note = _not_covered("the current thread state does not look as expected")
            return
        if only is not None and self._thread_id_index is None and not self._find_thread_id():
            # Which thread state is which thread cannot be told: trace them all (the note says so).
            only = None
        with _NoSwitch():
            others = [t for t in self._tstates() if t != current]
            if any(self._word(t, self._index) for t in others):
                self.remove()
                raise OtherTracer("another thread has a trace function")
            if only is not None:
                others = [t for t in others if self._word(t, self._thread_id_index) in only]
            for tstate in others:
                self._set_trace(tstate, True)
            if (only is not None and threading.get_ident() not in only) or threading.current_thread().name.startswith("scry-"):
                # The agent's own thread (the link, applying a probes_sync) runs no program code:
                # untrace it so that shipping hits does not pay a trace call per function call.
                # (On 3.8 this is a direct write, so the count sys.settrace raised stays: the other
                # threads' line events depend on it.)
                self._set_trace(current, False)

    def remove(self):
        """Undo :meth:`install`: every thread state that still holds ``func`` loses it."""
        if not self._active:
            return
        self._active = False
        if self._installed_hook:
            self._installed_hook = False
            if _thread_hook(self.profile) is self.func:
                self._set_thread_hook(self._prev_thread_hook)
            self._prev_thread_hook = None
        if self._api is not None and self._index is not None:
            current = self._api.PyThreadState_Get()
            with _NoSwitch():
                for tstate in self._tstates():
                    if tstate != current and self._word(tstate, self._index) == id(self.func):
                        self._set_trace(tstate, False)
                if not _features.HAS_PRIVATE_SETTRACE and sys.gettrace() is not self.func:
                    if not self._word(current, self._index):
                        # 3.8 counts traced threads in a global that install() raised by one (its
                        # sys.settrace); sys.settrace(None) below undoes that count only if this
                        # thread holds func, so give it func first (a direct write counts nothing).
                        self._set_trace(current, True)
        if self._get_hook() is self.func:
            self._set_hook(None)

    def remove_in_child(self):
        """After fork: only this thread survives; drop our trace from it (no other state exists)."""
        self._active = False
        if _thread_hook(self.profile) is self.func:
            self._set_thread_hook(self._prev_thread_hook)
        if self._get_hook() is self.func:
            self._set_hook(None)

    # -- ctypes ------------------------------------------------------------------------------

    def _setup(self):
        """Load the C API once; False (with ``note``) when it is not usable."""
        if self._api is not None:
            return True
        if self.note is not None:
            return False
        if self.profile and not _features.HAS_PRIVATE_SETTRACE:
            self.note = _not_covered("Python 3.8 has no _PyEval_SetProfile")
            return False
        try:
            import ctypes

            api = ctypes.pythonapi
            vp = ctypes.c_void_p
            api.PyThreadState_Get.restype = vp
            api.PyThreadState_Get.argtypes = []
            api.PyInterpreterState_ThreadHead.restype = vp
            api.PyInterpreterState_ThreadHead.argtypes = [vp]
            api.PyThreadState_Next.restype = vp
            api.PyThreadState_Next.argtypes = [vp]
            if _features.HAS_PRIVATE_SETTRACE:
                set_trace = api._PyEval_SetProfile if self.profile else api._PyEval_SetTrace
                set_trace.restype = ctypes.c_int
                set_trace.argtypes = [vp, vp, vp]
            else:
                api.Py_IncRef.argtypes = [ctypes.py_object]
                api.Py_IncRef.restype = None
                api.Py_DecRef.argtypes = [vp]
                api.Py_DecRef.restype = None
        except Exception as exc:  # no ctypes, or a symbol is not exported
            self.note = _not_covered("the C API is not reachable through ctypes ({})".format(exc))
            return False
        self._ctypes = ctypes
        self._api = api
        return True

    def _discover(self, before, after):
        """Find c_traceobj (and the trampoline, and on 3.8 use_tracing) from the current thread."""
        target = id(self.func)
        hits = [i for i, w in enumerate(after) if w == target and before[i] == 0]
        if len(hits) != 1 or hits[0] < 4:
            self.note = _not_covered("the thread state layout was not recognised")
            return False
        index = hits[0]
        tramp = after[index - 2]
        if not tramp or before[index - 2]:
            self.note = _not_covered("the thread state layout was not recognised")
            return False
        if not _features.HAS_PRIVATE_SETTRACE:
            offset = self._find_use_tracing(index)
            if offset is None:
                self.note = _not_covered("use_tracing was not found in the thread state")
                return False
            self._use_tracing_offset = offset
        self._index = index
        self._tramp = tramp
        return True

    def _find_use_tracing(self, index):
        """3.8: the int between ``frame`` and ``c_profilefunc`` that is 1 while traced, 0 after."""
        ctypes = self._ctypes
        current = self._api.PyThreadState_Get()
        size = ctypes.sizeof(ctypes.c_void_p)
        end = (index - 3) * size  # c_profilefunc
        start = 4 * size  # after prev, next, interp, frame
        if self._word(current, index - 3):
            return None  # a profiler is set: use_tracing would read 1 either way
        traced = [o for o in range(start, end, 4) if ctypes.c_int.from_address(current + o).value == 1]
        saved = sys.gettrace()
        sys.settrace(None)
        try:
            untraced = [o for o in traced if ctypes.c_int.from_address(current + o).value == 0]
        finally:
            sys.settrace(saved)
        if len(untraced) != 1:
            return None
        return untraced[0]

    def _find_thread_id(self):
        """Find ``thread_id`` in the thread state: the one word of the current thread's that holds
        its ident, checked against every other thread state (each must hold a running thread's)."""
        current = self._api.PyThreadState_Get()
        ident = threading.get_ident()
        words = [self._word(current, i) for i in range(_THREAD_ID_WORDS)]
        hits = [i for i, w in enumerate(words) if w == ident and i >= 4]
        if len(hits) != 1:
            self.note = "thread_id was not found in the thread state: every thread is traced"
            return False
        running = set(sys._current_frames()) | set(getattr(threading, "_active", {}))
        with _NoSwitch():
            if any(self._word(t, hits[0]) not in running for t in self._tstates()):
                self.note = "thread_id was not recognised in every thread state: every thread is traced"
                return False
        self._thread_id_index = hits[0]
        return True

    def _set_trace(self, tstate, on):
        """Give ``tstate`` our trace function (on) or none (off). True when done."""
        ctypes = self._ctypes
        api = self._api
        if _features.HAS_PRIVATE_SETTRACE:
            set_hook = api._PyEval_SetProfile if self.profile else api._PyEval_SetTrace
            if on:
                return set_hook(tstate, self._tramp, id(self.func)) == 0
            return set_hook(tstate, None, None) == 0
        size = ctypes.sizeof(ctypes.c_void_p)
        obj = ctypes.c_void_p.from_address(tstate + self._index * size)
        tracefunc = ctypes.c_void_p.from_address(tstate + (self._index - 2) * size)
        use_tracing = ctypes.c_int.from_address(tstate + self._use_tracing_offset)
        if on:
            api.Py_IncRef(self.func)
            obj.value = id(self.func)
            tracefunc.value = self._tramp
            use_tracing.value = 1
        else:
            profiling = self._word(tstate, self._index - 3)
            use_tracing.value = 1 if profiling else 0
            tracefunc.value = None
            old = obj.value
            obj.value = None
            if old:
                api.Py_DecRef(old)
        return True

    def _tstates(self):
        api = self._api
        interp = self._word(api.PyThreadState_Get(), 2)  # prev, next, interp
        out = []
        tstate = api.PyInterpreterState_ThreadHead(interp)
        while tstate and len(out) < 100000:
            out.append(tstate)
            tstate = api.PyThreadState_Next(tstate)
        return out

    def _word(self, address, index):
        ctypes = self._ctypes
        return ctypes.c_void_p.from_address(address + index * ctypes.sizeof(ctypes.c_void_p)).value or 0

    def _words(self, address):
        return [self._word(address, i) for i in range(_WORDS)]


class _NoSwitch(object):
    """Raise the GIL switch interval for a few microseconds: no other thread runs (and frees its
    thread state) while a walk over thread states is in progress."""

    def __enter__(self):
        self.saved = sys.getswitchinterval()
        sys.setswitchinterval(max(self.saved, 1.0))
        return self

    def __exit__(self, *exc):
        sys.setswitchinterval(self.saved)
        return False


def _thread_hook(profile=False):
    getter = getattr(threading, "getprofile" if profile else "gettrace", None)  # 3.10+
    if getter is not None:
        return getter()
    return getattr(threading, "_profile_hook" if profile else "_trace_hook", None)


def _not_covered(why):
    return (
        "threads that were already running are not covered, only this thread and threads started "
        "later: {}".format(why)
    )
