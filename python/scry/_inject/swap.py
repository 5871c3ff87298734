"""Putting injected copies where the program runs them, and the originals back.

A code object is run from a function (``f.__code__``: functions, methods, closures, lambdas), or
created from a constant of another code object (a nested function, made each time its ``def``
runs). The one :data:`SWAPPER` of the process gives every function the code wanted now: a copy with
the probed lines' hooks and, when the code is traced, the trace hooks; or the original. Probes
(``_backends.InjectionBackend``) and call traces (``_trace_backends.InjectionTracer``) each say
what they want, and one copy serves both. A code object whose constants hold a replaced one gets a
copy with the replacement too (its own function, a closure's enclosing function, is given that),
so that functions made later run the copy as well. Copies are built from the originals, never
from other copies, and kept while they are wanted, so that applying the same set again changes
nothing.

What it cannot swap: frames already running (their code is fixed) and suspended generators and
coroutines; :meth:`Swapper.set_lines` returns those generators, for the probe backend to follow
otherwise.
"""

import gc
import threading
import types

from . import InjectError, inject

_CodeType = types.CodeType
_FunctionType = types.FunctionType
_GENERATOR_TYPES = tuple(
    t for t in (types.GeneratorType, types.CoroutineType, getattr(types, "AsyncGeneratorType", None)) if t
)
_NO_LINES = frozenset()


def _generator_code(obj):
    return getattr(obj, "gi_code", None) or getattr(obj, "cr_code", None) or getattr(obj, "ag_code", None)


def generator_frame(obj):
    """The frame of a generator, coroutine or async generator (None once finished)."""
    return getattr(obj, "gi_frame", None) or getattr(obj, "cr_frame", None) or getattr(obj, "ag_frame", None)


class Swapper(object):
    """Which code object the functions of the process run (see the module docstring)."""

    def __init__(self):
        self.lock = threading.RLock()
        self._lines = {}  # id(original) -> (original, lines), from the probes
        self._hook_of = None  # (original, line) -> the line's hook
        self._traced = {}  # id(original) -> (original, {kind: hook}), from the trace
        self._origin = {}  # id(copy) -> (copy, original, hooked lines), every copy installed so far
        self._built = {}  # (id(original), lines, traced, ids of its constants' replacements) -> copy
        self._files = set()  # co_filename of every original wanted since the last restore

    def original(self, code):
        """The original of ``code`` (itself when it is not a copy of ours)."""
        entry = self._origin.get(id(code))
        return entry[1] if entry is not None else code

    def hooked_lines(self, code):
        """The lines ``code`` calls hooks on (empty for an original)."""
        entry = self._origin.get(id(code))
        return entry[2] if entry is not None else _NO_LINES

    def set_lines(self, wanted, hook_of):
        """The probes want ``{id(original): (original, lines)}``, the hook of a line being
        ``hook_of(original, line)``. Returns ``(failed, generators)``: ``{id(original): why}`` for
        code that could not be injected, and the suspended generators and coroutines of wanted code
        that run another copy (they keep running it)."""
        with self.lock:
            self._lines = dict(wanted)
            self._hook_of = hook_of
            return self._apply(self._lines)

    def set_traced(self, traced):
        """The trace wants ``{id(original): (original, {kind: hook})}`` (see ``inject``'s
        ``trace``). Returns ``{id(original): why}`` for code that could not be injected."""
        with self.lock:
            self._traced = dict(traced)
            return self._apply(self._traced)[0]

    def _apply(self, asked):
        """Give every function its wanted code; the failures among ``asked`` and the generators."""
        failed = {}
        memo = {}
        built = {}
        lines_of = self._lines
        traced = self._traced
        # Nested code shares its file with the code that holds it: only functions of these files can
        # hold a wanted code object, or a copy made before that is not wanted any more.
        files = self._files
        files.update(code.co_filename for code, _spec in lines_of.values())
        files.update(code.co_filename for code, _spec in traced.values())

        def want(original):
            key = id(original)
            done = memo.get(key)
            if done is not None:
                return done
            memo[key] = original  # a constant cycle (impossible in practice) ends here
            consts = original.co_consts
            replaced = [want(c) if type(c) is _CodeType else c for c in consts]
            changed = [id(r) for c, r in zip(consts, replaced) if r is not c]
            lines = lines_of[key][1] if key in lines_of else _NO_LINES
            trace = traced[key][1] if key in traced else None
            if not changed and not lines and trace is None:
                return original
            cache_key = (key, lines, trace is not None, tuple(changed))
            copy = self._built.get(cache_key)
            hooked = lines
            if copy is None:
                base = original.replace(co_consts=tuple(replaced)) if changed else original
                copy = base
                if lines or trace is not None:
                    hooks = {line: self._hook_of(original, line) for line in lines} if lines else None
                    try:
                        copy = inject(base, hooks, trace)
                    except InjectError as exc:
                        failed[key] = str(exc)
                        hooked = _NO_LINES
            if copy is not original:
                if key not in failed:  # a refused injection is tried again next time
                    built[cache_key] = copy
                self._origin[id(copy)] = (copy, original, hooked)
            memo[key] = copy
            return copy

        generators = []
        for obj in gc.get_objects():
            t = type(obj)
            if t is _FunctionType:
                code = obj.__code__
                if code.co_filename not in files:
                    continue
                try:
                    target = want(self.original(code))
                    if target is not code:
                        obj.__code__ = target
                except (ValueError, TypeError):
                    continue  # a function that refuses the swap keeps its code
            elif t in _GENERATOR_TYPES:
                code = _generator_code(obj)
                if type(code) is _CodeType and id(self.original(code)) in lines_of and generator_frame(obj) is not None:
                    generators.append(obj)
        # Code no function refers to (a module's, a class body's, a generator's whose function is
        # gone) still gets its copy made, so that the result says whether it could be injected.
        for key, (code, _spec) in asked.items():
            if key not in memo:
                want(code)
        self._built = built
        if not lines_of and not traced:
            self._restore()
        return {key: why for key, why in failed.items() if key in asked}, generators

    def _restore(self):
        """Every function running a copy of ours gets its original back; forget the copies."""
        origin = self._origin
        if origin:
            for obj in gc.get_objects():
                if type(obj) is _FunctionType:
                    entry = origin.get(id(obj.__code__))
                    if entry is not None and entry[0] is obj.__code__:
                        try:
                            obj.__code__ = entry[1]
                        except (ValueError, TypeError):
                            pass
        self._origin = {}
        self._built = {}
        self._files = set()

    def reset_in_child(self):
        """After fork: nothing is wanted any more; every function gets its original back."""
        self.lock = threading.RLock()  # may have been held by a thread that does not exist here
        self._lines = {}
        self._traced = {}
        self._restore()


#: The swapper of the process: probes and traces share it.
SWAPPER = Swapper()
