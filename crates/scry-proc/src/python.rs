//! Whether a process runs Python, recognised from its memory image rather than its name: the
//! ELF files it maps (its executable and any `libpython`) are opened through `/proc/PID/exe`
//! and `/proc/PID/root` (so a process in a container or chroot is read in its own root), and
//! an interpreter is one that holds the runtime state: a `.PyRuntime` section (3.13+, whose
//! initial bytes are the `_Py_DebugOffsets` header: the `xdebugpy` cookie, `PY_VERSION_HEX`
//! and the free-threaded flag) or an exported `_PyRuntime` symbol (3.7+). The version comes
//! from that header, else from the exported `Py_Version` constant (3.11+), else from the
//! libpython / python file name. When the process's memory is readable, the cookie and version
//! are also read at the relocated `_PyRuntime` address, i.e. from the live process.
//!
//! Also here: [`container_of`] (another root or PID namespace than ours) and [`role_of`]
//! (reload supervisors and workers, multiprocessing helpers), used by `scry ps --all` and
//! `scry ps --tree`.
//!
//! Not for: attaching or writing to a process (that is the injector's job), nor reading
//! stacks ([`crate::stacks`]).

use std::collections::HashMap;
use std::os::unix::fs::{FileExt, MetadataExt};

use object::read::elf::{ElfFile64, ProgramHeader};
use object::{Object, ObjectSection, ObjectSymbol};
use serde::Serialize;

/// The `_Py_DebugOffsets` cookie that starts `_PyRuntime` from 3.13 on.
pub const DEBUG_COOKIE: &[u8; 8] = b"xdebugpy";

/// How a process was recognised as Python.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Evidence {
    /// A mapped ELF file has a `.PyRuntime` section (CPython 3.13+).
    RuntimeSection,
    /// A mapped ELF file exports `_PyRuntime`.
    RuntimeSymbol,
    /// A `libpython` is mapped but its ELF file could not be read.
    LibpythonMapping,
}

/// What was learnt of a Python process.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PythonInfo {
    /// `3.11` or `3.14t` (free-threaded builds get a `t`).
    pub short: String,
    /// The full version when known (`3.11.2`, `3.14.0rc3`).
    pub version: Option<String>,
    /// `PY_VERSION_HEX` when known.
    pub version_hex: Option<u64>,
    /// Whether the build is free-threaded (no GIL).
    pub free_threaded: bool,
    /// How it was recognised.
    pub evidence: Evidence,
    /// The file (as the target names it) holding `_PyRuntime`: the python binary or libpython.
    pub runtime_file: String,
    /// The address of `_PyRuntime` in the process, when the file could be read.
    pub runtime_address: Option<u64>,
    /// Whether the cookie/version was confirmed by reading the process's memory.
    pub memory_checked: bool,
}

impl PythonInfo {
    /// `(major, minor)`, from `PY_VERSION_HEX` when it was read, else from the short version
    /// (`3.14t` is `(3, 14)`); `None` when neither says.
    pub fn major_minor(&self) -> Option<(u64, u64)> {
        self.version_hex
            .map(|h| ((h >> 24) & 0xff, (h >> 16) & 0xff))
            .or_else(|| {
                let (a, b) = self.short.trim_end_matches('t').split_once('.')?;
                Some((a.parse().ok()?, b.parse().ok()?))
            })
    }
}

/// Another root or PID namespace than the reader's: what a container (or chroot) looks like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Container {
    /// `/proc/PID/root` is not our root.
    pub other_root: bool,
    /// The process is in another PID namespace.
    pub other_pid_namespace: bool,
    /// Where its root is, as we see it (`/proc/PID/root` resolved), when it is another root.
    pub root: Option<String>,
}

