"""Bytecode injection (Python 3.8, 3.9, 3.11): a copy of a code object that calls a hook where a
line starts, so that a probed line costs one call and the rest of the program nothing.

What it is for: :func:`inject` returns a new code object that behaves as the old one, except that
each time control reaches an instruction of a hooked line from an instruction of another line
(falling through or jumping: every place the line occurs, such as a loop head, both copies of a
``while`` condition, a ``finally`` body the compiler duplicated), the line's hook is called first,
with no argument, and its result dropped. A jump from the same line lands after the call, as
``sys.monitoring``'s LINE event does on 3.12+ (a one-line loop reports once). It is not for putting
the copy where the program runs it (:mod:`._swap` does that) and knows nothing of probes.

How: the instructions are decoded (EXTENDED_ARG folded in, inline caches kept with their
instruction), jumps and exception handlers resolved to instructions, the hook sequences inserted (a
hook placed inside a line gets a ``JUMP_FORWARD`` over it, taken only when falling through from the
same line), then the code is laid out again until every jump argument fits its EXTENDED_ARG
prefixes, and the line table (with columns on 3.11) and the exception table (3.11) are rebuilt. The
facts of each bytecode format live in one module per format (:mod:`.py38` for 3.8 and 3.9,
:mod:`.py311` for 3.11); another version has no layout and :data:`REASON` says why.

Every copy is checked before it is returned: decoded again, it must hold the original instructions
in order with the same arguments, jumps to the same instructions, the same positions and the same
exception handlers (read back with CPython's own decoders: ``co_positions``, ``dis``); anything else
raises :class:`InjectError` and the copy is never used.
"""

import dis

from .. import _features

__all__ = ["InjectError", "LAYOUT", "REASON", "inject"]


class InjectError(Exception):
    """This code object cannot be injected; the message says why."""


def _layout():
    name = _features.INJECTION_LAYOUT
    if name is None:
        return None, (
            "Python {}.{} has no bytecode injection layout (there is one for 3.8, 3.9 and 3.11; "
            "3.12+ uses sys.monitoring)".format(*_features.PY)
        )
    try:
        if name == "py38":
            from . import py38 as module
        else:
            from . import py311 as module
    except Exception as exc:  # pragma: no cover - a broken install
        return None, "the bytecode injection layout {} could not be loaded: {!r}".format(name, exc)
    return module, "Python {}.{}: bytecode injection ({})".format(_features.PY[0], _features.PY[1], name)


#: The bytecode format module of this interpreter, or None; and why.
LAYOUT, REASON = _layout()

_EXTENDED_ARG = dis.opmap["EXTENDED_ARG"]


class _Instr(object):
    """One decoded instruction: opcode, argument (EXTENDED_ARG folded in), byte offsets of its
    first EXTENDED_ARG and just past its caches, the index of its jump target, its position."""

    __slots__ = ("op", "arg", "start", "end", "target", "pos")

    def __init__(self, op, arg, start, end):
        self.op = op
        self.arg = arg
        self.start = start
        self.end = end
        self.target = None
        self.pos = None


class _Item(object):
    """One instruction of the new layout: ``label`` is the item index a jump goes to."""

    __slots__ = ("op", "arg", "label", "pos", "size")

    def __init__(self, op, arg, label, pos, size):
        self.op = op
        self.arg = arg
        self.label = label
        self.pos = pos
        self.size = size


def _decode(code, caches):
    raw = code.co_code
    out = []
    ext = 0
    start = None
    i = 0
    n = len(raw)
    while i < n:
        op = raw[i]
        arg = raw[i + 1] | ext
        if start is None:
            start = i
        i += 2
        if op == _EXTENDED_ARG:
            ext = arg << 8
            continue
        ext = 0
        i += 2 * caches[op]
        out.append(_Instr(op, arg, start, i))
        start = None
    if start is not None or i != n:
        raise InjectError("the bytecode of {} ends inside an instruction".format(code.co_name))
    return out


def _size(op, arg, caches):
    """Bytes an instruction takes with ``arg``: its EXTENDED_ARG prefixes, itself, its caches."""
    ext = 0
    while arg > 0xFF:
        arg >>= 8
        ext += 1
    return 2 * (1 + ext + caches[op])


#: What a traced copy calls (the keys of :func:`inject`'s ``trace``).
TRACE_KINDS = ("call", "return", "yield", "resume", "exception")


