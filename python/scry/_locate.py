"""Locations: parse them, find the code objects that own a line, snap, and wait for imports.

A location is ``path.py:LINE``, ``@path.py#LINE``, ``module.sub:function`` (the function's entry)
or ``path.py:function`` (``function`` may be a qualname such as ``Class.method``). A path matches
by a suffix of whole path components of a code object's ``co_filename``: ``orders.py`` and
``app/orders.py`` match ``/srv/app/orders.py``, ``ers.py`` does not. The files of the debugging
tools in the process (scry's own package, debugpy's: :func:`tool_dirs`) are matched only by their
whole path, so ``api.py:10`` is never ``debugpy/server/api.py``.

The code objects of a process are found in :class:`CodeIndex`: every function and live
generator/coroutine that ``gc.get_objects()`` sees, recursively through ``co_consts`` (nested
functions, methods, closures, lambdas, comprehensions), plus the frames running now in every thread
and their callers (the only way to reach module-level code, such as a script's top-level loop).

The code object that owns a line is the outermost one whose line table contains it: on a line such as
``total = sum(q * p for q, p in items)`` both the function and the generator expression have code,
and the probe belongs to the function, whose frame runs the statement (its names are the ones a
person asks about); a nested function's body lines belong to it alone. A line without
code snaps to the next executable line of the innermost code object whose span contains it; a path
that no loaded code matches leaves the probe *pending*, and :class:`ImportWatcher` (a
``sys.meta_path`` finder installed only while a probe is pending) re-resolves it when a matching
module has been executed.
"""

import gc
import os
import sys
import threading
import types

from . import _features

#: Our own package directory: its code is never probed, its frames never reported.
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

_CO_OPTIMIZED = 0x0001
_CO_NEWLOCALS = 0x0002
_GENERATOR_TYPES = tuple(
    t for t in (types.GeneratorType, types.CoroutineType, getattr(types, "AsyncGeneratorType", None)) if t
)
_CodeType = types.CodeType
_FunctionType = types.FunctionType


class LocationError(Exception):
    """A location that cannot be armed in this process (error_kind ``location``)."""


class Location(object):
    """A parsed location: ``kind`` is ``line`` or ``function``; ``path`` or ``module`` names where."""

    __slots__ = ("text", "kind", "path", "module", "line", "function", "components")

    def __init__(self, text, kind, path=None, module=None, line=None, function=None):
        self.text = text
        self.kind = kind
        self.path = path
        self.module = module
        self.line = line
        self.function = function
        self.components = path_components(path) if path is not None else None

    @property
    def where(self):
        """The path or module, for messages."""
        return self.path if self.path is not None else self.module


def index_paths(location):
    """The path components a CodeIndex needs for ``location`` (None: the module is not loaded)."""
    if location.path is not None:
        return location.components
    module = sys.modules.get(location.module)
    filename = getattr(module, "__file__", None) if module is not None else None
    return path_components(os.path.normpath(filename)) if isinstance(filename, str) else None


def path_components(path):
    """``/srv/./app/orders.py`` -> ``("srv", "app", "orders.py")``."""
    return tuple(part for part in path.replace("\\", "/").split("/") if part not in ("", "."))


def parse_location(text):
    """Parse a location string; raises LocationError with an example of the accepted forms."""
    forms = "use path.py:LINE, @path.py#LINE, module.sub:function or path.py:function"
    if not isinstance(text, str) or not text.strip():
        raise LocationError("an empty location: " + forms)
    loc = text.strip()
    if loc.startswith("@"):
        path, sep, line = loc[1:].rpartition("#")
        if not sep or not path or not line.isdigit() or int(line) < 1:
            raise LocationError("`{}` is not a location: {}".format(loc, forms))
        return Location(loc, "line", path=path, line=int(line))
    left, sep, right = loc.rpartition(":")
    if not sep or not left or not right:
        raise LocationError("`{}` is not a location: {}".format(loc, forms))
    if right.isdigit():
        if int(right) < 1:
            raise LocationError("line numbers start at 1 in `{}`".format(loc))
        return Location(loc, "line", path=left, line=int(right))
    if "/" in left or left.endswith((".py", ".pyw")):
        return Location(loc, "function", path=left, function=right)
    return Location(loc, "function", module=left, function=right)


# -- line tables -----------------------------------------------------------------------------------


