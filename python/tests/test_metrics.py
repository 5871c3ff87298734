"""Metric probes aggregate in the agent: counts, gauges and histograms per label set, bounded,
shipped as one cumulative event a probe at most once a second."""

import json

from scry import _metrics, _probes


def probe(kind, expressions, labels=(), buckets=None):
    spec = {"kind": kind, "labels": list(labels)}
    if buckets is not None:
        spec["buckets"] = buckets
    p = _probes.Probe({"id": "p-" + kind, "location": "a.py:1", "expressions": expressions, "metric": spec})
    p.compile()
    return p


def shipped(metric, now=100.0):
    return json.loads(metric.event(now))


def test_a_histogram_counts_values_in_cumulative_buckets_per_label_set():
    p = probe("histogram", ["x", "region"], ["region"], buckets=[1, 5])
    assert not p.plain, "a metric probe never takes the plain path (it ships no hit)"
    for value, region in [(0.5, "eu"), (3, "eu"), (7, "eu"), (2, "us"), ("n/a", "us")]:
        p.metric.observe((value, region))
    event = shipped(p.metric)
    assert event["kind"] == "metric" and event["source"] == "p-histogram"
    data = event["data"]
    assert data["buckets"] == [1.0, 5.0] and data["rejected"] == 1
    series = {tuple(s["labels"]): s for s in data["series"]}
    assert series[("eu",)] == {"labels": ["eu"], "buckets": [1, 2], "count": 3, "sum": 10.5}
    assert series[("us",)]["count"] == 1


def test_a_count_needs_no_expression_and_a_gauge_keeps_the_last_value():
    c = probe("count", [])
    for _ in range(3):
        c.metric.observe(())
    assert shipped(c.metric)["data"]["series"] == [{"labels": [], "count": 3}]
    g = probe("gauge", ["x"])
    g.metric.observe((4,))
    g.metric.observe((2.5,))
    assert shipped(g.metric)["data"]["series"] == [{"labels": [], "value": 2.5}]


def test_label_values_never_run_the_programs_code_and_sets_are_bounded():
    class Loud(object):
        def __str__(self):
            raise AssertionError("str() of an object ran")

    c = probe("count", ["k"], ["k"])
    c.metric.observe((Loud(),))
    c.metric.observe((None,))
    for i in range(_metrics.MAX_SERIES + 50):
        c.metric.observe(("user-%d" % i,))
    data = shipped(c.metric)["data"]
    labels = {s["labels"][0]: s["count"] for s in data["series"]}
    assert labels["<Loud>"] == 1 and labels["None"] == 1
    assert len(labels) == _metrics.MAX_SERIES + 1
    assert labels[_metrics.OVERFLOW] == 52, "what did not fit is counted under __overflow__"


def test_an_aggregate_ships_when_it_changed_and_at_most_once_a_second():
    g = probe("gauge", ["x"])
    assert g.metric.event(100.0) is None, "nothing observed: nothing to ship"
    g.metric.observe((1,))
    assert g.metric.event(100.0) is not None
    g.metric.observe((2,))
    assert g.metric.event(100.5) is None, "shipped less than a second ago"
    assert json.loads(g.metric.event(101.5))["data"]["series"][0]["value"] == 2
