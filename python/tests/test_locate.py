"""Locations: parsing, path suffix matching, line tables, owners and snapping."""

import pytest

import probe_targets as T
from scry import _locate


@pytest.mark.parametrize(
    "text,kind,where,line,function",
    [
        ("app/orders.py:127", "line", "app/orders.py", 127, None),
        ("@app/orders.py#127", "line", "app/orders.py", 127, None),
        ("/srv/app/orders.py:3", "line", "/srv/app/orders.py", 3, None),
        ("orders.process:handle", "function", "orders.process", None, "handle"),
        ("app/orders.py:Order.total", "function", "app/orders.py", None, "Order.total"),
        ("orders.py:process", "function", "orders.py", None, "process"),
        ("m:<lambda>", "function", "m", None, "<lambda>"),
    ],
)
def test_parse_location(text, kind, where, line, function):
    loc = _locate.parse_location(text)
    assert (loc.kind, loc.where, loc.line, loc.function) == (kind, where, line, function)


@pytest.mark.parametrize("text", ["orders.py", ":12", "a.py:", "@a.py", "@a.py#x", "a.py:0", "", "   "])
def test_bad_locations(text):
    with pytest.raises(_locate.LocationError):
        _locate.parse_location(text)


def test_paths_match_by_whole_components():
    match = _locate.path_matches
    comps = _locate.path_components
    assert match("/srv/app/orders.py", comps("orders.py"))
    assert match("/srv/app/orders.py", comps("app/orders.py"))
    assert match("/srv/app/orders.py", comps("/srv/app/orders.py"))
    assert match("/srv/app/./orders.py", comps("./app/orders.py"))
    assert not match("/srv/app/orders.py", comps("ers.py"))
    assert not match("/srv/app/orders.py", comps("other/orders.py"))
    assert not match("orders.py", comps("app/orders.py"))


def test_module_stem():
    assert _locate.module_stem(("app", "orders.py")) == "orders"
    assert _locate.module_stem(("app", "__init__.py")) == "app"


def test_line_tables():
    code = T.compute.__code__
    lines = _locate.own_lines(code)
    assert T.line("compute") in lines and T.line("after-comment") in lines
    assert T.line("comment") not in lines
    assert code.co_firstlineno not in lines  # the def line runs in the module, not in compute
    assert _locate.entry_line(code) == T.line("compute")
    assert _locate.own_lines(T.one_liner.__code__) == [T.line("one-liner")]


def test_innermost_owner_and_snapping():
    index = _locate.CodeIndex.build()
    loc = _locate.parse_location("probe_targets.py:{}".format(T.line("closure")))
    target = _locate.resolve(loc, index)
    assert [c.co_name for c in target.codes] == ["closure"]
    assert target.function == "make_closure.<locals>.closure"
    loc = _locate.parse_location("probe_targets.py:{}".format(T.line("comment")))
    target = _locate.resolve(loc, index)
    assert target.line == T.line("after-comment") and target.requested_line == T.line("comment")


def test_a_line_shared_with_nested_code_belongs_to_the_function_that_runs_it():
    index = _locate.CodeIndex.build()
    for marker, function in (("genexp", "with_genexp"), ("listcomp", "with_listcomp")):
        loc = _locate.parse_location("probe_targets.py:{}".format(T.line(marker)))
        target = _locate.resolve(loc, index)
        assert [c.co_name for c in target.codes] == [function], marker
    # A nested function's own body lines still belong to it.
    loc = _locate.parse_location("probe_targets.py:{}".format(T.line("closure")))
    assert [c.co_name for c in _locate.resolve(loc, index).codes] == ["closure"]


def test_scry_itself_is_not_probed():
    index = _locate.CodeIndex.build()
    assert not any("/scry/_" in name and name.endswith(".py") and "/python/scry/" in name for name in index.files)
    with pytest.raises(_locate.LocationError):
        _locate.resolve(_locate.parse_location("scry._hit:hit"), index)
