"""Metric probes: a probe that aggregates in the agent (a count of hits, the last value, or values
in histogram buckets, per set of label values) instead of shipping an event a hit.

The hit path (``_hit._record``) calls :meth:`Metric.observe` with the probe's evaluated
expressions: the value first (``gauge``, ``histogram``), then one per label. A label value is the
expression's value when it is a ``str`` (its first 64 characters), number, bool or None, else its
type's name in angle brackets: no ``str()`` of an arbitrary object runs the program's code. At
most ``MAX_SERIES`` label sets are kept; hits with a new set beyond that are counted in one set
whose labels are all ``__overflow__``. A value that is no number is not observed (``rejected``).

The link ships each changed aggregate at most once a second, whole and cumulative, as a report
event ``{"kind": "metric", "source": PROBE_ID, "data": {"metric", "labels", "buckets", "series",
"rejected"}}`` (docs/protocol.md "Metric probes"); the daemon keeps the last one of each process.

Not for: Prometheus's format (the daemon's ``GET /metrics``).
"""

import threading
import time
import weakref

from . import _capture, _producers

#: Label sets kept per probe (the daemon's scry_proto::MAX_METRIC_SERIES).
MAX_SERIES = 100
#: The label value of the set that counts what did not fit.
OVERFLOW = "__overflow__"
#: Default histogram bounds, as Prometheus's client libraries have them.
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: The least time between two shipments of one probe's aggregate.
SHIP_EVERY = 1.0

_NUMBERS = (int, float, bool)
_LABEL_TYPES = (str, int, float, bool, type(None))

#: Every live metric aggregate, by probe id (a probe that is dropped takes its aggregate along).
ACTIVE = weakref.WeakValueDictionary()
_active_lock = threading.Lock()


def _label(value):
    kind = type(value)
    if kind is str:
        return value[:64]
    if kind in _LABEL_TYPES:
        return repr(value)
    return "<{}>".format(kind.__name__)


class Metric(object):
    """One probe's aggregate in this process."""

    __slots__ = ("probe_id", "kind", "labels", "bounds", "series", "rejected", "changed", "shipped_at", "__weakref__")

    def __init__(self, probe_id, spec):
        self.probe_id = probe_id
        self.kind = spec.get("kind")
        if self.kind not in ("count", "gauge", "histogram"):
            raise ValueError("unknown metric kind {!r}".format(self.kind))
        self.labels = tuple(spec.get("labels") or ())
        self.bounds = tuple(float(b) for b in (spec.get("buckets") or DEFAULT_BUCKETS))
        # label values (a tuple) -> [count] | [value] | [per-bound counts..., count, sum]
        self.series = {}
        self.rejected = 0
        self.changed = False
        self.shipped_at = 0.0
        with _active_lock:
            ACTIVE[probe_id] = self

    def value_count(self):
        """How many of the probe's expressions come before the labels."""
        return 0 if self.kind == "count" else 1

    def observe(self, values):
        """One hit: ``values`` are the evaluated expressions (value first, then the labels)."""
        n = self.value_count()
        key = tuple([_label(v) for v in values[n:]])
        series = self.series.get(key)
        if series is None:
            if len(self.series) >= MAX_SERIES:
                key = (OVERFLOW,) * len(self.labels)
                series = self.series.get(key)
            if series is None:
                series = self.series[key] = self._new()
        kind = self.kind
        if kind == "count":
            series[0] += 1
        else:
            value = values[0]
            if type(value) not in _NUMBERS or value != value:
                self.rejected += 1
                self.changed = True
                return
            if kind == "gauge":
                series[0] = value
            else:
                for i, bound in enumerate(self.bounds):
                    if value <= bound:
                        series[i] += 1
                        break
                series[-2] += 1
                series[-1] += value
        self.changed = True

    def _new(self):
        if self.kind == "histogram":
            return [0] * len(self.bounds) + [0, 0.0]
        return [0] if self.kind == "count" else [None]

    def event(self, now):
        """The report event of the aggregate as it is (JSON text), or None when nothing changed
        or it was shipped less than SHIP_EVERY ago."""
        if not self.changed or now - self.shipped_at < SHIP_EVERY:
            return None
        self.changed = False
        self.shipped_at = now
        out = []
        for key, series in list(self.series.items()):
            if self.kind == "histogram":
                cumulative, running = [], 0
                for n in series[:-2]:
                    running += n
                    cumulative.append(running)
                out.append({"labels": list(key), "buckets": cumulative, "count": series[-2], "sum": series[-1]})
            elif self.kind == "count":
                out.append({"labels": list(key), "count": series[0]})
            elif series[0] is not None:
                out.append({"labels": list(key), "value": series[0]})
        data = {
            "metric": self.kind,
            "labels": list(self.labels),
            "buckets": list(self.bounds) if self.kind == "histogram" else None,
            "series": out,
            "rejected": self.rejected,
        }
        return '{"kind":"metric","source":%s,"data":%s,"t":%r}' % (
            _capture.quote(self.probe_id),
            _capture.dumps(data),
            time.time(),
        )


class MetricProducer(_producers.Producer):
    """Ships the changed aggregates, at most one event a probe a second."""

    what = "metric probes"

    def drain(self, room, flush_max):
        now = time.monotonic()
        with _active_lock:
            metrics = list(ACTIVE.values())
        events = []
        for metric in metrics:
            if len(events) >= min(room, flush_max):
                break
            event = metric.event(now)
            if event is not None:
                events.append(event)
        return events, 0, ()


# Bounded (one event per metric probe a second): drained before the probe hits.
_producers.register(lambda link: MetricProducer(), order=1)
