//! Placement in a target's root (issue 12, items 3 and 4), replayed by the attacker against a
//! root daemon:
//!
//! - **The race.** The attacker's own Python process is the target; the attacker's racer
//!   (inotify through ctypes) swaps every new entry of every placement directory of its uid for
//!   a symlink to a sacrificial root-owned 0600 file (a directory is moved aside first). Before
//!   issue 12 the daemon `chown`ed by path after writing, and two attaches gave the attacker
//!   that file. Rounds: 10 real `scry attach` (the host's Python 3.11 through gdb, about a
//!   second each, as a 3.14 target would need the matrix's chroot, which only root can enter),
//!   then 250 rounds that drive the daemon's own placement directly
//!   (`scry_daemon::service::attach::Placement::create` and its drop, which is everything an attach does
//!   in the target's root: directory, agent package, socket, bootstrap, removal) against the
//!   same target and racer. The sacrificial
//!   file keeps its owner, mode and content, and nothing scry placed is owned by root. Then,
//!   racer stopped, the same unprivileged target attaches for real (the files are created by
//!   its own user, so it can read them).
//! - **The mount namespace.** The attacker's process runs under `unshare -Urm` with `/etc`
//!   bind-mounted on its `/tmp`: `scry attach` fails saying that the target's user cannot create
//!   a directory in its `/tmp`, and nothing appears in `/etc`.

#![allow(clippy::print_stderr)] // the race's figures are worth seeing in the output

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use super::{attacker, skipped, Attacker};
use crate::support::{text, Ctx, Proc};

/// The racer: watches `/tmp` for placement directories it may watch (its own uid's), and swaps
/// every new entry inside them (and their subdirectories) for a symlink to argv[1]. Stops when
/// argv[2] exists; prints the number of swaps.
const RACER: &str = r#"
import ctypes, os, select, struct, sys
target, stop = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
IN_CREATE, IN_MOVED_TO = 0x100, 0x80
fd = libc.inotify_init1(0)
if fd < 0:
    sys.exit("inotify_init1 failed")
watches = {}
def watch(path):
    wd = libc.inotify_add_watch(fd, path.encode(), IN_CREATE | IN_MOVED_TO)
    if wd >= 0:
        watches[wd] = path
watch("/tmp")
swaps = 0
print("ready", flush=True)
while not os.path.exists(stop):
    if not select.select([fd], [], [], 0.1)[0]:
        continue
    buf = os.read(fd, 1 << 16)
    i = 0
    while i < len(buf):
        wd, mask, cookie, n = struct.unpack_from("iIII", buf, i)
        name = buf[i + 16:i + 16 + n].rstrip(b"\0").decode("utf-8", "replace")
        i += 16 + n
        base = watches.get(wd)
        if base is None or name.endswith(".moved"):
            continue
        path = os.path.join(base, name)
        if base == "/tmp":
            if name.startswith("scry-attach-"):
                watch(path)  # fails (EACCES) for other users' placements
            continue
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                os.rename(path, path + ".moved")
                watch(path + ".moved")
            elif not os.path.islink(path):
                os.unlink(path)
            else:
                continue
            os.symlink(target, path)
            swaps += 1
        except OSError:
            pass
print("swaps", swaps, flush=True)
"#;

/// Real `scry attach` rounds with the racer at work (gdb: about a second each).
const REAL_ROUNDS: usize = 10;
/// Rounds that drive the daemon's placement directly.
const PLACEMENT_ROUNDS: usize = 250;

/// A sleeping Python loop (the attacker's own target).
const TARGET: &str =
    "import sys, time\nprint('ready', flush=True)\nwhile True:\n    time.sleep(0.02)\n";

/// A child of the attacker whose stdout is read line by line; killed on drop.
struct Lines {
    proc: Proc,
    out: BufReader<std::process::ChildStdout>,
}

impl Lines {
    fn spawn(mut cmd: std::process::Command, label: &str) -> Lines {
        let mut child: Child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {label}: {e}"));
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        Lines {
            proc: Proc {
                child,
                label: label.into(),
            },
            out,
        }
    }

