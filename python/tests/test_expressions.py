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
    assert eval(single.code, {}, {"a": 1}) == 2


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
