"""Imported late by orders_loop.py: probes on it are pending until then."""


def touch(n):
    doubled = n * 2  # PROBE: late
    return doubled
