"""Facts about this process and its interpreter, computed once (per pid) and cached."""

import os
import socket
import sys
import sysconfig
import time

from ._version import __version__

#: Whether this interpreter is a free-threaded build (3.13t and later).
FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))

_LEVELS = {"alpha": "a", "beta": "b", "candidate": "rc", "final": ""}


def _python_version():
    v = sys.version_info
    text = "{}.{}.{}".format(v.major, v.minor, v.micro)
    if v.releaselevel != "final":
        text += "{}{}".format(_LEVELS.get(v.releaselevel, v.releaselevel), v.serial)
    return text


PYTHON_VERSION = _python_version()
IMPLEMENTATION = sys.implementation.name
AGENT_VERSION = __version__

# Wall-clock time at import: the fallback for started_at where /proc cannot tell.
_IMPORT_TIME = time.time()
_started_at_cache = {}


def executable():
    """``sys.executable`` (may be empty in embedded interpreters)."""
    return sys.executable or ""


def python_info():
    """The ``hello.python`` object."""
    return {
        "version": PYTHON_VERSION,
        "implementation": IMPLEMENTATION,
        "executable": executable(),
        "free_threaded": FREE_THREADED,
    }


def _proc_start_time(pid):
    """Start of ``pid`` in wall-clock seconds, from /proc (Linux), or None."""
    try:
        with open("/proc/{}/stat".format(pid), "rb") as f:
            stat_line = f.read().decode("ascii", "replace")
        # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
        fields = stat_line[stat_line.rindex(")") + 2 :].split()
        start_ticks = int(fields[19])  # field 22 of proc(5)
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    boot_time = int(line.split()[1])
                    break
            else:
                return None
        ticks = os.sysconf("SC_CLK_TCK")
        return boot_time + start_ticks / float(ticks)
    except (OSError, ValueError, IndexError):
        return None


def started_at():
    """When this process started, wall-clock seconds since the epoch (stable for the pid)."""
    pid = os.getpid()
    value = _started_at_cache.get(pid)
    if value is None:
        value = _proc_start_time(pid)
        if value is None:
            value = _IMPORT_TIME if not _started_at_cache else time.time()
        _started_at_cache.clear()
        _started_at_cache[pid] = value
    return value


def argv():
    """``sys.argv`` as a list of strings (empty when the host has none)."""
    return [str(a) for a in getattr(sys, "argv", None) or []]


def cwd():
    """The working directory, or ``""`` when it was deleted."""
    try:
        return os.getcwd()
    except OSError:
        return ""


def hostname():
    """``socket.gethostname()``."""
    try:
        return socket.gethostname()
    except OSError:
        return ""


def info(name):
    """The control plane's ``GET /scry/info`` answer."""
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "name": name,
        "host": hostname(),
        "python": PYTHON_VERSION,
        "implementation": IMPLEMENTATION,
        "executable": executable(),
        "free_threaded": FREE_THREADED,
        "argv": argv(),
        "cwd": cwd(),
        "started_at": started_at(),
        "agent_version": AGENT_VERSION,
    }
