"""Probe specs: parsing, expression checking and compiling, rate modes, and the Probe record.

A ``ProbeSpec`` arrives from the daemon (``probes_sync``, docs/protocol.md "Probes"). Its
expressions and condition are parsed with :mod:`ast` and checked once, before anything is armed,
with the rules of docs/expressions.md (the daemon's checker, ``crates/scry-daemon/src/expr.rs``,
applies the same ones first; the shared vectors hold both to them): names, attribute reads,
subscripts, constants, displays, operators, comparisons and conditional expressions; calls only
to the pure builtins and to known-pure methods of builtin types, with a few keyword arguments and
never ``key=`` (unless the probe is ``unsafe``, which lifts the call rule and nothing else). A
probe that fails the check gets ``error``/``invalid_expression`` and is never armed.

Everything that could act or grow is rewritten into a guarded call (``_RewriteCalls``): pure
builtins to scry's wrappers (``_scry_len``, resolved whatever the frame binds to ``len``; they
refuse callable and iterator arguments and oversized inputs), ``recv.m(...)`` to
``_scry_method(recv, "m", ...)`` (which checks that ``type(recv)`` is exactly a builtin type that
lists ``m``), and ``**``, ``*``, ``+``, ``<<``, ``%`` and ``in`` to guards that refuse BEFORE computing
when the result would pass a bound (:data:`MAX_INT_BITS`, :data:`MAX_ITEMS`, ...). A refusal
raises :class:`Refused`, and the hit path disarms the probe at once (``error``/``refused``).
Names, attributes and subscripts are not rewritten: they cost what they cost.

All expressions of a probe are compiled into ONE code object that evaluates a tuple (or the value,
for a probe with one expression), evaluated on the hit with the frame's globals and locals; each
expression is also compiled on its own, used only to tell which expression raised when the tuple
fails. A probe whose only expression is a bare name reads it from the frame's locals directly
(``eval`` runs only when the name is not a local), which saves about a third of the hit.
"""

import array
import ast
import collections
import itertools
import re
import sys
from math import log2 as _log2

from . import _metrics

#: The builtins an expression may call (without ``unsafe``). Same list as the daemon's checker
#: (``crates/scry-daemon/src/expr.rs``); the shared vectors hold both to it.
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

#: The known-pure methods of builtin types: ``recv.m(...)`` runs only when ``type(recv)`` is
#: exactly one of these types and ``m`` is listed for it (a user object's ``.get`` never runs).
_STR_METHODS = (
    "startswith endswith lower upper strip lstrip rstrip split rsplit splitlines find rfind index "
    "rindex count isdigit isalpha isalnum isspace isupper islower isidentifier isnumeric isdecimal "
    "isascii istitle isprintable title capitalize casefold swapcase partition rpartition "
    "removeprefix removesuffix replace join"
).split()
_BYTES_METHODS = (
    "startswith endswith lower upper strip lstrip rstrip split rsplit splitlines find rfind index "
    "rindex count isdigit isalpha isalnum isspace isupper islower isascii istitle title capitalize "
    "swapcase partition rpartition removeprefix removesuffix replace join hex"
).split()
_INT_METHODS = ("bit_length", "bit_count", "as_integer_ratio", "is_integer")
_SET_METHODS = ("isdisjoint", "issubset", "issuperset", "union", "intersection", "difference", "symmetric_difference")
METHOD_SPEC = {
    str: _STR_METHODS,
    bytes: _BYTES_METHODS,
    dict: ("get", "keys", "values", "items"),
    list: ("count", "index"),
    tuple: ("count", "index"),
    set: _SET_METHODS,
    frozenset: _SET_METHODS,
    int: _INT_METHODS,
    bool: _INT_METHODS,
    float: ("is_integer", "hex", "as_integer_ratio"),
}
#: Every method name that may be called (the daemon's PURE_METHODS).
PURE_METHODS = frozenset(name for names in METHOD_SPEC.values() for name in names)
#: Keyword arguments a pure call may take (none of them passes a callable).
KEYWORDS = ("base", "default", "maxsplit", "ndigits", "reverse", "sep", "start")

#: Bounds of the guarded operators (docs/expressions.md).
MAX_INT_BITS = 10000  # ints made by **, * and <<
MAX_ITEMS = 1000000  # items or characters of a sequence made by *, %, join, replace; split input
MAX_DIGITS = 4300  # int <-> str conversions (CPython's own default limit since 3.11)
_DIGIT_BITS = 14285  # bits of an int with MAX_DIGITS decimal digits
MAX_NDIGITS = 1000  # round(x, n)
MAX_LEN = 2000  # characters of an expression
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


