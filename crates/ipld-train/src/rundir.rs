//! A run directory on disk: its file names (the resolved `config.toml`, `metrics.jsonl`, an
//! atomic safetensors checkpoint, `samples.png`, `summary.json`), the default directory name,
//! what a resumed run may change, and opening a run's trainer again. Nothing existing is
//! overwritten in place: every file is written to a temporary sibling and renamed.

use std::fs;
use std::path::{Path, PathBuf};

use candle_core::Device;
use ipld_data::write_atomically;

use crate::config::RunConfig;
use crate::data::load_data;
use crate::error::RunError;
use crate::trainer::{StepMetrics, Trainer};

/// File names inside a run directory.
pub const CONFIG_FILE: &str = "config.toml";
/// Metrics, one JSON object per line.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The checkpoint.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// Scatter of data vs samples.
pub const SAMPLES_PNG: &str = "samples.png";
/// The run's summary.
pub const SUMMARY_FILE: &str = "summary.json";

/// Whether `dir` holds a run's records (its `config.toml` or checkpoint).
pub fn is_run_dir(dir: &Path) -> bool {
    dir.join(CONFIG_FILE).is_file() || dir.join(CHECKPOINT_FILE).is_file()
}

/// The run directory that `path` lies in or is, if any: the nearest existing ancestor is
/// resolved (symbolic links too) and it and its ancestors are checked.
pub fn enclosing_run(path: &Path) -> Option<PathBuf> {
    let abs = std::path::absolute(path).ok()?;
    let existing = abs.ancestors().find(|a| a.exists())?.canonicalize().ok()?;
    existing
        .ancestors()
        .find(|a| is_run_dir(a))
        .map(Path::to_path_buf)
}

/// The default run directory `runs/<dataset>-<method>-n<N>-seed<S>`, suffixed `-2`, `-3`, ... if
/// taken.
pub fn default_run_dir(cfg: &RunConfig) -> PathBuf {
    let base = format!(
        "{}-{}-n{}-seed{}",
        cfg.data.name(),
        cfg.method.name(),
        cfg.particles.count,
        cfg.seed
    );
    let root = PathBuf::from("runs");
    let mut dir = root.join(&base);
    let mut i = 2;
    while dir.exists() {
        dir = root.join(format!("{base}-{i}"));
        i += 1;
    }
    dir
}

/// Keeps only metrics lines with step <= `step` (so a resumed run does not repeat lines).
pub fn truncate_metrics(path: &Path, step: u64) -> Result<(), RunError> {
    let Ok(text) = fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    Ok(write_atomically(path, kept.as_bytes())?)
}

/// Keys a resumed run may change: anything else would make it a different run than the one its
/// checkpoint belongs to (and break exact resumption). The diffusion objective may change so that
/// a refit can continue a run under another target (`diffusion.loss = "stf"`); like a changed
/// refit, it applies from the resumed step on.
pub const RESUMABLE_KEYS: &[&str] = &[
    "train.steps",
    "train.prior_refit",
    "diffusion.loss",
    "diffusion.stf_reference",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "eval",
];

/// Checks that `new` differs from `saved` only in [`RESUMABLE_KEYS`].
pub fn check_resumable(saved: &RunConfig, new: &RunConfig) -> Result<(), String> {
    fn flatten(prefix: &str, v: &toml::Value, out: &mut Vec<(String, String)>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    flatten(&key, v, out);
                }
            }
            other => out.push((prefix.to_string(), other.to_string())),
        }
    }
    let leaves = |c: &RunConfig| {
        let mut out = Vec::new();
        flatten(
            "",
            &toml::Value::try_from(c).expect("config serialises"),
            &mut out,
        );
        out.into_iter()
            .collect::<std::collections::BTreeMap<String, String>>()
    };
    let (a, b) = (leaves(saved), leaves(new));
    let allowed = |k: &str| {
        RESUMABLE_KEYS
            .iter()
            .any(|r| k == *r || k.starts_with(&format!("{r}.")))
    };
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        let (va, vb) = (a.get(k), b.get(k));
        if va != vb && !allowed(k) {
            let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "absent".into());
            return Err(format!(
                "`{k}` differs from the saved run ({} vs {}); on --resume only {} may change",
                show(va),
                show(vb),
                RESUMABLE_KEYS.join(", ")
            ));
        }
    }
    Ok(())
}

/// A fresh CPU trainer on an embedded preset with `overrides` applied (benchmarks, experiments).
pub fn preset_trainer(name: &str, overrides: &[String]) -> Result<Trainer, RunError> {
    let origin = format!("preset {name}");
    let cfg = RunConfig::preset(name)?.with_overrides(overrides, &origin)?;
    let data = load_data(&cfg)?;
    Ok(Trainer::new(cfg.validated(&origin)?, data, Device::Cpu)?)
}

/// Opens an existing run (its config with `overrides` applied, data, and checkpoint).
pub fn open_run(dir: &Path, overrides: &[String]) -> Result<Trainer, RunError> {
    let cfg_path = dir.join(CONFIG_FILE);
    if !cfg_path.exists() {
        return Err(RunError::invalid(
            dir,
            format!("no {CONFIG_FILE} here: not a run directory"),
        ));
    }
    let origin = cfg_path.display().to_string();
    let cfg = RunConfig::from_file(&cfg_path)?.with_overrides(overrides, &origin)?;
    let data = load_data(&cfg)?;
    let mut trainer = Trainer::new(cfg.validated(&origin)?, data, Device::Cpu)?;
    trainer.load_checkpoint(&dir.join(CHECKPOINT_FILE))?;
    Ok(trainer)
}

/// Wall-clock fields of a metrics line.
#[derive(Debug, Clone, Copy)]
pub struct LineClock {
    /// Seconds since this invocation's training loop began, less the time its evaluations during
    /// training and cloud pictures took.
    pub seconds: f64,
    /// Training seconds (as `seconds`) summed over every invocation of the run (resumes add to
    /// it).
    pub train_seconds_total: f64,
    /// Steps per second since the previous line.
    pub steps_per_second: f64,
}

/// One `metrics.jsonl` line for the step `m` (`step` counts steps done, from 1), with the
/// learning rates that step used and when it ended (`time`, RFC 3339 UTC).
pub fn metrics_line(m: &StepMetrics, clock: LineClock) -> String {
    serde_json::json!({
        "step": m.step + 1,
        "phase": if m.prior_refit { "prior-refit" } else { "joint" },
        "loss": m.loss,
        "diffusion_loss": m.diffusion_loss,
        "nll": m.nll,
        "gamma": m.gamma,
        "particle_step_size": m.particle_step_size,
        "particle_norm": m.particle_norm,
        "particle_spread": m.particle_spread,
        "lr_theta": m.lr_theta,
        "lr_phi": m.lr_phi,
        "time": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        "seconds": clock.seconds,
        "train_seconds_total": clock.train_seconds_total,
        "steps_per_second": clock.steps_per_second,
    })
    .to_string()
}

/// The training seconds a run had logged before this invocation: the last kept metrics line's
/// `train_seconds_total` (0 for a new run, or one logged before the field existed).
pub fn logged_train_seconds(path: &Path) -> f64 {
    fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|v| v["train_seconds_total"].as_f64())
                .next_back()
        })
        .unwrap_or(0.0)
}
