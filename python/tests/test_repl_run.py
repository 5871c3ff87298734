"""`scry run` and `scry repl` through a real pseudo-terminal (pexpect): REPLs of a whole process
tree in one terminal, one at a time in arrival order; crash REPLs; ctrl-c; completion; listing;
the program's own sitecustomize; breaking into a running process.

Every wait is for something the terminal shows (a header, a prompt) or the daemon's state, never
a sleep. The programs run under the interpreter that runs the tests.
"""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap

import pytest

from conftest import REPO, wait_until
from realdaemon import SCRY_BIN, running

pexpect = pytest.importorskip("pexpect")

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
HEADER = re.compile(r"── scry REPL: (\S+) pid (\d+), thread (\S+) \((\S+) at ([^)]*)\) ──")
PROMPT = re.compile(r"\(Pdb (\S+) pid (\d+)\) ")
TIMEOUT = 60


@pytest.fixture
def daemon(home, tmp_path):
    yield from running(home, tmp_path)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def spawn(args, tmp_path, env=None):
    full = dict(os.environ)
    full["NO_COLOR"] = "1"
    full["PYTHONUNBUFFERED"] = "1"
    full.update(env or {})
    child = pexpect.spawn(
        SCRY_BIN, args, env=full, encoding="utf-8", timeout=TIMEOUT, cwd=str(tmp_path),
        dimensions=(50, 200),
    )
    child.logfile_read = open(str(tmp_path / "terminal.log"), "a")
    return child


def scry_run(tmp_path, script, *args, debug=False, extra=()):
    argv = ["run"] + (["--debug"] if debug else []) + list(extra) + ["--", sys.executable, script]
    return spawn(argv + list(args), tmp_path)


class Repl(object):
    """What a REPL's header said."""

    def __init__(self, m):
        self.name, self.pid, self.thread, self.kind, self.where = (
            m.group(1), int(m.group(2)), m.group(3), m.group(4), m.group(5),
        )


def next_repl(child):
    """Waits for the next REPL's header and its first prompt; checks they name one process."""
    child.expect(HEADER)
    repl = Repl(child.match)
    child.expect(PROMPT)
    assert int(child.match.group(2)) == repl.pid, "the prompt names the header's process"
    repl.before = ANSI.sub("", child.before)
    return repl


def command(child, line, pid):
    """Runs a pdb command and returns its output (up to the next prompt, which must be pid's)."""
    child.sendline(line)
    child.expect(re.escape(line) + "\r*\n")  # the line editor's echo, then the output
    child.expect(PROMPT)
    assert int(child.match.group(2)) == pid, "output of {!r} came with another process's prompt".format(line)
    return ANSI.sub("", child.before)


def finish(child, status=0):
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == status, (child.exitstatus, child.signalstatus)


def alive(pid):
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    with open("/proc/{}/stat".format(pid)) as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


POOL = """
    import multiprocessing as mp
    import sys

    class Holder(object):
        alpha_value = 1
        beta = 2

    def init(barrier):
        global both_busy
        both_busy = barrier

    def work(i):
        value = i * 10
        both_busy.wait()  # each worker takes one task
        breakpoint()
        return value

    if __name__ == "__main__":
        mp.set_start_method(sys.argv[1])
        holder = Holder()
        breakpoint()
        with mp.Pool(2, initializer=init, initargs=(mp.Barrier(2),)) as pool:
            print("results", pool.map(work, [1, 2], chunksize=1))
        print("all done")
"""


@pytest.mark.parametrize("method", ["spawn", "fork", "forkserver"])
def test_a_root_and_two_pool_workers_take_turns_in_arrival_order(daemon, tmp_path, method):
    script = write(tmp_path, "pool.py", POOL)
    child = scry_run(tmp_path, script, method)
    root = next_repl(child)
    assert root.kind == "breakpoint" and root.thread == "MainThread"
    assert "pool.py" in root.where and "<module>" in root.where
    if method == "spawn":
        # `l` lists the source; tab completes an attribute of a local from the target.
        listing = command(child, "l", root.pid)
        assert "holder = Holder()" in listing and "breakpoint()" in listing
        child.send("p holder.alp\t")
        child.expect("alpha_value")
        assert command(child, "", root.pid).strip().endswith("1")
    child.sendline("c")
    first = next_repl(child)
    assert first.pid != root.pid and "PoolWorker" in first.name
    waiting = re.search(r"1 REPL waiting: (\S+) pid (\d+)", ANSI.sub("", child.before + first.before))
    out = command(child, "p value", first.pid)
    assert re.search(r"\b(10|20)\b", out)
    child.sendline("c")
    second = next_repl(child)
    assert second.pid not in (root.pid, first.pid)
    if waiting is not None:
        assert int(waiting.group(2)) == second.pid, "the one waiting was served next"
    child.sendline("c")
    child.expect("results \\[10, 20\\]")
    child.expect("all done")
    finish(child, 0)


