//! Reading and writing another process's memory: `process_vm_readv`/`process_vm_writev`, and
//! `/proc/PID/mem` where the kernel lacks them (ENOSYS). Errors are already [`InjectError`]s:
//! EPERM/EACCES become [`InjectError::PermissionDenied`] with the cause diagnosed, ESRCH
//! becomes [`InjectError::Exited`].

use std::io::{IoSlice, IoSliceMut};
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::sys::uio::{process_vm_readv, process_vm_writev, RemoteIoVec};
use nix::unistd::Pid;

use super::{permission_cause, InjectError};

/// The memory of one process.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pid: u32,
}

impl Memory {
    /// The memory of `pid` (nothing is opened until used).
    pub fn of(pid: u32) -> Memory {
        Memory { pid }
    }

    /// Reads `buf.len()` bytes at `addr`.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), InjectError> {
        let len = buf.len();
        let remote = [RemoteIoVec {
            base: addr as usize,
            len,
        }];
        let mut local = [IoSliceMut::new(buf)];
        match process_vm_readv(Pid::from_raw(self.pid as i32), &mut local, &remote) {
            Ok(n) if n == len => Ok(()),
            Ok(n) => Err(self.short(addr, n, len, "read")),
            Err(Errno::ENOSYS) => self.mem_file(false).and_then(|f| {
                f.read_exact_at(buf, addr)
                    .map_err(|e| self.io(addr, "read", e))
            }),
            Err(e) => Err(self.errno(addr, "read", e)),
        }
    }

    /// Writes `data` at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), InjectError> {
        let remote = [RemoteIoVec {
            base: addr as usize,
            len: data.len(),
        }];
        let local = [IoSlice::new(data)];
        match process_vm_writev(Pid::from_raw(self.pid as i32), &local, &remote) {
            Ok(n) if n == data.len() => Ok(()),
            Ok(n) => Err(self.short(addr, n, data.len(), "write")),
            Err(Errno::ENOSYS) => self.mem_file(true).and_then(|f| {
                f.write_all_at(data, addr)
                    .map_err(|e| self.io(addr, "write", e))
            }),
            Err(e) => Err(self.errno(addr, "write", e)),
        }
    }

    /// A little-endian u64 at `addr`.
    pub fn u64(&self, addr: u64) -> Result<u64, InjectError> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// A little-endian i32 at `addr`.
    pub fn i32(&self, addr: u64) -> Result<i32, InjectError> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b)?;
        Ok(i32::from_le_bytes(b))
    }

    fn mem_file(&self, write: bool) -> Result<std::fs::File, InjectError> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(format!("/proc/{}/mem", self.pid))
            .map_err(|e| self.io(0, "open /proc/PID/mem", e))
    }

    fn short(&self, addr: u64, n: usize, want: usize, what: &str) -> InjectError {
        if !crate::alive(self.pid, None) {
            return InjectError::Exited { pid: self.pid };
        }
        InjectError::Io {
            pid: self.pid,
            what: format!("partial {what} at {addr:#x} ({n} of {want} bytes)"),
            source: std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
        }
    }

    fn errno(&self, addr: u64, what: &str, e: Errno) -> InjectError {
        match e {
            Errno::EPERM | Errno::EACCES => InjectError::PermissionDenied {
                pid: self.pid,
                cause: permission_cause(self.pid),
            },
            Errno::ESRCH => InjectError::Exited { pid: self.pid },
            other => {
                if !crate::alive(self.pid, None) {
                    return InjectError::Exited { pid: self.pid };
                }
                InjectError::Io {
                    pid: self.pid,
                    what: format!("cannot {what} its memory at {addr:#x}"),
                    source: std::io::Error::from_raw_os_error(other as i32),
                }
            }
        }
    }

    fn io(&self, addr: u64, what: &str, e: std::io::Error) -> InjectError {
        match e.raw_os_error() {
            Some(code) => self.errno(addr, what, Errno::from_raw(code)),
            None => InjectError::Io {
                pid: self.pid,
                what: format!("cannot {what} its memory at {addr:#x}"),
                source: e,
            },
        }
    }
}
