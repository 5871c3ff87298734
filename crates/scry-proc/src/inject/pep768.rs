//! The native PEP 768 injector for CPython 3.14+: what `sys.remote_exec` does, from Rust.
//!
//! Steps: find `_PyRuntime` (the ELF `.PyRuntime` section of the python binary or libpython
//! mapped in the target, opened through `/proc/PID/root` or `/proc/PID/exe` so containers and
//! chroots work; else a scan of the target's writable file-backed mappings for the `xdebugpy`
//! cookie), read and check the `_Py_DebugOffsets` table at its start (cookie, version,
//! free-threaded flag, sizes), check that remote debugging is enabled, pick the main thread
//! state (the interpreter's `threads_main`, else the oldest thread of its list), write the
//! script path into its `remote_debugger_support`, set `debugger_pending_call`, set the
//! eval-breaker's "please stop" bit, and watch the pending flag drop. On timeout the request
//! is withdrawn (pending flag cleared, path erased) so nothing fires later.
//!
//! Only the *shape* of the offsets table is compiled in (per minor version); every offset
//! *value* is read from the target, because struct layouts move even within a minor version.

use std::path::Path;
use std::time::{Duration, Instant};

use super::memory::Memory;
use super::{InjectError, Injection, Injector};

/// `_Py_Debug_Cookie`.
const COOKIE: &[u8; 8] = b"xdebugpy";
/// `_PY_EVAL_PLEASE_STOP_BIT`: makes the eval loop call `_Py_HandlePending` soon.
const EVAL_PLEASE_STOP_BIT: u64 = 1 << 5;
/// Bytes of `_Py_DebugOffsets` read: the largest table of a supported version (the table is
/// at the start of `_PyRuntime`, which is far larger, so a smaller one is read past safely).
const TABLE_READ: usize = 888;
/// How often the pending flag is polled.
const POLL: Duration = Duration::from_millis(1);
/// Re-arm the eval-breaker bit this often while the request is pending (an exception from a
/// signal handler makes `_Py_HandlePending` return before it runs the script).
const REARM: Duration = Duration::from_millis(100);

/// Which versions this injector attaches to, as said in errors.
pub const SUPPORTED: &str =
    "the native injector supports CPython 3.14 and 3.15 final releases (with or without the GIL); pre-releases and 3.16+ are not supported yet";

/// The PEP 768 injector (no state; one value serves every target).
#[derive(Debug, Default, Clone, Copy)]
pub struct Pep768;

/// A Python version from `PY_VERSION_HEX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PyVersion(pub u64);

impl PyVersion {
    /// (major, minor).
    pub fn minor(&self) -> (u64, u64) {
        ((self.0 >> 24) & 0xff, (self.0 >> 16) & 0xff)
    }
    /// Whether this is a final release (not alpha, beta or candidate).
    pub fn is_final(&self) -> bool {
        (self.0 >> 4) & 0xf == 0xf
    }
}

impl std::fmt::Display for PyVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (major, minor) = self.minor();
        let micro = (self.0 >> 8) & 0xff;
        let level = match (self.0 >> 4) & 0xf {
            0xa => "a",
            0xb => "b",
            0xc => "rc",
            _ => "",
        };
        write!(f, "{major}.{minor}.{micro}")?;
        if !level.is_empty() {
            write!(f, "{level}{}", self.0 & 0xf)?;
        }
        Ok(())
    }
}

/// The interpreter found in a process: where `_PyRuntime` is and what its table says.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// The address of `_PyRuntime` (and of its debug offsets table).
    pub address: u64,
    /// `PY_VERSION_HEX`.
    pub version: PyVersion,
    /// A free-threaded build.
    pub free_threaded: bool,
    /// The file it was found in (as the target sees it), or `memory scan`.
    pub found_in: String,
    table: Vec<u8>,
}

impl Runtime {
    /// The shape of its table, if this injector supports its version.
    fn shape(&self, pid: u32) -> Result<&'static Shape, InjectError> {
        shape_of(self.version).ok_or_else(|| InjectError::UnsupportedVersion {
            pid,
            version: self.version.to_string(),
            injector: "pep768",
            supported: SUPPORTED.into(),
        })
    }

    fn field(&self, offset: usize) -> u64 {
        self.table
            .get(offset..offset + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0)
    }
}

