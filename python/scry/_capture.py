"""Typed, bounded capture of Python values (docs/protocol.md "Typed values").

Two steps, so that the hit path stays cheap:

* at the hit, :func:`snapshot` turns every value that may still change (containers, objects) into
  its typed form right away, bounded by the probe's limits (depth, items per container, characters
  of a string). Immutable primitives of the exact types in :data:`PRIMITIVES` are kept as they are;
* later, on the link thread, :func:`encode` turns what the hit kept into JSON-ready typed values
  (a snapshot is already one).

Nothing here calls user code unless the probe asks for ``repr``: objects are read through their
plain instance ``__dict__`` or their ``__slots__`` member descriptors (never ``__getattr__``,
properties or ``__repr__``), containers of the exact builtin types (and their subclasses, through
the builtin methods) are iterated directly. Heavy types of numpy, torch and pandas are summarised
by shape and dtype without importing those libraries. Names that look secret (``token``,
``password``, ``api_key``... as whole words of the name) are replaced by ``{"t": "redacted"}`` in
locals, object fields and dict entries.
"""

import json
import json.encoder
import math
import re
import types

#: Exact types kept as they are at the hit (immutable) and encoded later.
PRIMITIVES = frozenset([type(None), bool, int, float, str, bytes])

#: JSON numbers are exact up to 2**53.
MAX_EXACT_INT = 2 ** 53
#: Beyond this many bits an int is not converted to decimal (int -> str is quadratic).
MAX_INT_BITS = 12000
#: How many local variables a locals snapshot holds at most.
MAX_LOCALS = 64
#: How many frames a stack capture holds at most.
MAX_STACK = 50

_SECRET_WORDS = frozenset(
    ["token", "password", "passwd", "secret", "apikey", "authorization", "credentials", "credential"]
)
_SECRET_PAIRS = frozenset([("api", "key"), ("auth", "token"), ("private", "key")])
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_secret_cache = {}

_GETSET = types.GetSetDescriptorType
_MEMBER = types.MemberDescriptorType
_DICT_ITEMS = dict.items
_LIST_ITER = list.__iter__
_TUPLE_ITER = tuple.__iter__
_SET_ITER = set.__iter__
_FROZENSET_ITER = frozenset.__iter__

#: Modules whose own types have a safe, informative repr (no user code runs).
_REPR_MODULES = frozenset(["datetime", "decimal", "fractions", "uuid", "pathlib", "ipaddress", "pathlib._local"])


def is_secret(name):
    """Whether a variable, field or key name looks like it holds a secret.

    The name is split into words on ``_``, ``-`` and case changes; it is secret when a word is one
    of token, password, passwd, secret, apikey, authorization, credential(s), or two adjacent words
    are api+key, auth+token or private+key. ``access_token`` and ``dbPassword`` are secret,
    ``tokenizer`` and ``secretary`` are not.
    """
    cached = _secret_cache.get(name)
    if cached is not None:
        return cached
    words = [w.lower() for part in re.split(r"[_\-\s.]+", name) for w in _WORD.findall(part)]
    secret = any(w in _SECRET_WORDS for w in words) or any(
        pair in _SECRET_PAIRS for pair in zip(words, words[1:])
    )
    if len(_secret_cache) > 4096:
        _secret_cache.clear()
    _secret_cache[name] = secret
    return secret


def type_name(t):
    """``module.Qualname`` of a type (``builtins.`` left out)."""
    try:
        module = t.__module__
        qualname = t.__qualname__
    except Exception:
        return "?"
    if not isinstance(qualname, str):
        qualname = getattr(t, "__name__", "?")
    if module in (None, "builtins") or not isinstance(module, str):
        return qualname
    return module + "." + qualname


def error_value(exc, limit=256):
    """``{"t": "error", "type", "message"}`` for an exception (its message bounded)."""
    try:
        message = str(exc)
    except BaseException:
        message = "<the exception's message could not be read>"
    if len(message) > limit:
        message = message[:limit] + "..."
    return {"t": "error", "type": type(exc).__name__, "message": message}


