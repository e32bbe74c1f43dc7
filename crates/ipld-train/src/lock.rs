//! The run directory's lock file (issue 23): one training invocation per directory at a time,
//! so two `--resume` of one run cannot interleave its metrics or checkpoints. The lock names its
//! holder (pid and host); a lock whose process is gone is reported as stale, never broken
//! silently, since on another host (a shared file system) liveness cannot be checked.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::RunError;

/// The lock file's name inside a run directory.
pub const LOCK_FILE: &str = "run.lock";

/// Locks held by this process, released by an immediate exit on a signal too.
static HELD: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A held lock on a run directory; dropping it removes the lock file.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

/// This machine's host name (empty if unknown).
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 performs only the existence and permission check.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

impl RunLock {
    /// Takes the lock on `dir` (which must exist), or says who holds it.
    pub fn acquire(dir: &Path) -> Result<Self, RunError> {
        let path = dir.join(LOCK_FILE);
        let host = host_name();
        let me = std::process::id();
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                writeln!(f, "pid = {me}\nhost = \"{host}\"").map_err(|e| RunError::io(&path, e))?;
                HELD.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(path.clone());
                Ok(Self { path })
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(RunError::invalid(dir, holder_message(&path, &host)))
            }
            Err(e) => Err(RunError::io(&path, e)),
        }
    }
}

/// Why the lock at `path` cannot be taken: its holder, and whether that holder is gone.
fn holder_message(path: &Path, this_host: &str) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let table: toml::Table = text.parse().unwrap_or_default();
    let pid = table.get("pid").and_then(|v| v.as_integer());
    let host = table.get("host").and_then(|v| v.as_str()).unwrap_or("");
    let holder = match pid {
        Some(p) => format!("process {p} on host `{host}`"),
        None => "an unreadable holder".to_string(),
    };
    let stale = match pid {
        Some(p) if host == this_host => i32::try_from(p).is_ok_and(|p| !process_alive(p)),
        _ => false,
    };
    if stale {
        format!(
            "is locked by {holder}, which is no longer running (a stale lock, left by a crash or \
             a kill); if no other run uses this directory, remove {} and try again",
            path.display()
        )
    } else {
        format!(
            "is in use by {holder} (lock file {}); wait for it to finish, or remove the lock if \
             that process is gone",
            path.display()
        )
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|p| p != &self.path);
    }
}

/// Removes every lock this process holds (before an immediate exit, which skips destructors).
pub fn release_all() {
    let held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    for p in held.iter() {
        let _ = fs::remove_file(p);
    }
}
