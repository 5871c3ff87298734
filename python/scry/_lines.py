"""Finding the line: the executable lines of a file or function, and where a variable is bound
and read, answered from the code that is loaded in this process (the ``find_lines`` call).

The code objects decide what is executable (their line tables, through :mod:`_locate`); the
source's ``ast`` decides where a name is bound or read and in which scope; the two are matched
by code object (``co_name`` and ``co_firstlineno`` of each function, lambda and comprehension
scope). No text is ever searched for the name.

The source parsed is the one the loaded code was compiled from: the line cache's copy or the
file on disk, whichever compiles to the same line tables and bytecode as the loaded code
objects. When the file on disk was edited after the module was loaded, the loaded code wins:
the answer says ``file_differs`` and, if no matching source is left, the variable's lines come
from the loaded bytecode (``dis``) and have no excerpt.

Not for: arming anything. This only reads; the caller adds a probe at a line it chose.
"""

import ast
import linecache
import logging
import os
import threading

from . import _calls, _locate

log = logging.getLogger("scry")

_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
_COMP_NAMES = {
    ast.ListComp: "<listcomp>",
    ast.SetComp: "<setcomp>",
    ast.DictComp: "<dictcomp>",
    ast.GeneratorExp: "<genexpr>",
}
_EXCERPT = 100
_DEFAULT_LIMIT = 400
_MAX_LIMIT = 5000


# -- the call ---------------------------------------------------------------------------------------


@_calls.method("find_lines")
def _find_lines_call(params, call):
    """``{target, var?, limit?}``: answered from a worker thread (the scan reads every object)."""
    target = params.get("target")
    var = params.get("var")
    limit = params.get("limit", _DEFAULT_LIMIT)
    if not isinstance(target, str) or not target.strip():
        raise _calls.CallError(
            "bad_request",
            "`target` must be a file (orders.py, app/orders.py) or a function "
            "(module:function, module:Class.method, path.py:function)",
        )
    if var is not None and (not isinstance(var, str) or not _is_dotted_name(var)):
        raise _calls.CallError("bad_request", "`var` must be a name such as `total` or `order.total`")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= _MAX_LIMIT:
        raise _calls.CallError("bad_request", "`limit` must be an integer from 1 to {}".format(_MAX_LIMIT))

    def work():
        try:
            call.reply(find_lines(target.strip(), var, limit))
        except _calls.CallError as exc:
            call.fail(exc.kind, exc.message)
        except Exception as exc:  # never into the host program
            log.warning("scry find_lines failed: %r", exc)
            call.fail("internal", "find_lines failed in the agent: {!r}".format(exc))

    threading.Thread(target=work, name="scry-find-lines", daemon=True).start()
    return _calls.DEFERRED


def _is_dotted_name(text):
    parts = text.split(".")
    return all(p.isidentifier() for p in parts)


def find_lines(target, var=None, limit=_DEFAULT_LIMIT):
    """The answer for ``target`` (a file, or a function location) and optionally ``var``."""
    codes, filename, function = _codes_for(target)
    index = codes["index"]
    all_codes = codes["file_codes"]
    chosen = codes["chosen"]
    source = _LoadedSource(filename, all_codes)
    answer = {
        "target": target,
        "file": filename,
        "function": function,
        "source": source.origin,
        "file_differs": source.file_differs,
        # The daemon refuses a probe past this line (its add-time location check).
        "last_line": _last_line(source, all_codes),
    }
    if source.note:
        answer["note"] = source.note

    # Executable lines: each line to the outermost chosen code that has it (the one whose frame
    # runs the statement, as for probes).
    owner = {}
    for code in sorted(chosen, key=lambda c: _depth(index, c)):
        for line in index.own_lines(code):
            owner.setdefault(line, code)
    rows = [[line, index.qualname(owner[line]), source.excerpt(line)] for line in sorted(owner)]
    answer["lines"] = _table(["line", "function", "source"], rows, limit)

    if var is not None:
        if source.tree is not None:
            found = _variable_from_ast(var, source, index, chosen, all_codes)
        else:
            found = _variable_from_bytecode(var, index, chosen)
        answer["var"] = var
        answer["bindings"] = _table(
            ["line", "probe_line", "after_line", "how", "function", "scope", "source"],
            found["bindings"],
            limit,
        )
        answer["reads"] = _table(["line", "probe_line", "function", "scope", "source"], found["reads"], limit)
        if not found["bindings"] and not found["reads"]:
            answer["hint"] = "`{}` is neither bound nor read in {}".format(var, function or filename)
    return answer