# -- primitives ----------------------------------------------------------------------------------


def _int(value, type_label=None):
    if -MAX_EXACT_INT <= value <= MAX_EXACT_INT:
        out = {"t": "int", "v": int(value)}
    elif value.bit_length() <= MAX_INT_BITS:
        out = {"t": "int", "v": str(int(value))}
    else:
        out = {"t": "int", "v": "<an int of {} bits>".format(value.bit_length())}
    if type_label:
        out["type"] = type_label
    return out


def _float(value, type_label=None):
    value = float(value)
    if math.isnan(value):
        v = "nan"
    elif math.isinf(value):
        v = "inf" if value > 0 else "-inf"
    else:
        v = value
    out = {"t": "float", "v": v}
    if type_label:
        out["type"] = type_label
    return out


def _str(value, limit, type_label=None):
    value = str.__str__(value)
    if len(value) > limit:
        out = {"t": "str", "v": value[:limit], "len": len(value)}
    else:
        out = {"t": "str", "v": value}
    if type_label:
        out["type"] = type_label
    return out


def _bytes(value, limit, type_label=None):
    size = len(value)
    head = bytes(value[:limit])
    out = {"t": "bytes", "v": head.hex()}
    if size > limit:
        out["len"] = size
    if type_label:
        out["type"] = type_label
    return out


# -- the walker ----------------------------------------------------------------------------------


