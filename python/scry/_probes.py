"""Probe specs: parsing, expression checking and compiling, rate modes, and the Probe record.

A ``ProbeSpec`` arrives from the daemon (``probes_sync``, docs/protocol.md "Probes"). Its
expressions and condition are parsed with :mod:`ast` and checked once, before anything is armed:
only names, attribute reads, subscripts, constants, displays, operators, comparisons, conditional
expressions and f-strings are allowed, and calls only to a short list of pure builtins (unless the
probe is ``unsafe``, which lifts the call rule and nothing else). A probe that fails the check gets
``error``/``invalid_expression`` and is never armed.

All expressions of a probe are compiled into ONE code object that evaluates a tuple (or the value,
for a probe with one expression), evaluated on the hit with the frame's globals and locals; each
expression is also compiled on its own, used only to tell which expression raised when the tuple
fails. A probe whose only expression is a bare name reads it from the frame's locals directly
(``eval`` runs only when the name is not a local), which saves about a third of the hit. Calls to the allowed builtins are
rewritten to private names (``_scry_len``) that resolve to the real builtins whatever the frame
binds to ``len``; ``sorted``/``sum``/``min``/``max``/``any``/``all`` resolve to wrappers that refuse
inputs of more than :data:`MAX_ITERABLE` items.
"""

import ast
import itertools
import sys

#: The builtins an expression may call (without ``unsafe``).
SAFE_CALLS = (
    "len",
    "type",
    "isinstance",
    "min",
    "max",
    "sum",
    "abs",
    "round",
    "str",
    "repr",
    "sorted",
    "bool",
    "int",
    "float",
    "any",
    "all",
)
#: Builtins that iterate their input: they refuse inputs longer than MAX_ITERABLE.
BOUNDED_CALLS = ("sorted", "sum", "min", "max", "any", "all")
MAX_ITERABLE = 10000
#: The private name prefix calls are rewritten to; user expressions may not use it.
PRIVATE = "_scry"

DEFAULT_LIMITS = {"depth": 3, "items": 20, "string": 256}
DEFAULT_CAPTURE = {"stack": False, "locals": False, "repr": False}

# Rate modes (small ints: the hit path compares them).
EVERY, SAMPLE, RATE, FIRST = 0, 1, 2, 3
_RATE_MODES = {"every": EVERY, "sample": SAMPLE, "rate": RATE, "first": FIRST}

# Probe states, as sent in statuses.
PENDING, ARMED, ERROR, EXPIRED = "pending", "armed", "error", "expired"


class InvalidExpression(Exception):
    """An expression or condition that may not be evaluated; the message names the problem."""


# -- the expression check ----------------------------------------------------------------------

_ALLOWED = tuple(
    getattr(ast, name)
    for name in (
        "Expression",
        "Constant",
        "Name",
        "Load",
        "Attribute",
        "Subscript",
        "Slice",
        "Index",
        "ExtSlice",
        "Tuple",
        "List",
        "Set",
        "Dict",
        "UnaryOp",
        "BinOp",
        "BoolOp",
        "Compare",
        "IfExp",
        "JoinedStr",
        "FormattedValue",
        "Call",
        "keyword",
        "operator",
        "unaryop",
        "boolop",
        "cmpop",
    )
    if hasattr(ast, name)
)

_FORBIDDEN = [
    ("NamedExpr", "assignment expressions (:=) are not allowed"),
    ("Lambda", "lambda is not allowed"),
    ("ListComp", "comprehensions and generator expressions are not allowed (they are unbounded loops)"),
    ("SetComp", "comprehensions and generator expressions are not allowed (they are unbounded loops)"),
    ("DictComp", "comprehensions and generator expressions are not allowed (they are unbounded loops)"),
    ("GeneratorExp", "comprehensions and generator expressions are not allowed (they are unbounded loops)"),
    ("Await", "await is not allowed"),
    ("Yield", "yield is not allowed"),
    ("YieldFrom", "yield is not allowed"),
    ("Starred", "starred expressions (*x) are not allowed"),
    ("TemplateStr", "template strings (t-strings) are not allowed"),
]
_FORBIDDEN = [(getattr(ast, name), why) for name, why in _FORBIDDEN if hasattr(ast, name)]