def _last_line(source, codes):
    """The file's last line as loaded: its source's, else the last line its code covers."""
    if source.lines is not None:
        return len(source.lines)
    last = 0
    for code in codes:
        lines = _locate.raw_lines(code)
        if lines:
            last = max(last, max(lines))
    return last or None


def _table(columns, rows, limit):
    out = {"columns": columns, "rows": rows[:limit], "total": len(rows)}
    if len(rows) > limit:
        out["truncated"] = True
    return out


def _depth(index, code):
    depth = 0
    key = index.parents.get(id(code))
    while key is not None and depth < 100:
        depth += 1
        key = index.parents.get(key)
    return depth


# -- which code -------------------------------------------------------------------------------------


def _codes_for(target):
    """The code index, the loaded file, and the chosen code objects for ``target``."""
    is_file = ":" not in target or (target.rpartition(":")[2].isdigit())
    if is_file:
        path = target.rpartition(":")[0] if ":" in target else target
        components = _locate.path_components(path)
        index = _locate.CodeIndex.build([components])
        groups = index.matching_files(components)
        if not groups:
            loaded = _locate.loaded_module_files(components)
            if loaded:
                raise _calls.CallError(
                    "not_found",
                    "{} (module {}) is loaded but none of its code is alive: it has no functions, "
                    "and its module-level code ran once at import".format(loaded[0][1], loaded[0][0]),
                )
            raise _calls.CallError("not_found", "no loaded module matches {}".format(path))
        if len(groups) > 1:
            raise _calls.CallError(
                "ambiguous", "{} matches several files: {}: give more of the path".format(path, ", ".join(sorted(groups)))
            )
        (filenames,) = groups.values()
        codes = [c for f in filenames for c in index.files[f]]
        return {"index": index, "file_codes": codes, "chosen": codes}, sorted(filenames)[0], None
    try:
        location = _locate.parse_location(target)
    except _locate.LocationError as exc:
        raise _calls.CallError("bad_request", str(exc))
    paths = _locate.index_paths(location)
    if paths is None:
        raise _calls.CallError("not_found", "module {} is not imported in this process".format(location.module))
    index = _locate.CodeIndex.build([paths])
    try:
        resolved = _locate.resolve(location, index)
    except _locate.Pending as exc:
        raise _calls.CallError("not_found", exc.reason)
    except _locate.LocationError as exc:
        raise _calls.CallError("not_found", str(exc))
    filename = resolved.codes[0].co_filename
    file_codes = index.files.get(filename) or list(resolved.codes)
    chosen = [c for c in file_codes if any(c is r or index.is_ancestor(r, c) for r in resolved.codes)]
    return {"index": index, "file_codes": file_codes, "chosen": chosen or list(resolved.codes)}, filename, resolved.function


# -- the loaded source -------------------------------------------------------------------------------


def _signature(code):
    """What must match between a loaded code object and one compiled from a candidate source."""
    return (tuple(sorted(set(_locate.raw_lines(code)))), code.co_code)


def _compiled_signatures(text, filename):
    top = compile(text, filename, "exec", dont_inherit=True)
    out = {}
    stack = [top]
    while stack:
        code = stack.pop()
        out.setdefault((code.co_name, code.co_firstlineno), []).append(_signature(code))
        stack.extend(c for c in code.co_consts if isinstance(c, type(top)))
    return out


def _matches(text, filename, codes):
    try:
        compiled = _compiled_signatures(text, filename)
    except (SyntaxError, ValueError, TypeError, RecursionError):
        return False
    for code in codes:
        if _signature(code) not in compiled.get((code.co_name, code.co_firstlineno), ()):
            return False
    return True


class _LoadedSource(object):
    """The source text the loaded code was compiled from, parsed, or None."""

    def __init__(self, filename, codes):
        self.filename = filename
        self.lines = None
        self.tree = None
        self.origin = "bytecode"
        self.note = None
        self.file_differs = False
        disk = _read(filename)
        cached = linecache.cache.get(filename)
        cached_text = "".join(cached[2]) if isinstance(cached, tuple) and len(cached) == 4 else None
        if disk is not None and _matches(disk, filename, codes):
            self._use(disk, "file")
            return
        self.file_differs = True
        if cached_text is not None and cached_text != disk and _matches(cached_text, filename, codes):
            self._use(cached_text, "linecache")
            self.note = (
                "{} changed on disk after it was loaded: lines and excerpts are those of the loaded "
                "code (from the line cache), not of the file".format(filename)
            )
            return
        if disk is None:
            self.note = "the source of {} cannot be read: lines come from the loaded code, without excerpts".format(filename)
        else:
            self.note = (
                "{} changed on disk after it was loaded: lines come from the loaded code (its line "
                "tables and bytecode), the file's text is not shown".format(filename)
            )

    def _use(self, text, origin):
        try:
            self.tree = ast.parse(text, self.filename)
        except (SyntaxError, ValueError, RecursionError):
            self.tree = None
            return
        self.lines = text.splitlines()
        self.origin = origin

    def excerpt(self, line):
        if self.lines is None or not 1 <= line <= len(self.lines):
            return None
        text = self.lines[line - 1].strip()
        return text if len(text) <= _EXCERPT else text[: _EXCERPT - 3] + "..."