CRASH = """
    import multiprocessing as mp
    import sys

    def work(i):
        local_in_child = i + 100
        raise ValueError("boom in child {}".format(i))

    if __name__ == "__main__":
        mp.set_start_method("spawn")
        with mp.Pool(1) as pool:
            pool.map(work, [7])
"""


def test_crash_repl_in_a_spawned_worker_then_in_the_parent(daemon, tmp_path):
    script = write(tmp_path, "crash.py", CRASH)
    child = scry_run(tmp_path, script, debug=True)
    worker = next_repl(child)
    assert worker.kind == "post-mortem"
    assert "ValueError: boom in child 7" in worker.before
    assert "107" in command(child, "p local_in_child", worker.pid)
    child.sendline("c")
    parent = next_repl(child)
    assert parent.kind == "post-mortem" and parent.pid != worker.pid
    assert "ValueError: boom in child 7" in parent.before
    child.sendline("c")
    child.expect("ValueError")
    finish(child, 1)


def test_debug_filter_skips_chosen_exceptions(daemon, tmp_path):
    script = write(tmp_path, "skip.py", """
        raise LookupError("not for a REPL")
    """)
    child = scry_run(tmp_path, script, debug=True, extra=["--debug-filter", "LookupError"])
    child.expect("LookupError: not for a REPL")
    finish(child, 1)
    assert "scry REPL" not in ANSI.sub("", child.before or "")


LOOPER = """
    import multiprocessing as mp
    import sys

    def looper():
        for round in range(3):
            breakpoint()

    def raiser():
        raise RuntimeError("sibling fails")

    if __name__ == "__main__":
        mp.set_start_method("spawn")
        a = mp.Process(target=looper, name="looper")
        b = mp.Process(target=raiser, name="raiser")
        a.start(); b.start()
        a.join(); b.join()
        print("exit codes", a.exitcode, b.exitcode)
"""


def test_a_looping_breakpoint_and_a_crashing_sibling_never_interleave(daemon, tmp_path):
    script = write(tmp_path, "loop.py", LOOPER)
    child = scry_run(tmp_path, script, debug=True)
    seen = []
    while len(seen) < 4:
        repl = next_repl(child)
        seen.append(repl.name)
        # Every line of output until `c` comes with this REPL's prompt (command() checks).
        command(child, "p 1 + 1", repl.pid)
        command(child, "w", repl.pid)
        child.sendline("c")
    assert seen.count("looper") == 3 and seen.count("raiser") == 1, seen
    child.expect("exit codes 0 1")
    finish(child, 0)


CTRL_C = """
    import multiprocessing as mp
    import os
    import sys
    import time

    def idle(flag):
        while not os.path.exists(flag):
            time.sleep(0.05)

    if __name__ == "__main__":
        mp.set_start_method("spawn")
        flag = sys.argv[1]
        kids = [mp.Process(target=idle, args=(flag,)) for _ in range(2)]
        for k in kids:
            k.start()
        print("pids", os.getpid(), " ".join(str(k.pid) for k in kids))
        breakpoint()
        open(flag, "w").close()
        for k in kids:
            k.join()
        print("children ended", [k.exitcode for k in kids])
"""