// Positions of fields inside `_Py_DebugOffsets` (every field a u64), the same in 3.14 and 3.15.
const RUNTIME_FINALIZING: usize = 32;
const RUNTIME_INTERPRETERS_HEAD: usize = 40;
const INTERP_SIZE: usize = 48;
const INTERP_THREADS_HEAD: usize = 72;
const INTERP_THREADS_MAIN: usize = 80;
const TSTATE_SIZE: usize = 176;
const TSTATE_NEXT: usize = 192;

/// The positions that moved between minor versions: the table's shape, from CPython's
/// `Include/internal/pycore_debug_offsets.h` of that version (3.15 added fields to
/// `thread_state`, `interpreter_frame`, `gc` and others before `debugger_support`).
#[derive(Debug)]
struct Shape {
    tstate_native_thread_id: usize,
    dbg_eval_breaker: usize,
    dbg_remote_support: usize,
    dbg_enabled: usize,
    dbg_pending: usize,
    dbg_script_path: usize,
    dbg_script_path_size: usize,
}

const SHAPE_314: Shape = Shape {
    tstate_native_thread_id: 224,
    dbg_eval_breaker: 712,
    dbg_remote_support: 720,
    dbg_enabled: 728,
    dbg_pending: 736,
    dbg_script_path: 744,
    dbg_script_path_size: 752,
};

const SHAPE_315: Shape = Shape {
    tstate_native_thread_id: 248,
    dbg_eval_breaker: 840,
    dbg_remote_support: 848,
    dbg_enabled: 856,
    dbg_pending: 864,
    dbg_script_path: 872,
    dbg_script_path_size: 880,
};

/// The table's shape for a version this injector supports (final releases only: the table
/// changes during a version's pre-releases).
fn shape_of(version: PyVersion) -> Option<&'static Shape> {
    if !version.is_final() {
        return None;
    }
    match version.minor() {
        (3, 14) => Some(&SHAPE_314),
        (3, 15) => Some(&SHAPE_315),
        _ => None,
    }
}

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone)]
struct Mapping {
    start: u64,
    end: u64,
    perms: String,
    offset: u64,
    path: String,
}

fn read_maps(pid: u32) -> Result<Vec<Mapping>, InjectError> {
    let path = format!("/proc/{pid}/maps");
    let text = std::fs::read_to_string(&path).map_err(|e| proc_error(pid, &path, e))?;
    Ok(text.lines().filter_map(parse_map_line).collect())
}

fn parse_map_line(line: &str) -> Option<Mapping> {
    let mut parts = line.splitn(6, ' ');
    let range = parts.next()?;
    let perms = parts.next()?.to_owned();
    let offset = u64::from_str_radix(parts.next()?, 16).ok()?;
    let _dev = parts.next()?;
    let _inode = parts.next()?;
    let path = parts.next().unwrap_or("").trim_start().to_owned();
    let (start, end) = range.split_once('-')?;
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        perms,
        offset,
        path,
    })
}