    /// The next line starting with `prefix` (blocks; the child prints it or exits).
    fn line(&mut self, prefix: &str) -> String {
        let mut l = String::new();
        loop {
            l.clear();
            let n = self.out.read_line(&mut l).expect("read");
            assert!(
                n > 0,
                "{} exited before printing `{prefix}`",
                self.proc.label
            );
            if l.starts_with(prefix) {
                return l.trim().to_owned();
            }
        }
    }
}

/// A root-owned 0600 file with known content in a root-only (0700) directory.
struct Sacrificial {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Sacrificial {
    fn new() -> Sacrificial {
        let dir = tempfile::Builder::new()
            .prefix("scry-sacrificial-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        let path = dir.path().join("root-secret");
        std::fs::write(&path, b"root's secret\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        Sacrificial { _dir: dir, path }
    }

    fn assert_untouched(&self, when: &str) {
        let m = std::fs::symlink_metadata(&self.path).expect("stat");
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (0, 0, 0o600),
            "{when}: the sacrificial file changed owner or mode"
        );
        assert_eq!(
            std::fs::read(&self.path).expect("read"),
            b"root's secret\n",
            "{when}"
        );
    }
}

/// The attacker's placement leftovers in `/tmp` (moved directories, symlinks): every entry
/// under them, with its owner. Removed by the caller.
fn leftovers(uid: u32) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, u32)>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if let Ok(m) = std::fs::symlink_metadata(&p) {
                out.push((p.clone(), m.uid()));
                if m.is_dir() {
                    walk(&p, out);
                }
            }
        }
    }
    for e in std::fs::read_dir("/tmp").expect("/tmp").flatten() {
        let p = e.path();
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if e.file_name().to_string_lossy().starts_with("scry-attach-") && m.uid() == uid {
            out.push((p.clone(), m.uid()));
            walk(&p, &mut out);
        }
    }
    out
}

fn remove_leftovers(uid: u32) {
    for e in std::fs::read_dir("/tmp").expect("/tmp").flatten() {
        let p = e.path();
        if e.file_name().to_string_lossy().starts_with("scry-attach-")
            && std::fs::symlink_metadata(&p).is_ok_and(|m| m.uid() == uid)
        {
            // remove_dir_all does not follow symlinks.
            let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
        }
    }
}

fn attacker_python(attacker: &Attacker, code: &str, args: &[&str], label: &str) -> Lines {
    let mut cmd = attacker.command("python3");
    cmd.arg("-c").arg(code).args(args);
    Lines::spawn(cmd, label)
}