def test_ctrl_c_goes_to_the_open_repl_and_nothing_dies(daemon, tmp_path):
    script = write(tmp_path, "ctrlc.py", CTRL_C)
    child = scry_run(tmp_path, script, str(tmp_path / "flag"))
    child.expect(r"pids (\d+) (\d+) (\d+)")
    pids = [int(p) for p in child.match.groups()]
    repl = next_repl(child)
    assert repl.pid == pids[0]
    for _ in range(3):
        child.sendcontrol("c")
        child.expect("KeyboardInterrupt")
        child.expect(PROMPT)
        assert int(child.match.group(2)) == repl.pid
        assert all(alive(p) for p in pids), "ctrl-c reached the tree"
    # A command running in the REPL is interrupted too, and the prompt comes back.
    child.sendline("import time; time.sleep(60)")
    child.expect("import time")
    child.sendcontrol("c")
    child.expect("KeyboardInterrupt")
    child.expect(PROMPT)
    assert all(alive(p) for p in pids)
    child.sendline("c")
    child.expect(r"children ended \[0, 0\]")
    finish(child, 0)


def test_ctrl_c_without_a_repl_ends_the_program_as_usual(daemon, tmp_path):
    script = write(tmp_path, "sleepy.py", """
        import time
        print("ready", flush=True)
        time.sleep(120)
    """)
    child = scry_run(tmp_path, script)
    child.expect("ready")
    child.sendcontrol("c")
    child.expect("KeyboardInterrupt")
    finish(child, 128 + signal.SIGINT)


HOLDERS = """
    import multiprocessing as mp
    import os
    import sys

    def work():
        breakpoint()
        print("worker", os.getpid(), "went on")

    if __name__ == "__main__":
        mp.set_start_method("spawn")
        kids = [mp.Process(target=work) for _ in range(2)]
        for k in kids:
            k.start()
        for k in kids:
            k.join()
        print("exit codes", sorted(k.exitcode for k in kids))
"""


def test_a_killed_holder_hands_the_terminal_to_the_next(daemon, tmp_path):
    script = write(tmp_path, "holders.py", HOLDERS)
    child = scry_run(tmp_path, script)
    first = next_repl(child)
    # Wait (daemon state) until the other REPL is queued, then kill the holder.
    session = re.search(r"session (r-[0-9a-f]+)", open(str(tmp_path / "terminal.log")).read()).group(1)
    wait_until(
        lambda: daemon.api("GET", "/api/v1/repl/sessions/" + session)[1]["waiting"],
        timeout=TIMEOUT, message="the second REPL to queue",
    )
    os.kill(first.pid, signal.SIGKILL)
    second = next_repl(child)
    assert second.pid != first.pid
    child.sendline("c")
    child.expect("worker {} went on".format(second.pid))
    child.expect(r"exit codes \[-9, 0\]")
    finish(child, 0)


def test_the_programs_own_sitecustomize_still_runs(daemon, tmp_path):
    own = tmp_path / "own"
    own.mkdir()
    (own / "sitecustomize.py").write_text("import os\nos.environ['OWN_SITE'] = 'yes'\n")
    script = write(tmp_path, "site.py", """
        import os, sys
        print("own site:", os.environ.get("OWN_SITE"), "agent:", "scry" in sys.modules)
    """)
    child = spawn(["run", "--", sys.executable, script], tmp_path, env={"PYTHONPATH": str(own)})
    child.expect("own site: yes agent: True")
    finish(child, 0)


def test_exit_status_is_the_commands(daemon, tmp_path):
    script = write(tmp_path, "exit.py", "import sys; sys.exit(7)\n")
    child = scry_run(tmp_path, script)
    finish(child, 7)


BUSY = """
    import os
    import sys
    import scry

    scry.init(name="busy", start_state="awake")
    print("busy", os.getpid(), flush=True)
    counter = 0
    while True:
        counter += 1
"""


def test_scry_repl_breaks_into_a_busy_loop(daemon, tmp_path):
    script = write(tmp_path, "busy.py", BUSY)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["NO_COLOR"] = "1"
    target = pexpect.spawn(sys.executable, [script], env=env, encoding="utf-8", timeout=TIMEOUT)
    try:
        target.expect(r"busy (\d+)")
        pid = int(target.match.group(1))
        wait_until(
            lambda: (daemon.process(pid) or {}).get("state") == "awake",
            timeout=TIMEOUT, message="the agent to connect",
        )
        child = spawn(["repl", str(pid)], tmp_path)
        repl = next_repl(child)
        assert repl.pid == pid and repl.kind == "break-in"
        first = int(re.search(r"(\d+)", command(child, "p counter", pid)).group(1))
        assert first > 0
        child.sendline("c")
        finish(child, 0)
        # It runs on: the counter keeps moving, seen by a second break-in.
        child = spawn(["repl", str(pid)], tmp_path)
        repl = next_repl(child)
        later = int(re.search(r"(\d+)", command(child, "p counter", pid)).group(1))
        assert later > first
        child.sendline("c")
        finish(child, 0)
    finally:
        target.kill(signal.SIGKILL)
        target.close()