class _Walker(object):
    """One capture: limits, whether to call repr, and the ids on the current path (cycles).

    Types are tested with ``issubclass(type(o), ...)``, never ``isinstance(o, ...)``, which may
    read ``o.__class__`` through the object's own ``__getattribute__``."""

    __slots__ = ("depth", "items", "string", "use_repr", "path")

    def __init__(self, limits, use_repr):
        self.depth, self.items, self.string = limits
        self.use_repr = use_repr
        self.path = set()

    def value(self, o, level):
        """The typed value of ``o`` at nesting ``level`` (1 = the top)."""
        t = type(o)
        if o is None:
            return {"t": "none"}
        if t is bool:
            return {"t": "bool", "v": o}
        if t is int:
            return _int(o)
        if t is float:
            return _float(o)
        if t is str:
            return _str(o, self.string)
        if t is bytes:
            return _bytes(o, self.string)
        if t is list:
            return self.sequence(o, "list", _LIST_ITER, level, None)
        if t is tuple:
            return self.sequence(o, "tuple", _TUPLE_ITER, level, None)
        if t is dict:
            return self.mapping(o, level, None)
        if t is set:
            return self.sequence(o, "set", _SET_ITER, level, None)
        if t is frozenset:
            return self.sequence(o, "set", _FROZENSET_ITER, level, None, frozen=True)
        return self.other(o, t, level)

    def other(self, o, t, level):
        summary = _heavy(o, t)
        if summary is not None:
            return summary
        label = type_name(t)
        if issubclass(t, bool):
            return {"t": "bool", "v": bool(o), "type": label}
        enum_name = _enum_name(o, t)
        if enum_name is not None:
            # Before the int/str/float subclasses: IntEnum, StrEnum and mixins are enums too.
            out = {"t": "enum", "type": label, "name": enum_name}
            try:
                value = object.__getattribute__(o, "_value_")
            except Exception:
                return out
            # Typed like any value one level down: a primitive in full, a container or an
            # object beyond the depth as its type and size.
            out["v"] = self.value(value, level + 1)
            return out
        if issubclass(t, int):
            return _int(int.__int__(o), label)
        if issubclass(t, float):
            return _float(float.__float__(o), label)
        if issubclass(t, str):
            return _str(o, self.string, label)
        if issubclass(t, (bytes, bytearray)):
            return _bytes(o, self.string, label)
        if issubclass(t, memoryview):
            try:
                return _bytes(o.tobytes()[: self.string + 1], self.string, label)
            except Exception:
                return {"t": "obj", "type": label}
        if issubclass(t, tuple) and isinstance(getattr(t, "_fields", None), tuple):
            return self.namedtuple(o, t, label, level)
        if issubclass(t, dict):
            return self.mapping(o, level, label)
        if issubclass(t, list):
            return self.sequence(o, "list", _LIST_ITER, level, label)
        if issubclass(t, tuple):
            return self.sequence(o, "tuple", _TUPLE_ITER, level, label)
        if issubclass(t, set):
            return self.sequence(o, "set", _SET_ITER, level, label)
        if issubclass(t, frozenset):
            return self.sequence(o, "set", _FROZENSET_ITER, level, label, frozen=True)
        if t.__module__ in _REPR_MODULES and not self.use_repr:
            return {"t": "obj", "type": label, "repr": self.bounded_repr(o)}
        return self.obj(o, t, label, level)

    def sequence(self, o, tag, iterate, level, label, frozen=False):
        size = len(o)
        out = {"t": tag}
        if label is not None:
            out["type"] = label
        if frozen:
            out["frozen"] = True
        if level > self.depth:
            out["len"] = size
            return out
        key = id(o)
        if key in self.path:
            return {"t": "cycle", "type": label or tag}
        self.path.add(key)
        try:
            items = []
            limit = self.items
            for item in iterate(o):
                if len(items) >= limit:
                    break
                items.append(self.value(item, level + 1))
        finally:
            self.path.discard(key)
        out["v"] = items
        out["len"] = size
        return out

    def mapping(self, o, level, label):
        size = len(o)
        out = {"t": "dict"}
        if label is not None:
            out["type"] = label
        if level > self.depth:
            out["len"] = size
            return out
        key = id(o)
        if key in self.path:
            return {"t": "cycle", "type": label or "dict"}
        self.path.add(key)
        try:
            pairs = []
            limit = self.items
            for k, v in _DICT_ITEMS(o):
                if len(pairs) >= limit:
                    break
                if type(k) is str and is_secret(k):
                    pairs.append([self.value(k, level + 1), {"t": "redacted"}])
                else:
                    pairs.append([self.value(k, level + 1), self.value(v, level + 1)])
        finally:
            self.path.discard(key)
        out["v"] = pairs
        out["len"] = size
        return out

    def namedtuple(self, o, t, label, level):
        out = {"t": "obj", "type": label}
        if level > self.depth:
            return out
        fields = {}
        names = t._fields
        for name, item in zip(names, _TUPLE_ITER(o)):
            if len(fields) >= self.items:
                break
            if isinstance(name, str):
                fields[name] = {"t": "redacted"} if is_secret(name) else self.value(item, level + 1)
        out["fields"] = fields
        return out

    def obj(self, o, t, label, level):
        out = {"t": "obj", "type": label}
        if self.use_repr:
            out["repr"] = self.bounded_repr(o)
            return out
        if level > self.depth:
            return out
        key = id(o)
        if key in self.path:
            return {"t": "cycle", "type": label}
        self.path.add(key)
        try:
            fields = {}
            limit = self.items
            instance_dict = _instance_dict(o, t)
            if instance_dict:
                for name, item in _DICT_ITEMS(instance_dict):
                    if len(fields) >= limit:
                        break
                    if type(name) is not str:
                        continue
                    fields[name] = {"t": "redacted"} if is_secret(name) else self.value(item, level + 1)
            if len(fields) < limit:
                for name, item in _slot_values(o, t):
                    if len(fields) >= limit:
                        break
                    if name not in fields:
                        fields[name] = {"t": "redacted"} if is_secret(name) else self.value(item, level + 1)
        finally:
            self.path.discard(key)
        if fields:
            out["fields"] = fields
        return out

    def bounded_repr(self, o):
        try:
            text = repr(o)
            if not isinstance(text, str):
                text = "<repr returned {}>".format(type(text).__name__)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            text = "<repr raised {}>".format(type(exc).__name__)
        if len(text) > self.string:
            text = text[: self.string] + "..."
        return text