#[test]
fn placement_race_never_hands_a_root_file_to_the_target() {
    let Some(attacker) = attacker() else { return };
    if which("gdb").is_none() {
        skipped::<()>("no gdb: the real attaches to the host's Python 3.11 need it");
        return;
    }
    let secret = Sacrificial::new();
    let stop = tempfile::tempdir().expect("tempdir");
    let stop_file = stop.path().join("stop");
    std::fs::set_permissions(stop.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let mut target = attacker_python(&attacker, TARGET, &[], "attacker's target");
    target.line("ready");
    let pid = target.proc.pid();
    let mut racer = attacker_python(
        &attacker,
        RACER,
        &[&secret.path.to_string_lossy(), &stop_file.to_string_lossy()],
        "racer",
    );
    racer.line("ready");

    let mut ctx = Ctx::new();
    ctx.start_daemon();
    // Real attaches with the racer at work: whatever their outcome, the file stays root's.
    for round in 0..REAL_ROUNDS {
        let out = ctx.scry(&["attach", &pid.to_string(), "--timeout", "10", "--json"]);
        secret.assert_untouched(&format!("after real attach {round}: {}", text(&out)));
        eprintln!("real attach {round} with the racer: {}", text(&out).trim());
        if out.status.success() {
            let _ = ctx.scry(&["detach", &pid.to_string()]);
        }
    }
    // The daemon's placement itself, many times, against the same target and racer.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _in_runtime = rt.enter();
    let (mut placed, mut refused) = (0, 0);
    for round in 0..PLACEMENT_ROUNDS {
        match scry_daemon::service::attach::Placement::create(pid, "n-race", 0.0) {
            Ok(p) => {
                placed += 1;
                drop(p);
            }
            // The racer broke it: a placement refuses what it did not create.
            Err(_) => refused += 1,
        }
        if round % 25 == 0 {
            secret.assert_untouched(&format!("after placement round {round}"));
        }
    }
    std::fs::write(&stop_file, b"").expect("stop");
    let swaps: u64 = racer
        .line("swaps")
        .trim_start_matches("swaps ")
        .parse()
        .expect("swap count");
    secret.assert_untouched("after every round");
    let left = leftovers(attacker.uid);
    let roots: Vec<_> = left.iter().filter(|(_, uid)| *uid == 0).collect();
    remove_leftovers(attacker.uid);
    assert!(
        roots.is_empty(),
        "scry left root-owned entries in the attacker's placements: {roots:?}"
    );
    eprintln!(
        "placement race: {placed} placements completed, {refused} refused, {swaps} entries swapped by the racer"
    );
    assert!(
        swaps > 0,
        "the racer never swapped anything: the race was not run"
    );

    // Racer gone: the unprivileged target attaches for real (its own user made the files).
    let out = ctx.scry(&["attach", &pid.to_string(), "--timeout", "10", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["already_attached"], false, "{report}");
    let placed_in = report["placed_in"].as_str().expect("placed_in");
    assert!(
        std::fs::symlink_metadata(placed_in).is_err(),
        "the placement {placed_in} is removed once the agent is connected"
    );
    secret.assert_untouched("after a successful attach");
    drop(racer);
    drop(target);
}

#[test]
fn a_target_cannot_make_scry_write_through_its_mount_namespace() {
    let Some(attacker) = attacker() else { return };
    if which("gdb").is_none() {
        skipped::<()>("no gdb: scry attaches to the host's Python 3.11 through it");
        return;
    }
    let probe = attacker
        .command("unshare")
        .args(["-Urm", "true"])
        .output()
        .expect("unshare");
    if !probe.status.success() {
        skipped::<()>(&format!(
            "the attacker cannot create a user namespace here: {}",
            text(&probe)
        ));
        return;
    }
    let before = etc_entries(attacker.uid);
    let mut cmd = attacker.command("unshare");
    cmd.args([
        "-Urm",
        "sh",
        "-c",
        "mount --bind /etc /tmp && exec python3 -c \"$0\"",
    ])
    .arg(TARGET);
    let mut target = Lines::spawn(cmd, "attacker's namespaced target");
    target.line("ready");
    let pid = target.proc.pid();

    let mut ctx = Ctx::new();
    ctx.start_daemon();
    let out = ctx.scry(&["attach", &pid.to_string(), "--timeout", "10"]);
    let all = text(&out);
    eprintln!("attach through a mount namespace: {}", all.trim());
    assert!(!out.status.success(), "the attach must fail: {all}");
    let uid = format!("runs as uid {}", attacker.uid);
    for want in [
        uid.as_str(),
        "cannot create a directory in its /tmp",
        "scry places files only where the target itself could",
        "hint:",
    ] {
        assert!(all.contains(want), "missing `{want}` in: {all}");
    }
    let placed: Vec<_> = std::fs::read_dir("/etc")
        .expect("/etc")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("scry-attach-"))
        .collect();
    assert!(placed.is_empty(), "scry placed in /etc: {placed:?}");
    assert_eq!(
        etc_entries(attacker.uid),
        before,
        "entries of the attacker in /etc"
    );
    drop(target);
}

/// Entries under /etc owned by `uid` (`find -xdev -uid`).
fn etc_entries(uid: u32) -> String {
    let out = std::process::Command::new("find")
        .args(["/etc", "-xdev", "-uid", &uid.to_string()])
        .output()
        .expect("find");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}
