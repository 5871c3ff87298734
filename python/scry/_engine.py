"""The probe engine: the probes of this process, their states and counters, and their hits.

One :class:`Engine` exists per wake (the link owns it through the agent state). The daemon sends
the complete set of probes (``probes_sync``); :meth:`Engine.sync` arms new ones, removes missing
ones, re-arms changed ones (a spec that differs in anything) and returns one status per probe.
Afterwards the link thread calls :meth:`Engine.collect` every flush interval, through the
:class:`HitProducer` this module registers with ``_producers``: it cleans up after probes the hit
path disarmed, expires probes whose TTL is over, drains the hits into report events and returns
the statuses to send (a state change at once, moving counters at most once a second).

Arming: a probe's expressions are checked and compiled first (an invalid one is never armed); then
its location is resolved against the code objects alive now (``_locate``); a location that no
loaded code matches leaves the probe pending, and an import hook (installed only while a probe is
pending) arms it right after a matching module has run. The backend (``_backends``) is started
with the first armed probe and stopped with the last one: with no armed probe nothing of ours is
hooked into the interpreter.

Threads: :meth:`sync`, :meth:`collect`, :meth:`stop` and the import hook take the engine's lock;
the hit path never does (see ``_hit``). :meth:`stop_in_child` (after fork) takes no lock.
"""

import logging
import threading
import time

from . import _backends, _capture, _features, _hit, _locate, _probes, _producers, _proto
from ._probes import ARMED, ERROR, EXPIRED, PENDING

log = logging.getLogger("scry")

#: Counters are sent at most this often while they move (seconds).
COUNTER_INTERVAL = 1.0
#: The reason of an armed probe whose expressions may call anything.
UNSAFE_REASON = "unsafe: its expressions may call any function"


class EngineClosed(Exception):
    """The engine was stopped (the agent is going to sleep); it arms nothing any more."""


