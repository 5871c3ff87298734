"""Typed, bounded capture of values (docs/protocol.md "Typed values"), and secret-looking names."""

import collections
import enum
import json

import pytest

from scry import _capture

LIMITS = (3, 20, 256)


def snap(value, limits=LIMITS, use_repr=False):
    """What a hit keeps, encoded as the link encodes it (checked both ways)."""
    kept = _capture.snapshot(value, limits, use_repr)
    out = _capture.encode(kept, limits)
    assert json.loads(_capture.to_json(kept, limits)) == out
    json.dumps(out, allow_nan=False)  # always valid JSON
    return out


def test_primitives():
    assert snap(None) == {"t": "none"}
    assert snap(True) == {"t": "bool", "v": True}
    assert snap(7) == {"t": "int", "v": 7}
    assert snap(0.5) == {"t": "float", "v": 0.5}
    assert snap("abc") == {"t": "str", "v": "abc"}
    assert snap(b"\x00\xff") == {"t": "bytes", "v": "00ff"}


def test_big_ints_stay_exact():
    assert snap(2 ** 53) == {"t": "int", "v": 2 ** 53}
    assert snap(2 ** 53 + 1) == {"t": "int", "v": str(2 ** 53 + 1)}
    assert snap(-(2 ** 64)) == {"t": "int", "v": str(-(2 ** 64))}
    assert snap(1 << 20000)["v"] == "<an int of 20001 bits>"


def test_non_finite_floats():
    assert snap(float("nan")) == {"t": "float", "v": "nan"}
    assert snap(float("inf")) == {"t": "float", "v": "inf"}
    assert snap(float("-inf")) == {"t": "float", "v": "-inf"}


def test_strings_and_bytes_are_cut():
    assert snap("x" * 300, (3, 20, 10)) == {"t": "str", "v": "x" * 10, "len": 300}
    assert snap(b"\x01" * 30, (3, 20, 4)) == {"t": "bytes", "v": "01010101", "len": 30}
    assert snap(bytearray(b"ab"))["t"] == "bytes"


def test_containers_items_and_depth():
    value = snap(list(range(50)), (3, 5, 256))
    assert value["t"] == "list" and value["len"] == 50 and len(value["v"]) == 5
    nested = snap([[[[1]]]], (2, 20, 256))
    assert nested == {"t": "list", "v": [{"t": "list", "v": [{"t": "list", "len": 1}], "len": 1}], "len": 1}
    assert snap((1, 2))["t"] == "tuple"
    assert snap({3})["t"] == "set"
    assert snap(frozenset([3])) == {"t": "set", "frozen": True, "v": [{"t": "int", "v": 3}], "len": 1}
    assert snap({"a": 1}) == {"t": "dict", "v": [[{"t": "str", "v": "a"}, {"t": "int", "v": 1}]], "len": 1}


def test_cycles():
    a = [1]
    a.append(a)
    value = snap(a, (10, 20, 256))
    assert value["v"][1] == {"t": "cycle", "type": "list"}
    d = {}
    d["self"] = d
    assert snap(d, (10, 20, 256))["v"][0][1] == {"t": "cycle", "type": "dict"}


class Plain(object):
    def __init__(self):
        self.total = 12.5
        self.api_key = "k"
        self.child = None


class Slotted(object):
    __slots__ = ("a", "__hidden", "unset")

    def __init__(self):
        self.a = 1
        self.__hidden = 2


class Hostile(object):
    """Every way user code could run when an object is read."""

    calls = []

    def __init__(self):
        self.x = 1

    def __getattr__(self, name):
        Hostile.calls.append("getattr " + name)
        raise AttributeError(name)

    def __getattribute__(self, name):
        Hostile.calls.append("getattribute " + name)
        return object.__getattribute__(self, name)

    def __repr__(self):
        Hostile.calls.append("repr")
        return "Hostile()"

    @property
    def computed(self):
        Hostile.calls.append("property")
        return 1


def test_objects_are_read_without_running_their_code():
    value = snap(Plain())
    assert value["t"] == "obj" and value["type"].endswith("test_capture.Plain")
    assert value["fields"] == {"total": {"t": "float", "v": 12.5}, "api_key": {"t": "redacted"}, "child": {"t": "none"}}
    assert snap(Slotted())["fields"] == {"a": {"t": "int", "v": 1}, "__hidden": {"t": "int", "v": 2}}
    Hostile.calls = []
    assert snap(Hostile())["fields"] == {"x": {"t": "int", "v": 1}}
    assert Hostile.calls == []


def test_repr_only_when_asked_and_bounded():
    Hostile.calls = []
    assert snap(Hostile(), use_repr=True)["repr"] == "Hostile()"
    assert Hostile.calls == ["repr"]

    class Long(object):
        def __repr__(self):
            return "x" * 1000

    class Raising(object):
        def __repr__(self):
            raise ValueError("no")

    assert snap(Long(), (3, 20, 8), use_repr=True)["repr"] == "xxxxxxxx..."
    assert snap(Raising(), use_repr=True)["repr"] == "<repr raised ValueError>"


def _fake(module, name, **attrs):
    cls = type(name, (object,), dict(attrs))
    cls.__module__ = module
    return cls