def test_scry_repl_wakes_a_sleeping_client_first(daemon, tmp_path):
    script = write(tmp_path, "sleepy.py", BUSY.replace('start_state="awake"', 'start_state="sleeping"'))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = pexpect.spawn(sys.executable, [script], env=env, encoding="utf-8", timeout=TIMEOUT)
    try:
        target.expect(r"busy (\d+)")
        pid = int(target.match.group(1))
        wait_until(
            lambda: (daemon.process(pid) or {}).get("state") == "sleeping",
            timeout=TIMEOUT, message="the daemon to see the sleeping client",
        )
        child = spawn(["repl", str(pid)], tmp_path)
        child.expect("waking it")
        repl = next_repl(child)
        assert repl.pid == pid and repl.kind == "break-in"
        assert int(re.search(r"(\d+)", command(child, "p counter", pid)).group(1)) > 0
        child.sendline("c")
        finish(child, 0)
        assert daemon.process(pid)["origin"] == "embedded"
    finally:
        target.kill(signal.SIGKILL)
        target.close()


THREADS = """
    import threading

    def in_thread():
        thread_local = "from the worker thread"
        breakpoint()

    t = threading.Thread(target=in_thread, name="worker-thread")
    main_local = "from main"
    t.start()
    breakpoint()
    t.join()
    print("threads done")
"""


def test_a_second_thread_queues_behind_the_first(daemon, tmp_path):
    script = write(tmp_path, "threads.py", THREADS)
    child = scry_run(tmp_path, script)
    first = next_repl(child)
    child.sendline("c")
    second = next_repl(child)
    assert first.pid == second.pid
    assert {first.thread, second.thread} == {"MainThread", "worker-thread"}
    local = "thread_local" if second.thread == "worker-thread" else "main_local"
    assert "from" in command(child, "p " + local, second.pid)
    child.sendline("c")
    child.expect("threads done")
    finish(child, 0)


HANDLED = """
    import sys
    import scry

    def risky(n):
        inside = n * 2
        raise KeyError(n)

    try:
        risky(21)
    except KeyError:
        scry.post_mortem()
    with scry.crash_handler(ignore=(KeyError,)):
        risky(1)
"""


def test_post_mortem_and_crash_handler_are_relayed_under_scry_run(daemon, tmp_path):
    script = write(tmp_path, "handled.py", HANDLED)
    child = scry_run(tmp_path, script)
    repl = next_repl(child)
    assert repl.kind == "post-mortem"
    assert "42" in command(child, "p inside", repl.pid)
    child.sendline("c")
    # crash_handler(ignore=KeyError) lets the second KeyError through without a REPL.
    child.expect("KeyError: 1")
    finish(child, 1)
    assert "scry REPL" not in ANSI.sub("", child.before)


def test_post_mortem_and_crash_handler_fall_back_to_a_local_pdb(tmp_path, home):
    script = write(tmp_path, "local.py", """
        import scry

        def risky():
            here = "local frame"
            raise ValueError("no session")

        with scry.crash_handler():
            risky()
    """)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["NO_COLOR"] = "1"
    child = pexpect.spawn(sys.executable, [script], env=env, encoding="utf-8", timeout=TIMEOUT)
    child.expect(r"\(Pdb\) ")
    child.sendline("p here")
    child.expect("'local frame'")
    child.sendline("c")
    child.expect("ValueError: no session")
    finish(child, 1)


