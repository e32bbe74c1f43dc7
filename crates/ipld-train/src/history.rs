//! A run's checkpoint history (issue 23): with `train.keep_checkpoints = K`, every checkpoint is
//! also kept as `checkpoints/step-SSSSSSSS.safetensors` and only the last K of those remain, so a
//! corrupted write or a bad stretch of training can be rolled back with `--resume R --from-step
//! S`. A roll-back loses nothing: the later checkpoints, `metrics.jsonl` and `summary.json` move
//! to `checkpoints/rolled-back-from-T/` before the run continues from step S.

use std::fs;
use std::path::{Path, PathBuf};

use ipld_data::write_atomically;

use crate::error::RunError;
use crate::rundir::{CHECKPOINT_FILE, METRICS_FILE, SUMMARY_FILE};
use crate::trainer::Trainer;

/// Writes the trainer's checkpoint into `dir` atomically, keeps it in the run's history
/// (`train.keep_checkpoints`), and rewrites the CSV copies of the metrics.
pub fn save_checkpoint(trainer: &Trainer, dir: &Path) -> Result<(), RunError> {
    if trainer.sharded() {
        return save_sharded(trainer, dir);
    }
    let bytes = trainer.checkpoint_bytes()?;
    write_atomically(&dir.join(CHECKPOINT_FILE), &bytes)?;
    // A run resumed as one process from a sharded checkpoint: its particle files are stale now.
    remove_particle_files(dir, &[])?;
    keep(
        dir,
        trainer.step(),
        &bytes,
        trainer.config().train.keep_checkpoints,
    )?;
    crate::csv::write_csv(dir)
}

/// A sharded checkpoint (issue 26): every rank writes its particle file atomically; once all
/// are in place rank 0 writes the main file, whose rename commits the checkpoint, and then
/// removes the particle files no checkpoint names any more. A rank that fails makes every rank
/// fail, and the last committed checkpoint with its particle files stays intact.
fn save_sharded(trainer: &Trainer, dir: &Path) -> Result<(), RunError> {
    use crate::collective::agree;
    let comm = trainer.collective();
    let (rank, ranks, step) = (comm.rank(), comm.size(), trainer.step());
    let mine = crate::trainer::particle_shard_file(dir, step, rank, ranks);
    let wrote = trainer
        .particle_shard_bytes()
        .map_err(RunError::from)
        .and_then(|b| write_atomically(&mine, &b).map_err(RunError::from))
        .map_err(|e| e.to_string());
    agree(comm, wrote)
        .map_err(|e| RunError::invalid(dir, format!("writing the checkpoint: {e}")))?;
    let keep_k = trainer.config().train.keep_checkpoints;
    let committed = match rank {
        0 => trainer
            .checkpoint_bytes()
            .map_err(RunError::from)
            .and_then(|b| {
                write_atomically(&dir.join(CHECKPOINT_FILE), &b)?;
                keep(dir, step, &b, keep_k)
            })
            .and_then(|_| crate::csv::write_csv(dir))
            .map_err(|e| e.to_string()),
        _ => Ok(()),
    };
    agree(comm, committed)
        .map_err(|e| RunError::invalid(dir, format!("writing the checkpoint: {e}")))?;
    if rank == 0 {
        let keep: Vec<_> = (0..ranks)
            .map(|r| crate::trainer::particle_shard_file(dir, step, r, ranks))
            .collect();
        remove_particle_files(dir, &keep)?;
    }
    Ok(())
}