fn proc_error(pid: u32, path: &str, e: std::io::Error) -> InjectError {
    match e.kind() {
        std::io::ErrorKind::NotFound => InjectError::NoSuchProcess { pid },
        std::io::ErrorKind::PermissionDenied => InjectError::PermissionDenied {
            pid,
            cause: super::permission_cause(pid),
        },
        _ => InjectError::Io {
            pid,
            what: format!("cannot read {path}"),
            source: e,
        },
    }
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The Python `major.minor` a mapped file's name suggests (`libpython3.11.so.1.0` → `3.11`).
fn version_from_name(path: &str) -> Option<String> {
    let name = basename(path);
    let rest = name
        .strip_prefix("libpython")
        .or_else(|| name.strip_prefix("python"))?;
    let digits: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let digits = digits.trim_end_matches('.');
    let (major, minor) = digits.split_once('.')?;
    (!major.is_empty() && !minor.is_empty()).then(|| format!("{major}.{minor}"))
}

/// Finds `_PyRuntime` in `pid` and reads its debug offsets table (any version that has one,
/// i.e. 3.13+). Errors: no such process, permission, not Python (no table; for an older
/// Python the error is [`InjectError::UnsupportedVersion`] with the version from its file
/// names).
pub fn find_runtime(pid: u32) -> Result<Runtime, InjectError> {
    let maps = read_maps(pid)?;
    let mem = Memory::of(pid);
    let exe_path = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();

    // Files whose name says python (the interpreter binary, libpython), once each, in the
    // order they appear.
    let mut candidates: Vec<&str> = Vec::new();
    for m in &maps {
        if m.path.starts_with('/') && basename(&m.path).contains("python") {
            let p = m.path.as_str();
            if !candidates.contains(&p) {
                candidates.push(p);
            }
        }
    }
    for path in &candidates {
        match section_runtime(pid, &maps, path, path == &exe_path, &mem) {
            Ok(Some(rt)) => return Ok(rt),
            Ok(None) => {}
            Err(e @ (InjectError::PermissionDenied { .. } | InjectError::Exited { .. })) => {
                return Err(e)
            }
            Err(e) => tracing::debug!(target: "proc", pid, path, "no _PyRuntime here: {e}"),
        }
    }
    // Deleted or replaced files, or a binary not named python: scan writable file-backed
    // mappings for the cookie.
    if let Some(rt) = scan_for_cookie(pid, &maps, &mem)? {
        return Ok(rt);
    }
    if let Some(version) = candidates.iter().find_map(|p| version_from_name(p)) {
        return Err(InjectError::UnsupportedVersion {
            pid,
            version,
            injector: "pep768",
            supported: SUPPORTED.into(),
        });
    }
    Err(InjectError::NotPython {
        pid,
        exe: if exe_path.is_empty() {
            "?".into()
        } else {
            exe_path
        },
    })
}

fn section_runtime(
    pid: u32,
    maps: &[Mapping],
    path: &str,
    is_exe: bool,
    mem: &Memory,
) -> Result<Option<Runtime>, InjectError> {
    use object::{Object, ObjectSection};
    // Through the target's root (a container's or chroot's file), or its exe link, which
    // names the mapped inode even when the file was replaced since.
    let open_path = if is_exe {
        format!("/proc/{pid}/exe")
    } else {
        format!("/proc/{pid}/root{path}")
    };
    let data = std::fs::read(&open_path).map_err(|e| proc_error(pid, &open_path, e))?;
    let file = object::File::parse(&*data).map_err(|e| InjectError::Io {
        pid,
        what: format!("cannot parse {open_path} as ELF"),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
    })?;
    let Some(section) = file.section_by_name(".PyRuntime") else {
        return Ok(None);
    };
    let Some((file_offset, _)) = section.file_range() else {
        return Ok(None);
    };
    // The mapping of this file that holds the section's bytes gives its address.
    let Some(map) = maps.iter().find(|m| {
        m.path == path && m.offset <= file_offset && file_offset < m.offset + (m.end - m.start)
    }) else {
        return Ok(None);
    };
    let address = map.start + (file_offset - map.offset);
    read_table(pid, mem, address, path.to_owned()).map(Some)
}

fn read_table(
    pid: u32,
    mem: &Memory,
    address: u64,
    found_in: String,
) -> Result<Runtime, InjectError> {
    let mut header = [0u8; 24];
    mem.read(address, &mut header)?;
    if &header[..8] != COOKIE {
        return Err(InjectError::BadLayout {
            pid,
            what: format!("no xdebugpy cookie at {address:#x} in {found_in}"),
        });
    }
    let version = PyVersion(u64::from_le_bytes(
        header[8..16].try_into().unwrap_or([0; 8]),
    ));
    let free_threaded = u64::from_le_bytes(header[16..24].try_into().unwrap_or([0; 8])) != 0;
    let mut table = vec![0u8; TABLE_READ];
    mem.read(address, &mut table)?;
    Ok(Runtime {
        address,
        version,
        free_threaded,
        found_in,
        table,
    })
}

fn scan_for_cookie(
    pid: u32,
    maps: &[Mapping],
    mem: &Memory,
) -> Result<Option<Runtime>, InjectError> {
    const MAX_REGION: u64 = 64 << 20;
    for m in maps {
        if !m.perms.starts_with("rw") || !m.path.starts_with('/') || m.end - m.start > MAX_REGION {
            continue;
        }
        let mut buf = vec![0u8; (m.end - m.start) as usize];
        match mem.read(m.start, &mut buf) {
            Ok(()) => {}
            Err(e @ (InjectError::PermissionDenied { .. } | InjectError::Exited { .. })) => {
                return Err(e)
            }
            Err(_) => continue,
        }
        for off in (0..buf.len().saturating_sub(24)).step_by(8) {
            if &buf[off..off + 8] == COOKIE {
                let v = u64::from_le_bytes(buf[off + 8..off + 16].try_into().unwrap_or([0; 8]));
                if (0x030D_0000..0x0400_0000).contains(&v) {
                    let address = m.start + off as u64;
                    return read_table(pid, mem, address, format!("memory scan of {}", m.path))
                        .map(Some);
                }
            }
        }
    }
    Ok(None)
}

/// The thread state the script will run in, and where its fields are.
struct Target {
    tstate: u64,
    native_thread_id: u64,
    pending: u64,
    path: u64,
    eval_breaker: u64,
}

fn check_layout(pid: u32, rt: &Runtime) -> Result<usize, InjectError> {
    let shape = rt.shape(pid)?;
    let path_size = rt.field(shape.dbg_script_path_size) as usize;
    let tsize = rt.field(TSTATE_SIZE);
    let isize = rt.field(INTERP_SIZE);
    let support = rt.field(shape.dbg_remote_support);
    let bad = |what: String| Err(InjectError::BadLayout { pid, what });
    if !(16..=4096).contains(&path_size) {
        return bad(format!("debugger_script_path_size is {path_size}"));
    }
    if rt.field(shape.dbg_eval_breaker) + 8 > tsize
        || support + rt.field(shape.dbg_pending) + 4 > tsize
        || support + rt.field(shape.dbg_script_path) + path_size as u64 > tsize
    {
        return bad(format!(
            "debugger fields outside a {tsize}-byte thread state"
        ));
    }
    if rt.field(shape.dbg_enabled) + 4 > isize || rt.field(INTERP_THREADS_MAIN) + 8 > isize {
        return bad(format!("fields outside a {isize}-byte interpreter state"));
    }
    Ok(path_size)
}

fn pick_thread(pid: u32, rt: &Runtime, mem: &Memory) -> Result<Target, InjectError> {
    let shape = rt.shape(pid)?;
    if rt.field(RUNTIME_FINALIZING) != 0 && mem.u64(rt.address + rt.field(RUNTIME_FINALIZING))? != 0
    {
        return Err(InjectError::NotRunning {
            pid,
            what: "the interpreter is shutting down".into(),
        });
    }
    let interp = mem.u64(rt.address + rt.field(RUNTIME_INTERPRETERS_HEAD))?;
    if interp == 0 {
        return Err(InjectError::NotRunning {
            pid,
            what: "no interpreter yet (still starting, or already finalized)".into(),
        });
    }
    if mem.i32(interp + rt.field(shape.dbg_enabled))? != 1 {
        return Err(InjectError::RemoteDebugDisabled { pid });
    }
    let mut tstate = mem.u64(interp + rt.field(INTERP_THREADS_MAIN))?;
    if tstate == 0 {
        // Embedders that never ran `Py_RunMain`: the oldest thread (the list's tail).
        let mut t = mem.u64(interp + rt.field(INTERP_THREADS_HEAD))?;
        let mut steps = 0;
        while t != 0 && steps < 100_000 {
            tstate = t;
            t = mem.u64(t + rt.field(TSTATE_NEXT))?;
            steps += 1;
        }
    }
    if tstate == 0 {
        return Err(InjectError::NotRunning {
            pid,
            what: "the interpreter has no thread".into(),
        });
    }
    let support = tstate + rt.field(shape.dbg_remote_support);
    Ok(Target {
        tstate,
        native_thread_id: mem.u64(tstate + rt.field(shape.tstate_native_thread_id))?,
        pending: support + rt.field(shape.dbg_pending),
        path: support + rt.field(shape.dbg_script_path),
        eval_breaker: tstate + rt.field(shape.dbg_eval_breaker),
    })
}

/// Version and build of the interpreter in `pid`, and whether the native injector can attach
/// to it (`Ok`), without writing anything.
pub fn check(pid: u32) -> Result<Runtime, InjectError> {
    if !Path::new(&format!("/proc/{pid}")).exists() {
        return Err(InjectError::NoSuchProcess { pid });
    }
    let rt = find_runtime(pid)?;
    check_layout(pid, &rt)?;
    pick_thread(pid, &rt, &Memory::of(pid))?;
    Ok(rt)
}

fn arm(mem: &Memory, t: &Target) -> Result<(), InjectError> {
    let breaker = mem.u64(t.eval_breaker)?;
    mem.write(
        t.eval_breaker,
        &(breaker | EVAL_PLEASE_STOP_BIT).to_le_bytes(),
    )
}

/// Withdraws a pending request: clears the flag, then erases the path.
fn disarm(mem: &Memory, t: &Target) {
    let _ = mem.write(t.pending, &0i32.to_le_bytes());
    let _ = mem.write(t.path, &[0u8]);
}

/// Whether `pid` is gone or a zombie (so any failure reading it means it exited).
fn gone(pid: u32) -> bool {
    crate::info(pid).map_or(true, |p| p.state == 'Z' || p.state == 'X')
}

impl Injector for Pep768 {
    fn name(&self) -> &'static str {
        "pep768"
    }

    fn inject(&self, pid: u32, script: &Path, timeout: Duration) -> Result<Injection, InjectError> {
        let existed = Path::new(&format!("/proc/{pid}")).exists();
        self.inject_once(pid, script, timeout).map_err(|e| {
            if existed && !matches!(e, InjectError::Exited { .. }) && gone(pid) {
                InjectError::Exited { pid }
            } else {
                e
            }
        })
    }
}