class Engine(object):
    """The probes of this process (see the module docstring)."""

    def __init__(self, backend=None):
        #: The backend's name, to use another than this interpreter's (tests run each one).
        self.backend_name = backend
        self.lock = threading.RLock()
        self.closed = False
        self.probes = {}  # id -> Probe, in the daemon's order
        self.backend = None
        self.backend_error = None
        self.watcher = _locate.ImportWatcher(self._on_module_loaded)
        self._dirty = set()  # ids whose state changed and was not sent yet
        self._sent_counters = {}  # id -> counters last sent
        self._last_counter_send = 0.0
        self._thread_names = {}
        self._heads = {}  # (probe, site) -> the JSON text every event of theirs starts with
        self._keys = {}  # probe -> its expressions as JSON keys
        # The wall clock is read once: every hit's time is this plus the monotonic time since (a
        # hit's timestamp is monotonic, so that it never jumps with the clock).
        self.mono0 = time.monotonic_ns()
        self.wall0_ns = time.time_ns()
        _hit.BUFFER.clear()
        _hit.CHANGED.clear()
        _hit.LOST[0] = 0

    # -- the daemon's set --------------------------------------------------------------------

    def sync(self, specs):
        """Make the probes exactly ``specs`` (ProbeSpec dicts); returns their statuses, in order."""
        with self.lock:
            if self.closed:
                raise EngineClosed("the probe engine is stopped")
            self._cleanup()
            wanted = {}
            for spec in specs:
                wanted.setdefault(spec["id"], spec)
            for probe_id, probe in list(self.probes.items()):
                spec = wanted.get(probe_id)
                if spec is None or _probes.normalize(spec) != probe.spec:
                    self._remove(probe)
            fresh = []
            for probe_id, spec in wanted.items():
                if probe_id not in self.probes:
                    probe = _probes.Probe(spec)
                    self.probes[probe_id] = probe
                    fresh.append(probe)
            ready = [probe for probe in fresh if self._prepare(probe)]
            if ready:
                index = self._index(ready)
                for probe in ready:
                    self._resolve(probe, index)
            self._apply()
            self._update_watcher()
            statuses = []
            for probe_id in wanted:
                probe = self.probes[probe_id]
                statuses.append(probe.status())
                self._dirty.discard(probe_id)
                # Counters in a sync reply are sent again in the next probe_status: the daemon
                # applies a reply on the task that asked, which may run after a newer status
                # sent on the link; a status sent after the reply cannot be overtaken by it.
                self._sent_counters.pop(probe_id, None)
            return statuses

    def _prepare(self, probe):
        """Compile; False when the probe is done with (invalid, or its TTL is already over)."""
        try:
            probe.compile()
        except _probes.InvalidExpression as exc:
            self._set(probe, ERROR, "invalid_expression", str(exc))
            return False
        if probe.expires_at is not None:
            remaining = probe.expires_at - time.time()
            if remaining <= 0:
                self._set(probe, EXPIRED, None, "its time to live was over before it was armed")
                return False
            probe.deadline_ns = time.monotonic_ns() + int(remaining * 1e9)
        return True

    def _resolve(self, probe, index):
        try:
            location = _locate.parse_location(probe.location)
            target = _locate.resolve(location, index)
        except _locate.Pending as pending:
            self._set(probe, PENDING, None, pending.reason)
            probe.waiting = (pending.components, pending.module)
            return
        except _locate.LocationError as exc:
            self._set(probe, ERROR, "location", str(exc))
            return
        probe.target = target
        probe.bind(target.codes)
        probe.file = target.file
        probe.line = target.line
        probe.requested_line = target.requested_line
        probe.function = target.function
        self._set(probe, ARMED, None, UNSAFE_REASON if probe.unsafe else None)

    def _index(self, probes):
        """The code of the files these probes may name (one gc scan for all of them)."""
        paths = []
        for probe in probes:
            try:
                paths.append(_locate.index_paths(_locate.parse_location(probe.location)))
            except _locate.LocationError:
                continue
        return _locate.CodeIndex.build([p for p in paths if p])

    def _remove(self, probe):
        del self.probes[probe.id]
        probe.state = "removed"
        for site in probe.sites:
            site.probes = tuple(q for q in site.probes if q is not probe)
        probe.sites = ()
        self._dirty.discard(probe.id)
        self._sent_counters.pop(probe.id, None)

    def _set(self, probe, state, kind, reason):
        probe.state = state
        probe.error_kind = kind
        probe.reason = reason
        self._dirty.add(probe.id)

    # -- instrumentation -----------------------------------------------------------------------

    def _apply(self):
        """Make the backend's instrumented set match the armed probes (two passes at most: a code
        object the backend refuses puts its probes in error, then the rest is applied again)."""
        for _ in range(2):
            armed = [p for p in self.probes.values() if p.state == ARMED]
            if not armed:
                self._stop_backend()
                return
            if self.backend is None and not self._start_backend(armed):
                return
            wanted = {}
            by_code = {}
            for probe in armed:
                probe.sites = ()
            original = getattr(self.backend, "original", None)
            for probe in armed:
                target = probe.target
                for code in target.codes:
                    if original is not None:
                        code = original(code)
                    key = id(code)
                    entry = wanted.get(key)
                    if entry is None:
                        entry = wanted[key] = (code, {})
                    sites = entry[1]
                    site = sites.get(target.line)
                    if site is None:
                        function = _locate.code_name(code) if _features.HAS_CO_QUALNAME else target.function
                        site = sites[target.line] = _hit.Site(code, target.line, (), code.co_filename, function)
                    site.probes = site.probes + (probe,)
                    probe.sites = probe.sites + (site,)
                    by_code.setdefault(key, []).append(probe)
            failed = self.backend.apply(wanted)
            self._note_backend(armed)
            if not failed:
                return
            for key, why in failed.items():
                for probe in by_code.get(key, ()):
                    if all(id(original(code) if original else code) in failed for code in probe.target.codes):
                        _hit.retire(probe, ERROR, "location", why)
                        self._dirty.add(probe.id)

    def _note_backend(self, armed):
        """Armed probes say what the backend does not cover, or what it costs (its ``note``)."""
        note = self.backend.note
        for probe in armed:
            reason = UNSAFE_REASON if probe.unsafe else note
            if probe.state == ARMED and probe.reason != reason:
                self._set(probe, ARMED, None, reason)

    def _start_backend(self, armed):
        backend = None
        try:
            backend = _backends.make_backend(self.backend_name)
            backend.start()
        except _backends.Unavailable as exc:
            for probe in armed:
                self._set(probe, ERROR, "internal", str(exc))
            return False
        except Exception as exc:
            log.warning("the probe backend could not start: %r", exc)
            try:
                if backend is not None:
                    backend.stop()
            except Exception:
                pass
            name = backend.name if backend is not None else self.backend_name or _features.BACKEND
            for probe in armed:
                self._set(probe, ERROR, "internal", "the probe backend ({}) could not start: {!r}".format(name, exc))
            return False
        self.backend = backend
        log.debug("probe backend %s started", backend.name)
        return True

    def _stop_backend(self):
        backend, self.backend = self.backend, None
        if backend is not None:
            try:
                backend.stop()
            except Exception as exc:
                log.warning("could not remove every probe hook: %r", exc)
            log.debug("probe backend %s stopped", backend.name)

    def _update_watcher(self):
        stems, modules = set(), set()
        for probe in self.probes.values():
            if probe.state == PENDING:
                components, module = probe.waiting
                if module is not None:
                    modules.add(module)
                elif components:
                    stems.add(_locate.module_stem(components))
        if stems or modules:
            self.watcher.install(stems, modules)
        else:
            self.watcher.remove()

    def _on_module_loaded(self, module):
        """The import hook: a module that may hold a pending probe has run (any thread)."""
        with self.lock:
            if self.closed or not any(p.state == PENDING for p in self.probes.values()):
                return
            pending = [p for p in self.probes.values() if p.state == PENDING]
            index = self._index(pending)
            for probe in pending:
                self._resolve(probe, index)
            self._apply()
            self._update_watcher()

    # -- the link thread -----------------------------------------------------------------------

    def _cleanup(self):
        """Take in what the hit path disarmed, and expire probes whose TTL is over."""
        changed = False
        while True:
            try:
                probe = _hit.CHANGED.popleft()
            except IndexError:
                break
            changed = True
            if self.probes.get(probe.id) is probe:
                self._dirty.add(probe.id)
        now = time.monotonic_ns()
        for probe in self.probes.values():
            if probe.state == ARMED and probe.deadline_ns is not None and now >= probe.deadline_ns:
                _hit.retire(probe, EXPIRED, None, "its time to live is over")
                self._dirty.add(probe.id)
                changed = True
        if changed:
            self._apply()
        refresh = getattr(self.backend, "refresh", None)
        if refresh is not None and refresh():
            self._note_backend([p for p in self.probes.values() if p.state == ARMED])

    def collect(self, max_events):
        """For the link thread, each flush: ``(events, lost, statuses)``.

        ``events`` are at most ``max_events`` report events of drained hits, ``lost`` counts hits
        dropped because the buffer was full (for ``report.dropped``), ``statuses`` are the probe
        statuses to send in a ``probe_status`` (empty when nothing is due).
        """
        with self.lock:
            if not self.closed:
                self._cleanup()
            lost, _hit.LOST[0] = _hit.LOST[0], 0
            statuses = self._due_statuses()
        return self.drain(max_events), lost, statuses

    def _due_statuses(self):
        now = time.monotonic()
        counters_due = now - self._last_counter_send >= COUNTER_INTERVAL
        out = []
        for probe_id, probe in self.probes.items():
            counters = probe.counters()
            if probe_id in self._dirty or (counters_due and counters != self._sent_counters.get(probe_id)):
                out.append(probe.status())
                self._sent_counters[probe_id] = counters
        if counters_due:
            self._last_counter_send = now
        self._dirty.clear()
        return out

    def drain(self, max_events):
        """Turn up to ``max_events`` buffered hits into report events (oldest first), each already
        JSON text (a ``str``, see ``_proto.encode_report``): per hit only the values, the thread
        and the time are encoded; the rest of the text is made once per probe and site."""
        buf = _hit.BUFFER
        if not buf:
            return []
        names = self._names()
        wall0_ns = self.wall0_ns
        mono0 = self.mono0
        to_json = _capture.to_json
        quote = _capture.quote
        heads = self._heads
        keys = self._keys
        threads = {}  # tid -> '"name","tid":N' for this drain
        events = []
        append = events.append
        popleft = buf.popleft
        for _ in range(min(max_events, len(buf))):  # what is there now: hits that keep coming wait
            try:
                record = popleft()
            except IndexError:
                break
            probe, site, t_ns, tid, values = record[:5]
            head = heads.get((probe, site))
            if head is None:
                head = heads[(probe, site)] = self._head(probe, site)
                keys[probe] = [quote(text) + ":" for text in probe.texts]
            limits = probe.limits
            if probe.single:
                encoded = keys[probe][0] + to_json(values, limits)
            else:
                encoded = ",".join([key + to_json(value, limits) for key, value in zip(keys[probe], values)])
            thread = threads.get(tid)
            if thread is None:
                name = names.get(tid)
                thread = threads[tid] = '{},"tid":{}'.format(
                    quote(name) if name is not None else '"thread-{}"'.format(tid), tid
                )
            extra = ""
            if len(record) > 5:
                stack, local_values = record[5:]
                if stack is not None:
                    extra += ',"stack":' + _capture.dumps(
                        [{"file": f, "line": l, "function": fn} for f, l, fn in stack]
                    )
                if local_values is not None:
                    extra += ',"locals":' + _capture.dumps(local_values)
            # The time as seconds with nine decimals, from integers (exact, and cheaper than repr).
            seconds, nanos = divmod(wall0_ns + t_ns - mono0, 1000000000)
            append(f'{head}{thread},"values":{{{encoded}}}{extra}}},"t":{seconds}.{nanos:09d}}}')
        if len(heads) > 4096:
            heads.clear()
            keys.clear()
        return events

    @staticmethod
    def _head(probe, site):
        quote = _capture.quote
        return '{"kind":"probe","source":%s,"data":{"file":%s,"line":%d,"function":%s,"thread":' % (
            quote(probe.id),
            quote(site.file),
            site.line,
            quote(site.function),
        )

    def _names(self):
        names = self._thread_names
        try:
            for thread in threading.enumerate():
                names[thread.ident] = thread.name
        except Exception:
            pass
        if len(names) > 10000:
            names.clear()
        return names

    def statuses(self):
        """Every probe's status (for tests and diagnostics)."""
        with self.lock:
            return [p.status() for p in self.probes.values()]

    # -- stopping ------------------------------------------------------------------------------

    def stop(self):
        """Remove every probe and every hook; idempotent. Hits already buffered stay for the
        link's last flush."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            for probe in list(self.probes.values()):
                self._remove(probe)
            self.watcher.remove()
            self._stop_backend()
            _hit.CHANGED.clear()

    def stop_in_child(self):
        """After fork, in the child: remove every hook without taking a lock."""
        self.closed = True
        self.watcher.remove()
        backend, self.backend = self.backend, None
        if backend is not None:
            try:
                backend.stop_in_child()
            except Exception:
                pass
        self.probes = {}
        _hit.BUFFER.clear()
        _hit.CHANGED.clear()


class HitProducer(_producers.Producer):
    """What a link ships of its probe engine (``Link.engine``): the hits, and the probe statuses
    that are due."""

    what = "probe hits"

    def __init__(self, engine):
        self.engine = engine

    def drain(self, room, flush_max):
        events, lost, statuses = self.engine.collect(min(room, flush_max))
        return events, lost, [_proto.probe_status(statuses)] if statuses else ()

    def backlog(self, max_batch):
        # Hits still waiting by the batch: a hot line fills the buffer faster than one flush
        # per interval empties it.
        return len(_hit.BUFFER) >= max_batch


def _hit_producer(link):
    engine = link.engine
    return HitProducer(engine) if engine is not None else None


# Last: a hot line can fill the link's report buffer; the hits get the room the others left.
_producers.register(_hit_producer, order=2)
