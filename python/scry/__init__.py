"""scry: debug-on-demand observability for live Python processes.

Embed a sleeping client that costs nothing until someone looks::

    import scry
    scry.init(name="checkout")      # a loopback control plane and a discovery file, no hooks
    ...                             # later: `scry wake checkout`, POST /scry/wake, or:
    scry.wake()                     # connect to the daemon (`scry serve --daemon`)
    scry.sleep()                    # disconnect; nothing of the link remains
    scry.shutdown()                 # also stop the control plane

The daemon and the CLI are the ``scry`` command, which this package alone (``pip install
./python``) does not include: ``pip install .`` at the root of a scry checkout (or ``pipx install``
/ ``uv tool install`` of it) installs the command with this agent.

The agent uses the standard library only, never writes to stdout, and logs to the ``scry``
logger (to stderr as well with ``SCRY_DEBUG=1``). Environment variables are documented in
``scry._config``.
"""

from ._config import setup_logging as _setup_logging
from ._errors import AgentError, ConfigError, ControlPlaneError, DaemonError, ScryError
from ._state import init, shutdown, sleep, status, wake
from ._version import __version__

# Feature modules reached through `call` register their methods when imported (``_calls``).
# Those only needed once used are imported on their first call: `scry attach` (which compiles
# the agent from source in the target) and `import scry` stay quick.
from . import _calls as _calls_module
from . import _state as _state_module
from . import _trace
from . import _attach  # noqa: F401  (registers agent.detach and agent.state)

# What a link ships is registered with ``_producers`` by the module that fills it, when imported:
# the probe hits (``_engine``, through ``_state``), trace events (``_trace``) and log records.
from . import _logfwd  # noqa: F401  (registers the link's log records)
from . import _metrics  # noqa: F401  (registers the link's metric aggregates)

_calls_module.lazy("scry._lines", methods=("find_lines",))
_calls_module.lazy("scry._inspect", methods=("inspect",))
_calls_module.lazy(
    "scry._repl",
    methods=("repl.complete", "repl.break"),
    topics=("repl.grant", "repl.input", "repl.cancel", "repl.interrupt"),
)

_REPL_API = ("crash_handler", "pause", "post_mortem")


def __getattr__(name):
    """``scry.pause``, ``scry.post_mortem``, ``scry.crash_handler``: the REPL (and pdb) are
    imported on first use."""
    if name in _REPL_API:
        from . import _repl

        return getattr(_repl, name)
    raise AttributeError("module 'scry' has no attribute {!r}".format(name))


def pulse(name, **values):
    """Record a named event with typed values: into the running trace of this process (``scry
    trace``), else into the event stream when the agent is awake, else nowhere. Costs almost
    nothing when nobody looks, and never raises::

        scry.pulse("batch", size=len(batch), loss=loss)
    """
    link = _state_module._agent.link
    if link is None and _trace._current is None:
        return
    _trace.pulse(name, values, link)

_setup_logging()

__all__ = [
    "init",
    "wake",
    "sleep",
    "status",
    "shutdown",
    "pulse",
    "pause",
    "post_mortem",
    "crash_handler",
    "ScryError",
    "ConfigError",
    "DaemonError",
    "AgentError",
    "ControlPlaneError",
    "__version__",
]