def _instance_dict(o, t):
    """The plain ``__dict__`` of ``o``, read through its type's own descriptor, or None."""
    for klass in t.__mro__:
        descriptor = klass.__dict__.get("__dict__")
        if descriptor is None:
            continue
        if type(descriptor) is not _GETSET:
            return None  # a class that redefines __dict__: do not run its code
        try:
            value = descriptor.__get__(o, t)
        except Exception:
            return None
        return value if type(value) is dict else None
    return None


def _slot_values(o, t):
    out = []
    for klass in t.__mro__:
        slots = klass.__dict__.get("__slots__")
        if slots is None:
            continue
        if isinstance(slots, str):
            slots = (slots,)
        try:
            names = list(slots)
        except Exception:
            continue
        for name in names:
            if not isinstance(name, str) or name in ("__dict__", "__weakref__"):
                continue
            attr = name
            if name.startswith("__") and not name.endswith("__"):
                attr = "_" + klass.__name__.lstrip("_") + name  # name mangling
            descriptor = klass.__dict__.get(attr)
            if type(descriptor) is not _MEMBER:
                continue
            try:
                out.append((name, descriptor.__get__(o, t)))
            except Exception:
                continue
    return out


def _enum_name(o, t):
    for klass in t.__mro__:
        if klass.__module__ == "enum" and klass.__name__ in ("Enum", "Flag"):
            try:
                name = object.__getattribute__(o, "_name_")
            except Exception:
                return None
            return name if isinstance(name, str) else None
    return None


def _heavy(o, t):
    """Summaries of numpy arrays, torch tensors and pandas frames/series, or None."""
    for klass in t.__mro__:
        module = klass.__module__
        if not isinstance(module, str):
            continue
        root = module.partition(".")[0]
        if root not in ("numpy", "torch", "pandas"):
            continue
        name = klass.__name__
        try:
            if root == "numpy" and name == "ndarray":
                shape = klass.__dict__["shape"].__get__(o, t)
                dtype = klass.__dict__["dtype"].__get__(o, t)
                return {"t": "ndarray", "shape": [int(d) for d in shape], "dtype": str(dtype)}
            if root == "torch" and name == "Tensor":
                return {
                    "t": "tensor",
                    "shape": [int(d) for d in o.shape],
                    "dtype": str(o.dtype),
                    "device": str(o.device),
                }
            if root == "pandas" and name == "DataFrame":
                rows, cols = o.shape
                columns = [str(c) for c in list(o.columns[:20])]
                return {"t": "dataframe", "shape": [int(rows), int(cols)], "columns": columns}
            if root == "pandas" and name == "Series":
                return {"t": "series", "len": int(len(o)), "dtype": str(o.dtype)}
        except Exception:
            return {"t": "obj", "type": type_name(t)}
    return None


# -- entry points --------------------------------------------------------------------------------


class Copied(object):
    """A list, tuple, set or dict of primitives (exact types), copied at the hit up to the item
    limit: cheaper than typing it there; :func:`encode` and :func:`to_json` type it later."""

    __slots__ = ("tag", "items", "size", "frozen")

    def __init__(self, tag, items, size, frozen=False):
        self.tag = tag
        self.items = items
        self.size = size
        self.frozen = frozen


_COPY_TAGS = {list: "list", tuple: "tuple", set: "set", frozenset: "set"}


def _copy_primitives(value, t, items):
    """A Copied of a builtin container of primitives, or None when it holds anything else."""
    size = len(value)
    if t is dict:
        pairs = []
        for k, v in _DICT_ITEMS(value):
            if len(pairs) >= items:
                break
            if type(k) not in PRIMITIVES or type(v) not in PRIMITIVES:
                return None
            pairs.append((k, v))
        return Copied("dict", pairs, size)
    if t is list or t is tuple:
        kept = value[:items]
    else:
        kept = []
        for item in value:
            if len(kept) >= items:
                break
            kept.append(item)
    for item in kept:
        if type(item) not in PRIMITIVES:
            return None
    return Copied(_COPY_TAGS[t], tuple(kept), size, t is frozenset)


