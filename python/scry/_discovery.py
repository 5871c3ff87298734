"""Discovery files: how the CLI and the daemon find embedded clients that are asleep.

``scry.init()`` writes ``$SCRY_HOME/clients/<pid>.json`` (directory mode 0700, file mode 0600,
whatever the umask; a ``clients`` directory of ours left looser is tightened), written
atomically (a temporary file in the same directory, then ``rename``), rewrites it on every state
change and removes it on ``scry.shutdown()`` and at exit. A file whose pid is dead was left by a
process that was killed; readers should check the pid (and ``started_at``) before trusting it.

Fields::

    pid             int     the process id
    name            str     init(name=) / SCRY_NAME, or null
    control_socket  str     the control plane's unix socket (``run/clients/<pid>.sock``), or
                            null when the user asked for TCP
    control_host    str     the TCP control plane's bound address, or null
    control_port    int     the TCP control plane's port, or null
    state           str     "sleeping" or "awake"
    started_at      float   process start, wall-clock seconds since the epoch
    python          str     the interpreter version, e.g. "3.11.7"
    executable      str     sys.executable
    agent_version   str     the agent package version
    token_required  bool    true for a TCP control plane: every request must carry
                            ``Authorization: Bearer <token>`` (loopback included)
"""

import json
import logging
import os
import stat

log = logging.getLogger("scry")


def clients_dir(home):
    """``$SCRY_HOME/clients``."""
    return os.path.join(home, "clients")


def path_for(home, pid):
    """``$SCRY_HOME/clients/<pid>.json``."""
    return os.path.join(clients_dir(home), "{}.json".format(pid))


def socket_path_for(home, pid):
    """``$SCRY_HOME/run/clients/<pid>.sock``: the control plane's unix socket."""
    return os.path.join(home, "run", "clients", "{}.sock".format(pid))


def ensure_private_dir(path):
    """Create ``path`` (and parents) with mode 0700 when missing; existing dirs are left alone."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        ensure_private_dir(parent)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return
    os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask


def tighten_dir(path):
    """Make ``path`` mode 0700 when it is a directory of ours with looser permissions (made by
    hand, or by an older scry under a loose umask). Links and other users' directories are left
    alone; failures too (the files in it are 0600 anyway)."""
    try:
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(path, 0o700)
    except OSError as exc:
        log.debug("could not make %s private: %s", path, exc)


def write(path, record):
    """Atomically replace ``path`` with ``record`` as JSON, mode 0600. Raises OSError."""
    directory = os.path.dirname(path)
    ensure_private_dir(directory)
    tighten_dir(directory)
    data = (json.dumps(record, sort_keys=True, indent=1) + "\n").encode("utf-8")
    import tempfile  # here, not at import: an injected agent writes no discovery file

    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def remove(path):
    """Remove ``path``; a missing file is fine, other errors are logged."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("could not remove the discovery file %s: %s", path, exc)
