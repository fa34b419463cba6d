//! The decision log: every policy decision the reconciler asked for — which peering,
//! which policy (name and digest), which input (digest), what it decided, what became
//! of it, how long it took and the fuel it used — so an operator can later answer "why
//! did this peering get that CIDR?".
//!
//! Kept twice: a bounded ring in memory for `GET /v1/decisions`, and an append-only
//! JSON-lines file in the state directory (`decisions.jsonl`, rotated to
//! `decisions.jsonl.1` past [`ROTATE_BYTES`]) that survives restarts: at start the ring
//! is filled from the file's last entries. Writing the file never fails a change: an
//! unwritable log is reported in the daemon's log and counted.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tracing::warn;
use utoipa::ToSchema;

use remapd_model::model::{Mapping, Strategy};

/// Entries kept in memory.
pub const RING: usize = 1000;
/// Size past which the file is rotated (one previous file is kept).
pub const ROTATE_BYTES: u64 = 8 << 20;

/// What became of a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum DecisionOutcome {
    /// Valid, compiled, and in force: the change (or resync) it belonged to was applied.
    Applied,
    /// Valid, but the change it belonged to was refused or rolled back (`reason`).
    NotApplied,
    /// Asked for by a dry run (`POST /v1/policies/{name}/evaluate`); nothing applied.
    DryRun,
    /// The decision broke a validation rule or could not be compiled (`reason`).
    Rejected,
    /// The policy refused, trapped, ran out of fuel or time, or is missing (`reason`).
    PolicyError,
}

/// One decision.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DecisionRecord {
    /// When it was made (RFC 3339, UTC).
    pub time: String,
    /// The peering (`-dry-run` for dry runs).
    pub peering: String,
    /// The policy's name.
    pub policy: String,
    /// SHA-256 of the policy component (empty when the policy is missing).
    pub policy_sha256: String,
    /// SHA-256 of the policy's input (JSON), so equal inputs can be recognised.
    pub input_sha256: String,
    /// The strategy decided (absent when the policy gave none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// The views decided.
    #[serde(default)]
    pub mappings: Vec<Mapping>,
    /// What became of it.
    pub outcome: DecisionOutcome,
    /// Why it was rejected, failed or not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How long the call took, in microseconds.
    pub duration_us: u64,
    /// Fuel the call used.
    pub fuel_used: u64,
}

impl DecisionRecord {
    /// Now, as RFC 3339 UTC with milliseconds.
    pub fn now() -> String {
        humantime::format_rfc3339_millis(SystemTime::now()).to_string()
    }
}

/// Upper bounds (seconds) of the decision-duration histogram's buckets.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
];

/// Durations of the decisions made since start: sum (s), count, count per bucket (the
/// last one past every bound).
#[derive(Clone, Debug, Default)]
pub struct DurationHistogram {
    /// Sum of the durations, in seconds.
    pub sum: f64,
    /// How many.
    pub count: u64,
    /// Per bucket of [`DURATION_BUCKETS`] (not cumulative), then the overflow.
    pub buckets: [u64; DURATION_BUCKETS.len() + 1],
}

/// The ring and the file.
pub struct DecisionLog {
    ring: Mutex<VecDeque<DecisionRecord>>,
    path: Option<PathBuf>,
    file: Mutex<Option<File>>,
    write_errors: AtomicU64,
    durations: Mutex<DurationHistogram>,
}

impl DecisionLog {
    /// A log kept only in memory (tests, dry tools).
    pub fn in_memory() -> Self {
        Self {
            ring: Mutex::new(VecDeque::new()),
            path: None,
            file: Mutex::new(None),
            write_errors: AtomicU64::new(0),
            durations: Mutex::new(DurationHistogram::default()),
        }
    }

    /// A log appending to `path`; the ring starts with the file's last [`RING`] entries
    /// (unreadable lines are skipped: the file is a record, not state).
    pub fn open(path: &Path) -> Self {
        let mut ring = VecDeque::new();
        for file in [rotated(path), path.to_path_buf()] {
            let Ok(f) = File::open(&file) else { continue };
            for line in BufReader::new(f).lines().map_while(Result::ok) {
                if let Ok(record) = serde_json::from_str::<DecisionRecord>(&line) {
                    push_bounded(&mut ring, record);
                }
            }
        }
        Self {
            ring: Mutex::new(ring),
            path: Some(path.to_path_buf()),
            file: Mutex::new(None),
            write_errors: AtomicU64::new(0),
            durations: Mutex::new(DurationHistogram::default()),
        }
    }

