"""What this interpreter offers the probe engine: capability flags, computed once at import.

Every version-dependent decision of the engine reads a flag from here, so that the rest of the
code never tests ``sys.version_info`` itself and imports safely on every supported Python.
"""

import sys
import types

PY = sys.version_info[:2]

#: ``sys.monitoring`` (PEP 669, 3.12+), or None.
MONITORING = getattr(sys, "monitoring", None)

#: ``code.co_lines()`` exists (3.10+); before that the line table is ``co_lnotab``.
HAS_CO_LINES = hasattr(types.CodeType, "co_lines")

#: ``code.co_qualname`` exists (3.11+).
HAS_CO_QUALNAME = hasattr(types.CodeType, "co_qualname")

#: 3.13+ does not fire LINE for the first line of a function when that line is also the line of
#: its RESUME (one-line functions, lambdas, generator expressions) unless PY_START is in the
#: code object's local event set too (cpython #155992; verified on 3.13.5 and 3.14). Adding
#: PY_START *without registering a PY_START callback* fixes it; a PY_START callback returning
#: DISABLE would break it again after the first call.
LINE_NEEDS_PY_START = PY >= (3, 13)

#: ``frame.f_locals`` is a write-through proxy (PEP 667, 3.13+): cheap, and fine for ``eval``.
F_LOCALS_IS_PROXY = PY >= (3, 13)

#: The bytecode injection layout of this interpreter (``scry._inject``), or None: one module per
#: bytecode format, for the versions without sys.monitoring that have been tested (3.10 has a
#: format of its own and no interpreter here to test it on).
INJECTION_LAYOUT = {(3, 8): "py38", (3, 9): "py38", (3, 11): "py311"}.get(PY)

#: Whether a private ``_PyEval_SetTrace(tstate, func, arg)`` exists to install a trace function
#: in another thread (3.9-3.11). 3.8 has none: the engine writes the thread state's fields.
HAS_PRIVATE_SETTRACE = (3, 9) <= PY < (3, 12)


def backend():
    """``(name, reason)``: the probe backend this interpreter gets, and why."""
    if MONITORING is not None:
        return "sys.monitoring", "Python {}.{} has sys.monitoring (PEP 669)".format(*PY)
    if INJECTION_LAYOUT is not None:
        return (
            "bytecode",
            "Python {}.{} has no sys.monitoring (3.12+): a probed line gets a call injected into a "
            "copy of its code object, and nothing else is traced".format(*PY),
        )
    return (
        "settrace",
        "Python {}.{} has no sys.monitoring (3.12+) and scry has no bytecode injection layout for "
        "it: probes use a trace function that exists only while probes are armed".format(*PY),
    )


BACKEND, BACKEND_REASON = backend()


def capabilities():
    """What the hello message says: ``probes``, the backend and its reason, and one
    ``call:<method>`` per feature reachable through ``call`` (see ``_calls``)."""
    from . import _calls

    return ["probes", "backend:" + BACKEND, "backend_reason:" + BACKEND_REASON] + [
        "call:" + name for name in _calls.methods()
    ]


def claim_monitoring_tool(order, name):
    """Takes the first free ``sys.monitoring`` tool id of ``order`` under ``name`` and returns
    it; never evicts another tool. Raises ``RuntimeError`` naming the holders when none is free."""
    mon = MONITORING
    for tool in order:
        if mon.get_tool(tool) is not None:
            continue
        try:
            mon.use_tool_id(tool, name)
        except ValueError:  # taken between the check and the claim
            continue
        return tool
    holders = ", ".join("{} by {!r}".format(t, mon.get_tool(t)) for t in range(6))
    raise RuntimeError(
        "sys.monitoring has no free tool id (held: {}); scry never evicts another tool".format(holders)
    )


def release_monitoring_tool(tool, name, codes, events):
    """Undoes :func:`claim_monitoring_tool`: local events off on ``codes``, the callbacks of
    ``events`` and the global events removed, the id freed if it still holds ``name``. Never
    raises (a half-released tool is better than an exception in the host's thread)."""
    mon = MONITORING
    for code in codes:
        try:
            mon.set_local_events(tool, code, 0)
        except Exception:
            pass
    try:
        mon.set_events(tool, 0)
    except Exception:
        pass
    for event in events:
        try:
            mon.register_callback(tool, event, None)
        except Exception:
            pass
    try:
        if mon.get_tool(tool) == name:
            mon.free_tool_id(tool)
    except Exception:
        pass