def test_nothing_stays_behind(daemon, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    script = write(tmp_path, "quick.py", "breakpoint()\nprint('quick done')\n")
    child = spawn(["run", "--", sys.executable, script], tmp_path, env={"TMPDIR": str(tmp)})
    repl = next_repl(child)
    child.sendline("c")
    child.expect("quick done")
    finish(child, 0)
    assert os.listdir(str(tmp)) == [], "the bootstrap directory was removed"
    session = re.search(r"session (r-[0-9a-f]+)", open(str(tmp_path / "terminal.log")).read()).group(1)
    status, _ = daemon.api("GET", "/api/v1/repl/sessions/" + session)
    assert status == 404, "the session was closed"
    assert not alive(repl.pid)


def test_a_killed_scry_run_lets_its_repls_run_on(daemon, tmp_path):
    marker = tmp_path / "went-on"
    script = write(tmp_path, "orphan.py", """
        import sys
        breakpoint()
        open(sys.argv[1], "w").close()
    """)
    child = scry_run(tmp_path, script, str(marker))
    repl = next_repl(child)
    run_pid = child.pid
    boot = glob.glob(os.path.join(tempfile.gettempdir(), "scry-run-{}-*".format(run_pid)))
    assert len(boot) == 1, boot
    child.kill(signal.SIGKILL)
    child.close()
    # The daemon notices that the terminal is gone and cancels the REPL: the process runs on.
    wait_until(marker.exists, timeout=TIMEOUT, message="the process to run on")
    wait_until(lambda: not alive(repl.pid), timeout=TIMEOUT, message="the process to end")
    # The killed run could not remove its bootstrap directory; the next `scry run` does.
    assert os.path.isdir(boot[0])
    quick = write(tmp_path, "quick.py", "print('quick')")
    again = scry_run(tmp_path, quick)
    again.expect(pexpect.EOF)
    again.close()
    assert again.exitstatus == 0
    assert not os.path.exists(boot[0]), "the stale bootstrap directory is still there"


FUTURES = """
    import concurrent.futures
    import multiprocessing as mp
    import threading

    def task(n):
        in_task = n + 1
        raise ZeroDivisionError("in a futures worker")

    def thread_body():
        in_thread = "thread"
        raise OSError("in a thread")

    if __name__ == "__main__":
        t = threading.Thread(target=thread_body, name="failing-thread")
        t.start()
        t.join()
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as ex:
            ex.submit(task, 41).result()
"""


def test_crash_repls_for_a_thread_a_futures_worker_and_the_parent(daemon, tmp_path):
    script = write(tmp_path, "futures_crash.py", FUTURES)
    child = spawn(["run", "--debug", "--", sys.executable, "-m", "futures_crash"], tmp_path,
                  env={"PYTHONPATH": str(tmp_path)})
    thread = next_repl(child)
    assert thread.kind == "post-mortem" and thread.thread == "failing-thread"
    assert "'thread'" in command(child, "p in_thread", thread.pid)
    child.sendline("c")
    worker = next_repl(child)
    assert worker.pid != thread.pid and "ZeroDivisionError" in worker.before
    assert "42" in command(child, "p in_task", worker.pid)
    child.sendline("c")
    parent = next_repl(child)
    assert parent.pid == thread.pid and "ZeroDivisionError" in parent.before
    child.sendline("q")
    child.expect("ZeroDivisionError: in a futures worker")
    finish(child, 1)


def python314():
    """A CPython 3.14 to break into without preparation: the test's own interpreter when it is
    one, else the matrix's chroot interpreter (another root than the daemon's, as a container)."""
    if sys.version_info >= (3, 14):
        return sys.executable
    matrix = os.path.join(REPO, ".matrix", "bin", "python3.14")
    if not os.access(matrix, os.X_OK):
        pytest.skip("no Python 3.14 to attach to (run scripts/provision-matrix)")
    # The wrapper runs a chroot that lives on the host: from inside another chroot of the
    # matrix (this run's own interpreter, e.g. 3.13) it cannot start. 3.14 is then covered by
    # the host's and 3.14's own runs.
    probe = subprocess.run([matrix, "-c", "pass"], capture_output=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip("the 3.14 chroot cannot be started from this interpreter's root: {}".format(
            probe.stderr.decode(errors="replace").strip()))
    return matrix


def repl_into_unprepared(daemon, tmp_path, python, injector):
    """`scry repl PID` on a process that never loaded scry attaches first, as `scry attach`
    does (placement in the target's root, one-time nonce), then breaks in."""
    script = write(tmp_path, "plain_busy.py", """
        import os
        print("plain", os.getpid(), flush=True)
        counter = 0
        while True:
            counter += 1
    """)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    target = pexpect.spawn(python, [script], env=env, encoding="utf-8", timeout=TIMEOUT)
    try:
        target.expect(r"plain (\d+)")
        pid = int(target.match.group(1))
        assert daemon.process(pid) is None
        child = spawn(["repl", str(pid)], tmp_path)
        child.expect("attaching one")
        repl = next_repl(child)
        assert repl.pid == pid and repl.kind == "break-in"
        assert int(re.search(r"(\d+)", command(child, "p counter", pid)).group(1)) > 0
        child.sendline("c")
        finish(child, 0)
        assert alive(pid)
        # Attached through the daemon's attach: an injected agent, whose placement is gone.
        seen = daemon.process(pid)
        assert seen["state"] == "awake" and seen["origin"] == "injected", seen
        attached = [e for e in daemon.api("GET", "/api/v1/system-events?limit=1000")[1]["system_events"]
                    if e["kind"] == "attached" and e["data"].get("pid") == pid]
        assert attached, "the attach is logged as a system event"
        assert attached[0]["data"]["injector"] == injector, attached
        placed = attached[0]["data"]["placed_in"]
        assert placed.startswith("/tmp/scry-attach-")
        assert not os.path.exists("/proc/{}/root{}".format(pid, placed))
    finally:
        target.kill(signal.SIGKILL)
        target.close()


def test_scry_repl_attaches_an_unprepared_314_process_first(daemon, tmp_path):
    repl_into_unprepared(daemon, tmp_path, python314(), "pep768")


@pytest.mark.skipif(sys.version_info >= (3, 14), reason="older Pythons are attached through gdb")
def test_scry_repl_attaches_an_unprepared_older_process_through_gdb(daemon, tmp_path):
    if not shutil.which("gdb"):
        pytest.skip("gdb is not installed here (the host has it; the chroots do not)")
    repl_into_unprepared(daemon, tmp_path, sys.executable, "gdb")


TWO_AT_BREAKPOINTS = """
    import multiprocessing as mp

    def work(i, both):
        value = i * 10
        both.wait()  # both workers reach their breakpoint
        breakpoint()
        print("worker", i, "continued", flush=True)

    if __name__ == "__main__":
        mp.set_start_method("fork")
        both = mp.Barrier(2)
        workers = [mp.Process(target=work, args=(i, both)) for i in (1, 2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        print("all done", flush=True)
"""

LISTED = re.compile(r"^  ([* ]) pid (\d+) ", re.M)


def listed(child, pid):
    """`%repls`: (the pid holding the terminal, the pids waiting), read at pid's prompt."""
    out = command(child, "%repls", pid)
    assert "REPLs of this terminal" in out, out
    rows = LISTED.findall(out)
    holder = [int(p) for mark, p in rows if mark == "*"]
    return holder, [int(p) for mark, p in rows if mark == " "]


def test_switch_between_processes_waiting_at_breakpoints(daemon, tmp_path):
    script = write(tmp_path, "two.py", TWO_AT_BREAKPOINTS)
    child = scry_run(tmp_path, script)
    first = next_repl(child)
    # The other worker asks for the terminal too: `%repls` shows it waiting (asked again until
    # its request arrived).
    waiting = []
    for _ in range(100):
        holder, waiting = listed(child, first.pid)
        assert holder == [first.pid]
        if waiting:
            break
    assert len(waiting) == 1, "the second worker never waited"
    other = waiting[0]
    first_value = command(child, "p value", first.pid).strip()

    # Switch: the other worker's REPL opens; the first waits, paused at its prompt.
    child.sendline("%switch {}".format(other))
    switched = next_repl(child)
    assert switched.pid == other
    other_value = command(child, "p value", other).strip()
    assert {first_value, other_value} == {"10", "20"}
    assert listed(child, other) == ([other], [first.pid])
    assert alive(first.pid), "the paused worker stays paused, not ended"

    # An unknown pid is refused at the prompt, which stays.
    out = command(child, "%switch 1", other)
    assert "no REPL of process 1 waits" in out, out

    # The other continues; the first gets the terminal back at the prompt it was left at.
    child.sendline("c")
    back = next_repl(child)
    assert back.pid == first.pid
    assert command(child, "p value", first.pid).strip() == first_value
    child.sendline("c")
    child.expect("all done")
    finish(child, 0)