/// What a process is in a reloading server or a multiprocessing program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Role {
    /// A server started with auto-reload: it restarts its worker when files change.
    ReloadSupervisor {
        /// `uvicorn`, `gunicorn`, `flask`, `django`, `hypercorn`.
        tool: String,
    },
    /// The worker of a reload supervisor (replaced by a new pid on every reload).
    ReloadWorker {
        /// The supervisor's tool.
        tool: String,
    },
    /// `multiprocessing`'s resource tracker.
    ResourceTracker,
    /// `multiprocessing`'s fork server.
    Forkserver,
    /// A child started by `multiprocessing` with the spawn or forkserver method.
    SpawnChild,
    /// debugpy's adapter (`python .../debugpy/adapter`, `-m debugpy.adapter`): started by
    /// `debugpy.listen()` (as `scry debug` does), it talks DAP and runs no user code.
    DebugpyAdapter,
    /// debugpy's launcher (`python .../debugpy/launcher`): it starts the debugged program as
    /// its child and runs no user code itself.
    DebugpyLauncher,
}

impl Role {
    /// A short label for tables: `reload-supervisor:uvicorn`, `mp-spawn-child`, ...
    pub fn label(&self) -> String {
        match self {
            Role::ReloadSupervisor { tool } => format!("reload-supervisor:{tool}"),
            Role::ReloadWorker { tool } => format!("reload-worker:{tool}"),
            Role::ResourceTracker => "mp-resource-tracker".into(),
            Role::Forkserver => "mp-forkserver".into(),
            Role::SpawnChild => "mp-spawn-child".into(),
            Role::DebugpyAdapter => "debugpy-adapter".into(),
            Role::DebugpyLauncher => "debugpy-launcher".into(),
        }
    }

    /// A helper of a tool that runs no user code (multiprocessing's resource tracker and fork
    /// server, debugpy's adapter and launcher): nothing to observe there, and attaching to it
    /// only gets in the tool's way.
    pub fn is_helper(&self) -> bool {
        matches!(
            self,
            Role::ResourceTracker | Role::Forkserver | Role::DebugpyAdapter | Role::DebugpyLauncher
        )
    }
}

/// debugpy's helper that `cmdline` runs, if any: its adapter or launcher, given as the script
/// (`python /x/debugpy/adapter ...`, the package directory run as `__main__`) or as a module
/// (`python -m debugpy.adapter`). Only the interpreter's own arguments are looked at (those
/// before the script or module), so a program that merely mentions debugpy is not one, nor is
/// `python -m debugpy --listen 5678 app.py` (the user's program, with debugpy inside).
fn debugpy_helper(cmdline: &[String]) -> Option<Role> {
    let role = |name: &str| match name {
        "adapter" => Some(Role::DebugpyAdapter),
        "launcher" => Some(Role::DebugpyLauncher),
        _ => None,
    };
    let mut args = cmdline.iter().skip(1);
    while let Some(arg) = args.next() {
        if arg == "-m" {
            return args
                .next()
                .and_then(|m| m.strip_prefix("debugpy."))
                .and_then(role);
        }
        if let Some(m) = arg.strip_prefix("-m") {
            return m.strip_prefix("debugpy.").and_then(role);
        }
        match arg.as_str() {
            // `-c CODE` runs no script; `-X opt`, `-W arg` take a value.
            "-c" => return None,
            "-X" | "-W" => {
                args.next();
                continue;
            }
            a if a.starts_with('-') => continue,
            _ => {}
        }
        // The script: `.../debugpy/adapter`, `.../debugpy/adapter/`, `.../debugpy/adapter/__main__.py`.
        let path = arg.trim_end_matches('/');
        let path = path.strip_suffix("/__main__.py").unwrap_or(path);
        let mut parts = path.rsplit('/');
        let (Some(name), Some(package)) = (parts.next(), parts.next()) else {
            return None;
        };
        return if package == "debugpy" {
            role(name)
        } else {
            None
        };
    }
    None
}

/// What one ELF file says about Python, cached per file (device, inode, size, mtime).
#[derive(Debug, Clone, PartialEq)]
struct ElfFacts {
    /// `.PyRuntime` section or `_PyRuntime` symbol virtual address (unrelocated).
    runtime_vaddr: u64,
    evidence: Evidence,
    /// First PT_LOAD's vaddr rounded down to its alignment: subtracted to relocate.
    load_base: u64,
    /// `(version_hex, free_threaded)` from the section's initial bytes.
    header: Option<(u64, bool)>,
    /// `Py_Version` read from the file.
    py_version: Option<u64>,
}