_NOT_AN_EXPRESSION = "not an expression: assignments/imports/del are not allowed"


def _is_dunder(name):
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def _segment(text, node):
    try:
        seg = ast.get_source_segment(text, node)
    except Exception:
        seg = None
    if not seg:
        seg = type(node).__name__
    return seg if len(seg) <= 60 else seg[:57] + "..."


def _parse(text):
    """The ``ast.Expression`` of ``text``; raises InvalidExpression."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidExpression("empty expression")
    source = text.strip()
    try:
        return ast.parse(source, mode="eval")
    except SyntaxError as exc:
        try:
            module = ast.parse(source, mode="exec")
        except SyntaxError:
            module = None
        if module is not None and module.body and not (
            len(module.body) == 1 and isinstance(module.body[0], ast.Expr)
        ):
            raise InvalidExpression(_NOT_AN_EXPRESSION)
        where = " (column {})".format(exc.offset) if exc.offset else ""
        raise InvalidExpression("invalid syntax: {}{}".format(exc.msg or "cannot parse", where))
    except (ValueError, TypeError, MemoryError, RecursionError) as exc:
        raise InvalidExpression("cannot parse: {}".format(exc))


def _check(tree, text, unsafe):
    """Raise InvalidExpression naming the first forbidden piece of ``tree``."""
    for node in ast.walk(tree):
        for kind, why in _FORBIDDEN:
            if isinstance(node, kind):
                raise InvalidExpression("{}: {}".format(why, _segment(text, node)))
        if not isinstance(node, _ALLOWED):
            raise InvalidExpression(
                "{} is not allowed in a probe expression: {}".format(type(node).__name__, _segment(text, node))
            )
        if isinstance(node, ast.Name):
            if _is_dunder(node.id):
                raise InvalidExpression("names that start and end with __ are not allowed: {}".format(node.id))
            if node.id.startswith(PRIVATE):
                raise InvalidExpression("names starting with {} are reserved for scry: {}".format(PRIVATE, node.id))
            if not isinstance(node.ctx, ast.Load):
                raise InvalidExpression(_NOT_AN_EXPRESSION)
        elif isinstance(node, ast.Attribute):
            if node.attr.startswith("__") and node.attr.endswith("__"):
                raise InvalidExpression(
                    "attributes that start and end with __ are not allowed: .{}".format(node.attr)
                )
            if node.attr.startswith(PRIVATE):
                raise InvalidExpression("attributes starting with {} are not allowed: .{}".format(PRIVATE, node.attr))
        elif isinstance(node, ast.Dict):
            if any(key is None for key in node.keys):
                raise InvalidExpression("dict unpacking (**x) is not allowed: {}".format(_segment(text, node)))
        elif isinstance(node, ast.keyword):
            if node.arg is None:
                raise InvalidExpression("keyword unpacking (**x) is not allowed: {}".format(_segment(text, node)))
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in SAFE_CALLS:
                continue
            if not unsafe:
                raise InvalidExpression(
                    "calls are not allowed: {}() (only {} may be called; a probe created with "
                    "unsafe may call anything)".format(_segment(text, func), ", ".join(SAFE_CALLS))
                )


class _RewriteCalls(ast.NodeTransformer):
    """``len(x)`` -> ``_scry_len(x)``: the allowed builtins cannot be shadowed by the frame."""

    def __init__(self):
        self.used = set()

    def visit_Call(self, node):
        self.generic_visit(node)
        func = node.func
        if isinstance(func, ast.Name) and func.id in SAFE_CALLS:
            self.used.add(func.id)
            node.func = ast.copy_location(ast.Name(id=PRIVATE + "_" + func.id, ctx=ast.Load()), func)
        return node


def check_expression(text, unsafe=False):
    """Parse and check one expression; returns its ``ast.Expression``. Raises InvalidExpression."""
    tree = _parse(text)
    _check(tree, text.strip(), unsafe)
    return tree


# -- bounded builtins --------------------------------------------------------------------------


class InputTooLong(Exception):
    """A bounded builtin got more than MAX_ITERABLE items."""


def _bounded(iterable, name):
    try:
        size = len(iterable)
    except TypeError:
        items = list(itertools.islice(iterable, MAX_ITERABLE + 1))
        if len(items) > MAX_ITERABLE:
            raise InputTooLong("{}() refuses inputs of more than {} items in a probe".format(name, MAX_ITERABLE))
        return items
    if size > MAX_ITERABLE:
        raise InputTooLong(
            "{}() refuses inputs of more than {} items in a probe (this one has {})".format(name, MAX_ITERABLE, size)
        )
    return iterable


def _make_bounded(name, builtin, always_iterable):
    if always_iterable:

        def call(iterable, *args, **kwargs):
            return builtin(_bounded(iterable, name), *args, **kwargs)

    else:  # min/max: one iterable, or several values

        def call(*args, **kwargs):
            if len(args) == 1:
                return builtin(_bounded(args[0], name), **kwargs)
            return builtin(*args, **kwargs)

    call.__name__ = name
    return call


def _helpers():
    import builtins

    out = {}
    for name in SAFE_CALLS:
        builtin = getattr(builtins, name)
        if name in BOUNDED_CALLS:
            builtin = _make_bounded(name, builtin, name not in ("min", "max"))
        out[PRIVATE + "_" + name] = builtin
    return out


HELPERS = _helpers()


_LOC = PRIVATE + "_loc"


class _LocalsToSubscripts(ast.NodeTransformer):
    """``order.total`` -> ``_scry_loc["order"].total``."""

    def visit_Name(self, node):
        if node.id.startswith(PRIVATE):
            return node
        key = ast.Constant(value=node.id)
        if not hasattr(ast, "Index") or sys.version_info >= (3, 9):
            index = key
        else:  # 3.8 wraps subscripts in Index
            index = ast.Index(value=key)
        return ast.copy_location(
            ast.Subscript(value=ast.Name(id=_LOC, ctx=ast.Load()), slice=index, ctx=ast.Load()), node
        )


def _make_fast(body, helpers, probe_id):
    """A function ``f(frame_locals, <helpers as defaults>)`` evaluating ``body``."""
    import copy

    body = _LocalsToSubscripts().visit(copy.deepcopy(body))
    names = sorted(helpers)
    arguments = ast.arguments(
        posonlyargs=[],
        args=[ast.arg(arg=_LOC, annotation=None)] + [ast.arg(arg=n, annotation=None) for n in names],
        vararg=None,
        kwonlyargs=[],
        kw_defaults=[],
        kwarg=None,
        defaults=[ast.Name(id=n, ctx=ast.Load()) for n in names],
    )
    tree = ast.Expression(body=ast.Lambda(args=arguments, body=body))
    code = compile(ast.fix_missing_locations(tree), "<scry probe {}>".format(probe_id), "eval")
    env = {"__builtins__": {}}
    env.update(helpers)
    return eval(code, env)


class Scope(dict):
    """Locals for ``eval`` of expressions that call builtins: the helpers, then the frame's
    locals (dict or 3.13+ proxy). A miss raises KeyError, so ``eval`` goes on to the globals."""

    __slots__ = ("loc",)

    def __missing__(self, key):
        return self.loc[key]


# -- specs and probes --------------------------------------------------------------------------


def _with_defaults(value, defaults):
    out = dict(defaults)
    if isinstance(value, dict):
        for key in defaults:
            if key in value and value[key] is not None:
                out[key] = value[key]
    return out


def normalize(spec):
    """A ProbeSpec dict with every default filled in (compare two of these to see a change)."""
    rate = spec.get("rate") or {"mode": "every"}
    return {
        "id": spec["id"],
        "name": spec.get("name"),
        "location": spec["location"],
        "expressions": list(spec["expressions"]),
        "condition": spec.get("condition"),
        "capture": _with_defaults(spec.get("capture"), DEFAULT_CAPTURE),
        "rate": dict(rate),
        "expires_at": spec.get("expires_at"),
        "unsafe": bool(spec.get("unsafe", False)),
        "limits": _with_defaults(spec.get("limits"), DEFAULT_LIMITS),
    }


class Probe(object):
    """One probe in this process: its spec, compiled code, rate state, counters and status.

    The hit path reads and writes these attributes without a lock (each update is one bytecode
    sequence without a call in the middle, so the GIL keeps it whole on a regular build).
    """

    __slots__ = (
        # spec
        "id",
        "spec",
        "location",
        "texts",
        "condition_text",
        "stack",
        "locals",
        "repr",
        "unsafe",
        "limits",
        "expires_at",
        # compiled
        "code",
        "codes",
        "cond",
        "scoped",
        "helpers",
        "single",
        "plain",
        "name",
        "names",
        "trees",
        "cond_tree",
        "fast",
        "fast_cond",
        # rate
        "mode",
        "n",
        "count",
        "per_ns",
        "cap",
        "tokens",
        "last_ns",
        "deadline_ns",
        # counters ("hits" of a plain probe counts only the hits it did not record)
        "hits",
        "recorded",
        "dropped",
        "errors",
        "fails",
        "err_window",
        "err_in_window",
        "last_error",
        # status
        "state",
        "reason",
        "error_kind",
        "file",
        "line",
        "requested_line",
        "function",
        "sites",
        "target",
        "waiting",
    )

    def __init__(self, spec):
        spec = normalize(spec)
        self.spec = spec
        self.id = spec["id"]
        self.location = spec["location"]
        self.texts = tuple(e.strip() for e in spec["expressions"])
        self.condition_text = spec["condition"].strip() if spec["condition"] else None
        self.stack = bool(spec["capture"]["stack"])
        self.locals = bool(spec["capture"]["locals"])
        self.repr = bool(spec["capture"]["repr"])
        self.unsafe = spec["unsafe"]
        limits = spec["limits"]
        self.limits = (int(limits["depth"]), max(1, int(limits["items"])), max(1, int(limits["string"])))
        self.expires_at = spec["expires_at"]
        self.code = self.codes = self.cond = None
        self.scoped = False
        self.helpers = None
        self.single = len(self.texts) == 1
        self.plain = False
        self.name = None
        self.names = frozenset()
        self.trees = []
        self.cond_tree = None
        self.fast = self.fast_cond = None

        rate = spec["rate"]
        self.mode = _RATE_MODES.get(rate.get("mode"), EVERY)
        self.n = max(1, int(rate.get("n") or 1))
        self.count = 0
        per_second = float(rate.get("per_second") or 0.0)
        self.per_ns = per_second / 1e9
        self.cap = max(1.0, per_second)
        self.tokens = self.cap
        self.last_ns = None
        self.deadline_ns = None

        self.hits = self.recorded = self.dropped = self.errors = 0
        self.fails = 0
        self.err_window = 0
        self.err_in_window = 0
        self.last_error = None

        self.state = PENDING
        self.reason = None
        self.error_kind = None
        self.file = self.line = self.requested_line = self.function = None
        self.sites = ()
        self.target = None
        self.waiting = (None, None)

    # -- compiling --------------------------------------------------------------------------

    def compile(self):
        """Check and compile the expressions and condition. Raises InvalidExpression."""
        trees = []
        if not self.texts:
            raise InvalidExpression("a probe needs at least one expression")
        for text in self.texts:
            try:
                trees.append(check_expression(text, self.unsafe))
            except InvalidExpression as exc:
                raise InvalidExpression("expression `{}`: {}".format(text, exc))
        cond_tree = None
        if self.condition_text is not None:
            try:
                cond_tree = check_expression(self.condition_text, self.unsafe)
            except InvalidExpression as exc:
                raise InvalidExpression("condition `{}`: {}".format(self.condition_text, exc))
        rewrite = _RewriteCalls()
        trees = [rewrite.visit(tree) for tree in trees]
        if cond_tree is not None:
            cond_tree = rewrite.visit(cond_tree)
        self.scoped = bool(rewrite.used)
        self.helpers = {PRIVATE + "_" + name: HELPERS[PRIVATE + "_" + name] for name in rewrite.used}
        self.trees = trees
        self.cond_tree = cond_tree
        self.names = frozenset(
            node.id
            for tree in trees + ([cond_tree] if cond_tree is not None else [])
            for node in ast.walk(tree)
            if isinstance(node, ast.Name) and not node.id.startswith(PRIVATE)
        )
        label = "<scry probe {}>".format(self.id)
        try:
            if self.single:
                whole = trees[0]
            else:
                whole = ast.Expression(body=ast.Tuple(elts=[tree.body for tree in trees], ctx=ast.Load()))
            self.code = compile(ast.fix_missing_locations(whole), label, "eval")
            self.codes = tuple(compile(ast.fix_missing_locations(tree), label, "eval") for tree in trees)
            if cond_tree is not None:
                self.cond = compile(ast.fix_missing_locations(cond_tree), label, "eval")
        except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError) as exc:
            raise InvalidExpression("cannot compile: {}".format(exc))
        body = trees[0].body
        if self.single and isinstance(body, ast.Name):
            self.name = body.id
        self._set_plain()

    def _set_plain(self):
        self.plain = (
            self.cond is None
            and self.mode == EVERY
            and self.expires_at is None
            and (not self.scoped or self.fast is not None)
            and not self.stack
            and not self.locals
        )

    def bind(self, codes):
        """Specialise for the code objects the probe arms in: when every name the expressions use
        is a local variable of all of them, compile functions ``f(frame_locals)`` that read those
        names by subscript (and call the builtins through default arguments), which costs less
        than ``eval`` on each hit. A KeyError from them (an unbound local) falls back to ``eval``
        for the exact error."""
        self.fast = self.fast_cond = None
        local_names = None
        for code in codes:
            names = set(code.co_varnames) | set(code.co_cellvars) | set(code.co_freevars)
            if not code.co_flags & 0x0001:  # CO_OPTIMIZED: module and class bodies have no fast locals
                names = set()
            local_names = names if local_names is None else local_names & names
        if local_names is not None and self.names <= local_names and self.name is None:
            try:
                if self.single:
                    body = self.trees[0].body
                else:
                    body = ast.Tuple(elts=[tree.body for tree in self.trees], ctx=ast.Load())
                self.fast = _make_fast(body, self.helpers, self.id)
                if self.cond_tree is not None:
                    self.fast_cond = _make_fast(self.cond_tree.body, self.helpers, self.id)
            except Exception:  # never worse than eval
                self.fast = self.fast_cond = None
        self._set_plain()

    # -- status -------------------------------------------------------------------------------

    def status(self):
        """The ProbeStatus dict (docs/protocol.md "Probes")."""
        return {
            "probe": self.id,
            "state": self.state,
            "file": self.file,
            "line": self.line,
            "requested_line": self.requested_line,
            "function": self.function,
            "reason": self.reason,
            "error_kind": self.error_kind,
            "hits": self.hits + self.recorded if self.plain else self.hits,
            "recorded": self.recorded,
            "dropped": self.dropped,
            "errors": self.errors,
        }

    def counters(self):
        hits = self.hits + self.recorded if self.plain else self.hits
        return (hits, self.recorded, self.dropped, self.errors)
