"""The agent's single piece of process-wide state, and the implementation of the public API.

One :class:`_Agent` per process, guarded by its lock: every transition (init, wake, sleep,
shutdown) happens under it, so they are serialised and each is idempotent. ``status()`` does not
take the lock (it reads a few attributes), so it answers even while a wake waits for a slow
daemon. The link thread never takes the lock: when the daemon asks us to sleep, a short-lived
``scry-sleep`` thread performs the ordinary sleep, so that the lock holder may always join the
link thread without a deadlock.

After ``fork()`` the child gets a fresh, uninitialised agent: it has neither the link thread nor
the control-plane thread, so it closes its copies of their fds (never ``shutdown()``, which would
cut the parent's connections) and drops every reference. At exit (atexit) the agent shuts down:
goodbye to the daemon, control plane closed, discovery file removed.
"""

import atexit
import logging
import os
import threading

from . import _config, _discovery, _features, _process, _proto
from ._engine import Engine
from ._errors import AgentError, ConfigError, ControlPlaneError
from ._link import Link

log = logging.getLogger("scry")

#: What ``hello.origin`` says: ``run`` once ``scry run``'s bootstrap loaded the agent.
ORIGIN = "embedded"

UNINITIALISED = "uninitialised"
SLEEPING = "sleeping"
AWAKE = "awake"

#: Slugs of the warnings already given in this process (each is given once).
_warned = set()


def _warn_once(slug, message, *args):
    """Warn through the ``scry`` logger once per process for ``slug`` (documented slugs:
    ``no-control-plane``, ``no-discovery-file``)."""
    if slug in _warned:
        return
    _warned.add(slug)
    log.warning("[%s] " + message, slug, *args)


#: How long the at-exit hook waits for a transition in progress before cleaning up anyway.
_AT_EXIT_LOCK_TIMEOUT = 5.0


class _Agent(object):
    """Everything one ``init()`` created; reset to this empty shape by ``shutdown()``."""

    def __init__(self):
        self.lock = threading.Lock()
        self.state = UNINITIALISED
        self.config = None
        self.control = None
        self.discovery_path = None
        self.link = None
        self.engine = None
        #: None (the module's ORIGIN), or "injected" for an agent started by `scry attach`.
        self.origin = None
        #: The one-time nonce an injected agent presents in its hello.
        self.nonce = None
        #: Called (from the link thread) when an injected agent loses its daemon: it detaches.
        self.on_lost = None


_agent = _Agent()


class _ControlApi(object):
    """What the control plane may call (always the current agent, not the one it started with)."""

    @staticmethod
    def status():
        return status()

    @staticmethod
    def info():
        config = _agent.config
        return _process.info(config.name if config is not None else None)

    @staticmethod
    def wake(daemon_url):
        return wake(daemon_url)

    @staticmethod
    def sleep():
        return sleep()


# -- public API ------------------------------------------------------------------------------


def init(
    name=None,
    control_host=None,
    control_port=None,
    daemon_url=None,
    start_state="sleeping",
    home=None,
    health_check_timeout=2.0,
    register_timeout=5.0,
    unregister_timeout=2.0,
):
    """Start the embedded client: a sleeping control plane and a discovery file.

    Nothing is hooked and nothing connects to the daemon until ``wake()`` (or ``start_state=
    "awake"``, or ``POST /scry/wake``, or ``scry wake NAME``). Arguments win over the
    environment (``SCRY_NAME``, ``SCRY_CONTROL_HOST``, ``SCRY_CONTROL_PORT``, ``SCRY_DAEMON``,
    ``SCRY_HOME``, ``SCRY_TOKEN``).

    The host program comes first: what fails in scry's own files never raises. A ``SCRY_HOME``
    that is full or not writable costs the discovery file and, for the default unix-socket
    control plane, the control plane itself; ``init()`` warns once through the ``scry`` logger
    (slugs ``no-discovery-file``, ``no-control-plane``) and carries on sleeping, and
    ``scry.wake()`` from the program still works.

    It raises only for the caller's own mistakes: ConfigError (bad arguments, an unsafe token
    file, called twice), ControlPlaneError for a TCP control plane that was asked for and cannot
    be served (port in use, not an address of this machine) and, with ``start_state="awake"``,
    whatever ``wake()`` raises; on any error nothing is left behind. Returns the status.
    """
    agent = _agent
    with agent.lock:
        if agent.state != UNINITIALISED:
            raise ConfigError(
                "scry.init() was already called in this process (state: {}): call "
                "scry.shutdown() before calling it again, or use scry.wake() / scry.sleep()".format(
                    agent.state
                )
            )
        config = _config.resolve(
            name=name,
            control_host=control_host,
            control_port=control_port,
            daemon_url=daemon_url,
            start_state=start_state,
            home=home,
            health_check_timeout=health_check_timeout,
            register_timeout=register_timeout,
            unregister_timeout=unregister_timeout,
        )
        try:
            agent.config = config
            # Here, not at import: an injected agent (`scry attach`) has no control plane.
            from ._control import ControlPlane

            agent.control = ControlPlane(
                config.control_host,
                config.control_port,
                config.token,
                config.token_hint,
                _ControlApi,
                socket_path=_discovery.socket_path_for(config.home, os.getpid()),
                tcp=config.control_tcp,
            )
            try:
                agent.control.start(config.health_check_timeout)
            except ControlPlaneError as exc:
                # A TCP address was the caller's choice: theirs to fix. The unix socket lives
                # in SCRY_HOME, and a full or read-only home must not stop the program.
                if config.control_tcp:
                    raise
                _warn_once(
                    "no-control-plane",
                    "%s; carrying on without a control plane (scry.wake() still works)",
                    exc,
                )
                try:
                    agent.control.stop()
                except Exception:
                    pass
                agent.control = None
            agent.state = SLEEPING
            if agent.control is not None:
                agent.discovery_path = _discovery.path_for(config.home, os.getpid())
                _write_discovery(agent)
            if config.start_state == AWAKE:
                _wake_locked(agent, None)
        except BaseException:
            _teardown_locked(agent, "shutdown")
            raise
        log.debug(
            "initialised: control plane at %s",
            agent.control.url if agent.control is not None else None,
        )
        return _status_of(agent)