def _lnotab_lines(code):
    """Line numbers where bytecode starts, from ``co_lnotab`` (3.8/3.9; cf. dis.findlinestarts)."""
    table = code.co_lnotab
    lines = []
    last = None
    line = code.co_firstlineno
    addr = 0
    size = len(code.co_code)
    for i in range(0, len(table), 2):
        byte_incr = table[i]
        line_incr = table[i + 1]
        if byte_incr:
            if line != last:
                lines.append(line)
                last = line
            addr += byte_incr
            if addr >= size:
                return lines
        if line_incr >= 0x80:
            line_incr -= 0x100
        line += line_incr
    if line != last:
        lines.append(line)
    return lines


def raw_lines(code):
    """Every line number of ``code``'s line table (unsorted, may repeat)."""
    if _features.HAS_CO_LINES:
        return [line for _start, _end, line in code.co_lines() if line is not None]
    return _lnotab_lines(code)


def own_lines(code):
    """The lines on which a LINE event can fire in ``code`` itself, sorted.

    The line of the function's prologue (``co_firstlineno``: the ``def`` or first decorator line,
    where 3.11+ puts RESUME) counts only for one-line functions and lambdas: in a longer function
    it never fires, and it belongs to the enclosing code (the ``def`` statement runs there).
    """
    lines = set(raw_lines(code))
    if len(lines) > 1 and (code.co_flags & _CO_OPTIMIZED):
        lines.discard(code.co_firstlineno)
    return sorted(lines)


def entry_line(code):
    """The first line of a function's body (what a ``module:function`` probe instruments)."""
    lines = own_lines(code)
    return lines[0] if lines else code.co_firstlineno


def code_name(code):
    return code.co_qualname if _features.HAS_CO_QUALNAME else code.co_name


# -- the index of code objects -------------------------------------------------------------------


class CodeIndex(object):
    """Every code object this process can run now, grouped by ``co_filename``."""

    def __init__(self):
        self.files = {}  # co_filename -> [code]
        self.qualnames = {}  # id(code) -> qualname
        self.parents = {}  # id(code) -> id(parent code)
        self.lines = {}  # id(code) -> sorted own lines
        self._codes = {}  # id(code) -> code (keeps them alive while the index exists)

    @classmethod
    def build(cls, paths=None):
        """Index the code alive now; with ``paths`` (component tuples), only code of files whose
        path ends with one of them (the scan then costs a type check and a cached filename test
        per object)."""
        index = cls()
        if paths is not None:
            paths = [p for p in paths if p]
            verdicts = {}

            def wanted(filename):
                verdict = verdicts.get(filename)
                if verdict is None:
                    verdict = verdicts[filename] = any(path_matches(filename, p) for p in paths)
                return verdict

        else:

            def wanted(filename):
                return True

        for obj in gc.get_objects():
            t = type(obj)
            if t is _FunctionType:
                code = obj.__code__
                if wanted(code.co_filename):
                    index.add(code, _safe_qualname(obj))
            elif t in _GENERATOR_TYPES:
                code = getattr(obj, "gi_code", None) or getattr(obj, "cr_code", None) or getattr(obj, "ag_code", None)
                if type(code) is _CodeType and wanted(code.co_filename):
                    index.add(code, None)
        for frame in running_frames():
            if wanted(frame.f_code.co_filename):
                index.add(frame.f_code, None)
        return index

    def add(self, code, qualname, parent=None, parent_qualname=None):
        key = id(code)
        if key in self._codes:
            if qualname and key in self.qualnames and not _features.HAS_CO_QUALNAME:
                self.qualnames[key] = qualname  # a function's own __qualname__ is authoritative
            return
        filename = code.co_filename
        if not isinstance(filename, str) or filename.startswith(PACKAGE_DIR + os.sep):
            return
        if filename.startswith("<scry"):
            return
        if not qualname:
            qualname = _derive_qualname(code, parent, parent_qualname)
        self._codes[key] = code
        self.qualnames[key] = qualname
        if parent is not None:
            self.parents[key] = id(parent)
        self.files.setdefault(filename, []).append(code)
        for const in code.co_consts:
            if type(const) is _CodeType:
                self.add(const, None, code, qualname)

    def own_lines(self, code):
        key = id(code)
        lines = self.lines.get(key)
        if lines is None:
            lines = self.lines[key] = own_lines(code)
        return lines

    def qualname(self, code):
        return self.qualnames.get(id(code)) or code_name(code)

    def is_ancestor(self, maybe_ancestor, code):
        key = self.parents.get(id(code))
        target = id(maybe_ancestor)
        hops = 0
        while key is not None and hops < 100:
            if key == target:
                return True
            key = self.parents.get(key)
            hops += 1
        return False

    def matching_files(self, components):
        """Filenames whose path ends with ``components``, grouped by the real file they name.
        A file of a debugging tool (:func:`tool_file`) matches only its whole path."""
        groups = {}
        for filename in self.files:
            if path_matches(filename, components) and not _tool_suffix_match(filename, components):
                groups.setdefault(_real(filename), []).append(filename)
        return groups