class Refused(Exception):
    """A guarded operation refused to run (its result would pass a bound, or a receiver or an
    argument is not allowed). The hit path disarms the probe at once with the reason."""


class InputTooLong(Exception):
    """A bounded builtin got more than MAX_ITERABLE items (recorded as an error value, as any
    exception of the program's data; the probe stays armed)."""


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
        "Call",
        "keyword",
        "operator",
        "unaryop",
        "boolop",
        "cmpop",
    )
    if hasattr(ast, name)
)

_COMPREHENSION = "comprehensions and generator expressions are not allowed (they are unbounded loops)"
_FORBIDDEN = [
    ("NamedExpr", "assignment expressions (:=) are not allowed"),
    ("Lambda", "lambda is not allowed"),
    ("ListComp", _COMPREHENSION),
    ("SetComp", _COMPREHENSION),
    ("DictComp", _COMPREHENSION),
    ("GeneratorExp", _COMPREHENSION),
    ("Await", "await is not allowed"),
    ("Yield", "yield is not allowed"),
    ("YieldFrom", "yield is not allowed"),
    ("Starred", "starred expressions (*x) are not allowed"),
    ("JoinedStr", "f-strings and t-strings are not allowed"),
    ("TemplateStr", "f-strings and t-strings are not allowed"),
    ("MatMult", "matrix multiplication (@) is not allowed"),
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


def _check_text(text):
    """What the source text alone rules out (the daemon's tokenizer refuses the same)."""
    if len(text) > MAX_LEN:
        raise InvalidExpression("the expression is too long ({} characters; at most {})".format(len(text), MAX_LEN))
    for ch in text:
        if ch < " " and ch != "\t" or ch == "\x7f":
            if ch in "\r\n":
                raise InvalidExpression("an expression must be one line")
            raise InvalidExpression("control characters are not allowed (use escapes in strings)")


def _check_tokens(text):
    """Names must be ASCII (Python folds ``ｅｖａｌ`` into ``eval``) and comments are refused."""
    import io
    import tokenize  # here, not at import: only compiling a probe needs it

    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.NAME and not tok.string.isascii():
                raise InvalidExpression("names must be ASCII: `{}` outside a string".format(tok.string))
            if tok.type == tokenize.COMMENT:
                raise InvalidExpression("comments (#) are not allowed")
    except (tokenize.TokenError, SyntaxError, ValueError):
        pass  # ast.parse accepted it; nothing more to learn here


def _parse(text):
    """The ``ast.Expression`` of ``text``; raises InvalidExpression."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidExpression("empty expression")
    source = text.strip()
    _check_text(source)
    try:
        tree = ast.parse(source, mode="eval")
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
    _check_tokens(source)
    return tree


def _check(tree, text, unsafe):
    """Raise InvalidExpression naming the first forbidden piece of ``tree``. Two passes, like
    the daemon's parser reports them: forbidden forms and names first, then calls."""
    nodes = list(ast.walk(tree))
    for node in nodes:
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
    for node in nodes:
        if isinstance(node, ast.Compare):
            if len(node.ops) > 1 and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops):
                raise InvalidExpression(
                    "chained comparisons with `in` are not supported (use `and`): {}".format(_segment(text, node))
                )
        elif isinstance(node, ast.Call):
            _check_call(node, text, unsafe)


def _check_call(node, text, unsafe):
    """The call rule (lifted by ``unsafe``): only pure builtins and known-pure methods, only
    allowed keywords (never ``key=``), ``type()`` with one argument."""
    if unsafe:
        return
    func = node.func
    piece = _segment(text, func)
    if isinstance(func, ast.Name) and func.id in SAFE_CALLS:
        pass
    elif isinstance(func, ast.Attribute) and func.attr in PURE_METHODS:
        pass
    else:
        raise InvalidExpression(
            "calls are not allowed: {}() (only pure builtins ({}) and known-pure methods of builtin "
            "types may be called; a probe created with unsafe may call anything)".format(piece, ", ".join(SAFE_CALLS))
        )
    for kw in node.keywords:
        if kw.arg is None:
            continue  # reported as keyword unpacking
        if kw.arg == "key":
            raise InvalidExpression(
                "keyword argument key= is not allowed in {}(): it would pass a callable".format(piece)
            )
        if kw.arg not in KEYWORDS:
            raise InvalidExpression(
                "keyword argument {}= is not allowed in {}() (allowed: {})".format(kw.arg, piece, ", ".join(KEYWORDS))
            )
    if isinstance(func, ast.Name) and func.id == "type" and (len(node.args) != 1 or node.keywords):
        raise InvalidExpression("type() takes one argument here (the three-argument form makes a class)")


