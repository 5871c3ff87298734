"""Expression checking and compiling (the engine-level refusals are in test_engine)."""

import pytest

from scry import _probes


def probe(*expressions, **kw):
    spec = {"id": "p", "location": "a.py:1", "expressions": list(expressions)}
    spec.update(kw)
    p = _probes.Probe(spec)
    p.compile()
    return p


def test_defaults_are_filled_in():
    spec = _probes.normalize({"id": "p", "location": "a.py:1", "expressions": ["x"]})
    assert spec["rate"] == {"mode": "every"} and spec["unsafe"] is False
    assert spec["capture"] == {"stack": False, "locals": False, "repr": False}
    assert spec["limits"] == {"depth": 3, "items": 20, "string": 256}


def test_all_expressions_compile_into_one_code_object():
    p = probe("a", "b.c", "d[1:2]")
    assert eval(p.code, {}, {"a": 1, "b": type("B", (), {"c": 2}), "d": [0, 1, 2]}) == (1, 2, [1])
    assert len(p.codes) == 3
    single = probe("a + 1")
    scope = _probes.Scope(single.helpers)  # `+` goes through its guard
    scope.loc = {"a": 1}
    assert eval(single.code, {}, scope) == 2


def test_bare_name_and_specialised_functions():
    assert probe("order").name == "order"
    p = probe("len(items) + x")
    p.bind([compile("def f(items, x): pass", "<t>", "exec").co_consts[0]])
    assert p.fast is not None and p.fast({"items": [1, 2], "x": 1}) == 3
    assert p.plain
    p = probe("len(items) + GLOBAL")
    p.bind([compile("def f(items): pass", "<t>", "exec").co_consts[0]])
    assert p.fast is None and not p.plain  # a name that is not a local: eval, in a Scope


def test_calls_resolve_to_the_real_builtins_whatever_the_frame_binds():
    p = probe("len(x)")
    scope = _probes.Scope(p.helpers)
    scope.loc = {"x": [1, 2, 3], "len": lambda v: "shadowed"}
    assert eval(p.code, {"len": None}, scope) == 3


def test_bounded_builtins():
    p = probe("sum(x)", "min(x)", "max(a, b)", "any(x)")
    scope = _probes.Scope(p.helpers)
    scope.loc = {"x": list(range(10001)), "a": 1, "b": 2}
    with pytest.raises(_probes.InputTooLong):
        eval(p.code, {}, scope)
    scope.loc["x"] = list(range(10000))
    assert eval(p.code, {}, scope) == (sum(range(10000)), 0, 2, True)


@pytest.mark.parametrize("rate,mode", [({"mode": "every"}, _probes.EVERY), ({"mode": "sample", "n": 2}, _probes.SAMPLE), ({"mode": "rate", "per_second": 1.5}, _probes.RATE), ({"mode": "first", "n": 3}, _probes.FIRST)])
def test_rate_modes(rate, mode):
    p = probe("x", rate=rate)
    assert p.mode == mode and p.plain == (mode == _probes.EVERY)


def test_unsafe_lifts_only_the_call_rule():
    assert probe("x.method()", unsafe=True).code is not None
    with pytest.raises(_probes.InvalidExpression) as info:
        probe("x.__class__", unsafe=True)
    assert "__class__" in str(info.value)
    with pytest.raises(_probes.InvalidExpression):
        probe("[i for i in x]", unsafe=True)


# -- the shared vectors (crates/scry-proto/vectors/expressions.json), as the daemon reads them ----

import builtins
import importlib
import json
import os

from conftest import VECTORS

with open(os.path.join(VECTORS, "expressions.json"), encoding="utf-8") as _f:
    SHARED = json.load(_f)


def test_the_tables_are_the_daemons():
    assert list(_probes.SAFE_CALLS) == SHARED["pure_builtins"]
    assert sorted(_probes.PURE_METHODS) == SHARED["pure_methods"]
    assert list(_probes.KEYWORDS) == SHARED["keywords"]
    bounds = SHARED["bounds"]
    assert (bounds["max_int_bits"], bounds["max_items"], bounds["max_digits"]) == (
        _probes.MAX_INT_BITS,
        _probes.MAX_ITEMS,
        _probes.MAX_DIGITS,
    )
    assert (bounds["max_iterable"], bounds["max_len"]) == (_probes.MAX_ITERABLE, _probes.MAX_LEN)
    assert len(SHARED["vectors"]) >= 60


class Obj(object):
    """A user object: its methods record that they ran (none may, from a probe)."""

    def __init__(self, calls, **attrs):
        self.__dict__.update(attrs)
        self._calls = calls

    def get(self, *args):
        self._calls.append(("get", args))

    def startswith(self, *args):
        self._calls.append(("startswith", args))


def _local(value, calls):
    if isinstance(value, dict) and len(value) == 1:
        (marker, arg), = value.items()
        if marker == "$object":
            return Obj(calls, **{k: _local(v, calls) for k, v in arg.items()})
        if marker == "$module":
            return importlib.import_module(arg)
        if marker == "$iterator":
            return iter(arg)
        if marker == "$repeat":
            return arg[0] * arg[1]
        if marker == "$callable":
            return lambda *a: calls.append(("callable", a))
    if isinstance(value, dict):
        return {k: _local(v, calls) for k, v in value.items()}
    if isinstance(value, list):
        return [_local(v, calls) for v in value]
    return value


def _plain(value):
    return json.loads(json.dumps(value))


def _paths(p, names):
    """How the hit path evaluates ``p`` in a frame whose locals are ``names``: ``eval`` in a
    Scope, and the specialised function when every name the expression reads is a local."""
    from scry import _hit

    out = [("eval", lambda loc: _hit._slow(p, p.code, {"__builtins__": builtins}, loc))]
    p.bind([compile("def f({}): pass".format(", ".join(["_t"] + sorted(names))), "<t>", "exec").co_consts[0]])
    if p.fast is not None:
        out.append(("fast", p.fast))
    return out


@pytest.mark.parametrize(
    "vector", SHARED["vectors"], ids=["{}{}".format(v["expr"][:50], " (unsafe)" if v["unsafe"] else "") for v in SHARED["vectors"]]
)
def test_shared_vector(vector):
    spec = {"id": "v", "location": "a.py:1", "expressions": [vector["expr"]], "unsafe": vector["unsafe"]}
    p = _probes.Probe(spec)
    if vector["verdict"] == "reject":
        with pytest.raises(_probes.InvalidExpression) as info:
            p.compile()
        assert vector["reason"] in str(info.value), str(info.value)
        return
    assert vector["verdict"] == "accept"
    p.compile()
    run = vector.get("run")
    if run is None:
        return
    for path, evaluate in _paths(p, vector["locals"]):
        calls = []
        loc = {k: _local(v, calls) for k, v in vector["locals"].items()}
        if "refused" in run:
            with pytest.raises(_probes.Refused) as info:
                evaluate(loc)
            assert run["refused"] in str(info.value), (path, str(info.value))
        else:
            assert _plain(evaluate(loc)) == run["value"], path
        assert calls == [], (path, calls)