type FileKey = (u64, u64, u64, i64);

/// Detects Python processes; remembers what each ELF file said, so that a host-wide scan
/// parses every distinct binary once.
#[derive(Debug, Default)]
pub struct Detector {
    files: HashMap<FileKey, Option<ElfFacts>>,
}

/// One file-backed mapping of `/proc/PID/maps`.
struct Mapping {
    start: u64,
    offset: u64,
    inode: u64,
    path: String,
}

fn mappings(pid: u32) -> Option<Vec<Mapping>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let mut out = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(_perms), Some(offset), Some(_dev), Some(inode)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        let path: Vec<&str> = fields.collect();
        let path = path.join(" ");
        if !path.starts_with('/') {
            continue;
        }
        let Some(start) = range
            .split('-')
            .next()
            .and_then(|s| u64::from_str_radix(s, 16).ok())
        else {
            continue;
        };
        let Ok(offset) = u64::from_str_radix(offset, 16) else {
            continue;
        };
        out.push(Mapping {
            start,
            offset,
            inode: inode.parse().unwrap_or(0),
            path,
        });
    }
    Some(out)
}

/// A version from a file name: `python3.11` -> (3, 11, false), `libpython3.13t.so.1.0` ->
/// (3, 13, true). `python3.11-config` and extension modules are not interpreters.
pub fn version_in_name(name: &str) -> Option<(u32, u32, bool)> {
    let rest = name
        .strip_prefix("libpython")
        .or_else(|| name.strip_prefix("python"))?;
    let (major, tail) = rest.split_once('.')?;
    if major != "3" {
        return None;
    }
    let minor: String = tail.chars().take_while(char::is_ascii_digit).collect();
    let minor_n: u32 = minor.parse().ok()?;
    let after = &tail[minor.len()..];
    let t = after.starts_with('t');
    let ok =
        after.is_empty() || after == "t" || after.starts_with(".so") || after.starts_with("t.so");
    ok.then_some((3, minor_n, t))
}

/// `3.11.2`, `3.14.0rc3` from a `PY_VERSION_HEX`.
pub fn version_from_hex(hex: u64) -> String {
    let major = (hex >> 24) & 0xff;
    let minor = (hex >> 16) & 0xff;
    let micro = (hex >> 8) & 0xff;
    let level = (hex >> 4) & 0xf;
    let serial = hex & 0xf;
    let tag = match level {
        0xa => format!("a{serial}"),
        0xb => format!("b{serial}"),
        0xc => format!("rc{serial}"),
        _ => String::new(),
    };
    format!("{major}.{minor}.{micro}{tag}")
}

/// A plausible CPython 3 `PY_VERSION_HEX`.
fn plausible(hex: u64) -> bool {
    (hex >> 24) == 3 && ((hex >> 16) & 0xff) < 64 && matches!((hex >> 4) & 0xf, 0xa..=0xc | 0xf)
}