def _read(filename):
    if not isinstance(filename, str) or not os.path.isfile(filename):
        return None
    try:
        import tokenize  # here, not at import: only find_lines reads source files

        with tokenize.open(filename) as f:
            return f.read()
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None


# -- a variable, from the ast ----------------------------------------------------------------------


class _Scope(object):
    __slots__ = ("node", "parent", "name", "first_line", "kind", "declared_global", "declared_nonlocal", "bound")

    def __init__(self, node, parent, name, first_line, kind):
        self.node = node
        self.parent = parent
        self.name = name
        self.first_line = first_line
        self.kind = kind  # module, function, class, comprehension
        self.declared_global = set()
        self.declared_nonlocal = set()
        self.bound = set()


def _dotted(node):
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


class _Walker(object):
    """Collects (scope, node, role, how, statement) for every use of ``var`` and the scopes."""

    def __init__(self, var):
        self.var = var
        self.dotted = "." in var
        self.uses = []  # (scope, line, role, how, stmt, parent_body_info)
        self.scopes = []

    def run(self, tree):
        module = _Scope(tree, None, "<module>", 1, "module")
        self.scopes.append(module)
        self._body(tree.body, module, None)

    def _new_scope(self, node, scope, name, kind):
        first = node.lineno
        for deco in getattr(node, "decorator_list", ()):
            first = min(first, deco.lineno)
        child = _Scope(node, scope, name, first, kind)
        self.scopes.append(child)
        return child

    def _body(self, stmts, scope, parent_stmt):
        for i, stmt in enumerate(stmts):
            following = stmts[i + 1] if i + 1 < len(stmts) else None
            self._stmt(stmt, scope, (parent_stmt, following))

    def _stmt(self, stmt, scope, context):
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for deco in stmt.decorator_list:
                self._expr(deco, scope, stmt, context)
            if isinstance(stmt, ast.ClassDef):
                for base in stmt.bases:
                    self._expr(base, scope, stmt, context)
                for kw in stmt.keywords:
                    self._expr(kw.value, scope, stmt, context)
            else:
                self._arguments_defaults(stmt.args, scope, stmt, context)
                if stmt.returns is not None:
                    self._expr(stmt.returns, scope, stmt, context)
            self._bind_name(stmt.name, scope, stmt, "def", context)
            kind = "class" if isinstance(stmt, ast.ClassDef) else "function"
            inner = self._new_scope(stmt, scope, stmt.name, kind)
            if kind == "function":
                self._parameters(stmt.args, inner, stmt)
            self._body(stmt.body, inner, stmt)
            return
        if isinstance(stmt, (ast.Global, ast.Nonlocal)):
            target = scope.declared_global if isinstance(stmt, ast.Global) else scope.declared_nonlocal
            target.update(stmt.names)
            return
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            for alias in stmt.names:
                name = alias.asname or alias.name.split(".")[0]
                if alias.name != "*":
                    self._bind_name(name, scope, stmt, "import", context)
            return
        # Generic statement: visit expressions in field order, then nested bodies.
        for field, value in ast.iter_fields(stmt):
            if field in ("body", "orelse", "finalbody", "handlers", "cases"):
                continue
            self._field(value, scope, stmt, context)
        for field in ("body", "orelse", "finalbody"):
            body = getattr(stmt, field, None)
            if body:
                self._body(body, scope, stmt)
        for handler in getattr(stmt, "handlers", ()) or ():
            if handler.type is not None:
                self._expr(handler.type, scope, handler, context)
            if handler.name:
                self._bind_name(handler.name, scope, handler, "except", (stmt, handler.body[0] if handler.body else None))
            self._body(handler.body, scope, stmt)
        for case in getattr(stmt, "cases", ()) or ():
            self._pattern(case.pattern, scope, stmt, context)
            if case.guard is not None:
                self._expr(case.guard, scope, stmt, context)
            self._body(case.body, scope, stmt)

    def _field(self, value, scope, stmt, context):
        if isinstance(value, list):
            for item in value:
                self._field(item, scope, stmt, context)
        elif isinstance(value, ast.expr):
            self._expr(value, scope, stmt, context)
        elif isinstance(value, ast.withitem):
            self._expr(value.context_expr, scope, stmt, context)
            if value.optional_vars is not None:
                self._target(value.optional_vars, scope, stmt, "with", context)

    def _pattern(self, pattern, scope, stmt, context):
        for node in ast.walk(pattern):
            name = getattr(node, "name", None) if type(node).__name__ in ("MatchAs", "MatchStar") else None
            if isinstance(name, str):
                self._bind_name(name, scope, stmt, "match", context)
            rest = getattr(node, "rest", None) if type(node).__name__ == "MatchMapping" else None
            if isinstance(rest, str):
                self._bind_name(rest, scope, stmt, "match", context)
            if isinstance(node, ast.expr) and not isinstance(node, ast.Name):
                pass

    def _arguments_defaults(self, args, scope, stmt, context):
        for default in list(args.defaults) + [d for d in args.kw_defaults if d is not None]:
            self._expr(default, scope, stmt, context)
        for arg in list(getattr(args, "posonlyargs", [])) + list(args.args) + list(args.kwonlyargs) + [args.vararg, args.kwarg]:
            if arg is not None and arg.annotation is not None:
                self._expr(arg.annotation, scope, stmt, context)

    def _parameters(self, args, inner, node):
        for arg in list(getattr(args, "posonlyargs", [])) + list(args.args) + list(args.kwonlyargs) + [args.vararg, args.kwarg]:
            if arg is None:
                continue
            inner.bound.add(arg.arg)
            if arg.arg == self.var:
                self.uses.append((inner, arg.lineno, "bind", "parameter", node, None))

    def _bind_name(self, name, scope, stmt, how, context):
        scope.bound.add(name)
        if name == self.var:
            self.uses.append((scope, stmt.lineno, "bind", how, stmt, context))

    def _target(self, node, scope, stmt, how, context):
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                self._bind_name(sub.id, scope, stmt, how, context) if sub.id == self.var else scope.bound.add(sub.id)
            elif isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store) and self.dotted:
                if _dotted(sub) == self.var:
                    self.uses.append((scope, sub.lineno, "bind", how, stmt, context))
        # Expressions inside the target (subscripts, attribute bases) are reads.
        for sub in ast.walk(node):
            if isinstance(sub, (ast.Subscript, ast.Attribute)):
                self._expr(sub.value, scope, stmt, context)
                if isinstance(sub, ast.Subscript):
                    self._expr(sub.slice, scope, stmt, context)

    def _expr(self, node, scope, stmt, context):
        if node is None:
            return
        if isinstance(node, ast.Lambda):
            self._arguments_defaults(node.args, scope, stmt, context)
            inner = self._new_scope(node, scope, "<lambda>", "function")
            self._parameters(node.args, inner, node)
            self._expr(node.body, inner, stmt, None)
            return
        if isinstance(node, _COMPREHENSIONS):
            generators = node.generators
            # The first iterable is evaluated in the enclosing scope.
            self._expr(generators[0].iter, scope, stmt, context)
            inner = self._new_scope(node, scope, _COMP_NAMES[type(node)], "comprehension")
            for i, gen in enumerate(generators):
                if i:
                    self._expr(gen.iter, inner, stmt, None)
                for sub in ast.walk(gen.target):
                    if isinstance(sub, ast.Name):
                        inner.bound.add(sub.id)
                        if sub.id == self.var:
                            self.uses.append((inner, sub.lineno, "bind", "comprehension", stmt, None))
                for cond in gen.ifs:
                    self._expr(cond, inner, stmt, None)
            if isinstance(node, ast.DictComp):
                self._expr(node.key, inner, stmt, None)
                self._expr(node.value, inner, stmt, None)
            else:
                self._expr(node.elt, inner, stmt, None)
            return
        if isinstance(node, ast.NamedExpr):
            self._expr(node.value, scope, stmt, context)
            # A walrus in a comprehension binds in the enclosing function.
            bind_scope = scope
            while bind_scope.kind == "comprehension" and bind_scope.parent is not None:
                bind_scope = bind_scope.parent
            name = node.target.id
            bind_scope.bound.add(name)
            if name == self.var:
                self.uses.append((bind_scope, node.lineno, "bind", "walrus", stmt, context))
            return
        if isinstance(node, ast.Name):
            if node.id == self.var and not self.dotted:
                if isinstance(node.ctx, ast.Load):
                    self.uses.append((scope, node.lineno, "read", None, stmt, None))
                elif isinstance(node.ctx, ast.Del):
                    self.uses.append((scope, node.lineno, "bind", "del", stmt, context))
            if isinstance(node.ctx, ast.Store):
                if isinstance(stmt, ast.AugAssign) and node is stmt.target and node.id == self.var:
                    self.uses.append((scope, node.lineno, "read", None, stmt, None))
                self._target(node, scope, stmt, _how(stmt), context)
            return
        if isinstance(node, ast.Attribute) and self.dotted and _dotted(node) == self.var:
            role = "read" if isinstance(node.ctx, ast.Load) else "bind"
            self.uses.append((scope, node.lineno, role, None if role == "read" else _how(stmt), stmt, context))
            return
        if isinstance(node, (ast.Tuple, ast.List, ast.Starred, ast.Subscript, ast.Attribute)) and isinstance(
            getattr(node, "ctx", None), ast.Store
        ):
            self._target(node, scope, stmt, _how(stmt), context)
            return
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.expr):
                self._expr(child, scope, stmt, context)
            elif isinstance(child, ast.keyword):
                self._expr(child.value, scope, stmt, context)
            elif isinstance(child, ast.comprehension):
                pass
            elif isinstance(child, ast.arguments):
                pass
            else:
                for sub in ast.iter_child_nodes(child):
                    if isinstance(sub, ast.expr):
                        self._expr(sub, scope, stmt, context)