impl Pep768 {
    fn inject_once(
        &self,
        pid: u32,
        script: &Path,
        timeout: Duration,
    ) -> Result<Injection, InjectError> {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return Err(InjectError::NoSuchProcess { pid });
        }
        let rt = find_runtime(pid)?;
        let path_size = check_layout(pid, &rt)?;
        let mem = Memory::of(pid);
        let target = pick_thread(pid, &rt, &mem)?;
        let path = script.as_os_str().as_encoded_bytes();
        if path.len() >= path_size {
            return Err(InjectError::PathTooLong {
                path: script.to_owned(),
                len: path.len(),
                max: path_size - 1,
            });
        }
        if mem.i32(target.pending)? != 0 {
            return Err(InjectError::Busy { pid });
        }
        let mut bytes = path.to_vec();
        bytes.push(0);
        tracing::debug!(target: "proc", pid, tstate = format!("{:#x}", target.tstate), "PEP 768: writing the request");
        let started = Instant::now();
        let result = (|| {
            mem.write(target.path, &bytes)?;
            mem.write(target.pending, &1i32.to_le_bytes())?;
            arm(&mem, &target)?;
            let mut last_arm = Instant::now();
            loop {
                if mem.i32(target.pending)? == 0 {
                    return Ok(started.elapsed());
                }
                if started.elapsed() >= timeout {
                    return Err(InjectError::Timeout {
                        pid,
                        waited: started.elapsed(),
                        blocked_in: blocked_in(pid, target.native_thread_id),
                    });
                }
                if last_arm.elapsed() >= REARM {
                    arm(&mem, &target)?;
                    last_arm = Instant::now();
                }
                std::thread::sleep(POLL);
            }
        })();
        match result {
            Ok(after) => Ok(Injection {
                injector: "pep768",
                python_version: rt.version.to_string(),
                free_threaded: rt.free_threaded,
                picked_up_after: after,
                thread_id: target.native_thread_id,
            }),
            Err(e) => {
                disarm(&mem, &target);
                Err(e)
            }
        }
    }
}