def _safe_qualname(function):
    try:
        qualname = function.__qualname__
    except Exception:
        return None
    return qualname if isinstance(qualname, str) else None


def _derive_qualname(code, parent, parent_qualname):
    if _features.HAS_CO_QUALNAME:
        return code.co_qualname
    name = code.co_name
    if parent is None or parent.co_name == "<module>" or not parent_qualname:
        return name
    if parent.co_flags & (_CO_OPTIMIZED | _CO_NEWLOCALS):  # a function: its locals
        return parent_qualname + ".<locals>." + name
    return parent_qualname + "." + name  # a class body


_components_cache = {}


def path_matches(filename, components):
    """Whether ``filename`` ends with the path ``components`` (whole components)."""
    parts = _components_cache.get(filename)
    if parts is None:
        parts = path_components(os.path.normpath(filename))
        if len(_components_cache) > 65536:
            _components_cache.clear()
        _components_cache[filename] = parts
    n = len(components)
    return 0 < n <= len(parts) and parts[-n:] == components


def _real(filename):
    try:
        return os.path.realpath(filename)
    except (OSError, ValueError):
        return filename


def running_frames():
    """Every frame running now, in every thread (innermost first), minus scry's own."""
    out = []
    try:
        frames = sys._current_frames()
    except Exception:
        return out
    for frame in frames.values():
        hops = 0
        while frame is not None and hops < 10000:
            out.append(frame)
            frame = frame.f_back
            hops += 1
    return out


def loaded_module_files(components):
    """(name, __file__) of loaded modules whose file matches ``components`` (a debugging tool's
    file only by its whole path)."""
    out = []
    for name, module in list(sys.modules.items()):
        try:
            filename = module.__dict__.get("__file__") if isinstance(module, types.ModuleType) else None
        except Exception:
            filename = None
        if (
            isinstance(filename, str)
            and path_matches(filename, components)
            and not _tool_suffix_match(filename, components)
        ):
            out.append((name, filename))
    return out


def tool_dirs():
    """The package directories of the debugging tools loaded here, each ending with a separator:
    scry's own and debugpy's (with the pydevd it vendors), which ``scry debug`` loads into a
    process. Their files are never what a location such as ``api.py:10`` means."""
    dirs = [PACKAGE_DIR + os.sep]
    module = sys.modules.get("debugpy")
    filename = getattr(module, "__file__", None) if module is not None else None
    if isinstance(filename, str):
        dirs.append(os.path.dirname(os.path.normpath(filename)) + os.sep)
    return tuple(dirs)


def tool_file(filename, dirs=None):
    """Whether ``filename`` lies inside one of :func:`tool_dirs` (as given, or as resolved)."""
    dirs = tool_dirs() if dirs is None else dirs
    norm = os.path.normpath(filename)
    if norm.startswith(dirs):
        return True
    real = _real(filename)
    return real != norm and real.startswith(dirs)


def _tool_suffix_match(filename, components):
    """A match of ``components`` against a tool's file by a suffix shorter than its whole path:
    left out, so that ``api.py`` means the program's file, not ``debugpy/server/api.py``; the
    file's absolute path still names it."""
    whole = len(_components_cache.get(filename) or path_components(os.path.normpath(filename)))
    return len(components) < whole and tool_file(filename)


# -- resolution ------------------------------------------------------------------------------------


class Target(object):
    """Where a probe arms: the code objects and the line, and what its status says."""

    __slots__ = ("codes", "line", "requested_line", "file", "function")

    def __init__(self, codes, line, file, function, requested_line=None):
        self.codes = codes
        self.line = line
        self.requested_line = requested_line
        self.file = file
        self.function = function