def _how(stmt):
    if isinstance(stmt, ast.AugAssign):
        return "augmented"
    if isinstance(stmt, ast.AnnAssign):
        return "annotated"
    if isinstance(stmt, (ast.For, ast.AsyncFor)):
        return "for"
    if isinstance(stmt, (ast.With, ast.AsyncWith)):
        return "with"
    if isinstance(stmt, ast.Delete):
        return "del"
    return "assign"


def _scope_kind(scope, name):
    """How ``name`` is resolved in ``scope``: local, global, nonlocal or free."""
    if name in scope.declared_global or scope.kind == "module":
        return "global"
    if name in scope.declared_nonlocal:
        return "nonlocal"
    if name in scope.bound:
        return "comprehension" if scope.kind == "comprehension" else "local"
    if scope.kind == "class":
        return "global"
    parent = scope.parent
    while parent is not None:
        if parent.kind in ("function", "comprehension") and name in parent.bound and name not in parent.declared_global:
            return "free"
        parent = parent.parent
    return "global"


def _variable_from_ast(var, source, index, chosen, file_codes):
    walker = _Walker(var)
    walker.run(source.tree)
    # Map each ast scope to its loaded code objects; an inlined comprehension (3.12+) has none
    # and runs in its enclosing code.
    by_key = {}
    for code in file_codes:
        by_key.setdefault((code.co_name, code.co_firstlineno), []).append(code)
    chosen_ids = set(id(c) for c in chosen)

    def code_of(scope):
        while scope is not None:
            if scope.kind == "module":
                codes = [c for c in file_codes if c.co_name == "<module>"]
            else:
                codes = by_key.get((_code_name(scope), scope.first_line), [])
            if codes:
                return codes
            if scope.kind != "comprehension":
                return []
            scope = scope.parent
        return []

    bindings, reads, seen = [], [], set()
    for scope, line, role, how, stmt, context in walker.uses:
        codes = code_of(scope)
        codes = [c for c in codes if id(c) in chosen_ids]
        if not codes:
            continue
        code = codes[0]
        lines = index.own_lines(code)
        probe = _probe_line(lines, line, stmt)
        qualname = index.qualname(code)
        kind = _scope_kind(scope, var.split(".")[0])
        key = (role, line, qualname, how)
        if key in seen:
            continue
        seen.add(key)
        if role == "bind":
            after = _after_line(lines, how, stmt, context, code)
            bindings.append([line, probe, after, how, qualname, kind, source.excerpt(line)])
        else:
            reads.append([line, probe, qualname, kind, source.excerpt(line)])
    bindings.sort(key=lambda r: (r[0], r[4]))
    reads.sort(key=lambda r: (r[0], r[2]))
    return {"bindings": bindings, "reads": reads}


