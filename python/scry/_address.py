"""Where the daemon is: parsing a ``daemon_url`` and resolving it to the endpoint to connect to.

``parse_daemon_url`` turns the forms of docs/protocol.md ("Agent addresses") into an
:class:`Address`: ``unix`` (a path), ``tcp`` (the daemon's agent listener) or ``http`` (the
daemon's API). ``resolve_endpoint`` gives the unix or tcp Address a link connects to; for
``http://`` it asks the daemon's public ``GET /api/v1/agent-endpoint`` (the only network use
here), preferring its unix socket when that socket is on this host.

Not for: connecting, proving who is at the other end, or TLS (``_handshake``); nothing here
keeps a connection open.
"""

import json
import os
import stat

from ._errors import ConfigError, DaemonError, describe, how_to_get_scry

URL_FORMS = "unix:///abs/path/agent.sock, unix:/abs/path, tcp://HOST:PORT or http://HOST:PORT"


class Address(object):
    """A parsed ``daemon_url``: scheme ``unix`` (path), ``tcp`` or ``http`` (host, port)."""

    __slots__ = ("scheme", "path", "host", "port", "url")

    def __init__(self, scheme, url, path=None, host=None, port=None):
        self.scheme = scheme
        self.url = url
        self.path = path
        self.host = host
        self.port = port

    @property
    def display(self):
        if self.scheme == "unix":
            return "unix://" + self.path
        return "{}://{}".format(self.scheme, _hostport(self.host, self.port))


def _hostport(host, port):
    return "[{}]:{}".format(host, port) if ":" in host else "{}:{}".format(host, port)


def _split_hostport(text):
    """``host:port`` or ``[v6]:port`` -> (host, port); raises ValueError."""
    text = text.strip()
    if text.startswith("["):
        end = text.index("]")
        host, rest = text[1:end], text[end + 1 :]
        if not rest.startswith(":"):
            raise ValueError(text)
        port = rest[1:]
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(text)
    port = int(port)
    if not host or not 0 < port < 65536:
        raise ValueError(text)
    return host, port


def parse_daemon_url(url):
    """Parse a daemon address (see docs/protocol.md "Agent addresses"). Raises ConfigError."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigError("the daemon address must be a non-empty string such as {}".format(URL_FORMS))
    url = url.strip()
    scheme, sep, rest = url.partition(":")
    scheme = scheme.lower()
    if not sep:
        raise ConfigError("{!r} is not a daemon address: use {}".format(url, URL_FORMS))
    if scheme == "unix":
        path = rest[2:] if rest.startswith("//") else rest
        if not path.startswith("/"):
            raise ConfigError(
                "{!r}: a unix daemon address needs an absolute path, e.g. "
                "unix:///home/me/.scry/run/agent.sock".format(url)
            )
        return Address("unix", url, path=path)
    if scheme in ("tcp", "http"):
        if not rest.startswith("//"):
            raise ConfigError("{!r} is not a daemon address: use {}".format(url, URL_FORMS))
        netloc = rest[2:]
        if scheme == "http" and netloc.endswith("/"):
            netloc = netloc[:-1]
        if scheme == "http" and ":" not in netloc.rpartition("]")[2]:
            netloc += ":80"
        try:
            host, port = _split_hostport(netloc)
        except ValueError:
            raise ConfigError(
                "{!r}: expected {}://HOST:PORT (IPv6 as [addr]:PORT), with nothing after the "
                "port".format(url, scheme)
            )
        return Address(scheme, url, host=host, port=port)
    if scheme == "https":
        raise ConfigError(
            "{!r}: https is not supported for the daemon address; use http://HOST:PORT (the "
            "daemon's API) or tcp://HOST:PORT (its agent listener, with a token)".format(url)
        )
    raise ConfigError("{!r} is not a daemon address: use {}".format(url, URL_FORMS))


def need_token(address, token, hint):
    """Raise ConfigError when a TCP ``address`` comes without a ``token`` (``hint``: where to find it)."""
    if not token:
        raise ConfigError(
            "connecting to the daemon over TCP ({}) needs the daemon's token: {}".format(
                address.display, hint
            )
        )


def _is_local_socket(path):
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def resolve_endpoint(address, token, token_hint, timeout):
    """The unix or tcp Address to connect to; asks the daemon's HTTP API for ``http://``."""
    if address.scheme == "unix":
        return address
    if address.scheme == "tcp":
        need_token(address, token, token_hint)
        return address
    import http.client  # here, not at import: unix and tcp links (`scry attach`) never need it

    conn = http.client.HTTPConnection(address.host, address.port, timeout=timeout)
    # No token: this route is public (it only names the agent endpoints), and the token never
    # leaves this process in clear; the link proves it instead (see authenticate).
    headers = {"Accept": "application/json"}
    try:
        conn.request("GET", "/api/v1/agent-endpoint", headers=headers)
        response = conn.getresponse()
        body = response.read(1 << 20)
    except (OSError, http.client.HTTPException) as exc:
        raise DaemonError(
            "no scry daemon answers at {} ({}): start one with `scry serve --daemon`, or check "
            "the address{}".format(address.display, describe(exc), how_to_get_scry())
        )
    finally:
        conn.close()
    if response.status != 200:
        raise DaemonError(
            "the daemon at {} answered GET /api/v1/agent-endpoint with HTTP {}: {}".format(
                address.display, response.status, body[:300].decode("utf-8", "replace").strip()
            )
        )
    try:
        obj = json.loads(body.decode("utf-8"))
        unix = obj.get("unix")
        tcp = obj.get("tcp")
        if unix is not None and not isinstance(unix, str):
            raise ValueError("`unix` is not a string")
        if tcp is not None and not isinstance(tcp, str):
            raise ValueError("`tcp` is not a string")
    except (ValueError, AttributeError, UnicodeDecodeError) as exc:
        raise DaemonError(
            "the daemon at {} answered GET /api/v1/agent-endpoint with something that is not "
            '{{"unix": ..., "tcp": ...}} ({}): is it a scry daemon of the same version?'.format(
                address.display, exc
            )
        )
    if unix and _is_local_socket(unix):
        return Address("unix", "unix://" + unix, path=unix)
    if tcp:
        try:
            host, port = _split_hostport(tcp)
        except ValueError:
            raise DaemonError(
                "the daemon at {} gave an invalid TCP agent address {!r}".format(address.display, tcp)
            )
        if host in ("0.0.0.0", "::", "[::]"):
            host = address.host  # it listens everywhere: use the host we reached its API on
        result = Address("tcp", "tcp://" + _hostport(host, port), host=host, port=port)
        need_token(result, token, token_hint)
        return result
    raise DaemonError(
        "the daemon at {} offers no agent endpoint this process can use (its unix socket {} is "
        "not on this host, and it has no TCP agent listener): run the process on the daemon's "
        "host, or enable the daemon's TCP agent listener".format(address.display, unix)
    )