/// What the main thread waits in, for the timeout message.
fn blocked_in(pid: u32, _native_tid: u64) -> String {
    match crate::wchan(pid) {
        Some(w) => format!("the kernel, {w}"),
        None => "native code or a system call".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_print_like_python() {
        assert_eq!(PyVersion(0x030E_00F0).to_string(), "3.14.0");
        assert_eq!(PyVersion(0x030E_00C1).to_string(), "3.14.0rc1");
        assert!(PyVersion(0x030E_02F0).is_final());
        assert!(!PyVersion(0x030F_00A1).is_final());
    }

    #[test]
    fn version_from_mapped_names() {
        assert_eq!(
            version_from_name("/usr/bin/python3.11").as_deref(),
            Some("3.11")
        );
        assert_eq!(
            version_from_name("/usr/lib/libpython3.13t.so.1.0").as_deref(),
            Some("3.13")
        );
        assert_eq!(version_from_name("/usr/bin/python3"), None);
        assert_eq!(version_from_name("/usr/bin/sleep"), None);
    }

    #[test]
    fn parses_maps_lines() {
        let m = parse_map_line(
            "7f00-7f80 rw-p 00001000 08:01 1234                       /usr/bin/python3.14",
        )
        .expect("line");
        assert_eq!((m.start, m.end, m.offset), (0x7f00, 0x7f80, 0x1000));
        assert_eq!(m.path, "/usr/bin/python3.14");
        let anon = parse_map_line("7f00-7f80 rw-p 00000000 00:00 0").expect("anon");
        assert_eq!(anon.path, "");
    }

    #[test]
    fn this_process_is_not_python() {
        let err = find_runtime(std::process::id()).err();
        assert!(
            matches!(err, Some(InjectError::NotPython { .. })),
            "{err:?}"
        );
    }
}