def inject(code, hooks=None, trace=None):
    """A copy of ``code`` where each line of ``hooks`` (``{line: callable}``) calls its hook as it
    starts (see the module docstring), and with ``trace`` (``{kind: callable}`` for every kind of
    :data:`TRACE_KINDS`): ``call()`` as the code starts, ``return(value)`` before it returns,
    ``yield(value)`` before it yields (no argument for 3.8/3.9's ``yield from`` and ``await``,
    which report one yield and one resume however often they suspend), ``resume()`` after it
    resumes, and ``exception(exc)`` when an exception leaves it. Raises InjectError when this
    cannot be done safely."""
    lay = LAYOUT
    if lay is None:
        raise InjectError(REASON)
    hooks = hooks or {}
    caches = lay.CACHES
    instrs = _decode(code, caches)
    n = len(instrs)
    size = len(code.co_code)
    index = {ins.start: k for k, ins in enumerate(instrs)}
    index[size] = n

    def at(offset, what):
        k = index.get(offset)
        if k is None:
            raise InjectError("{} of {} does not start an instruction ({})".format(what, code.co_name, offset))
        return k

    for ins in instrs:
        target = lay.jump_target(ins.op, ins.arg, ins.end)
        if target is not None:
            ins.target = at(target, "a jump target")
    positions = lay.positions(code, instrs)
    for ins, pos in zip(instrs, positions):
        ins.pos = pos
    lines = [lay.line_of(pos) for pos in positions]
    handlers = [(at(s, "a handler range"), at(e, "a handler range"), at(t, "a handler"), x) for s, e, t, x in lay.handlers(code)]

    # Where control arrives from another line by a jump or a handler, inside a run of its own line:
    # a backward jump (a loop's head), or a handler. A forward jump from another line into the
    # middle of a line's run (3.8/3.9 give a function's implicit ``return None`` the last line) is
    # not the line starting, for the trace function either.
    from_other = [False] * (n + 1)
    for k, ins in enumerate(instrs):
        t = ins.target
        if t is not None and t < n and lines[t] != lines[k] and t <= k:
            from_other[t] = True
    for start, end, target, _extra in handlers:
        # A handler is reached from the instruction that raised: from another line when any line
        # it protects differs from the handler's own (instructions without a line do not count).
        if any(line is not None and line != lines[target] for line in lines[start:end]):
            from_other[target] = True

    consts = list(code.co_consts)
    slots = {}

    def const(obj):
        slot = slots.get(id(obj))
        if slot is None:
            slot = slots[id(obj)] = len(consts)
            consts.append(obj)
        return slot

    hook_at = [None] * n
    skip_at = [False] * n
    first = lay.first_site(instrs)
    hooked = set()
    for k in range(first, n):
        line = lines[k]
        hook = hooks.get(line) if line is not None else None
        if hook is None:
            continue
        if instrs[k].op in lay.NO_SPLIT_BEFORE or (k > 0 and instrs[k - 1].op in lay.NO_SPLIT_AFTER):
            continue
        # The prologue (3.11: up to RESUME) is the function's entry, never "the same line".
        same_before = k > first and lines[k - 1] == line
        if same_before and not from_other[k]:
            continue
        hook_at[k] = const(hook)
        skip_at[k] = same_before
        hooked.add(line)
    if hooks and not hooked:
        raise InjectError("no line of {} to hook in {}".format(sorted(hooks), code.co_name))
    if not hooked and trace is None:
        raise InjectError("nothing to inject into {}".format(code.co_name))

    # Trace hooks: before an instruction (every way to it runs them), after one (reached only by
    # falling through from it: where a generator resumes), before everything (3.8/3.9's entry).
    pre = [()] * n
    post = [()] * n
    prefix = []
    handler = []
    stack = code.co_stacksize + lay.HOOK_STACK
    if trace is not None:
        stack = max(code.co_stacksize + lay.VALUE_HOOK_STACK, lay.HANDLER_STACK)
        call = lay.hook_sequence(const(trace["call"]))
        if lay.BLOCK_STACK:
            if sum(1 for ins in instrs if ins.op in lay.SETUP_OPS) > lay.MAX_SETUPS:
                raise InjectError(
                    "{} nests too many blocks to trace its exceptions (the block stack has 20 "
                    "levels)".format(code.co_name)
                )
            prefix = [(op, arg, None) for op, arg in call] + [(lay.SETUP_FINALLY, 0, ("handler",))]
        else:
            post[first - 1] = call
        for k, ins in enumerate(instrs):
            if ins.op in lay.RETURN_OPS:
                pre[k] = lay.value_hook_sequence(const(trace["return"])) + lay.BEFORE_RETURN
            elif ins.op in lay.YIELD_OPS:
                pre[k] = lay.value_hook_sequence(const(trace["yield"]))
            elif ins.op in lay.YIELD_FROM_OPS:
                pre[k] = lay.hook_sequence(const(trace["yield"]))
            if k >= first and lay.resumes_after(ins):
                post[k] = lay.hook_sequence(const(trace["resume"]))
        handler = lay.exception_handler(const(trace["exception"]))

    # The new layout. Per original instruction: its group (a skip jump over its line hook, the line
    # hook, its trace hook), then itself, then what runs after it.
    items = []
    group = [0] * (n + 1)
    hook_start = [0] * (n + 1)
    pre_start = [0] * (n + 1)
    own = [0] * (n + 1)

    def emit(seq, pos):
        for entry in seq:
            op, arg = entry[0], entry[1]
            label = entry[2] if len(entry) > 2 else None
            items.append(_Item(op, arg, label, pos, _size(op, 0 if label else arg, caches)))

    emit(prefix, instrs[0].pos if instrs else None)
    for k, ins in enumerate(instrs):
        group[k] = len(items)
        if hook_at[k] is not None and skip_at[k]:
            emit([(lay.JUMP_FORWARD, 0, ("pre", k))], ins.pos)
        hook_start[k] = len(items)
        if hook_at[k] is not None:
            emit(lay.hook_sequence(hook_at[k]), ins.pos)
        pre_start[k] = len(items)
        emit(pre[k], ins.pos)
        own[k] = len(items)
        label = None
        if ins.target is not None:
            t = ins.target
            label = ("hook", t) if hook_at[t] is not None and lines[k] != lines[t] else ("pre", t)
        emit([(ins.op, ins.arg, label)], ins.pos)
        emit(post[k], ins.pos)
    group[n] = hook_start[n] = pre_start[n] = own[n] = len(items)
    handler_start = len(items)
    emit(handler, instrs[-1].pos if instrs else None)
    where = {"hook": hook_start, "pre": pre_start}
    for item in items:
        if item.label is not None:
            kind = item.label[0]
            item.label = handler_start if kind == "handler" else where[kind][item.label[1]]

    offsets = _lay_out(items, lay, caches, code)
    raw = bytearray()
    for item in items:
        ext = (item.size // 2) - 1 - caches[item.op]
        for j in range(ext, 0, -1):
            raw += bytes((_EXTENDED_ARG, (item.arg >> (8 * j)) & 0xFF))
        raw += bytes((item.op, item.arg & 0xFF))
        raw += b"\x00\x00" * caches[item.op]
    new_handlers = [(offsets[group[s]], offsets[group[e]], offsets[hook_start[t]], x) for s, e, t, x in handlers]
    if handler and not lay.BLOCK_STACK:
        new_handlers = _fill_gaps(new_handlers, offsets[group[first]], offsets[handler_start], offsets[handler_start])
    fields = {"co_code": bytes(raw), "co_consts": tuple(consts), "co_stacksize": stack}
    try:
        fields.update(lay.encode_positions(code, [(item.pos, item.size) for item in items]))
    except ValueError as exc:
        raise InjectError("the positions of {} cannot be written again: {}".format(code.co_name, exc))
    fields.update(lay.encode_handlers(new_handlers))
    try:
        new = code.replace(**fields)
    except Exception as exc:
        raise InjectError("CPython refused the injected copy of {}: {!r}".format(code.co_name, exc))
    _check(new, items, offsets, new_handlers, lay, caches)
    return new


def _fill_gaps(entries, start, end, target):
    """``entries`` plus one entry to ``target`` (depth 0, no lasti) for each stretch of
    ``[start, end)`` they do not cover: the exception handler of a traced copy gets every
    exception that would leave the frame (the table's entries never overlap)."""
    out = []
    position = start
    for entry in sorted(entries):
        if entry[0] > position and position < end:
            out.append((position, min(entry[0], end), target, 0))
        out.append(entry)
        position = max(position, entry[1])
    if position < end:
        out.append((position, end, target, 0))
    return sorted(out)


def _lay_out(items, lay, caches, code):
    """Give every jump its argument, growing EXTENDED_ARG prefixes until all fit; the offsets."""
    for _ in range(8):
        offsets = [0] * (len(items) + 1)
        for i, item in enumerate(items):
            offsets[i + 1] = offsets[i] + item.size
        grown = False
        for i, item in enumerate(items):
            if item.label is None:
                continue
            arg = lay.jump_arg(item.op, offsets[i + 1], offsets[item.label])
            if arg is None or arg < 0:
                raise InjectError("a jump of {} cannot reach its target".format(code.co_name))
            item.arg = arg
            need = _size(item.op, arg, caches)
            if need > item.size:
                item.size = need
                grown = True
        if not grown:
            return offsets
    raise InjectError("the jumps of {} did not settle".format(code.co_name))


def _check(new, items, offsets, handlers, lay, caches):
    """Read the copy back with CPython's decoders; InjectError on any difference."""
    name = new.co_name
    again = _decode(new, caches)
    if len(again) != len(items):
        raise InjectError("the injected copy of {} decodes to another instruction count".format(name))
    for i, (ins, item) in enumerate(zip(again, items)):
        if ins.op != item.op or ins.arg != item.arg or ins.start != offsets[i]:
            raise InjectError("the injected copy of {} decodes differently at offset {}".format(name, offsets[i]))
        if item.label is not None and lay.jump_target(ins.op, ins.arg, ins.end) != offsets[item.label]:
            raise InjectError("a jump of the injected copy of {} misses its target".format(name))
    if lay.positions(new, again) != [item.pos for item in items]:
        raise InjectError("the line table of the injected copy of {} reads back differently".format(name))
    if lay.unit_positions_differ(new, items):
        raise InjectError("the location table of the injected copy of {} reads back differently".format(name))
    if lay.handlers(new) != handlers:
        raise InjectError("the exception table of the injected copy of {} reads back differently".format(name))