def _code_name(scope):
    return scope.name


def _probe_line(lines, line, stmt):
    """The executable line a probe for the statement at ``line`` arms on (None: not executable)."""
    if line in lines:
        return line
    start = getattr(stmt, "lineno", line)
    end = getattr(stmt, "end_lineno", None) or line
    before = [l for l in lines if start <= l <= line]
    if before:
        return before[-1]
    after = [l for l in lines if line < l <= end]
    return after[0] if after else None


def _first_at_or_after(lines, line):
    for l in lines:
        if l >= line:
            return l
    return None


def _after_line(lines, how, stmt, context, code):
    """The first line at which the bound value can be read (a probe there sees it)."""
    if how == "parameter":
        return lines[0] if lines else None
    if how == "comprehension" or stmt is None:
        return None
    if how in ("for", "with") and getattr(stmt, "body", None):
        return _first_at_or_after(lines, stmt.body[0].lineno)
    if how == "except" and context is not None and context[1] is not None:
        return _first_at_or_after(lines, context[1].lineno)
    if isinstance(stmt, (ast.If, ast.While)) and how == "walrus":
        return _first_at_or_after(lines, stmt.body[0].lineno)
    parent, following = context if context else (None, None)
    if following is not None:
        return _first_at_or_after(lines, following.lineno)
    # The last statement of a loop body: the loop's next test comes next.
    if isinstance(parent, (ast.For, ast.AsyncFor, ast.While)):
        return _first_at_or_after(lines, parent.lineno)
    end = getattr(stmt, "end_lineno", None) or stmt.lineno
    return _first_at_or_after(lines, end + 1)