_GUARDED_OPS = {}
for _op, _name in (("Pow", "pow"), ("Mult", "mul"), ("LShift", "lshift"), ("Mod", "mod"), ("Add", "add")):
    _GUARDED_OPS[getattr(ast, _op)] = PRIVATE + "_" + _name


def _helper(name, like):
    return ast.copy_location(ast.Name(id=name, ctx=ast.Load()), like)


class _RewriteCalls(ast.NodeTransformer):
    """Route everything that could act or grow through scry's guards: ``len(x)`` ->
    ``_scry_len(x)`` (the real builtin whatever the frame binds), ``d.get(k)`` ->
    ``_scry_method(d, "get", k)`` (checks the receiver's type), ``a ** b`` -> ``_scry_pow(a, b)``
    (and ``*``, ``+``, ``<<``, ``%``), ``a in b`` -> ``_scry_in(a, b)``. Names, attributes and
    subscripts are left alone: they cost what they cost."""

    def __init__(self, unsafe=False):
        self.used = set()
        self.unsafe = unsafe

    def _use(self, name):
        self.used.add(name)
        return name

    def visit_Call(self, node):
        self.generic_visit(node)
        func = node.func
        if isinstance(func, ast.Name) and func.id in SAFE_CALLS:
            node.func = _helper(self._use(PRIVATE + "_" + func.id), func)
        elif not self.unsafe and isinstance(func, ast.Attribute) and func.attr in PURE_METHODS:
            name = ast.copy_location(ast.Constant(value=func.attr), func)
            node.func = _helper(self._use(PRIVATE + "_method"), func)
            node.args = [func.value, name] + list(node.args)
        return node

    def visit_BinOp(self, node):
        self.generic_visit(node)
        name = _GUARDED_OPS.get(type(node.op))
        if name is None:
            return node
        call = ast.Call(func=_helper(self._use(name), node), args=[node.left, node.right], keywords=[])
        return ast.copy_location(call, node)

    def visit_Compare(self, node):
        self.generic_visit(node)
        if len(node.ops) != 1 or not isinstance(node.ops[0], (ast.In, ast.NotIn)):
            return node
        call = ast.Call(
            func=_helper(self._use(PRIVATE + "_in"), node), args=[node.left, node.comparators[0]], keywords=[]
        )
        if isinstance(node.ops[0], ast.NotIn):
            call = ast.UnaryOp(op=ast.Not(), operand=call)
        return ast.copy_location(call, node)


def check_expression(text, unsafe=False):
    """Parse and check one expression; returns its ``ast.Expression``. Raises InvalidExpression."""
    tree = _parse(text)
    _check(tree, text.strip(), unsafe)
    return tree


# -- the guards --------------------------------------------------------------------------------
#
# Each refuses BEFORE computing, from the operands' sizes; the refusal (Refused) disarms the
# probe. They run only where an expression uses the operation.

