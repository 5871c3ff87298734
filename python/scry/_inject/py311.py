"""The bytecode format of CPython 3.11, for :mod:`scry._inject`.

Two bytes an instruction followed by its inline CACHE entries (``opcode._inline_cache_entries``);
only relative jumps, in code units from the end of the instruction and its caches, backward for
the ``JUMP_BACKWARD*`` and ``POP_JUMP_BACKWARD_IF_*`` opcodes; a prologue (``COPY_FREE_VARS``,
``MAKE_CELL``, ``RETURN_GENERATOR; POP_TOP``) ending with ``RESUME``, which nothing may precede;
exception handlers in ``co_exceptiontable`` (start, length, target, depth and lasti, in code units,
big-endian 6-bit varints, the first of each entry marked); positions in ``co_linetable``
(``Objects/locations.md``: entries of up to 8 code units; this module writes the long form, code 14,
and "no location", code 15). The hook call is ``PUSH_NULL; LOAD_CONST hook; PRECALL 0; CALL 0;
POP_TOP``; it never goes between ``KW_NAMES`` or ``PRECALL`` and the ``CALL`` they prepare (the
interpreter carries state from one to the other), nor before a ``RESUME``.
"""

import dis
import opcode

CACHES = list(opcode._inline_cache_entries) + [0] * (256 - len(opcode._inline_cache_entries))
JUMP_FORWARD = dis.opmap["JUMP_FORWARD"]
_PUSH_NULL = dis.opmap["PUSH_NULL"]
_LOAD_CONST = dis.opmap["LOAD_CONST"]
_PRECALL = dis.opmap["PRECALL"]
_CALL = dis.opmap["CALL"]
_POP_TOP = dis.opmap["POP_TOP"]
_RESUME = dis.opmap["RESUME"]
_JREL = frozenset(dis.hasjrel)
_BACKWARD = frozenset(op for name, op in dis.opmap.items() if "JUMP_BACKWARD" in name)

HOOK_STACK = 2
NO_SPLIT_BEFORE = frozenset((_RESUME,))
NO_SPLIT_AFTER = frozenset((dis.opmap["KW_NAMES"], _PRECALL, dis.opmap["YIELD_VALUE"]))


def hook_sequence(const_index):
    return [(_PUSH_NULL, 0), (_LOAD_CONST, const_index), (_PRECALL, 0), (_CALL, 0), (_POP_TOP, 0)]


# -- tracing: entry, exits and the exception that leaves --------------------------------------------
# The entry hook goes after the first RESUME, the resume hook after every other one (a yield or an
# await resumes there, and RESUME must stay right after YIELD_VALUE: the interpreter looks there to
# know that a generator is suspended in an await). Every stretch of the code that the exception table
# leaves uncovered (the compiler's table has no overlaps) gets an entry to a handler at the end,
# which passes the exception to the hook and re-raises it.

_m = dis.opmap
VALUE_HOOK_STACK = 3
HANDLER_STACK = 4
BLOCK_STACK = False
SETUP_FINALLY = None
SETUP_OPS = frozenset()
MAX_SETUPS = 0
RETURN_OPS = frozenset((_m["RETURN_VALUE"],))
YIELD_OPS = frozenset((_m["YIELD_VALUE"],))
YIELD_FROM_OPS = frozenset()
BEFORE_RETURN = []


def resumes_after(ins):
    """Whether a suspended frame resumes right after ``ins``: a RESUME after a yield or an await."""
    return ins.op == _RESUME and ins.arg >= 1


def value_hook_sequence(const_index):
    """Call the hook with the value on top of the stack, which stays."""
    return [(_PUSH_NULL, 0), (_LOAD_CONST, const_index), (_m["COPY"], 3), (_PRECALL, 1), (_CALL, 1), (_POP_TOP, 0)]


def exception_handler(const_index):
    return value_hook_sequence(const_index) + [(_m["RERAISE"], 0)]


def first_site(instrs):
    """Index just after the first RESUME: the prologue before it runs when the frame is made."""
    for k, ins in enumerate(instrs):
        if ins.op == _RESUME:
            return k + 1
    return len(instrs)


def jump_target(op, arg, end):
    if op not in _JREL:
        return None
    return end - 2 * arg if op in _BACKWARD else end + 2 * arg


def jump_arg(op, end, target):
    if op in _BACKWARD:
        return (end - target) // 2 if target <= end else None
    return (target - end) // 2 if target >= end else None


def positions(code, instrs):
    """``(line, end line, column, end column)`` of each instruction (its first code unit)."""
    units = list(code.co_positions())
    return [units[ins.start // 2] for ins in instrs]


def line_of(pos):
    return pos[0]


def unit_positions_differ(code, items):
    """Whether any code unit (prefixes and caches too) reads back with another position."""
    expected = []
    for item in items:
        expected.extend([item.pos] * (item.size // 2))
    return list(code.co_positions()) != expected


def _varint(out, value):
    while value >= 64:
        out.append(64 | (value & 63))
        value >>= 6
    out.append(value)


def encode_positions(code, items):
    """co_linetable for ``items`` (``(position, size in bytes)``)."""
    out = bytearray()
    last_line = code.co_firstlineno
    for (line, end_line, column, end_column), size in items:
        units = size // 2
        while units:
            n = min(units, 8)
            units -= n
            if line is None:
                out.append(0x80 | (15 << 3) | (n - 1))
                continue
            if end_line is None or end_line < line:
                raise ValueError("a position with a line but no end line")
            out.append(0x80 | (14 << 3) | (n - 1))
            delta = line - last_line
            _varint(out, (-delta << 1) | 1 if delta < 0 else delta << 1)
            _varint(out, end_line - line)
            _varint(out, 0 if column is None else column + 1)
            _varint(out, 0 if end_column is None else end_column + 1)
            last_line = line
    return {"co_linetable": bytes(out)}


def handlers(code):
    """``(start, end, target, depth << 1 | lasti)`` in bytes, read by ``dis`` itself."""
    return [(e.start, e.end, e.target, (e.depth << 1) | int(e.lasti)) for e in dis._parse_exception_table(code)]


def _item(out, value, first):
    chunks = [value & 63]
    value >>= 6
    while value:
        chunks.append(value & 63)
        value >>= 6
    chunks.reverse()
    for i, chunk in enumerate(chunks):
        byte = chunk
        if i < len(chunks) - 1:
            byte |= 64
        if i == 0 and first:
            byte |= 128
        out.append(byte)


def encode_handlers(entries):
    out = bytearray()
    for start, end, target, extra in entries:
        _item(out, start // 2, True)
        _item(out, (end - start) // 2, False)
        _item(out, target // 2, False)
        _item(out, extra, False)
    return {"co_exceptiontable": bytes(out)}