def wake(daemon_url=None):
    """Connect to the daemon and register; returns the status. A no-op when already awake.

    The address is ``daemon_url`` > ``init(daemon_url=)`` > ``SCRY_DAEMON`` >
    ``unix://$SCRY_HOME/run/agent.sock``. Raises DaemonError when the daemon cannot be reached
    or refuses us, ConfigError for a bad address or when ``init()`` was not called.
    """
    if daemon_url is not None and not isinstance(daemon_url, str):
        raise ConfigError("scry.wake(daemon_url=...) must be a string, not {!r}".format(daemon_url))
    agent = _agent
    with agent.lock:
        return _wake_locked(agent, daemon_url)


def sleep():
    """Say goodbye to the daemon and close the connection; returns the status.

    Afterwards only the control plane remains (no thread, socket or fd of the link). A no-op
    when not awake.
    """
    agent = _agent
    with agent.lock:
        _sleep_locked(agent, "sleep")
        return _status_of(agent)


def status():
    """The client's state as a dict: state ("uninitialised" | "sleeping" | "awake"), name, pid,
    control_socket (the control plane's unix socket) or control_host and control_port (when TCP
    was asked for), daemon_url, connection_id, connected."""
    return _status_of(_agent)


def shutdown():
    """Sleep, stop the control plane and remove the discovery file. Safe to call at any time,
    any number of times; never raises. ``init()`` may be called again afterwards."""
    agent = _agent
    with agent.lock:
        _teardown_locked(agent, "shutdown")


def send_report(events, dropped=0):
    """Queue observations for the daemon (for the probe engine). Thread-safe; never blocks on
    I/O. ``events`` is a list of ``{"kind", "t", "source", "data"}`` dicts; ``dropped`` counts
    hits the caller already dropped. Returns False when not awake or when the buffer was full
    (the excess is counted as dropped)."""
    link = _agent.link
    if link is None:
        return False
    return link.send_report(events, dropped)


# -- transitions (caller holds agent.lock) -----------------------------------------------------


def _wake_locked(agent, daemon_url):
    if agent.state == UNINITIALISED:
        raise ConfigError("scry is not initialised in this process: call scry.init() first")
    if agent.state == AWAKE and agent.link is not None:
        return _status_of(agent)
    config = agent.config
    url = daemon_url
    if url is None:
        url = config.daemon_url if config.daemon_url is not None else config.default_daemon_url
    control = agent.control

    def make_hello(proof):
        return _proto.hello(
            agent_version=_process.AGENT_VERSION,
            pid=os.getpid(),
            ppid=os.getppid(),
            host=_process.hostname(),
            name=config.name,
            origin=agent.origin or ORIGIN,
            python=_process.python_info(),
            argv=_process.argv(),
            cwd=_process.cwd(),
            started_at=_process.started_at(),
            capabilities=["control_plane"] + _features.capabilities(),
            control=control.address() if control is not None else None,
            proof=proof,
            nonce=agent.nonce,
        )

    engine = Engine()
    link = Link(
        url,
        config.token,
        config.token_hint,
        make_hello,
        config.register_timeout,
        _on_daemon_sleep,
        home=config.home,
        engine=engine,
        on_lost=agent.on_lost,
    )
    try:
        link.connect_first()
        try:
            link.start()
        except RuntimeError as exc:
            link.stop("shutdown", config.unregister_timeout)
            raise AgentError(
                "cannot start the scry-link thread ({}): the process may be out of threads or "
                "memory".format(exc)
            )
    except BaseException:
        engine.stop()
        raise
    agent.engine = engine
    agent.link = link
    agent.state = AWAKE
    _write_discovery(agent)
    log.debug("awake: connected to %s (session %s)", link.endpoint, link.session_id)
    return _status_of(agent)