_SEQUENCES = (str, bytes, bytearray, list, tuple, collections.deque, array.array)
_TEXT = (str, bytes, bytearray)
_NUMBERS = (int, float, complex)
_FAST_NUMBERS = frozenset((int, float))
_CONTAINERS = (list, tuple, dict, set, frozenset)
_FORMAT = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")
_BFORMAT = re.compile(rb"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _refuse(what):
    raise Refused(what)


def _is_iterator(value):
    return getattr(type(value), "__next__", None) is not None


def _guard_pow(a, b):
    if isinstance(b, int):
        if isinstance(a, int):
            if b > 0 and (a > 1 or a < -1) and b * _log2(abs(a)) > MAX_INT_BITS:
                _refuse("{} ** {} would have about {:.0f} bits (at most {})".format(_short(a), _short(b), b * _log2(abs(a)), MAX_INT_BITS))
        elif not isinstance(a, (float, complex)) and abs(b) > MAX_INT_BITS:
            _refuse("** with an exponent of {} on a {} (at most {})".format(_short(b), type(a).__name__, MAX_INT_BITS))
    return a ** b


def _guard_mul(a, b):
    if type(a) is float or type(b) is float:  # a float result cannot grow
        return a * b
    if isinstance(a, int):
        n, other = a, b
    elif isinstance(b, int):
        n, other = b, a
    else:
        return a * b
    if isinstance(other, int):
        if a.bit_length() + b.bit_length() > MAX_INT_BITS + 1:
            _refuse("a product of {} and {} bits (at most {})".format(a.bit_length(), b.bit_length(), MAX_INT_BITS))
    elif n > 1 and isinstance(other, _SEQUENCES) and len(other) * n > MAX_ITEMS:
        _refuse(
            "repeating a {} of {} items {} times makes {} (at most {})".format(
                type(other).__name__, len(other), _short(n), _short(len(other) * n), MAX_ITEMS
            )
        )
    return a * b


def _guard_add(a, b):
    if type(a) in _FAST_NUMBERS:  # the common case, kept short
        return a + b
    if isinstance(a, _SEQUENCES) and isinstance(b, _SEQUENCES):
        size = len(a) + len(b)
        if size > MAX_ITEMS:
            _refuse(
                "concatenating {} and {} items makes {} (at most {})".format(len(a), len(b), size, MAX_ITEMS)
            )
    return a + b


def _guard_lshift(a, b):
    if isinstance(a, int) and isinstance(b, int) and a and b > 0 and a.bit_length() + b > MAX_INT_BITS:
        _refuse("{} << {} would have {} bits (at most {})".format(_short(a), _short(b), a.bit_length() + b, MAX_INT_BITS))
    return a << b


def _guard_mod(a, b):
    if isinstance(a, _TEXT):
        widths = 0
        for m in (_FORMAT if isinstance(a, str) else _BFORMAT).finditer(a):
            for g in m.groups():
                if g is None:
                    continue
                if g in ("*", b"*"):
                    _refuse("% formatting with a * width or precision")
                if len(g) > 7:
                    _refuse("% formatting with a width or precision of {} digits".format(len(g)))
                widths += int(g)
        if widths > MAX_ITEMS:
            _refuse("% formatting with widths adding up to {} (at most {})".format(widths, MAX_ITEMS))
        for arg in b if type(b) is tuple else (b,):
            if isinstance(arg, int) and arg.bit_length() > _DIGIT_BITS:
                _refuse("% formatting an int of more than {} digits".format(MAX_DIGITS))
            if isinstance(arg, _CONTAINERS) and len(arg) > MAX_ITERABLE:
                _refuse("% formatting a {} of more than {} items".format(type(arg).__name__, MAX_ITERABLE))
    return a % b


def _guard_in(a, b):
    if _is_iterator(b):
        _refuse("`in` over an iterator ({}): it would consume it and could run without end".format(type(b).__name__))
    return a in b


def _short(n):
    text = str(n) if not isinstance(n, int) or n.bit_length() < 64 else "<int of {} bits>".format(n.bit_length())
    return text if len(text) <= 40 else text[:37] + "..."


def _bounded(iterable, name):
    if _is_iterator(iterable):
        _refuse("{}() refuses an iterator ({}): it would consume it".format(name, type(iterable).__name__))
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


#: Types that are neither callable nor iterators: their values skip the argument checks.
_PLAIN_TYPES = frozenset((int, float, complex, bool, str, bytes, type(None), tuple, list, dict, set, frozenset))


def _plain_args(name, args, kwargs):
    """Callables and iterators are refused as arguments: a pure call never calls or consumes one."""
    for value in args:
        if type(value) not in _PLAIN_TYPES:
            _plain_value(name, value)
    if kwargs:
        for value in kwargs.values():
            if type(value) not in _PLAIN_TYPES:
                _plain_value(name, value)


def _plain_value(name, value):
    if callable(value):
        _refuse("{}() refuses a callable argument ({})".format(name, type(value).__name__))
    if _is_iterator(value):
        _refuse("{}() refuses an iterator argument ({}): it would consume it".format(name, type(value).__name__))


def _classes(value):
    if isinstance(value, type):
        return True
    return type(value) is tuple and all(_classes(v) for v in value)


def _strict_builtins():
    """The builtins as a probe without ``unsafe`` calls them."""
    import builtins

    real = {name: getattr(builtins, name) for name in SAFE_CALLS}
    out = {}

    def simple(name):
        fn = real[name]

        def call(*args, **kwargs):
            _plain_args(name, args, kwargs)
            return fn(*args, **kwargs)

        return call

    def one(name):
        # One argument, the common case kept short (no *args, one check).
        fn = real[name]

        def call(obj):
            if type(obj) not in _PLAIN_TYPES and callable(obj):
                _refuse("{}() refuses a callable argument ({})".format(name, type(obj).__name__))
            return fn(obj)

        return call

    for name in ("len", "abs"):
        out[name] = one(name)
    for name in ("bool", "float"):
        out[name] = simple(name)

    def type_(obj):
        return type(obj)

    def isinstance_(obj, classes):
        if not _classes(classes):
            _refuse("isinstance() takes a class or a tuple of classes")
        return isinstance(obj, classes)

    def text(name):
        fn = real[name]

        def call(obj):
            if type(obj) is str:
                return fn(obj)
            if isinstance(obj, int) and obj.bit_length() > _DIGIT_BITS:
                _refuse("{}() of an int of more than {} digits".format(name, MAX_DIGITS))
            if isinstance(obj, _CONTAINERS) and len(obj) > MAX_ITERABLE:
                _refuse("{}() of a {} of more than {} items".format(name, type(obj).__name__, MAX_ITERABLE))
            return fn(obj)

        return call

    def int_(*args, **kwargs):
        _plain_args("int", args, kwargs)
        if args and isinstance(args[0], _TEXT) and len(args[0]) > MAX_DIGITS:
            _refuse("int() of a text of more than {} characters".format(MAX_DIGITS))
        return int(*args, **kwargs)

    def round_(number, ndigits=None):
        _plain_args("round", (number, ndigits), {})
        if isinstance(ndigits, int) and abs(ndigits) > MAX_NDIGITS:
            _refuse("round() to {} digits (at most {})".format(ndigits, MAX_NDIGITS))
        return round(number, ndigits)

    def sum_(iterable, start=0):
        _plain_args("sum", (start,), {})
        if not isinstance(start, _NUMBERS):
            _refuse("sum() adds numbers only (start is a {})".format(type(start).__name__))
        return sum(_bounded(iterable, "sum"), start)

    def iterating(name):
        fn = real[name]

        def call(iterable, *args, **kwargs):
            _plain_args(name, (iterable,) + args, kwargs)
            return fn(_bounded(iterable, name), *args, **kwargs)

        return call

    def extreme(name):
        fn = real[name]

        def call(*args, **kwargs):
            _plain_args(name, args, kwargs)
            if len(args) == 1:
                return fn(_bounded(args[0], name), **kwargs)
            return fn(*args, **kwargs)

        return call

    out.update(type=type_, isinstance=isinstance_, str=text("str"), repr=text("repr"), int=int_, round=round_, sum=sum_)
    for name in ("sorted", "any", "all"):
        out[name] = iterating(name)
    for name in ("min", "max"):
        out[name] = extreme(name)
    for name, fn in out.items():
        fn.__name__ = name
    return out


def _unsafe_builtins():
    """The builtins as an ``unsafe`` probe calls them: any argument, but still bounded."""
    import builtins

    out = {}
    for name in SAFE_CALLS:
        fn = getattr(builtins, name)
        if name in BOUNDED_CALLS:
            if name in ("min", "max"):

                def fn(*args, _fn=fn, _name=name, **kwargs):
                    if len(args) == 1:
                        return _fn(_bounded(args[0], _name), **kwargs)
                    return _fn(*args, **kwargs)

            else:

                def fn(iterable, *args, _fn=fn, _name=name, **kwargs):
                    return _fn(_bounded(iterable, _name), *args, **kwargs)

        out[name] = fn
    return out


# Methods whose result could grow past the bounds: a check on the receiver and arguments, which
# may return the arguments to use (join reads its iterable once).
def _guard_replace(recv, args, kwargs):
    if len(args) >= 2 and isinstance(args[0], _TEXT) and isinstance(args[1], _TEXT):
        grow = len(args[1]) - len(args[0])
        if grow > 0:
            times = len(recv) // max(len(args[0]), 1) + 1
            if len(args) >= 3 and isinstance(args[2], int) and args[2] >= 0:
                times = min(times, args[2])
            if len(recv) + times * grow > MAX_ITEMS:
                _refuse("replace() could make {} characters (at most {})".format(len(recv) + times * grow, MAX_ITEMS))
    return args


def _guard_join(recv, args, kwargs):
    if len(args) != 1:
        return args
    items = _bounded(args[0], "join")
    total = len(recv) * max(len(items) - 1, 0)
    for item in items:
        if isinstance(item, _TEXT):
            total += len(item)
    if total > MAX_ITEMS:
        _refuse("join() would make {} characters (at most {})".format(total, MAX_ITEMS))
    return (items,)


def _guard_split(recv, args, kwargs):
    if len(recv) > MAX_ITEMS:
        _refuse("splitting a text of {} characters (at most {})".format(len(recv), MAX_ITEMS))
    return args


def _guard_copy(recv, args, kwargs):
    if len(recv) > MAX_ITEMS:
        _refuse("a copy of a text of {} characters (at most {})".format(len(recv), MAX_ITEMS))
    return args


_METHOD_GUARDS = {
    # Methods that make a changed copy of their receiver.
    "lower": _guard_copy,
    "upper": _guard_copy,
    "strip": _guard_copy,
    "lstrip": _guard_copy,
    "rstrip": _guard_copy,
    "title": _guard_copy,
    "capitalize": _guard_copy,
    "casefold": _guard_copy,
    "swapcase": _guard_copy,
    "removeprefix": _guard_copy,
    "removesuffix": _guard_copy,
    "partition": _guard_copy,
    "rpartition": _guard_copy,
    "hex": _guard_copy,
    "replace": _guard_replace,
    "join": _guard_join,
    "split": _guard_split,
    "rsplit": _guard_split,
    "splitlines": _guard_split,
}
_METHODS = {
    cls: dict((name, getattr(cls, name)) for name in names if hasattr(cls, name))
    for cls, names in METHOD_SPEC.items()
}


def _guard_method(recv, name, *args, **kwargs):
    """``recv.name(*args)`` when ``type(recv)`` is exactly a builtin type that lists ``name``."""
    methods = _METHODS.get(type(recv))
    fn = methods.get(name) if methods is not None else None
    if fn is None:
        _refuse(
            ".{}() of a {} is not a known-pure method (only listed methods of builtin types may be "
            "called)".format(name, type(recv).__name__)
        )
    _plain_args(name, args, kwargs)
    guard = _METHOD_GUARDS.get(name)
    if guard is not None:
        args = guard(recv, args, kwargs)
    return fn(recv, *args, **kwargs)


_OPERATORS = {
    PRIVATE + "_pow": _guard_pow,
    PRIVATE + "_mul": _guard_mul,
    PRIVATE + "_lshift": _guard_lshift,
    PRIVATE + "_mod": _guard_mod,
    PRIVATE + "_add": _guard_add,
    PRIVATE + "_in": _guard_in,
    PRIVATE + "_method": _guard_method,
}


def _helpers(builtin_table):
    out = dict(_OPERATORS)
    for name, fn in builtin_table.items():
        out[PRIVATE + "_" + name] = fn
    return out


HELPERS = _helpers(_strict_builtins())
UNSAFE_HELPERS = _helpers(_unsafe_builtins())


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
        "metric": spec.get("metric"),
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
        "metric",
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
        # A metric probe aggregates here instead of shipping its hits (see _metrics).
        self.metric = _metrics.Metric(self.id, spec["metric"]) if spec["metric"] else None
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
        if not self.texts and (self.metric is None or self.metric.kind != "count"):
            raise InvalidExpression("a probe needs at least one expression")
        if self.metric is not None and len(self.texts) != self.metric.value_count() + len(self.metric.labels):
            raise InvalidExpression("a metric probe's expressions are its value and one per label")
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
        rewrite = _RewriteCalls(self.unsafe)
        trees = [rewrite.visit(tree) for tree in trees]
        if cond_tree is not None:
            cond_tree = rewrite.visit(cond_tree)
        self.scoped = bool(rewrite.used)
        table = UNSAFE_HELPERS if self.unsafe else HELPERS
        self.helpers = {name: table[name] for name in rewrite.used}
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
        if self.single and isinstance(trees[0].body, ast.Name):
            self.name = trees[0].body.id
        self._set_plain()

    def _set_plain(self):
        self.plain = (
            self.cond is None
            and self.mode == EVERY
            and self.expires_at is None
            and (not self.scoped or self.fast is not None)
            and not self.stack
            and not self.locals
            and self.metric is None
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
