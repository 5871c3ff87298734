"""Which code a call trace covers: the patterns, and the walk of a module for the code they select.

What is traced is chosen by patterns (docs/tracing.md): modules (``myapp``, ``myapp.*``), files
(``app/*.py``), functions (``myapp.jobs:run``, ``myapp:Worker.*``), minus the exclusions
(:class:`Selector`). The selected code objects are found by walking a module that a pattern may
match (:func:`module_codes`: functions, classes and their methods, nested ``def`` s through
``co_consts``). Nothing else is touched: scry's own modules never.

Not for: when modules are walked (every loaded one when the trace starts, each one imported while
it runs: ``_trace``), or hooking the code found (``_trace_backends``).
"""

import fnmatch
import os
import types

from . import _features, _locate

_OWN_DIR = _locate.PACKAGE_DIR + os.sep


class BadPattern(ValueError):
    pass


def _module_match(name, pattern):
    return name == pattern or name.startswith(pattern + ".") or fnmatch.fnmatchcase(name, pattern)


def _file_match(path, pattern):
    if not path:
        return False
    if os.path.isabs(pattern):
        return fnmatch.fnmatchcase(path, pattern)
    return fnmatch.fnmatchcase(path, "*/" + pattern) or fnmatch.fnmatchcase(path, pattern)


class Selector(object):
    """Which modules and functions a trace covers (see the module docstring)."""

    def __init__(self, include, exclude, functions):
        self.modules, self.files, self.funcs = [], [], []
        self.x_modules, self.x_files, self.x_funcs = [], [], []
        for text in functions:
            if not isinstance(text, str) or ":" not in text:
                raise BadPattern("`{}`: a function is `module:function` (e.g. `myapp.jobs:run`)".format(text))
        for text in list(include) + list(functions):
            self._add(text, self.modules, self.files, self.funcs)
        for text in exclude:
            self._add(text, self.x_modules, self.x_files, self.x_funcs)
        if not (self.modules or self.files or self.funcs):
            self.modules.append("__main__")

    @staticmethod
    def _add(text, modules, files, funcs):
        if not isinstance(text, str) or not text.strip():
            raise BadPattern("a pattern must be a non-empty string, not {!r}".format(text))
        text = text.strip()
        if ":" in text:
            mod, _, qual = text.partition(":")
            if not mod or not qual:
                raise BadPattern("`{}`: a function is `module:function` (e.g. `myapp.jobs:run`)".format(text))
            funcs.append((mod, qual))
        elif "/" in text or text.endswith(".py"):
            files.append(text)
        else:
            modules.append(text)

    def module_wanted(self, name, path):
        """Whether a module may hold selected code (cheap; exclusions of whole modules apply)."""
        if name.startswith("scry.") or name == "scry" or (path and path.startswith(_OWN_DIR)):
            return False
        if any(_module_match(name, p) for p in self.x_modules) or any(_file_match(path, p) for p in self.x_files):
            return False
        return (
            any(_module_match(name, p) for p in self.modules)
            or any(_file_match(path, p) for p in self.files)
            or any(fnmatch.fnmatchcase(name, m) for m, _ in self.funcs)
        )

    def import_wanted(self, name):
        if self.files:
            return not name.startswith("scry.")
        return any(_module_match(name, p) for p in self.modules) or any(
            fnmatch.fnmatchcase(name, m) or m.startswith(name + ".") for m, _ in self.funcs
        )

    def code_wanted(self, name, path, qualname):
        if any(fnmatch.fnmatchcase(name, m) and fnmatch.fnmatchcase(qualname, q) for m, q in self.x_funcs):
            return False
        if any(fnmatch.fnmatchcase(name, m) and fnmatch.fnmatchcase(qualname, q) for m, q in self.funcs):
            return True
        return any(_module_match(name, p) for p in self.modules) or any(_file_match(path, p) for p in self.files)


def _unwrap(fn):
    """The function under decorators that set ``__wrapped__`` (read from ``__dict__``: no user code)."""
    for _ in range(10):
        try:
            inner = fn.__dict__.get("__wrapped__")
        except Exception:
            return fn
        if inner is None:
            return fn
        fn = inner
    return fn


def module_codes(module, selector, out):
    """Add the selected code objects of ``module`` to ``out`` (id -> (code, qualname, module))."""
    try:
        name = module.__name__
        path = getattr(module, "__file__", None)
        if not isinstance(name, str):
            return
        if not isinstance(path, str):
            path = None
        if not selector.module_wanted(name, path):
            return
        namespace = dict(vars(module))
    except Exception:
        return
    seen = set()

    def add_code(code, qualname):
        if id(code) in seen:
            return
        seen.add(id(code))
        if selector.code_wanted(name, code.co_filename, qualname):
            out[id(code)] = (code, qualname, name)
        for const in code.co_consts:
            if type(const) is types.CodeType and not const.co_name.startswith("<"):
                nested = const.co_qualname if _features.HAS_CO_QUALNAME else qualname + ".<locals>." + const.co_name
                add_code(const, nested)

    def add_function(fn):
        fn = _unwrap(fn)
        if type(fn) is not types.FunctionType or getattr(fn, "__module__", None) != name:
            return
        code = fn.__code__
        if code.co_filename.startswith(_OWN_DIR):
            return
        qualname = getattr(fn, "__qualname__", None)
        if not isinstance(qualname, str):
            qualname = code.co_name
        add_code(code, qualname)

    def add_class(cls, depth):
        if depth > 3 or id(cls) in seen:
            return
        seen.add(id(cls))
        try:
            members = list(vars(cls).values())
        except Exception:
            return
        for member in members:
            t = type(member)
            if t is types.FunctionType:
                add_function(member)
            elif t in (staticmethod, classmethod):
                add_function(member.__func__)
            elif t is property:
                for fn in (member.fget, member.fset, member.fdel):
                    if fn is not None:
                        add_function(fn)
            elif isinstance(member, type) and getattr(member, "__module__", None) == name:
                add_class(member, depth + 1)

    for value in namespace.values():
        try:
            if isinstance(value, type):
                if getattr(value, "__module__", None) == name:
                    add_class(value, 0)
            elif callable(value):
                add_function(value)
        except Exception:
            continue
