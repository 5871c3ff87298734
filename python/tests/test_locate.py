"""Locations: parsing, path suffix matching, line tables, owners and snapping."""

import os
import sys

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


def _load(path, name):
    """Import the file ``path`` as module ``name`` (kept in sys.modules by the caller)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, str(path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def app_and_debugpy(tmp_path, monkeypatch):
    """A program's ``app/api.py`` and a debugpy package with its own ``server/api.py`` (as
    ``scry debug`` loads it), both imported, their functions alive."""
    source = "def handle(x):\n    y = x + 1\n    return y\n"
    app = tmp_path / "srv" / "app" / "api.py"
    app.parent.mkdir(parents=True)
    app.write_text(source)
    pkg = tmp_path / "site" / "debugpy"
    (pkg / "server").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "server" / "__init__.py").write_text("")
    (pkg / "server" / "api.py").write_text(source)
    modules = {
        "scry_test_app_api": _load(app, "scry_test_app_api"),
        "debugpy": _load(pkg / "__init__.py", "debugpy"),
        "debugpy.server.api": _load(pkg / "server" / "api.py", "debugpy.server.api"),
    }
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return str(app), str(pkg / "server" / "api.py")


def _resolved_file(text):
    location = _locate.parse_location(text)
    index = _locate.CodeIndex.build([_locate.index_paths(location)])
    return _locate.resolve(location, index).file


def test_a_suffix_never_matches_debugpys_files(app_and_debugpy):
    app, tool = app_and_debugpy
    assert _resolved_file("api.py:2") == app
    assert _resolved_file("api.py:handle") == app
    # A longer suffix that only debugpy's file has is no match either (nothing else is loaded).
    location = _locate.parse_location("server/api.py:2")
    index = _locate.CodeIndex.build([location.components])
    assert index.matching_files(location.components) == {}
    assert [f for _, f in _locate.loaded_module_files(location.components)] == []
    assert [f for _, f in _locate.loaded_module_files(_locate.path_components("api.py"))] == [app]


def test_a_tools_file_is_still_named_by_its_absolute_path(app_and_debugpy):
    _app, tool = app_and_debugpy
    assert _resolved_file("{}:2".format(tool)) == tool
    assert _resolved_file("@{}#3".format(tool)) == tool


def test_without_debugpy_loaded_its_directory_is_an_ordinary_one(app_and_debugpy, monkeypatch):
    app, tool = app_and_debugpy
    monkeypatch.delitem(sys.modules, "debugpy")
    assert not _locate.tool_file(tool)
    with pytest.raises(_locate.LocationError, match="matches several files"):
        _resolved_file("api.py:2")


def test_scrys_own_files_are_tool_files():
    assert _locate.tool_file(_locate.__file__)
    assert _locate.tool_file(os.path.join(_locate.PACKAGE_DIR, "sub", "x.py"))
    assert not _locate.tool_file(_locate.PACKAGE_DIR + "-other/x.py")
