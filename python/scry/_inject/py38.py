"""The bytecode format of CPython 3.8 and 3.9, for :mod:`scry._inject`.

Wordcode (two bytes an instruction, no inline caches); jump arguments in bytes, relative
(``dis.hasjrel``: from the next instruction) or absolute (``dis.hasjabs``); exception handling
through the block stack (``SETUP_FINALLY`` and friends are relative jumps), so there is no
exception table; lines in ``co_lnotab``: (byte increment, signed line increment) pairs, from
``co_firstlineno`` at offset 0. The hook call is ``LOAD_CONST hook; CALL_FUNCTION 0; POP_TOP``.
"""

import dis

CACHES = [0] * 256
JUMP_FORWARD = dis.opmap["JUMP_FORWARD"]
_LOAD_CONST = dis.opmap["LOAD_CONST"]
_CALL_FUNCTION = dis.opmap["CALL_FUNCTION"]
_POP_TOP = dis.opmap["POP_TOP"]
_JREL = frozenset(dis.hasjrel)
_JABS = frozenset(dis.hasjabs)

#: Stack slots the hook sequence needs above what the code needs.
HOOK_STACK = 1
#: Never insert before these / right after these (nothing in this format needs it).
NO_SPLIT_BEFORE = frozenset()
NO_SPLIT_AFTER = frozenset()


def hook_sequence(const_index):
    return [(_LOAD_CONST, const_index), (_CALL_FUNCTION, 0), (_POP_TOP, 0)]


# -- tracing: entry, exits and the exception that leaves --------------------------------------------
# The entry hook and a SETUP_FINALLY to a handler at the end go before everything; each
# RETURN_VALUE first pops that block (the compiler has popped every other one by then). The handler
# finds (traceback, value, type) on the stack above the saved exception state, passes the value to
# the hook and re-raises (RERAISE; 3.8 has END_FINALLY, which does the same with a type on top).

_m = dis.opmap
VALUE_HOOK_STACK = 2
HANDLER_STACK = 8
BLOCK_STACK = True
SETUP_FINALLY = _m["SETUP_FINALLY"]
SETUP_OPS = frozenset(op for name, op in _m.items() if name.startswith("SETUP_") and name != "SETUP_ANNOTATIONS")
#: CPython's block stack has 20 levels (CO_MAXBLOCKS, a fatal error past it); ours takes one and
#: no function nests deeper than it has SETUP instructions.
MAX_SETUPS = 18
RETURN_OPS = frozenset((_m["RETURN_VALUE"],))
YIELD_OPS = frozenset((_m["YIELD_VALUE"],))
YIELD_FROM_OPS = frozenset((_m["YIELD_FROM"],))
BEFORE_RETURN = [(_m["POP_BLOCK"], 0)]
_RESUMES_AFTER = YIELD_OPS | YIELD_FROM_OPS
_RERAISE = _m.get("RERAISE", _m.get("END_FINALLY"))


def resumes_after(ins):
    """Whether a suspended frame resumes right after ``ins`` (a yield)."""
    return ins.op in _RESUMES_AFTER


def value_hook_sequence(const_index):
    """Call the hook with the value on top of the stack, which stays."""
    return [(_m["DUP_TOP"], 0), (_LOAD_CONST, const_index), (_m["ROT_TWO"], 0), (_CALL_FUNCTION, 1), (_POP_TOP, 0)]


def exception_handler(const_index):
    return [
        (_m["DUP_TOP_TWO"], 0),
        (_POP_TOP, 0),
        (_LOAD_CONST, const_index),
        (_m["ROT_TWO"], 0),
        (_CALL_FUNCTION, 1),
        (_POP_TOP, 0),
        (_RERAISE, 0),
    ]


def first_site(instrs):
    """Index of the first instruction a hook may precede: there is no prologue."""
    return 0


def jump_target(op, arg, end):
    if op in _JREL:
        return end + arg
    if op in _JABS:
        return arg
    return None


def jump_arg(op, end, target):
    if op in _JREL:
        return target - end if target >= end else None
    return target


def positions(code, instrs):
    """The line of each instruction (what ``dis.findlinestarts`` reads from co_lnotab)."""
    starts = list(dis.findlinestarts(code))
    out = []
    j = 0
    line = code.co_firstlineno
    for ins in instrs:
        while j < len(starts) and starts[j][0] <= ins.start:
            line = starts[j][1]
            j += 1
        out.append(line)
    return out


def line_of(pos):
    return pos


def unit_positions_differ(code, items):
    return False  # the line of every instruction was compared already


def encode_positions(code, items):
    """co_lnotab for ``items`` (``(line, size in bytes)``), as the 3.8/3.9 compiler writes it."""
    out = bytearray()
    last_offset = 0
    last_line = code.co_firstlineno
    offset = 0
    for line, size in items:
        if line != last_line:
            d_offset = offset - last_offset
            d_line = line - last_line
            while d_offset > 255:
                out += b"\xff\x00"
                d_offset -= 255
            while d_line > 127:
                out += bytes((d_offset, 127))
                d_offset = 0
                d_line -= 127
            while d_line < -128:
                out += bytes((d_offset, 0x80))
                d_offset = 0
                d_line += 128
            out += bytes((d_offset, d_line & 0xFF))
            last_offset = offset
            last_line = line
        offset += size
    return {"co_lnotab": bytes(out)}


def handlers(code):
    return []


def encode_handlers(entries):
    return {}