fn parse_elf(file: &std::fs::File) -> Option<ElfFacts> {
    let cache = object::ReadCache::new(file);
    let elf = ElfFile64::<object::Endianness, _>::parse(&cache).ok()?;
    let endian = elf.endian();
    let load_base = elf
        .elf_program_headers()
        .iter()
        .find(|ph| ph.p_type(endian) == object::elf::PT_LOAD)
        .map(|ph| {
            let align = ph.p_align(endian).max(1);
            ph.p_vaddr(endian) - ph.p_vaddr(endian) % align
        })
        .unwrap_or(0);
    let read_at = |vaddr: u64, len: u64| -> Option<Vec<u8>> {
        elf.sections().find_map(|s| {
            let (start, size) = (s.address(), s.size());
            if vaddr < start || vaddr + len > start + size {
                return None;
            }
            let (off, fsize) = s.file_range()?;
            if vaddr + len > start + fsize {
                return None;
            }
            let mut buf = vec![0u8; usize::try_from(len).ok()?];
            file.read_exact_at(&mut buf, off + (vaddr - start)).ok()?;
            Some(buf)
        })
    };
    let u64_at = |vaddr: u64| -> Option<u64> {
        let b = read_at(vaddr, 8)?;
        Some(u64::from_le_bytes(b.try_into().ok()?))
    };
    let py_version_of = || -> Option<u64> {
        let sym = elf
            .dynamic_symbols()
            .find(|s| s.name() == Ok("Py_Version"))?;
        // `const unsigned long`: the low 32 bits hold the value on little-endian hosts.
        u64_at(sym.address())
            .map(|v| v & 0xffff_ffff)
            .filter(|&v| plausible(v))
    };
    if let Some(section) = elf.section_by_name(".PyRuntime") {
        let header = read_at(section.address(), 24).and_then(|b| {
            if &b[..8] != DEBUG_COOKIE {
                return None;
            }
            let hex = u64::from_le_bytes(b[8..16].try_into().ok()?);
            let ft = u64::from_le_bytes(b[16..24].try_into().ok()?);
            plausible(hex).then_some((hex, ft != 0))
        });
        return Some(ElfFacts {
            runtime_vaddr: section.address(),
            evidence: Evidence::RuntimeSection,
            load_base,
            header,
            py_version: py_version_of(),
        });
    }
    // Most binaries are not Python: look for the name in `.dynstr` before walking `.dynsym`.
    let dynstr = elf.section_by_name(".dynstr")?;
    let (off, size) = dynstr.file_range()?;
    let mut strings = vec![0u8; usize::try_from(size).ok()?];
    file.read_exact_at(&mut strings, off).ok()?;
    if !strings.windows(12).any(|w| w == b"\0_PyRuntime\0") {
        return None;
    }
    let sym = elf
        .dynamic_symbols()
        .find(|s| s.name() == Ok("_PyRuntime") && s.address() != 0)?;
    Some(ElfFacts {
        runtime_vaddr: sym.address(),
        evidence: Evidence::RuntimeSymbol,
        load_base,
        header: None,
        py_version: py_version_of(),
    })
}

impl Detector {
    /// A detector with an empty cache.
    pub fn new() -> Detector {
        Detector::default()
    }

    /// What the first of `paths` that is the mapped file (same inode, when known) says.
    fn facts(&mut self, paths: &[String], inode: u64) -> Option<ElfFacts> {
        let (file, meta) = paths.iter().find_map(|p| {
            let file = std::fs::File::open(p).ok()?;
            let meta = file.metadata().ok()?;
            (meta.is_file() && (inode == 0 || meta.ino() == inode)).then_some((file, meta))
        })?;
        let key = (meta.dev(), meta.ino(), meta.size(), meta.mtime());
        if let Some(f) = self.files.get(&key) {
            return f.clone();
        }
        let facts = parse_elf(&file);
        self.files.insert(key, facts.clone());
        facts
    }

