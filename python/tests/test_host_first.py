"""The host program comes first: scry's own files failing never raise into it (issue 13).

A full ``SCRY_HOME`` (a real, small tmpfs filled to the last byte) and a read-only one: the
program's ``scry.init()`` warns once through the ``scry`` logger and carries on. The caller's
own mistakes still raise.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import PYTHON_DIR

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")

PROGRAM = textwrap.dedent(
    """
    import json, logging, sys
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    import scry
    st = scry.init(name="host-first", home=sys.argv[1])
    # The program goes on; status still answers, and a second transition warns no more.
    scry.sleep()
    print(json.dumps(scry.status()))
    scry.shutdown()
    print("host carried on")
    """
)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs, unmounted afterwards whatever happens."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(directory):
    """Write until the filesystem says ENOSPC (even for a new file); returns the bytes written."""
    written = 0
    for n, size in enumerate((65536, 4096, 1)):
        chunk = b"\0" * size
        try:
            with open(os.path.join(str(directory), "ballast{}".format(n)), "wb") as f:
                while True:
                    f.write(chunk)
                    f.flush()
                    written += size
        except OSError as exc:
            assert exc.errno == 28, exc
    return written


def run(home):
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR)
    for k in ("SCRY_CONTROL_HOST", "SCRY_CONTROL_PORT", "SCRY_TOKEN", "SCRY_DAEMON"):
        env.pop(k, None)
    return subprocess.run(
        [sys.executable, "-c", PROGRAM, str(home)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        timeout=60,
    )


def test_init_with_a_full_home_warns_once_and_carries_on(small_tmpfs):
    home = small_tmpfs / "home"
    home.mkdir(mode=0o700)
    (home / "clients").mkdir(mode=0o700)
    assert fill(small_tmpfs) > 0
    r = run(home)
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert "host carried on" in r.stdout.decode()
    status = json.loads(r.stdout.decode().splitlines()[0])
    assert status["state"] == "sleeping"
    # Warned once, through the `scry` logger, with a slug; no traceback.
    assert "Traceback" not in err
    slugs = [s for s in ("[no-discovery-file]", "[no-control-plane]") if s in err]
    assert slugs, err
    for slug in slugs:
        assert err.count(slug) == 1, err
    assert all(line.startswith("scry ") for line in err.splitlines() if line.strip()), err
    # Nothing half-written left behind in the home.
    assert not [p for p in (home / "clients").iterdir() if p.name.endswith(".tmp")]


def test_init_with_a_read_only_home_warns_once_and_carries_on(small_tmpfs):
    home = small_tmpfs / "home"
    home.mkdir(mode=0o700)
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    r = run(home)
    err = r.stderr.decode()
    assert r.returncode == 0, err
    assert "host carried on" in r.stdout.decode()
    status = json.loads(r.stdout.decode().splitlines()[0])
    assert status["state"] == "sleeping"
    assert status["control_socket"] is None
    assert err.count("[no-control-plane]") == 1, err
    assert "Traceback" not in err


def test_caller_mistakes_still_raise(tmp_path):
    import scry

    with pytest.raises(scry.ConfigError):
        scry.init(name=42, home=str(tmp_path))
    with pytest.raises(scry.ConfigError):
        scry.init(start_state="later", home=str(tmp_path))
    assert scry.status()["state"] == "uninitialised"
