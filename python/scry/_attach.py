"""The agent started by ``scry attach`` inside a process that never imported scry, and detach.

``scry attach PID`` places this package and a one-time bootstrap script in the target's own
root and makes the target run the bootstrap (PEP 768 on 3.14+, or gdb). The bootstrap calls
:func:`attach` from a ``scry-attach`` thread with the unix socket the daemon bound for this
attach (a path inside the target's root, so it works in chroots, containers and PID
namespaces) and the nonce the daemon expects in ``hello``.

Only what the link needs is imported at attach (the target compiles the placed package from
source: there is no bytecode for it); the rest of the package is read into memory then, since
the daemon removes the placed files once the agent is connected, and a feature module is
compiled from that copy on its first use (:class:`_PlacedSources`, removed on detach).

An injected agent has no control plane and no discovery file: it is awake or gone. Losing the
daemon, ``scry sleep`` and ``agent.detach`` all end it the same way (:func:`detach`): probes
and every ``sys.monitoring`` hook removed, the link closed, its threads ended, and the ``scry``
modules it loaded removed from ``sys.modules`` (and the package directory from ``sys.path`` and
``sys.path_importer_cache``).

The ``agent.detach`` call method exists in every agent: an embedded client goes to sleep
instead (its owner keeps the sleeping client).
"""

import logging
import os
import sys
import threading

from . import _calls, _config, _state
from ._errors import AgentError

log = logging.getLogger("scry")

#: Set by :func:`attach`: the modules that were there before (the others are forgotten on
#: detach), the package directory, and the in-memory sources of the package.
_modules_before = [None]
_package_dir = [None]
_finder = [None]


class _PlacedSources(object):
    """A ``sys.meta_path`` finder and loader for the ``scry`` modules that were placed but not
    imported at attach: their sources, read into memory before the files went away."""

    def __init__(self, package_dir):
        self.files = {}
        pkg = os.path.join(package_dir, "scry")
        try:
            names = os.listdir(pkg)
        except OSError:
            names = []
        for name in names:
            fullname = "scry." + name[:-3]
            if not name.endswith(".py") or name.startswith("__") or fullname in sys.modules:
                continue
            path = os.path.join(pkg, name)
            try:
                with open(path, "rb") as f:
                    self.files[fullname] = (path, f.read())
            except OSError as exc:
                log.warning("cannot read %s: %r", path, exc)

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.files:
            return None
        import importlib.util

        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return None  # the default module

    def exec_module(self, module):
        path, source = self.files[module.__name__]
        module.__file__ = path
        exec(compile(source, path, "exec", dont_inherit=True), module.__dict__)


def _remove_finder():
    finder = _finder[0]
    _finder[0] = None
    while finder is not None and finder in sys.meta_path:
        sys.meta_path.remove(finder)


def attach(socket_path, nonce, package_dir=None, modules_before=None):
    """Connect to the daemon at ``socket_path`` as an injected agent presenting ``nonce``.

    Raises AgentError when this process already has a scry client, and what ``wake()`` raises.
    """
    agent = _state._agent
    with agent.lock:
        if agent.state != _state.UNINITIALISED:
            raise AgentError(
                "this process already has a scry client ({}): use `scry wake {}`".format(
                    agent.state, os.getpid()
                )
            )
        _modules_before[0] = set(modules_before) if modules_before is not None else None
        _package_dir[0] = package_dir
        if package_dir and _finder[0] is None:
            _finder[0] = _PlacedSources(package_dir)
            sys.meta_path.append(_finder[0])
        agent.config = _config.Config(
            home=_config.resolve_home(None),
            name=None,
            control_host=None,
            control_port=None,
            control_tcp=False,
            daemon_url="unix://" + socket_path,
            token=None,
            token_source=None,
            start_state="awake",
            health_check_timeout=2.0,
            register_timeout=5.0,
            unregister_timeout=2.0,
        )
        agent.origin = "injected"
        agent.nonce = nonce
        agent.on_lost = _on_lost
        agent.state = _state.SLEEPING
        try:
            return _state._wake_locked(agent, None)
        except BaseException:
            _state._teardown_locked(agent, "shutdown")
            _remove_finder()
            raise


def _is_ours(name):
    return name == "scry" or name.startswith("scry.")


def detach():
    """Remove everything an injected agent installed; never raises."""
    agent = _state._agent
    try:
        with agent.lock:
            if agent.origin != "injected":
                return
            engine, link = agent.engine, agent.link
            if engine is not None:
                engine.stop()  # no more hits ...
            if link is not None:
                link.discard_buffer()  # ... and none of the backlog
            _state._teardown_locked(agent, "detach")
    except Exception as exc:
        log.warning("error while detaching: %r", exc)
    # The modules go last: this function's own module is among them (it keeps running, as
    # module objects stay alive while referenced).
    _remove_finder()
    before = _modules_before[0]
    _modules_before[0] = None
    if before is not None:
        for name in list(sys.modules):
            if _is_ours(name) and name not in before:
                sys.modules.pop(name, None)
    pkg = _package_dir[0]
    while pkg and pkg in sys.path:
        sys.path.remove(pkg)
    if pkg:
        # The bootstrap's finders (they import without writing bytecode into the placement).
        for key in [k for k in list(sys.path_importer_cache) if isinstance(k, str)]:
            if key == pkg or key.startswith(pkg + os.sep):
                sys.path_importer_cache.pop(key, None)
    try:
        import atexit

        atexit.unregister(_state._at_exit)
    except Exception:
        pass


def _on_lost(link):
    """The injected agent lost its daemon (or was told to sleep): detach from a thread of its
    own, since the caller may be the link thread that detach joins."""
    threading.Thread(target=detach, name="scry-detach", daemon=True).start()


@_calls.method("agent.detach")
def _detach_method(params, call):
    """Daemon -> agent: detach (injected) or sleep (embedded). Answers before going."""
    agent = _state._agent
    injected = agent.origin == "injected"
    call.reply({"detaching": True, "origin": agent.origin or _state.ORIGIN})
    if injected:
        threading.Thread(target=detach, name="scry-detach", daemon=True).start()
    else:
        threading.Thread(target=_state.sleep, name="scry-sleep", daemon=True).start()
    return _calls.DEFERRED


@_calls.method("agent.state")
def _state_method(params, call):
    """What scry occupies in this process right now (for `scry attach` checks and tests):
    ``sys.monitoring`` tool ids in use and by whom (3.12+), threads by name, how many
    ``scry`` modules are loaded, the origin."""
    mon = getattr(sys, "monitoring", None)
    tools = {}
    if mon is not None:
        for tool in range(6):
            try:
                name = mon.get_tool(tool)
            except Exception:
                name = None
            if name is not None:
                tools[str(tool)] = name
    return {
        "origin": _state._agent.origin or _state.ORIGIN,
        "monitoring_tools": tools,
        "threads": sorted(t.name for t in threading.enumerate()),
        "scry_modules": sum(1 for name in list(sys.modules) if _is_ours(name)),
    }