    /// Whether `pid` runs Python and what it is; `None` for other processes and for
    /// processes whose mappings cannot be read (another user's, a kernel thread, gone).
    pub fn detect(&mut self, pid: u32) -> Option<PythonInfo> {
        let maps = mappings(pid)?;
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|p| {
                let s = p.to_string_lossy().into_owned();
                s.strip_suffix(" (deleted)").map(str::to_owned).unwrap_or(s)
            });
        // Candidates: the executable first, then libpython (and python*) mappings.
        let mut candidates: Vec<String> = Vec::new();
        if let Some(e) = &exe {
            candidates.push(e.clone());
        }
        for m in &maps {
            let name = m.path.rsplit('/').next().unwrap_or(&m.path);
            if (name.starts_with("libpython") || name.starts_with("python"))
                && !candidates.contains(&m.path)
            {
                candidates.push(m.path.clone());
            }
        }
        let mut libpython_seen: Option<String> = None;
        for path in &candidates {
            let clean = path.strip_suffix(" (deleted)").unwrap_or(path);
            let first = maps
                .iter()
                .filter(|m| m.path == *path || m.path.strip_suffix(" (deleted)") == Some(clean))
                .min_by_key(|m| (m.offset, m.start));
            let Some((base, inode)) = first.map(|m| (m.start, m.inode)) else {
                continue;
            };
            let name = clean.rsplit('/').next().unwrap_or(clean).to_owned();
            if name.starts_with("libpython") {
                libpython_seen.get_or_insert(clean.to_owned());
            }
            // The executable through /proc/PID/exe (the mapped inode even when replaced). Other
            // files: `maps` names them from our root when we can reach them (a chroot), else as
            // the target's mount namespace does (a container): try both, keep the mapped inode.
            let open_paths = if Some(clean) == exe.as_deref() {
                vec![format!("/proc/{pid}/exe")]
            } else {
                vec![clean.to_owned(), format!("/proc/{pid}/root{clean}")]
            };
            let Some(facts) = self.facts(&open_paths, inode) else {
                continue;
            };
            let address = base.wrapping_add(facts.runtime_vaddr.wrapping_sub(facts.load_base));
            let mut memory_checked = false;
            let mut header = facts.header;
            if facts.evidence == Evidence::RuntimeSection {
                if let Some(live) = read_header(pid, address) {
                    header = Some(live);
                    memory_checked = true;
                }
            }
            let from_name = version_in_name(&name);
            let hex = header.map(|h| h.0).or(facts.py_version);
            let free_threaded = header
                .map(|h| h.1)
                .unwrap_or_else(|| from_name.is_some_and(|v| v.2));
            let (major, minor) = match (hex, from_name) {
                (Some(h), _) => ((h >> 24) & 0xff, (h >> 16) & 0xff),
                (None, Some((a, b, _))) => (u64::from(a), u64::from(b)),
                (None, None) => (0, 0),
            };
            let short = if major == 0 {
                "?".to_owned()
            } else {
                format!("{major}.{minor}{}", if free_threaded { "t" } else { "" })
            };
            return Some(PythonInfo {
                short,
                version: hex.map(version_from_hex),
                version_hex: hex,
                free_threaded,
                evidence: facts.evidence,
                runtime_file: clean.to_owned(),
                runtime_address: Some(address),
                memory_checked,
            });
        }
        let lib = libpython_seen?;
        let name = lib.rsplit('/').next().unwrap_or(&lib);
        let v = version_in_name(name);
        Some(PythonInfo {
            short: v
                .map(|(a, b, t)| format!("{a}.{b}{}", if t { "t" } else { "" }))
                .unwrap_or_else(|| "?".into()),
            version: None,
            version_hex: None,
            free_threaded: v.is_some_and(|v| v.2),
            evidence: Evidence::LibpythonMapping,
            runtime_file: lib.clone(),
            runtime_address: None,
            memory_checked: false,
        })
    }
}

/// Reads the `_Py_DebugOffsets` header at `address` in the live process: `(version_hex,
/// free_threaded)` when the cookie is there.
fn read_header(pid: u32, address: u64) -> Option<(u64, bool)> {
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut buf = [0u8; 24];
    mem.read_exact_at(&mut buf, address).ok()?;
    if &buf[..8] != DEBUG_COOKIE {
        return None;
    }
    let hex = u64::from_le_bytes(buf[8..16].try_into().ok()?);
    let ft = u64::from_le_bytes(buf[16..24].try_into().ok()?);
    plausible(hex).then_some((hex, ft != 0))
}