class Pending(Exception):
    """No loaded code matches yet; ``reason`` says what the probe waits for."""

    def __init__(self, reason, components=None, module=None):
        Exception.__init__(self, reason)
        self.reason = reason
        self.components = components
        self.module = module


def resolve(location, index):
    """A Target for ``location``. Raises Pending or LocationError."""
    if location.module is not None:
        return _resolve_module_function(location, index)
    groups = index.matching_files(location.components)
    if not groups:
        loaded = loaded_module_files(location.components)
        if loaded:
            name, filename = loaded[0]
            if location.kind == "line":
                raise LocationError(
                    "{} (module {}) is loaded but no code of it is alive: module-level code runs "
                    "once at import and line {} is not in any function".format(filename, name, location.line)
                )
            raise LocationError("{} (module {}) has no function `{}`".format(filename, name, location.function))
        raise Pending(
            "no loaded module matches {} yet; it arms when one is imported".format(location.path),
            components=location.components,
        )
    if len(groups) > 1:
        raise LocationError(
            "{} matches several files: {}: give more of the path".format(
                location.path, ", ".join(sorted(groups))
            )
        )
    (filenames,) = groups.values()
    codes = [code for filename in filenames for code in index.files[filename]]
    display = sorted(filenames)[0]
    if location.kind == "line":
        return _resolve_line(location, index, codes, display)
    return _resolve_function_in_file(location, index, codes, display)


def _innermost(index, codes):
    return [c for c in codes if not any(o is not c and index.is_ancestor(c, o) for o in codes)]


def _outermost(index, codes):
    return [c for c in codes if not any(o is not c and index.is_ancestor(o, c) for o in codes)]


def _resolve_line(location, index, codes, display):
    line = location.line
    owners = [c for c in codes if line in index.own_lines(c)]
    if owners:
        owners = _outermost(index, owners)
        return Target(owners, line, display, index.qualname(owners[0]))
    # Snap: the next executable line of the innermost code whose span holds the line.
    spans = []
    for code in codes:
        lines = index.own_lines(code)
        if lines and code.co_firstlineno <= line <= lines[-1]:
            spans.append(code)
    spans = _innermost(index, spans)
    best = None
    for code in spans:
        later = [l for l in index.own_lines(code) if l > line]
        if later and (best is None or later[0] < best):
            best = later[0]
    if best is None:
        last = max((max(index.own_lines(c) or [0]) for c in codes), default=0)
        if line > last:
            raise LocationError(
                "{} has no executable line at or after {} in any function".format(location.path, line)
            )
        raise LocationError(
            "line {} of {} is not in any function (module-level code runs once, at import, and is "
            "not running now)".format(line, location.path)
        )
    targets = [c for c in spans if best in index.own_lines(c)]
    return Target(targets, best, display, index.qualname(targets[0]), requested_line=line)


def _plain(qualname):
    return qualname.replace(".<locals>", "")


def _resolve_function_in_file(location, index, codes, display):
    wanted = location.function
    exact = [c for c in codes if index.qualname(c) == wanted or _plain(index.qualname(c)) == wanted]
    if not exact and "." not in wanted:
        exact = [c for c in codes if c.co_name == wanted]
    if not exact:
        names = sorted(set(_plain(index.qualname(c)) for c in codes if c.co_name != "<module>"))
        shown = ", ".join(names[:15]) + (", ..." if len(names) > 15 else "")
        raise LocationError("no function `{}` in {} (its functions: {})".format(wanted, location.path, shown or "none"))
    return _function_target(location, index, exact, display)


def _function_target(location, index, codes, display):
    firsts = sorted(set(c.co_firstlineno for c in codes))
    if len(firsts) > 1:
        raise LocationError(
            "`{}` matches several functions in {} (at lines {}): use path.py:LINE".format(
                location.function, display, ", ".join(str(l) for l in firsts)
            )
        )
    line = entry_line(codes[0])
    return Target(codes, line, codes[0].co_filename, index.qualname(codes[0]))