def test_heavy_types_are_summarised_without_importing_them():
    shape = property(lambda self: (2, 3))
    ndarray = _fake("numpy", "ndarray", shape=shape, dtype=property(lambda self: "float32"))
    assert snap(ndarray()) == {"t": "ndarray", "shape": [2, 3], "dtype": "float32"}
    tensor = _fake("torch", "Tensor", shape=shape, dtype="torch.float32", device="cpu")
    assert snap(tensor()) == {"t": "tensor", "shape": [2, 3], "dtype": "torch.float32", "device": "cpu"}
    frame = _fake("pandas.core.frame", "DataFrame", shape=(10, 25), columns=["c{}".format(i) for i in range(25)])
    value = snap(frame())
    assert value["t"] == "dataframe" and value["shape"] == [10, 25] and len(value["columns"]) == 20
    series = _fake("pandas.core.series", "Series", __len__=lambda self: 7, dtype="int64")
    assert snap(series()) == {"t": "series", "len": 7, "dtype": "int64"}


def test_enums_namedtuples_and_subclasses():
    class Color(enum.Enum):
        RED = 1

    value = snap(Color.RED)
    assert value["t"] == "enum" and value["name"] == "RED" and value["v"] == {"t": "int", "v": 1}
    Point = collections.namedtuple("Point", "x y")
    assert snap(Point(1, 2))["fields"] == {"x": {"t": "int", "v": 1}, "y": {"t": "int", "v": 2}}
    ordered = snap(collections.OrderedDict(a=1))
    assert ordered["t"] == "dict" and ordered["type"] == "collections.OrderedDict"

    class MyInt(int):
        pass

    assert snap(MyInt(3))["v"] == 3


def test_every_enum_carries_its_class_name_and_typed_value():
    class Mode(enum.IntEnum):
        FULL = 1

    class Color(str, enum.Enum):
        RED = "red"

    class Shape(enum.Enum):
        BOX = (1, 2)

    label = Mode.__module__ + "." + Mode.__qualname__
    assert snap(Mode.FULL) == {"t": "enum", "type": label, "name": "FULL", "v": {"t": "int", "v": 1}}
    # A str mixin is an enum, not a str subclass.
    assert snap(Color.RED)["name"] == "RED" and snap(Color.RED)["v"] == {"t": "str", "v": "red"}
    # Inside a container at the depth limit the value is still typed: a primitive in full, a
    # container as its size.
    nested = snap({"m": Mode.FULL, "s": Shape.BOX}, limits=(1, 20, 256))
    assert nested["v"][0][1]["v"] == {"t": "int", "v": 1}
    assert nested["v"][1][1]["v"] == {"t": "tuple", "len": 2}


def test_stdlib_values_show_their_repr():
    import datetime
    import decimal

    assert snap(datetime.date(2026, 1, 2))["repr"] == "datetime.date(2026, 1, 2)"
    assert snap(decimal.Decimal("1.10"))["repr"] == "Decimal('1.10')"


@pytest.mark.parametrize(
    "name,secret",
    [
        ("token", True),
        ("access_token", True),
        ("accessToken", True),
        ("db_password", True),
        ("PASSWORD", True),
        ("passwd", True),
        ("client_secret", True),
        ("api_key", True),
        ("apiKey", True),
        ("APIKey", True),
        ("apikey", True),
        ("authorization", True),
        ("auth_token", True),
        ("credentials", True),
        ("private_key", True),
        ("tokenizer", False),
        ("secretary", False),
        ("tokens", False),
        ("keyboard", False),
        ("author", False),
        ("private", False),
        ("monkey", False),
    ],
)
def test_secret_looking_names(name, secret):
    assert _capture.is_secret(name) is secret


def test_locals_snapshot_redacts():
    out = _capture.capture_locals({"password": "x", "user": "u", 1: "not a name"}, LIMITS)
    assert out == {"password": {"t": "redacted"}, "user": {"t": "str", "v": "u"}}


def test_encode_keeps_snapshots_and_types_primitives():
    assert _capture.encode({"t": "none"}, LIMITS) == {"t": "none"}
    assert _capture.encode("x" * 5, (3, 20, 2)) == {"t": "str", "v": "xx", "len": 5}


@pytest.mark.parametrize(
    "value",
    [0, -5, 2 ** 53, 2 ** 60, 1.5, 1e300, -0.0, float("nan"), float("-inf"), "", "é\"\\\n\x00", "x" * 300,
     None, True, False, b"ab", [1, "a"], {"k": [None]}],
)
def test_to_json_is_the_json_of_encode(value):
    limits = (3, 20, 256)
    kept = value if type(value) in _capture.PRIMITIVES else _capture.snapshot(value, limits)
    assert json.loads(_capture.to_json(kept, limits)) == _capture.encode(kept, limits)


def test_containers_of_primitives_are_copied_at_the_hit_and_typed_later():
    items = [1, "a", None]
    kept = _capture.snapshot(items, LIMITS)
    items.append(2)
    items[0] = 99
    assert _capture.encode(kept, LIMITS) == {
        "t": "list",
        "v": [{"t": "int", "v": 1}, {"t": "str", "v": "a"}, {"t": "none"}],
        "len": 3,
    }
    secret = _capture.snapshot({"password": "x", "n": 1}, LIMITS)
    assert _capture.encode(secret, LIMITS)["v"][0] == [{"t": "str", "v": "password"}, {"t": "redacted"}]


def test_reports_mix_encoded_and_plain_events():
    from scry import _proto

    raw = '{"kind":"probe","t":1.5,"source":"p","data":{}}'  # already JSON text
    line = _proto.encode_report(3, [raw, {"kind": "pulse", "t": 2, "source": None, "data": {"a": "é"}}], 1)
    msg = _proto.decode(line, _proto.AGENT_TYPES)
    assert msg["seq"] == 3 and msg["dropped"] == 1
    assert [e["kind"] for e in msg["events"]] == ["probe", "pulse"] and msg["events"][1]["data"]["a"] == "é"