/// The particle files of the sharded checkpoint of `step` in `folder` (none for a one-process
/// checkpoint).
fn particle_files(folder: &Path, step: u64) -> Result<Vec<PathBuf>, RunError> {
    if !folder.is_dir() {
        return Ok(Vec::new());
    }
    let prefix = format!("particles-{step:08}-");
    let mut out = Vec::new();
    for e in fs::read_dir(folder)
        .map_err(|e| RunError::io(folder, e))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".safetensors") {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Hard-links `from` to `to` (replacing it), or copies it where the file system cannot link.
fn link_or_copy(from: &Path, to: &Path) -> Result<(), RunError> {
    let tmp = to.with_extension(format!("link{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let linked = fs::hard_link(from, &tmp)
        .and_then(|_| fs::rename(&tmp, to))
        .is_ok();
    if !linked {
        let _ = fs::remove_file(&tmp);
        copy_atomically(from, to)?;
    }
    Ok(())
}

/// Removes the sharded particle files in `dir` other than `keep`.
fn remove_particle_files(dir: &Path, keep: &[PathBuf]) -> Result<(), RunError> {
    for e in fs::read_dir(dir)
        .map_err(|e| RunError::io(dir, e))?
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("particles-")
            && name.ends_with(".safetensors")
            && !keep.contains(&e.path())
        {
            fs::remove_file(e.path()).map_err(|err| RunError::io(&e.path(), err))?;
        }
    }
    Ok(())
}

/// The folder of step-numbered checkpoints inside a run directory.
pub const HISTORY_DIR: &str = "checkpoints";

/// The kept checkpoint of `step`.
pub fn step_file(dir: &Path, step: u64) -> PathBuf {
    dir.join(HISTORY_DIR)
        .join(format!("step-{step:08}.safetensors"))
}

/// The steps of the kept checkpoints, ascending.
pub fn kept_steps(dir: &Path) -> Result<Vec<u64>, RunError> {
    let h = dir.join(HISTORY_DIR);
    if !h.is_dir() {
        return Ok(Vec::new());
    }
    let mut steps = Vec::new();
    for e in fs::read_dir(&h).map_err(|e| RunError::io(&h, e))? {
        let name = e.map_err(|e| RunError::io(&h, e))?.file_name();
        let name = name.to_string_lossy();
        if let Some(s) = name
            .strip_prefix("step-")
            .and_then(|r| r.strip_suffix(".safetensors"))
            .and_then(|d| d.parse::<u64>().ok())
        {
            steps.push(s);
        }
    }
    steps.sort_unstable();
    Ok(steps)
}

/// Keeps the checkpoint just written to `dir/checkpoint.safetensors` (the trainer's `step`) as a
/// step-numbered file, then removes all but the last `keep` of those. The copy is a hard link
/// where the file system allows (no extra space while it is also the latest), else the bytes.
pub fn keep(dir: &Path, step: u64, bytes: &[u8], keep: usize) -> Result<(), RunError> {
    if keep == 0 {
        return Ok(());
    }
    let h = dir.join(HISTORY_DIR);
    fs::create_dir_all(&h).map_err(|e| RunError::io(&h, e))?;
    // A sharded checkpoint's particle files go first: the step file names them.
    for f in particle_files(dir, step)? {
        link_or_copy(&f, &h.join(f.file_name().expect("a file")))?;
    }
    let target = step_file(dir, step);
    let tmp = h.join(format!(".step-{step:08}.tmp{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let linked = fs::hard_link(dir.join(CHECKPOINT_FILE), &tmp)
        .and_then(|_| fs::rename(&tmp, &target))
        .is_ok();
    if !linked {
        let _ = fs::remove_file(&tmp);
        write_atomically(&target, bytes)?;
    }
    let steps = kept_steps(dir)?;
    for &old in &steps[..steps.len().saturating_sub(keep)] {
        let p = step_file(dir, old);
        fs::remove_file(&p).map_err(|e| RunError::io(&p, e))?;
        for f in particle_files(&h, old)? {
            fs::remove_file(&f).map_err(|e| RunError::io(&f, e))?;
        }
    }
    Ok(())
}

/// The step recorded in the checkpoint file at `path` (its safetensors metadata `step`).
pub fn checkpoint_step(path: &Path) -> Result<u64, RunError> {
    use std::io::Read;
    let bad = |why: &str| RunError::invalid(path, format!("not an ipld checkpoint ({why})"));
    // Only the header: a u64 length, then that many bytes of JSON (the cloud may be GBs).
    let mut f = fs::File::open(path).map_err(|e| RunError::io(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|_| bad("too short"))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err(bad("header too large"));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header)
        .map_err(|_| bad("truncated header"))?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| bad(&e.to_string()))?;
    header["__metadata__"]["step"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no `step` in its metadata"))
}

/// Copies `from` over `to` atomically (a temporary sibling, then rename), without holding the
/// file in memory.
fn copy_atomically(from: &Path, to: &Path) -> Result<(), RunError> {
    let tmp = to.with_extension(format!("tmp{}", std::process::id()));
    let result = fs::copy(from, &tmp)
        .map_err(|e| RunError::io(from, e))
        .and_then(|_| fs::rename(&tmp, to).map_err(|e| RunError::io(to, e)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Rolls the run in `dir` back to its kept checkpoint of `step`: the checkpoints after it (the
/// latest included), `metrics.jsonl` and `summary.json` move to
/// `checkpoints/rolled-back-from-T/` (T the latest step; `-2`, `-3`, ... when taken), and the
/// kept checkpoint becomes the latest. `latest` is the step the latest checkpoint holds. Returns
/// the folder the later records went to (None when nothing came after `step`).
pub fn roll_back(dir: &Path, step: u64, latest: u64) -> Result<Option<PathBuf>, RunError> {
    let steps = kept_steps(dir)?;
    if !steps.contains(&step) {
        let have = if steps.is_empty() {
            "none are kept (set train.keep_checkpoints to keep them)".to_string()
        } else {
            format!(
                "the kept steps are {}",
                steps
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        return Err(RunError::invalid(
            dir,
            format!("--from-step {step}: no checkpoint of that step; {have}"),
        ));
    }
    let from = step_file(dir, step);
    let h = dir.join(HISTORY_DIR);
    // The step's particle files (a sharded run) go back beside the main file before it.
    let restore = || -> Result<(), RunError> {
        for f in particle_files(&h, step)? {
            copy_atomically(&f, &dir.join(f.file_name().expect("a file")))?;
        }
        copy_atomically(&from, &dir.join(CHECKPOINT_FILE))
    };
    if step >= latest {
        if !dir.join(CHECKPOINT_FILE).exists() {
            restore()?;
        }
        return Ok(None);
    }
    let mut aside = h.join(format!("rolled-back-from-{latest}"));
    let mut i = 2;
    while aside.exists() {
        aside = h.join(format!("rolled-back-from-{latest}-{i}"));
        i += 1;
    }
    fs::create_dir_all(&aside).map_err(|e| RunError::io(&aside, e))?;
    let move_to = |from: &Path, name: &str| -> Result<(), RunError> {
        if from.exists() {
            let to = aside.join(name);
            fs::rename(from, &to).map_err(|e| RunError::io(from, e))?;
        }
        Ok(())
    };
    let move_particles = |folder: &Path, s: u64| -> Result<(), RunError> {
        for f in particle_files(folder, s)? {
            move_to(&f, &f.file_name().expect("a file").to_string_lossy())?;
        }
        Ok(())
    };
    for &s in steps.iter().filter(|&&s| s > step) {
        move_to(&step_file(dir, s), &format!("step-{s:08}.safetensors"))?;
        move_particles(&h, s)?;
    }
    // The latest checkpoint is kept too when it was not a step file (keep_checkpoints = 0 then).
    let latest_name = format!("step-{latest:08}.safetensors");
    if !aside.join(&latest_name).exists() {
        move_to(&dir.join(CHECKPOINT_FILE), &latest_name)?;
    }
    move_particles(dir, latest)?;
    // The metrics are copied, not moved: the resume keeps the lines up to `step`.
    let metrics = dir.join(METRICS_FILE);
    if metrics.exists() {
        let to = aside.join(METRICS_FILE);
        fs::copy(&metrics, &to).map_err(|e| RunError::io(&to, e))?;
    }
    move_to(&dir.join(SUMMARY_FILE), SUMMARY_FILE)?;
    restore()?;
    Ok(Some(aside))
}
