"""Every ``SCRY_*`` environment variable the agent reads, in one place, and the resolved config.

The agent reads its environment once, in :func:`resolve` (called by ``scry.init()``), and
:func:`debug_enabled` (called at import). Explicit arguments always win over the environment.

=====================  =========================================================================
variable               meaning
=====================  =========================================================================
``SCRY_HOME``          scry's directory (default ``~/.scry``): ``clients/<pid>.json`` discovery
                       files, the daemon's ``run/agent.sock``, the shared ``token`` file.
``SCRY_NAME``          the process's name when ``init(name=)`` is not given.
``SCRY_DAEMON``        the daemon address when neither ``wake(daemon_url=)`` nor
                       ``init(daemon_url=)`` is given: ``unix:///abs/path``, ``unix:/abs/path``,
                       ``tcp://host:port`` or ``http://host:port`` (see docs/protocol.md).
                       Default: ``unix://$SCRY_HOME/run/agent.sock``.
``SCRY_CONTROL_HOST``  asks for a TCP control plane bound to this address (default: none, the
                       control plane is the unix socket ``$SCRY_HOME/run/clients/<pid>.sock``,
                       which answers only this process's uid and root).
``SCRY_CONTROL_PORT``  asks for a TCP control plane on this port (``0``: the OS picks one); the
                       host is then ``SCRY_CONTROL_HOST`` or ``127.0.0.1``. A TCP control plane
                       needs the token on every request, loopback included; with no token it is
                       not opened (a warning, and the unix socket instead).
``SCRY_TOKEN``         the shared secret; else the content of ``$SCRY_HOME/token`` (which must not
                       be readable or writable by group or others). Callers of a TCP control
                       plane send it as ``Authorization: Bearer <token>``; a TCP daemon link
                       proves it (HMAC challenge–response) and never sends it.
``SCRY_DEBUG``         ``1``: also log the agent's diagnostics to stderr (never to stdout).
=====================  =========================================================================
"""

import logging
import os
import stat
import sys

from ._errors import ConfigError

ENV_HOME = "SCRY_HOME"
ENV_NAME = "SCRY_NAME"
ENV_DAEMON = "SCRY_DAEMON"
ENV_CONTROL_HOST = "SCRY_CONTROL_HOST"
ENV_CONTROL_PORT = "SCRY_CONTROL_PORT"
ENV_TOKEN = "SCRY_TOKEN"
ENV_DEBUG = "SCRY_DEBUG"

DEFAULT_CONTROL_HOST = "127.0.0.1"
START_STATES = ("sleeping", "awake")

log = logging.getLogger("scry")


def _env(name):
    """The variable's value, or None when unset or empty."""
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    return value


def debug_enabled():
    """Whether ``SCRY_DEBUG`` asks for diagnostics on stderr."""
    return (_env(ENV_DEBUG) or "").strip().lower() in ("1", "true", "yes", "on")


