"""The exceptions the agent raises; every message says what to do about it.

:func:`describe` words the cause of a failed connection for such a message, and
:func:`how_to_get_scry` tells a process without the ``scry`` command where to get it.
"""

import os
import socket


class ScryError(Exception):
    """Base class of every error scry raises to the application."""

    #: A short machine-readable name, used in the control plane's JSON errors.
    kind = "scry"


class ConfigError(ScryError):
    """Wrong arguments, environment or files (bad URL, bad port, unsafe token file, ...)."""

    kind = "config"


class DaemonError(ScryError):
    """The daemon could not be reached, refused us, or did not answer in time."""

    kind = "daemon"


class AgentError(ScryError):
    """The agent itself failed (e.g. it could not start its thread)."""

    kind = "agent"


class ControlPlaneError(ScryError):
    """The embedded client's control plane could not be started or did not answer."""

    kind = "control_plane"


def describe(exc):
    """A few words on why a socket or HTTP operation failed (``exc``), for an error message."""
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def how_to_get_scry():
    """``"; ..."``: how to install the ``scry`` command (the daemon), for a message saying that no
    daemon runs; ``""`` when ``scry`` is on ``PATH``. This package may have come alone
    (``pip install ./python``), without the binary."""
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(directory or ".", "scry")
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return ""
    return (
        "; the `scry` command is not on PATH: `pip install .` at the root of a scry checkout (in "
        "a virtual environment), or `pipx install` / `uv tool install` of the checkout, installs "
        "it with this agent"
    )
