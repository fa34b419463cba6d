//! Process supervision for userspace WireGuard: is a pid alive (and ours to reap), is it
//! the program we started, signals, pid files, log tails and log bounds.

#![allow(clippy::wildcard_imports)]

use super::*;

/// Whether `pid` is in the calling thread's network namespace (threads can differ, so
/// `thread-self`); `None` when either cannot be read.
pub(super) fn same_netns(pid: u32) -> Option<bool> {
    let ours = fs::metadata("/proc/thread-self/ns/net").ok()?;
    let theirs = fs::metadata(format!("/proc/{pid}/ns/net")).ok()?;
    Some(ours.dev() == theirs.dev() && ours.ino() == theirs.ino())
}

/// Whether `pid` runs (a zombie does not). A zombie child of this process named like
/// `program` whose `Child` another owner dropped is reaped here, and counts as running
/// until it can be: a multi-threaded process's leader shows `Z` while its other threads
/// still exit, and a zombie given up on then would stay in the process table for good.
/// Any other zombie is left to its owner.
pub(super) fn process_alive(pid: u32, program: &Path) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The command name may contain anything, including ") "; the state follows the last.
    let mut fields = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace();
    let state = fields.next();
    let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
    match state {
        Some("Z" | "X") | None => {
            if ppid == Some(std::process::id())
                && comm_matches(pid, program)
                && let Ok(raw) = i32::try_from(pid)
            {
                // `StillAlive`: the thread group has not finished exiting; poll again.
                return matches!(
                    waitpid(Pid::from_raw(raw), Some(WaitPidFlag::WNOHANG)),
                    Ok(WaitStatus::StillAlive)
                );
            }
            false
        }
        Some(_) => true,
    }
}

/// `/proc/<pid>/comm` (kept by zombies, unlike the command line) against the program's
/// file name, which the kernel truncates to 15 bytes.
pub(super) fn comm_matches(pid: u32, program: &Path) -> bool {
    let Some(name) = program.file_name() else {
        return false;
    };
    let name = name.as_bytes();
    let name = &name[..name.len().min(15)];
    fs::read(format!("/proc/{pid}/comm")).is_ok_and(|c| c.strip_suffix(b"\n").unwrap_or(&c) == name)
}

/// Running `<program> -f rmd-…` processes (any namespace), by interface and pid: what
/// remapd starts, found by their command line.
pub(super) fn orphans(program: &Path) -> Vec<(String, u32)> {
    let Some(want) = program.file_name() else {
        return Vec::new();
    };
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if let [argv0, flag, interface, ..] = args.as_slice()
            && Path::new(OsStr::from_bytes(argv0)).file_name() == Some(want)
            && *flag == b"-f"
            && interface.starts_with(b"rmd-")
            && let Ok(interface) = std::str::from_utf8(interface)
            && process_alive(pid, program)
        {
            out.push((interface.to_owned(), pid));
        }
    }
    out
}

/// Sends `signal` to `pid`, if it still exists.
pub(super) fn signal(pid: u32, signal: Signal) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(raw), signal);
    }
}

/// Writes a pid file atomically.
pub(super) fn write_pid_file(path: &Path, pid: u32) -> io::Result<()> {
    // Written aside and renamed, so a reader never sees half a pid.
    let tmp = path.with_extension("pid.tmp");
    fs::write(&tmp, format!("{pid}\n"))?;
    fs::rename(&tmp, path)
}

/// Removes a file; a missing one is fine.
pub(super) fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The size past which a tunnel's log is moved aside (see [`bound_log`]).
pub(super) const LOG_MAX: u64 = 1 << 20;

/// Keeps a log that a running process appends to (it was opened with `O_APPEND`) under
/// `max` bytes: past it, the content is copied to `<log>.1`, replacing the previous copy,
/// and the log is truncated in place. The process keeps its descriptor, and with
/// `O_APPEND` its next write lands at the new end, so nothing is restarted and at most
/// `2 * max` bytes are kept per tunnel. Lines written between the copy and the truncation
/// are lost. Returns whether the log was rotated; a missing log is fine.
pub(super) fn bound_log(path: &Path, max: u64) -> io::Result<bool> {
    let len = match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => m.len(),
        Ok(_) => return Err(io::Error::other("not a regular file")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= max {
        return Ok(false);
    }
    let mut rotated = path.as_os_str().to_owned();
    rotated.push(".1");
    fs::copy(path, &rotated)?;
    fs::OpenOptions::new().write(true).open(path)?.set_len(0)?;
    Ok(true)
}

/// The end of a log, for error messages.
pub(super) fn log_tail(path: &Path) -> String {
    const TAIL: u64 = 400;
    let read = || -> io::Result<String> {
        let mut f = fs::File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(TAIL)))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf).trim().to_owned())
    };
    match read() {
        Ok(s) if s.is_empty() => format!("{} is empty", path.display()),
        Ok(s) => s,
        Err(e) => format!("reading {}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn a_log_past_its_bound_moves_aside_and_the_writer_goes_on_at_its_start() {
        let dir = std::env::temp_dir().join(format!("remapd-log-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("wgt0.log");
        // As the tunnel process holds it: opened once, appending.
        let mut writer = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        writer.write_all(&[b'a'; 100]).unwrap();
        assert!(!bound_log(&path, 100).unwrap(), "at the bound: kept");
        writer.write_all(b"b").unwrap();
        assert!(bound_log(&path, 100).unwrap());
        writer.write_all(b"after\n").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"after\n");
        let old = fs::read(dir.join("wgt0.log.1")).unwrap();
        assert_eq!(old.len(), 101);
        assert!(old.ends_with(b"ab"));
        assert!(!bound_log(&dir.join("missing.log"), 100).unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }
}