def _typed_copy(copied, limits):
    walker = _Walker(limits, False)
    if copied.tag == "dict":
        pairs = [
            [walker.value(k, 2), {"t": "redacted"} if type(k) is str and is_secret(k) else walker.value(v, 2)]
            for k, v in copied.items
        ]
        return {"t": "dict", "v": pairs, "len": copied.size}
    out = {"t": copied.tag}
    if copied.frozen:
        out["frozen"] = True
    out["v"] = [walker.value(item, 2) for item in copied.items]
    out["len"] = copied.size
    return out


def snapshot(value, limits, use_repr=False):
    """The typed form of ``value`` now (at the hit), bounded by ``limits`` = (depth, items, string).

    A builtin container that holds only primitives is copied instead (a :class:`Copied`), and
    typed when encoded. Never raises: a value that cannot be read becomes an ``error`` value.
    """
    try:
        t = type(value)
        if t in _COPY_TAGS or t is dict:
            if limits[0] >= 1:
                copied = _copy_primitives(value, t, limits[1])
                if copied is not None:
                    return copied
        return _Walker(limits, use_repr).value(value, 1)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        return error_value(exc)


def encode(value, limits):
    """JSON-ready typed value of what the hit kept: a snapshot (a dict) as it is, a primitive typed."""
    t = type(value)
    if t is dict:
        return value
    if t is Copied:
        return _typed_copy(value, limits)
    if t is int:
        if -MAX_EXACT_INT <= value <= MAX_EXACT_INT:
            return {"t": "int", "v": value}
        return _int(value)
    if t is str:
        if len(value) <= limits[2]:
            return {"t": "str", "v": value}
        return _str(value, limits[2])
    if t is float:
        return _float(value)
    if value is None:
        return _NONE
    if t is bool:
        return {"t": "bool", "v": value}
    return snapshot(value, limits)


_NONE = {"t": "none"}

_quote = json.encoder.encode_basestring  # the C version when there is one; keeps non-ASCII
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


def dumps(value):
    """Compact JSON text of a typed value or a list/dict of them (the protocol's encoding)."""
    return _dumps(value)


def quote(text):
    """A JSON string literal."""
    return _quote(text)


def to_json(value, limits):
    """The JSON text of :func:`encode`'s result, made directly for the usual primitives."""
    t = type(value)
    if t is int:
        if -MAX_EXACT_INT <= value <= MAX_EXACT_INT:
            return '{"t":"int","v":%d}' % value
    elif t is str:
        limit = limits[2]
        if len(value) <= limit:
            return '{"t":"str","v":' + _quote(value) + "}"
        return '{"t":"str","v":' + _quote(value[:limit]) + ',"len":%d}' % len(value)
    elif t is float:
        if value - value == 0.0:  # finite
            return '{"t":"float","v":' + float.__repr__(value) + "}"
    elif value is None:
        return '{"t":"none"}'
    elif t is bool:
        return '{"t":"bool","v":true}' if value else '{"t":"bool","v":false}'
    elif t is dict:
        return _dumps(value)
    elif t is Copied and value.tag != "dict":
        head = '{"t":"%s",%s"v":[' % (value.tag, '"frozen":true,' if value.frozen else "")
        return head + ",".join([to_json(item, limits) for item in value.items]) + '],"len":%d}' % value.size
    return _dumps(encode(value, limits))


def capture_locals(mapping, limits, use_repr=False):
    """A snapshot of a frame's locals: name -> typed value, secret-looking names redacted."""
    out = {}
    try:
        walker = _Walker(limits, use_repr)
        for name, value in list(mapping.items()):
            if len(out) >= MAX_LOCALS:
                break
            if type(name) is not str:
                continue
            if is_secret(name):
                out[name] = {"t": "redacted"}
                continue
            try:
                out[name] = walker.value(value, 1)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                out[name] = error_value(exc)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        out["<locals>"] = error_value(exc)
    return out