    /// Records `records`, oldest first.
    pub fn append(&self, records: Vec<DecisionRecord>) {
        if records.is_empty() {
            return;
        }
        if let Some(path) = &self.path
            && let Err(e) = self.write(path, &records)
        {
            self.write_errors.fetch_add(1, Ordering::Relaxed);
            warn!(path = %path.display(), error = %e, "writing the decision log");
        }
        if let Ok(mut h) = self.durations.lock() {
            // Calls that returned a decision (a failed call's time is not known).
            for r in records.iter().filter(|r| r.strategy.is_some()) {
                let seconds = r.duration_us as f64 / 1e6;
                let bucket = DURATION_BUCKETS
                    .iter()
                    .position(|bound| seconds <= *bound)
                    .unwrap_or(DURATION_BUCKETS.len());
                h.buckets[bucket] += 1;
                h.sum += seconds;
                h.count += 1;
            }
        }
        if let Ok(mut ring) = self.ring.lock() {
            for record in records {
                push_bounded(&mut ring, record);
            }
        }
    }

    fn write(&self, path: &Path, records: &[DecisionRecord]) -> std::io::Result<()> {
        let mut file = self
            .file
            .lock()
            .map_err(|_| std::io::Error::other("decision log lock poisoned"))?;
        if file.is_none() {
            *file = Some(open_append(path)?);
        }
        if let Some(f) = file.as_ref()
            && f.metadata()?.len() > ROTATE_BYTES
        {
            *file = None;
            std::fs::rename(path, rotated(path))?;
            *file = Some(open_append(path)?);
        }
        let mut lines = Vec::new();
        for record in records {
            serde_json::to_writer(&mut lines, record)?;
            lines.push(b'\n');
        }
        match file.as_mut() {
            Some(f) => f.write_all(&lines),
            None => Err(std::io::Error::other("decision log not open")),
        }
    }

    /// The newest `limit` records (of `peering`, when given), newest first.
    pub fn recent(&self, peering: Option<&str>, limit: usize) -> Vec<DecisionRecord> {
        let Ok(ring) = self.ring.lock() else {
            return Vec::new();
        };
        ring.iter()
            .rev()
            .filter(|r| peering.is_none_or(|p| r.peering == p))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Durations of the decisions made since this daemon started.
    pub fn durations(&self) -> DurationHistogram {
        self.durations.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// How many appends could not be written to the file.
    pub fn write_errors(&self) -> u64 {
        self.write_errors.load(Ordering::Relaxed)
    }
}

/// Appends `record`, dropping the oldest beyond [`RING`].
fn push_bounded(ring: &mut VecDeque<DecisionRecord>, record: DecisionRecord) {
    if ring.len() == RING {
        ring.pop_front();
    }
    ring.push_back(record);
}

fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(peering: &str, n: u64) -> DecisionRecord {
        DecisionRecord {
            time: DecisionRecord::now(),
            peering: peering.into(),
            policy: "auto".into(),
            policy_sha256: "ab".into(),
            input_sha256: "cd".into(),
            strategy: Some(Strategy::Split),
            mappings: Vec::new(),
            outcome: DecisionOutcome::Applied,
            reason: None,
            duration_us: n,
            fuel_used: n,
        }
    }

    #[test]
    fn the_file_survives_a_restart_and_rotates() {
        let dir = std::env::temp_dir().join(format!("remapd-decisions-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("decisions.jsonl");
        let log = DecisionLog::open(&path);
        log.append(vec![record("a", 1), record("b", 2)]);
        log.append(vec![record("a", 3)]);
        assert_eq!(
            log.recent(Some("a"), 10)
                .iter()
                .map(|r| r.fuel_used)
                .collect::<Vec<_>>(),
            [3, 1]
        );
        assert_eq!(log.recent(None, 1)[0].fuel_used, 3);
        drop(log);
        let again = DecisionLog::open(&path);
        assert_eq!(again.recent(None, 10).len(), 3, "read back after a restart");
        // Past the size limit the file moves aside, and both are read at start.
        std::fs::write(&path, vec![b'\n'; ROTATE_BYTES as usize + 1]).unwrap();
        let big = DecisionLog::open(&path);
        big.append(vec![record("c", 4)]);
        assert!(rotated(&path).exists());
        assert!(std::fs::metadata(&path).unwrap().len() < 1024);
        assert_eq!(DecisionLog::open(&path).recent(None, 10)[0].peering, "c");
        assert_eq!(big.write_errors(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_ring_is_bounded() {
        let log = DecisionLog::in_memory();
        for i in 0..(RING as u64 + 10) {
            log.append(vec![record("x", i)]);
        }
        let all = log.recent(None, usize::MAX);
        assert_eq!(all.len(), RING);
        assert_eq!(all[0].fuel_used, RING as u64 + 9);
        let h = log.durations();
        assert_eq!(h.count, RING as u64 + 10);
        assert_eq!(h.buckets.iter().sum::<u64>(), h.count);
        // 0..=100 µs in the first bucket, 101..=250 in the second.
        assert_eq!((h.buckets[0], h.buckets[1]), (101, 150));
    }
}