def _resolve_module_function(location, index):
    module = sys.modules.get(location.module)
    if module is None:
        raise Pending(
            "module {} is not imported yet; it arms when it is".format(location.module),
            module=location.module,
        )
    obj = _lookup(module, location.function)
    code = _code_of(obj) if obj is not None else None
    if code is not None:
        index.add(code, _safe_qualname(obj))
        if id(code) in index.qualnames:  # not scry's own code
            same = [c for c in index.files.get(code.co_filename, []) if c is code]
            return _function_target(location, index, same or [code], code.co_filename)
    filename = getattr(module, "__file__", None)
    if isinstance(filename, str):
        codes = index.files.get(filename) or []
        if codes:
            return _resolve_function_in_file(
                Location(location.text, "function", path=filename, function=location.function),
                index,
                codes,
                filename,
            )
    raise LocationError("module {} has no function `{}`".format(location.module, location.function))


def _lookup(module, dotted):
    """Find ``A.b`` in a module by reading ``__dict__``s only (no getattr, no properties)."""
    obj = module
    for part in dotted.split("."):
        try:
            namespace = object.__getattribute__(obj, "__dict__")
        except Exception:
            return None
        if not isinstance(namespace, (dict, types.MappingProxyType)):
            return None
        obj = namespace.get(part)
        if obj is None:
            return None
    return obj


def _code_of(obj):
    for _ in range(16):
        if isinstance(obj, (staticmethod, classmethod)):
            obj = obj.__func__
            continue
        if isinstance(obj, types.MethodType):
            obj = obj.__func__
            continue
        if isinstance(obj, _FunctionType):
            wrapped = obj.__dict__.get("__wrapped__")
            if wrapped is not None:
                obj = wrapped
                continue
            return obj.__code__
        return None
    return None


# -- waiting for imports -------------------------------------------------------------------------


class ImportWatcher(object):
    """A ``sys.meta_path`` finder that tells ``on_loaded(module)`` when a module that may hold a
    pending probe has been executed. It never changes what is imported: it finds the spec with the
    finders after it, and, for a module whose name fits, wraps the loader instance's
    ``exec_module`` for that one execution (the wrapper removes itself)."""

    def __init__(self, on_loaded):
        self._on_loaded = on_loaded
        self._local = threading.local()
        self.stems = frozenset()
        self.modules = frozenset()

    def install(self, stems, modules):
        """Watch for modules whose last name part is in ``stems`` or whose name is in ``modules``."""
        self.stems = frozenset(stems)
        self.modules = frozenset(modules)
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)

    def remove(self):
        self.stems = frozenset()
        self.modules = frozenset()
        try:
            while self in sys.meta_path:
                sys.meta_path.remove(self)
        except (ValueError, AttributeError):
            pass

    @property
    def installed(self):
        return self in sys.meta_path

    def _wanted(self, fullname):
        if fullname in self.modules:
            return True
        return fullname.rpartition(".")[2] in self.stems

    def find_spec(self, fullname, path=None, target=None):
        try:
            if getattr(self._local, "busy", False) or not self._wanted(fullname):
                return None
            self._local.busy = True
            try:
                spec = self._find(fullname, path, target)
            finally:
                self._local.busy = False
            if spec is not None:
                self._wrap(spec)
            return spec
        except Exception:
            return None

    def _find(self, fullname, path, target):
        for finder in list(sys.meta_path):
            if finder is self:
                continue
            find_spec = getattr(finder, "find_spec", None)
            if find_spec is None:
                return None  # a legacy finder: let the import system do the whole search
            spec = find_spec(fullname, path, target)
            if spec is not None:
                return spec
        return None

    def _wrap(self, spec):
        loader = spec.loader
        if loader is None or isinstance(loader, type) or "exec_module" in getattr(loader, "__dict__", {}):
            return
        original = getattr(loader, "exec_module", None)
        if original is None:
            return
        on_loaded = self._on_loaded

        def exec_module(module):
            try:
                loader.__dict__.pop("exec_module", None)
            except Exception:
                pass
            original(module)
            try:
                on_loaded(module)
            except Exception:
                pass

        try:
            loader.exec_module = exec_module
        except Exception:
            return

    # importlib.invalidate_caches() calls this on every finder.
    def invalidate_caches(self):
        pass


def module_stem(components):
    """The module name part a path's file gives (``orders.py`` -> ``orders``; ``__init__.py`` ->
    its package directory)."""
    name = components[-1]
    for suffix in (".py", ".pyw"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    if name == "__init__" and len(components) > 1:
        return components[-2]
    return name