/// Whether `pid` lives in another root or PID namespace than this process; `None` when it
/// does not (or when that cannot be read, e.g. another user's process).
pub fn container_of(pid: u32) -> Option<Container> {
    let ours = std::fs::metadata("/proc/self/root").ok()?;
    let theirs = std::fs::metadata(format!("/proc/{pid}/root")).ok()?;
    let other_root = ours.dev() != theirs.dev() || ours.ino() != theirs.ino();
    let ns = |p: String| std::fs::read_link(p).ok();
    let other_pid_namespace = match (
        ns("/proc/self/ns/pid".into()),
        ns(format!("/proc/{pid}/ns/pid")),
    ) {
        (Some(a), Some(b)) => a != b,
        _ => false,
    };
    if !other_root && !other_pid_namespace {
        return None;
    }
    let root = other_root
        .then(|| std::fs::read_link(format!("/proc/{pid}/root")).ok())
        .flatten()
        .map(|p| p.to_string_lossy().into_owned());
    Some(Container {
        other_root,
        other_pid_namespace,
        root,
    })
}

/// The server tool a command line runs with auto-reload on, if any.
fn reload_tool(cmdline: &[String]) -> Option<String> {
    let base = |s: &String| s.rsplit('/').next().unwrap_or(s).to_owned();
    let tools = ["uvicorn", "gunicorn", "flask", "hypercorn"];
    let tool = cmdline
        .iter()
        .take(4)
        .map(base)
        .find(|b| tools.contains(&b.as_str()))
        .or_else(|| {
            cmdline
                .iter()
                .any(|a| a == "runserver")
                .then(|| "django".to_owned())
        })?;
    let reload = if tool == "django" {
        !cmdline.iter().any(|a| a == "--noreload")
    } else {
        cmdline
            .iter()
            .any(|a| a.starts_with("--reload") || (tool == "flask" && a == "--debug"))
    };
    reload.then_some(tool)
}