def _sleep_locked(agent, reason):
    engine, agent.engine = agent.engine, None
    if engine is not None:
        try:
            engine.stop()  # every probe hook goes first; the link ships what was already hit
        except Exception as exc:
            log.warning("error while removing the probes: %r", exc)
    link = agent.link
    if link is None:
        return
    agent.link = None
    if agent.state == AWAKE:
        agent.state = SLEEPING
    timeout = agent.config.unregister_timeout if agent.config is not None else 2.0
    try:
        link.stop(reason, timeout)
    except Exception as exc:
        log.warning("error while disconnecting from the daemon: %r", exc)
    if agent.state == SLEEPING:
        _write_discovery(agent)
    log.debug("asleep (%s)", reason)


def _teardown_locked(agent, reason):
    """Undo everything, whatever was done; never raises."""
    try:
        _sleep_locked(agent, reason)
    except Exception as exc:
        log.warning("error while going to sleep: %r", exc)
    control, agent.control = agent.control, None
    if control is not None:
        try:
            control.stop()
        except Exception as exc:
            log.warning("error while stopping the control plane: %r", exc)
    path, agent.discovery_path = agent.discovery_path, None
    if path is not None:
        _discovery.remove(path)
    agent.link = None
    agent.engine = None
    agent.config = None
    agent.origin = None
    agent.nonce = None
    agent.on_lost = None
    agent.state = UNINITIALISED


def _on_daemon_sleep(link):
    """The daemon sent ``sleep``: do the ordinary sleep from a short-lived thread."""

    agent = _agent
    if agent.origin == "injected" and agent.on_lost is not None:
        agent.on_lost(link)  # an injected agent has nothing to sleep into: it detaches
        return

    def run():
        try:
            agent = _agent
            with agent.lock:
                if agent.link is link:
                    _sleep_locked(agent, "sleep")
                    return
            link.stop("sleep", 2.0)  # an orphan (the agent moved on): just end it
        except BaseException as exc:
            log.warning("could not go to sleep as the daemon asked: %r", exc)

    threading.Thread(target=run, name="scry-sleep", daemon=True).start()


# -- helpers -----------------------------------------------------------------------------------


def _status_of(agent):
    config = agent.config
    control = agent.control
    link = agent.link
    connected = bool(link is not None and link.connected)
    return {
        "state": agent.state,
        "name": config.name if config is not None else None,
        "pid": os.getpid(),
        "control_host": control.host if control is not None else None,
        "control_port": control.port if control is not None else None,
        "control_socket": control.socket_path if control is not None else None,
        "daemon_url": link.url if link is not None else None,
        "connection_id": link.session_id if connected else None,
        "connected": connected,
    }


def _write_discovery(agent):
    """Writes the discovery file; a failure (full or read-only home) is warned about once."""
    path = agent.discovery_path
    if path is None or agent.control is None:
        return
    config = agent.config
    control = agent.control
    record = {
        "pid": os.getpid(),
        "name": config.name,
        "control_host": control.host,
        "control_port": control.port,
        "control_socket": control.socket_path,
        "state": agent.state,
        "started_at": _process.started_at(),
        "python": _process.PYTHON_VERSION,
        "executable": _process.executable(),
        "agent_version": _process.AGENT_VERSION,
        "token_required": control.host is not None,
    }
    try:
        _discovery.write(path, record)
    except (OSError, ValueError) as exc:
        _warn_once(
            "no-discovery-file",
            "cannot write the discovery file %s: %s: `scry ps` and `scry wake` will not find "
            "this process until SCRY_HOME (%s) has room and is writable; carrying on",
            path,
            getattr(exc, "strerror", None) or exc,
            config.home,
        )


def _at_exit():
    agent = _agent
    if agent.state == UNINITIALISED and agent.control is None:
        return
    acquired = agent.lock.acquire(timeout=_AT_EXIT_LOCK_TIMEOUT)
    try:
        _teardown_locked(agent, "exit")
    finally:
        if acquired:
            agent.lock.release()


def _after_fork_in_child():
    global _agent
    old = _agent
    _agent = _Agent()
    try:
        if old.engine is not None:
            old.engine.stop_in_child()
    except Exception:
        pass
    try:
        if old.link is not None:
            old.link.close_in_child()
        if old.control is not None:
            old.control.close_in_child()
    except Exception:
        pass


atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