def setup_logging():
    """Give the ``scry`` logger a NullHandler, and a stderr handler when ``SCRY_DEBUG=1``."""
    if not any(isinstance(h, logging.NullHandler) for h in log.handlers):
        log.addHandler(logging.NullHandler())
    if debug_enabled() and not any(getattr(h, "_scry_debug", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("scry[%(process)d] %(levelname)s %(threadName)s: %(message)s")
        )
        handler._scry_debug = True
        log.addHandler(handler)
        log.setLevel(logging.DEBUG)


class Config(object):
    """Everything ``init()`` resolved from its arguments, the environment and ``SCRY_HOME``."""

    __slots__ = (
        "home",
        "name",
        "control_host",
        "control_port",
        "control_tcp",
        "daemon_url",
        "token",
        "token_source",
        "start_state",
        "health_check_timeout",
        "register_timeout",
        "unregister_timeout",
    )

    def __init__(self, **kw):
        for key in self.__slots__:
            setattr(self, key, kw.get(key))

    @property
    def default_daemon_url(self):
        """``unix://$SCRY_HOME/run/agent.sock``."""
        return "unix://" + os.path.join(self.home, "run", "agent.sock")

    @property
    def token_hint(self):
        """How to configure a token, for error messages."""
        return "set SCRY_TOKEN, or write the token to {} and `chmod 600` it".format(
            os.path.join(self.home, "token")
        )


def resolve_home(home=None):
    """``home`` argument > ``SCRY_HOME`` > ``~/.scry``, as an absolute path."""
    if home is not None and not isinstance(home, (str, os.PathLike)):
        raise ConfigError("scry.init(home=...) must be a path, not {!r}".format(type(home).__name__))
    value = os.fspath(home) if home is not None else _env(ENV_HOME)
    if value is None:
        value = os.path.join("~", ".scry")
    return os.path.abspath(os.path.expanduser(value))


def _timeout(label, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(
            "scry.init({}=...) must be a positive number of seconds, not {!r}".format(label, value)
        )
    return float(value)


def _port(value, source):
    if isinstance(value, bool):
        value = None
    try:
        port = int(value)
    except (TypeError, ValueError):
        port = -1
    if port < 0 or port > 65535 or (isinstance(value, float) and value != port):
        raise ConfigError(
            "{} must be a port number between 0 and 65535 (0 picks a free port), not {!r}".format(
                source, value
            )
        )
    return port


def read_token(home):
    """The token and where it came from: ``SCRY_TOKEN``, else ``$SCRY_HOME/token``, else None.

    Raises ConfigError when the token file is readable or writable by group or others.
    """
    env_token = _env(ENV_TOKEN)
    if env_token is not None:
        return env_token.strip(), ENV_TOKEN
    path = os.path.join(home, "token")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        raise ConfigError("cannot read the token file {}: {}".format(path, exc.strerror or exc))
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError("the token file {} is not a regular file: replace it".format(path))
    if st.st_mode & 0o077:
        raise ConfigError(
            "the token file {} is accessible by group or others (mode {:04o}): "
            "run `chmod 600 {}`".format(path, stat.S_IMODE(st.st_mode), path)
        )
    try:
        with open(path, "r", encoding="utf-8") as f:
            token = f.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("cannot read the token file {}: {}".format(path, exc))
    if not token:
        log.warning("the token file %s is empty; no token is configured", path)
        return None, None
    return token, path


def resolve(
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
    """Validate ``init()``'s arguments and merge them with the environment into a Config."""
    if start_state not in START_STATES:
        raise ConfigError(
            "scry.init(start_state=...) must be 'sleeping' or 'awake', not {!r}".format(start_state)
        )
    if name is not None and not isinstance(name, str):
        raise ConfigError("scry.init(name=...) must be a string, not {!r}".format(name))
    if control_host is not None and not isinstance(control_host, str):
        raise ConfigError("scry.init(control_host=...) must be a string, not {!r}".format(control_host))
    if daemon_url is not None and not isinstance(daemon_url, str):
        raise ConfigError("scry.init(daemon_url=...) must be a string, not {!r}".format(daemon_url))

    home_dir = resolve_home(home)
    # TCP only when asked for (an argument or the environment); the unix socket otherwise.
    tcp = (
        control_host is not None
        or control_port is not None
        or _env(ENV_CONTROL_HOST) is not None
        or _env(ENV_CONTROL_PORT) is not None
    )
    if control_port is not None:
        port = _port(control_port, "scry.init(control_port=...)")
    elif _env(ENV_CONTROL_PORT) is not None:
        port = _port(_env(ENV_CONTROL_PORT).strip(), ENV_CONTROL_PORT)
    else:
        port = 0
    host = control_host if control_host is not None else _env(ENV_CONTROL_HOST)
    host = (host or DEFAULT_CONTROL_HOST).strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    token, token_source = read_token(home_dir)
    return Config(
        home=home_dir,
        name=name if name is not None else _env(ENV_NAME),
        control_host=host,
        control_port=port,
        control_tcp=tcp,
        daemon_url=daemon_url if daemon_url is not None else _env(ENV_DAEMON),
        token=token,
        token_source=token_source,
        start_state=start_state,
        health_check_timeout=_timeout("health_check_timeout", health_check_timeout),
        register_timeout=_timeout("register_timeout", register_timeout),
        unregister_timeout=_timeout("unregister_timeout", unregister_timeout),
    )
