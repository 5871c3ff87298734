"""The agent forwards the ``scry`` logger's records to the daemon as ``log`` events."""

import logging
import os
import threading

from scry import _link, _logfwd


def _record(msg, level=logging.WARNING, name="scry", args=()):
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_a_record_becomes_a_log_event():
    fwd = _logfwd.LogForwarder()
    fwd.handle(_record("hello %s", args=("world",)))
    events, dropped = fwd.drain(10)
    assert dropped == 0
    assert len(events) == 1
    ev = events[0]
    assert ev["kind"] == "log"
    assert ev["source"] == "scry"
    assert isinstance(ev["t"], float)
    assert ev["data"] == {
        "level": "warn",
        "logger": "scry",
        "message": "hello world",
        "thread": threading.current_thread().name,
        "pid": os.getpid(),
    }


def test_levels_map_to_the_daemon_levels():
    assert [_logfwd.level_name(n) for n in (5, 10, 20, 30, 40, 50)] == [
        "debug",
        "debug",
        "info",
        "warn",
        "error",
        "error",
    ]


def test_bounded_and_dropped_counted():
    fwd = _logfwd.LogForwarder(capacity=3)
    for i in range(5):
        fwd.handle(_record("m%d" % i))
    events, dropped = fwd.drain(100)
    assert [e["data"]["message"] for e in events] == ["m0", "m1", "m2"]
    assert dropped == 2
    assert fwd.dropped_total == 2
    assert fwd.drain(100) == ([], 0)


def test_a_bad_format_and_a_long_message_do_not_raise():
    fwd = _logfwd.LogForwarder()
    fwd.handle(_record("%d", args=("x",)))
    fwd.handle(_record("x" * (_logfwd.MAX_MESSAGE + 10)))
    events, dropped = fwd.drain(10)
    assert dropped == 0
    assert "failed" in events[0]["data"]["message"]
    assert events[1]["data"]["message"].endswith("[10 more characters]")


def test_an_exception_is_shipped_with_its_traceback():
    fwd = _logfwd.LogForwarder()
    logger = logging.getLogger("scry.test_logfwd")
    logger.addHandler(fwd)
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("it failed")
    finally:
        logger.removeHandler(fwd)
    (event,), _ = fwd.drain(10)
    assert event["data"]["level"] == "error"
    assert "ValueError: boom" in event["data"]["exc"]


def test_the_link_pumps_records_into_its_report_buffer():
    link = _link.Link("unix:///nonexistent/agent.sock", None, "", None, 1.0, None)
    try:
        (logs,) = [p for p in link._producers if isinstance(p, _logfwd.LogProducer)]
        logs.before_start()  # what link.start() does: the forwarder goes on the scry logger
        try:
            logging.getLogger("scry").warning("from the agent")
        finally:
            logs.link_closed()
        assert logs.forwarder not in logging.getLogger("scry").handlers
        link._pump()
        events = list(link._buf)
        assert [e["data"]["message"] for e in events if e["kind"] == "log"] == ["from the agent"]
    finally:
        link._close_pipe()


def test_records_of_the_skipped_thread_are_not_forwarded():
    fwd = _logfwd.LogForwarder()
    fwd.skip_thread = threading.get_ident()
    fwd.handle(_record("about the link itself"))
    assert fwd.drain(10) == ([], 0)
