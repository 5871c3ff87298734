"""find_lines: executable lines and a variable's bindings and reads, from the loaded code."""

import importlib
import os
import sys
import textwrap

import pytest

from scry import _calls, _lines

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import lines_targets  # noqa: E402  (the tricky code; its line numbers are asserted)

INLINED_COMPREHENSIONS = sys.version_info >= (3, 12)


def rows(table):
    return [dict(zip(table["columns"], row)) for row in table["rows"]]


def test_loop_variable_bindings_reads_and_after_lines():
    answer = _lines.find_lines("lines_targets:loop_total", "total")
    assert answer["file"].endswith("lines_targets.py")
    assert answer["file_differs"] is False and answer["source"] == "file"
    assert [r[0] for r in answer["lines"]["rows"]] == [12, 13, 14, 15]
    binds = rows(answer["bindings"])
    assert [(b["line"], b["how"], b["after_line"]) for b in binds] == [(12, "assign", 13), (14, "assign", 13)]
    assert binds[1]["source"] == "total = total + item"
    assert [r["line"] for r in rows(answer["reads"])] == [14, 15]


def test_comprehension_variable_is_its_own_scope():
    answer = _lines.find_lines("lines_targets:comprehension", "total")
    binds = rows(answer["bindings"])
    assert [(b["line"], b["how"], b["scope"]) for b in binds] == [
        (19, "assign", "local"),
        (20, "comprehension", "comprehension"),
    ]
    # 3.12+ inlines list comprehensions (PEP 709): no code object of their own.
    expected_fn = "comprehension" if INLINED_COMPREHENSIONS else "comprehension.<locals>.<listcomp>"
    assert binds[1]["function"] == expected_fn
    reads = rows(answer["reads"])
    assert (20, expected_fn) in [(r["line"], r["function"]) for r in reads]
    assert (21, "comprehension") in [(r["line"], r["function"]) for r in reads]


def test_shadowed_in_nested_function():
    answer = _lines.find_lines("lines_targets:outer", "total")
    binds = [(b["line"], b["function"]) for b in rows(answer["bindings"])]
    assert binds == [(25, "outer"), (28, "outer.<locals>.inner")]
    reads = [(r["line"], r["function"]) for r in rows(answer["reads"])]
    assert reads == [(29, "outer.<locals>.inner"), (31, "outer")]


def test_nested_function_alone():
    answer = _lines.find_lines("lines_targets:outer.inner", "y")
    assert [r[0] for r in answer["lines"]["rows"]] == [28, 29]
    binds = rows(answer["bindings"])
    assert binds[0]["how"] == "parameter" and binds[0]["after_line"] == 28


def test_method_attribute():
    answer = _lines.find_lines("lines_targets:Cart.add", "self.total")
    assert [r[0] for r in answer["lines"]["rows"]] == [39, 40]
    assert [(b["line"], b["how"]) for b in rows(answer["bindings"])] == [(39, "augmented")]
    assert [r["line"] for r in rows(answer["reads"])] == [40]


def test_a_line_only_a_decorator_covers():
    # A top-level function's decorator runs in module code, once, at import: not its line.
    answer = _lines.find_lines("lines_targets:decorated")
    assert [r[0] for r in answer["lines"]["rows"]] == [47]
    # A nested function's decorator runs in the enclosing function.
    answer = _lines.find_lines("lines_targets:nested_decorated")
    owners = {r[0]: r[1] for r in answer["lines"]["rows"]}
    assert owners[51] == "nested_decorated"
    assert owners[55] == "nested_decorated.<locals>.f"


def test_whole_file():
    answer = _lines.find_lines("tests/lines_targets.py")
    lines = [r[0] for r in answer["lines"]["rows"]]
    assert 36 in lines and 47 in lines and 45 not in lines
    assert answer["function"] is None


def test_limit_says_truncated():
    answer = _lines.find_lines("lines_targets.py", None, 3)
    assert answer["lines"]["truncated"] is True and len(answer["lines"]["rows"]) == 3
    assert answer["lines"]["total"] > 3


def test_edited_on_disk_after_load(tmp_path, monkeypatch):
    src = tmp_path / "edited_mod.py"
    src.write_text(textwrap.dedent('''\
        def work(n):
            count = n
            count = count * 2
            return count
        '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("edited_mod")
    try:
        # Lines move: two lines inserted on top, and the arithmetic changes.
        src.write_text("# edited\n# again\n" + src.read_text().replace("* 2", "* 3"))
        answer = _lines.find_lines("edited_mod:work", "count")
        assert answer["file_differs"] is True
        assert "changed on disk" in answer["note"]
        assert [r[0] for r in answer["lines"]["rows"]] == [2, 3, 4]  # the loaded code's lines
        binds = [b["line"] for b in rows(answer["bindings"])]
        assert binds == [2, 3]
        assert [r["line"] for r in rows(answer["reads"])] == [3, 4]
    finally:
        sys.modules.pop("edited_mod", None)
        del mod


def test_errors_are_call_errors():
    with pytest.raises(_calls.CallError) as e:
        _lines.find_lines("no_such_module_xyz:f")
    assert e.value.kind == "not_found"
    with pytest.raises(_calls.CallError) as e:
        _lines.find_lines("lines_targets:nope")
    assert "no function" in e.value.message
    with pytest.raises(_calls.CallError):
        _lines.find_lines("nowhere/at_all.py")


def test_last_line_is_the_loaded_files():
    """The daemon refuses a probe past it (its add-time location check)."""
    with open(lines_targets.__file__, encoding="utf-8") as f:
        count = len(f.read().splitlines())
    assert _lines.find_lines("lines_targets.py", limit=1)["last_line"] == count
    assert _lines.find_lines("lines_targets:outer")["last_line"] == count
