"""Putting injected copies where the program runs them, and the originals back.

A code object is run from a function (``f.__code__``: functions, methods, closures, lambdas), or
created from a constant of another code object (a nested function, made each time its ``def``
runs). :meth:`Swapper.apply` gives every function of the process the code wanted now: the copy with
the wanted lines, or the original. A code object whose constants hold a replaced one gets a copy
with the replacement too (its own function, a closure's enclosing function, is given that), so
that functions made later run the copy as well. Copies are built from the originals, never from
other copies, and kept in a cache while they are wanted, so that applying the same set again
changes nothing.

What it cannot swap: frames already running (their code is fixed) and suspended generators and
coroutines. :meth:`apply` returns those generators, for the backend to follow otherwise.
"""

import gc
import types

from . import InjectError

_CodeType = types.CodeType
_FunctionType = types.FunctionType
_GENERATOR_TYPES = tuple(
    t for t in (types.GeneratorType, types.CoroutineType, getattr(types, "AsyncGeneratorType", None)) if t
)


def _generator_code(obj):
    return getattr(obj, "gi_code", None) or getattr(obj, "cr_code", None) or getattr(obj, "ag_code", None)


def _generator_frame(obj):
    return getattr(obj, "gi_frame", None) or getattr(obj, "cr_frame", None) or getattr(obj, "ag_frame", None)


class Swapper(object):
    """Which code object the functions of the process run (see the module docstring)."""

    def __init__(self, make):
        #: ``make(base, original, lines)``: the copy of ``base`` (the original, or a copy of it with
        #: replaced constants) with hooks on ``lines``; raises InjectError.
        self._make = make
        self._origin = {}  # id(copy) -> (copy, original, hooked lines), every copy installed so far
        self._built = {}  # (id(original), lines, ids of its constants' replacements) -> copy
        self._files = set()  # co_filename of every original wanted since the last restore

    def original(self, code):
        """The original of ``code`` (itself when it is not a copy of ours)."""
        entry = self._origin.get(id(code))
        return entry[1] if entry is not None else code

    def hooked_lines(self, code):
        """The lines ``code`` calls hooks on (empty for an original)."""
        entry = self._origin.get(id(code))
        return entry[2] if entry is not None else frozenset()

    def apply(self, wanted):
        """Make every function run the copy for ``wanted`` (``{id(original): (original, lines)}``;
        every other code its original). Returns ``(failed, generators)``: ``{id(original): why}``
        for code that could not be injected, and the suspended generators and coroutines whose code
        is not what is wanted now (they keep running their own code)."""
        failed = {}
        memo = {}
        built = {}
        lines_of = {key: lines for key, (_code, lines) in wanted.items()}
        # Nested code shares its file with the code that holds it: only functions of these files can
        # hold a wanted code object, or a copy made before that is not wanted any more.
        files = self._files
        files.update(code.co_filename for code, _lines in wanted.values())

        def want(original):
            key = id(original)
            done = memo.get(key)
            if done is not None:
                return done
            memo[key] = original  # a constant cycle (impossible in practice) ends here
            consts = original.co_consts
            replaced = [want(c) if type(c) is _CodeType else c for c in consts]
            changed = [id(r) for c, r in zip(consts, replaced) if r is not c]
            lines = lines_of.get(key)
            if not changed and not lines:
                return original
            cache_key = (key, lines, tuple(changed))
            copy = self._built.get(cache_key)
            hooked = lines or frozenset()
            if copy is None:
                base = original.replace(co_consts=tuple(replaced)) if changed else original
                copy = base
                if lines:
                    try:
                        copy = self._make(base, original, lines)
                    except InjectError as exc:
                        failed[key] = str(exc)
                        hooked = frozenset()
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
                if type(code) is _CodeType and id(self.original(code)) in lines_of and _generator_frame(obj) is not None:
                    generators.append(obj)
        # Code no function refers to (a module's, a class body's, a generator's whose function is
        # gone) still gets its copy made, so that the result says whether it could be injected.
        for key, (code, lines) in wanted.items():
            if key not in memo:
                want(code)
        self._built = built
        return failed, generators

    def restore(self):
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
