"""Installing a reference tool (debugpy, VizTracer) for another interpreter's version, for the
benchmarks: the host's pip downloads binary wheels chosen for that version into a directory of
their own under bench/.deps, which the target processes get on PYTHONPATH.

A pinned version that has no wheel for an old interpreter (debugpy 1.8.22 and VizTracer 1.1.1
need 3.10+) gives way to the newest version pip lists for it; the version installed is returned,
for the report to say which one was measured.
"""

import platform
import re
import shutil
import subprocess
import sys

_PLATFORMS = ("manylinux_2_34", "manylinux_2_28", "manylinux_2_17", "manylinux2014")


def installed_version(target, name):
    """The version of ``name`` in ``target`` (None when it is not there)."""
    found = sorted(target.glob("{}-*.dist-info".format(name)))
    return found[-1].name[len(name) + 1:-len(".dist-info")] if found else None


def install(name, pin, version, target, log, extra=()):
    """Make ``target`` hold ``name`` (``pin``, or the newest release for Python ``version`` when
    the pin has no wheel for it) and ``extra`` requirements; returns the version there."""
    have = installed_version(target, name)
    if have is not None and (have == pin or not _available(name, pin, version)):
        return have
    if target.exists():
        shutil.rmtree(str(target))
    log("installing {}=={} for Python {} into {}".format(name, pin, version, target))
    r = subprocess.run(_pip(version, target, ["{}=={}".format(name, pin)] + list(extra)), capture_output=True, text=True)
    if r.returncode == 0:
        return pin
    listed = re.search(r"\(from versions: ([^)]*)\)", r.stderr)
    final = [v.strip() for v in listed.group(1).split(",") if re.fullmatch(r"[0-9.]+", v.strip())] if listed else []
    if not final:
        raise RuntimeError("pip could not install {} for Python {}: {}".format(name, version, r.stderr.strip()[-500:]))
    log("{}=={} has no wheel for Python {}: installing {}, the newest there is".format(name, pin, version, final[-1]))
    r = subprocess.run(_pip(version, target, ["{}=={}".format(name, final[-1])] + list(extra)), capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("pip could not install {} for Python {}: {}".format(name, version, r.stderr.strip()[-500:]))
    return final[-1]


def _available(name, pin, version):
    """Whether ``name==pin`` has a wheel for Python ``version`` (pip's dry run)."""
    cmd = _pip(version, None, ["{}=={}".format(name, pin)], dry_run=True)
    return subprocess.run(cmd, capture_output=True, text=True).returncode == 0


def _pip(version, target, requirements, dry_run=False):
    arch = platform.machine()
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--only-binary=:all:", "--python-version", version, "--implementation", "cp"]
    for plat in _PLATFORMS:
        cmd += ["--platform", "{}_{}".format(plat, arch)]
    if dry_run:
        cmd += ["--dry-run", "--ignore-installed", "--target", "/nonexistent-scry-bench"]
    else:
        cmd += ["--target", str(target)]
    return cmd + requirements
