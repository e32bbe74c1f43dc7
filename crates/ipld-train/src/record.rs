//! The run record `run.json` (issue 23): the fingerprint of the data the run trains on, and one
//! entry per invocation (version, git commit, command line, host, threads, start and end times,
//! steps, outcome), so a result can be traced to the code and the data that made it. A resume
//! whose data differ from the fingerprint is refused unless `--accept-data-change`.

use std::path::Path;
use std::time::SystemTime;

use ipld_data::{Dataset, InMemoryDataset, write_atomically};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::RunConfig;
use crate::error::RunError;

/// The record's file name inside a run directory.
pub const RECORD_FILE: &str = "run.json";

/// What identifies the training data: its source, shape and the SHA-256 of its values as loaded
/// (f32, little-endian, row-major, before `data.normalize`), so an edited file, a different
/// subset or a changed generator is caught whatever the format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFingerprint {
    /// The data's source: a file or folder, or the synthetic generator.
    pub source: String,
    /// Training points.
    pub points: usize,
    /// Values per point.
    pub dim: usize,
    /// SHA-256 of the values, hex.
    pub sha256: String,
}

impl DataFingerprint {
    /// The fingerprint of `data` loaded for `cfg`.
    pub fn of(cfg: &RunConfig, data: &InMemoryDataset) -> Self {
        let source = match (&cfg.data.images, cfg.data.path.as_str()) {
            (Some(img), _) => img.path().display().to_string(),
            (None, "") => format!("synthetic {}", cfg.data.name()),
            (None, p) => p.to_string(),
        };
        let mut h = Sha256::new();
        for v in data.as_slice() {
            h.update(v.to_le_bytes());
        }
        let sha256 = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Self {
            source,
            points: data.len(),
            dim: data.dim(),
            sha256,
        }
    }
}

/// One invocation of a command on the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invocation {
    /// The full command line.
    pub command: Vec<String>,
    /// The ipld-train version.
    pub version: String,
    /// The git commit the binary was built from (None outside a checkout); `+dirty` when the
    /// work tree had changes.
    pub git_commit: Option<String>,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Compute threads.
    pub threads: usize,
    /// The particle kernels' instruction set (`IPLD_ISA`, else the widest the CPU has); absent
    /// in records written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isa: Option<String>,
    /// Start time, RFC 3339 UTC.
    pub started: String,
    /// End time, RFC 3339 UTC (None while running, or if the process was killed).
    pub ended: Option<String>,
    /// The step it started from.
    pub from_step: u64,
    /// The step it reached (None while running).
    pub to_step: Option<u64>,
    /// `running`, `finished`, `interrupted`, `diverged` or `failed`.
    pub outcome: String,
}

/// The whole record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The training data's fingerprint.
    pub data: DataFingerprint,
    /// Every invocation, oldest first.
    pub invocations: Vec<Invocation>,
}

/// Now, RFC 3339 UTC to the second.
pub fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl Invocation {
    /// This process, starting now at `step`.
    pub fn begin(step: u64) -> Self {
        Self {
            command: std::env::args().collect(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            git_commit: option_env!("IPLD_GIT_COMMIT").map(str::to_string),
            host: crate::lock::host_name(),
            pid: std::process::id(),
            threads: rayon::current_num_threads(),
            isa: Some(ipld_particles::active_isa().name().to_string()),
            started: now(),
            ended: None,
            from_step: step,
            to_step: None,
            outcome: "running".into(),
        }
    }
}

impl RunRecord {
    /// Reads `dir`'s record; None if the run predates records.
    pub fn read(dir: &Path) -> Result<Option<Self>, RunError> {
        let path = dir.join(RECORD_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| RunError::invalid(&path, format!("not a run record: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RunError::io(&path, e)),
        }
    }

    /// Writes the record into `dir` atomically.
    pub fn write(&self, dir: &Path) -> Result<(), RunError> {
        let mut json = serde_json::to_string_pretty(self).expect("record serialises");
        json.push('\n');
        Ok(write_atomically(&dir.join(RECORD_FILE), json.as_bytes())?)
    }

    /// Ends the last invocation at `step` with `outcome`.
    pub fn finish(&mut self, step: u64, outcome: &str) {
        if let Some(last) = self.invocations.last_mut() {
            last.ended = Some(now());
            last.to_step = Some(step);
            last.outcome = outcome.into();
        }
    }
}

/// Checks a resumed run's data against its record: a mismatch is refused, naming both, unless
/// `accept` (then it warns and the record takes the new fingerprint). A run without a record
/// (made before records existed) starts one.
pub fn check_data(
    dir: &Path,
    record: Option<RunRecord>,
    now: DataFingerprint,
    accept: bool,
) -> Result<RunRecord, RunError> {
    let Some(mut rec) = record else {
        return Ok(RunRecord {
            data: now,
            invocations: Vec::new(),
        });
    };
    if rec.data != now {
        let show = |f: &DataFingerprint| {
            format!(
                "{} ({} x {}, sha256 {})",
                f.source,
                f.points,
                f.dim,
                &f.sha256[..f.sha256.len().min(16)]
            )
        };
        if !accept {
            return Err(RunError::invalid(
                dir,
                format!(
                    "the data differ from what this run trained on: it recorded {}, the data now \
                     are {}; resuming would train on other data. Restore the data, or pass \
                     --accept-data-change to continue on the new data",
                    show(&rec.data),
                    show(&now)
                ),
            ));
        }
        tracing::warn!(
            "{}: continuing on changed data (--accept-data-change): recorded {}, now {}",
            dir.display(),
            show(&rec.data),
            show(&now)
        );
        rec.data = now;
    }
    Ok(rec)
}