# -- a variable, from the loaded bytecode (no matching source) --------------------------------------


def _instruction_line(instr, current):
    line = getattr(instr, "line_number", None)  # 3.13+
    if line is not None:
        return line
    positions = getattr(instr, "positions", None)  # 3.11+
    if positions is not None and positions.lineno is not None:
        return positions.lineno
    if isinstance(instr.starts_line, int) and not isinstance(instr.starts_line, bool):
        return instr.starts_line
    return current


def _variable_from_bytecode(var, index, chosen):
    bindings, reads, seen = [], [], set()
    name = var.split(".")[0]
    for code in chosen:
        qualname = index.qualname(code)
        lines = index.own_lines(code)
        line = None
        kind = (
            "local"
            if name in code.co_varnames
            else "free"
            if name in code.co_freevars
            else "local"
            if name in code.co_cellvars
            else "global"
        )
        try:
            import dis  # here, not at import: only this fallback needs it

            instructions = list(dis.get_instructions(code))
        except Exception:
            continue
        for instr in instructions:
            line = _instruction_line(instr, line)
            names = instr.argval if isinstance(instr.argval, tuple) else (instr.argval,)
            if name not in names or line is None:
                continue
            for role in _roles(instr.opname, names, name):
                key = (role, line, qualname)
                if key in seen:
                    continue
                seen.add(key)
                probe = line if line in lines else _first_at_or_after(lines, line)
                if role == "bind":
                    later = [l for l in lines if l > line]
                    bindings.append([line, probe, later[0] if later else None, "store", qualname, kind, None])
                else:
                    reads.append([line, probe, qualname, kind, None])
    bindings.sort(key=lambda r: (r[0], r[4]))
    reads.sort(key=lambda r: (r[0], r[2]))
    return {"bindings": bindings, "reads": reads}


_VARIABLE_LOADS = ("LOAD_FAST", "LOAD_NAME", "LOAD_GLOBAL", "LOAD_DEREF", "LOAD_CLOSURE", "LOAD_CLASSDEREF", "LOAD_FROM_DICT_OR")
_VARIABLE_STORES = ("STORE_FAST", "STORE_NAME", "STORE_GLOBAL", "STORE_DEREF", "DELETE_FAST", "DELETE_NAME", "DELETE_GLOBAL", "DELETE_DEREF")


def _roles(opname, names, name):
    """Whether an instruction on a variable binds and/or reads ``name`` (attribute and constant
    instructions name other things and never count)."""
    roles = []
    if opname == "STORE_FAST_LOAD_FAST" and len(names) == 2:  # 3.13+: store one, load another
        if names[0] == name:
            roles.append("bind")
        if names[1] == name:
            roles.append("read")
        return roles
    if opname.startswith(_VARIABLE_STORES):
        roles.append("bind")
    elif opname.startswith(_VARIABLE_LOADS):
        roles.append("read")
    return roles