/// What a process is in a reloading server or a multiprocessing program, from its command
/// line and, when its parent runs Python, the parent's. Only meaningful for Python processes.
pub fn role_of(cmdline: &[String], python_parent_cmdline: Option<&[String]>) -> Option<Role> {
    if let Some(helper) = debugpy_helper(cmdline) {
        return Some(helper);
    }
    let joined = cmdline.join(" ");
    if joined.contains("multiprocessing.resource_tracker") {
        return Some(Role::ResourceTracker);
    }
    if joined.contains("multiprocessing.forkserver") {
        return Some(Role::Forkserver);
    }
    if let Some(tool) = reload_tool(cmdline) {
        // Werkzeug's and Django's reloaders re-run the same command line as the worker.
        let same_as_parent = python_parent_cmdline.is_some_and(|p| p == cmdline);
        return Some(if same_as_parent {
            Role::ReloadWorker { tool }
        } else {
            Role::ReloadSupervisor { tool }
        });
    }
    if let Some(tool) = python_parent_cmdline.and_then(reload_tool) {
        return Some(Role::ReloadWorker { tool });
    }
    if joined.contains("multiprocessing.spawn") || joined.contains("--multiprocessing-fork") {
        return Some(Role::SpawnChild);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn versions_from_file_names() {
        assert_eq!(version_in_name("python3.11"), Some((3, 11, false)));
        assert_eq!(
            version_in_name("libpython3.13t.so.1.0"),
            Some((3, 13, true))
        );
        assert_eq!(version_in_name("libpython3.9.so"), Some((3, 9, false)));
        assert_eq!(version_in_name("python3.11-config"), None);
        assert_eq!(version_in_name("python2.7"), None);
        assert_eq!(version_in_name("python3"), None);
    }

    #[test]
    fn versions_from_hex() {
        assert_eq!(version_from_hex(0x030B02F0), "3.11.2");
        assert_eq!(version_from_hex(0x030E00C3), "3.14.0rc3");
        assert!(plausible(0x030E00F0));
        assert!(!plausible(0x0200_0000));
    }

    #[test]
    fn debugpys_helpers_are_recognised_from_their_command_lines() {
        // As `debugpy.listen()` starts its adapter (the package directory as the script).
        let adapter = argv("/usr/bin/python3.14 /usr/lib/python3/dist-packages/debugpy/adapter --for-server 49495 --host 127.0.0.1 --port 5678 --server-access-token 82");
        assert_eq!(role_of(&adapter, None), Some(Role::DebugpyAdapter));
        assert!(Role::DebugpyAdapter.is_helper());
        assert_eq!(
            role_of(&argv("python3 -m debugpy.adapter --port 5678"), None),
            Some(Role::DebugpyAdapter)
        );
        assert_eq!(
            role_of(
                &argv("python3 -X frozen_modules=off -W ignore -mdebugpy.adapter"),
                None
            ),
            Some(Role::DebugpyAdapter)
        );
        assert_eq!(
            role_of(
                &argv("/venv/bin/python /venv/lib/python3.11/site-packages/debugpy/launcher/ 40000 -- app.py"),
                None
            ),
            Some(Role::DebugpyLauncher)
        );
        assert_eq!(
            role_of(
                &argv("python /x/debugpy/launcher/__main__.py 1 -- app.py"),
                None
            )
            .map(|r| r.label()),
            Some("debugpy-launcher".to_owned())
        );
        // The user's program, with debugpy loaded in it, is not a helper.
        assert_eq!(
            role_of(&argv("python3 -m debugpy --listen 5678 app.py"), None),
            None
        );
        assert_eq!(role_of(&argv("python3 app.py debugpy/adapter"), None), None);
        assert_eq!(
            role_of(&argv("python3 /srv/my_adapter/adapter"), None),
            None
        );
        assert!(!Role::SpawnChild.is_helper());
        assert!(Role::ResourceTracker.is_helper());
    }

    #[test]
    fn roles_from_command_lines() {
        let sup = argv("/usr/bin/python3 /venv/bin/uvicorn app:app --reload");
        assert_eq!(
            role_of(&sup, None),
            Some(Role::ReloadSupervisor {
                tool: "uvicorn".into()
            })
        );
        let worker = argv("/usr/bin/python3 -c from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5, pipe_handle=7) --multiprocessing-fork");
        assert_eq!(
            role_of(&worker, Some(&sup)),
            Some(Role::ReloadWorker {
                tool: "uvicorn".into()
            })
        );
        assert_eq!(role_of(&worker, None), Some(Role::SpawnChild));
        assert_eq!(
            role_of(
                &argv("python3 -c from multiprocessing.resource_tracker import main;main(4)"),
                None
            ),
            Some(Role::ResourceTracker)
        );
        assert_eq!(
            role_of(&argv("python manage.py runserver"), None),
            Some(Role::ReloadSupervisor {
                tool: "django".into()
            })
        );
        assert_eq!(
            role_of(&argv("python manage.py runserver --noreload"), None),
            None
        );
        let django = argv("python manage.py runserver");
        assert_eq!(
            role_of(&django, Some(&django)),
            Some(Role::ReloadWorker {
                tool: "django".into()
            })
        );
        let tracker =
            argv("python3 -B -c from multiprocessing.resource_tracker import main;main(3)");
        assert_eq!(role_of(&tracker, Some(&sup)), Some(Role::ResourceTracker));
        assert_eq!(role_of(&argv("gunicorn app:app -w 4"), None), None);
        assert_eq!(
            role_of(&argv("flask run --debug"), None).map(|r| r.label()),
            Some("reload-supervisor:flask".into())
        );
    }

    #[test]
    fn detects_the_host_python_and_not_sleep() {
        let Ok(mut py) = std::process::Command::new("python3")
            .args(["-c", "import time; time.sleep(30)"])
            .spawn()
        else {
            return; // no python3 on this machine: nothing to recognise
        };
        let mut sleep = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let mut detector = Detector::new();
        // The interpreter may still be loading: wait for its libraries to be mapped.
        let mut info = None;
        for _ in 0..200 {
            info = detector.detect(py.id());
            if info.as_ref().is_some_and(|i| i.short != "?") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let info = info.expect("python3 is recognised");
        assert!(info.short.starts_with("3."), "{info:?}");
        assert!(info.runtime_address.is_some());
        assert_eq!(detector.detect(sleep.id()), None);
        assert_eq!(container_of(sleep.id()), None);
        let _ = py.kill();
        let _ = py.wait();
        let _ = sleep.kill();
        let _ = sleep.wait();
    }
}
