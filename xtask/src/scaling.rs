//! `cargo xtask bench`'s scaling rows (issue 26): gmm training at N = 16 and N = 256 as one
//! process with 2 threads, as 2 MPI ranks with 1 thread each (the same cores), and as one
//! process with 1 thread (for the strong-scaling ratio), with steps/s and each rank's peak
//! resident memory. Needs `mpirun` and builds `ipld-train --features mpi` (release) into
//! `target/mpi`; without mpirun the rows say why they are missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// One configuration's measurement.
struct Case {
    steps_per_second: f64,
    /// Peak RSS of each rank, MiB (rank order).
    peak_rss_mib: Vec<f64>,
}

fn mpirun_available() -> bool {
    Command::new("mpirun")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn build(root: &Path) -> anyhow::Result<PathBuf> {
    let target = root.join("target").join("mpi");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "ipld-train",
            "--features",
            "mpi",
        ])
        .arg("--target-dir")
        .arg(&target)
        .current_dir(root)
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("building ipld-train --features mpi failed");
    }
    Ok(target.join("release").join("ipld-train"))
}

/// Trains gmm with `n` particles for `steps` steps on `ranks` ranks of `threads` threads; the
/// rate is the mean of the metrics lines' rates after the first (warm-up) quarter.
fn case(bin: &Path, ranks: usize, threads: usize, n: usize, steps: u64) -> anyhow::Result<Case> {
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("run");
    let mut cmd = match ranks {
        1 => Command::new(bin),
        r => {
            let mut c = Command::new("mpirun");
            c.args(["-np", &r.to_string()]).arg(bin);
            c
        }
    };
    let log_every = (steps / 4).max(1);
    let o = cmd
        .arg("--out")
        .arg(&out)
        .args(["--set", &format!("particles.count={n}")])
        .args(["--set", &format!("train.steps={steps}")])
        .args(["--set", &format!("train.log_every={log_every}")])
        .args(["--set", &format!("train.checkpoint_every={steps}")])
        .args([
            "--set",
            "eval.samples=500",
            "--set",
            "eval.reference_points=500",
        ])
        .env("RAYON_NUM_THREADS", threads.to_string())
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()?;
    let stderr = String::from_utf8_lossy(&o.stderr);
    if !o.status.success() {
        bail!("{ranks} rank(s) x {threads} thread(s), N = {n}: failed:\n{stderr}");
    }
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl"))?;
    let rates: Vec<f64> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["steps_per_second"].as_f64())
        .skip(1)
        .collect();
    if rates.is_empty() {
        bail!("no metrics lines after the first in {}", out.display());
    }
    Ok(Case {
        steps_per_second: rates.iter().sum::<f64>() / rates.len() as f64,
        peak_rss_mib: peaks(&stderr),
    })
}

/// Each rank's peak RSS in MiB, in rank order, from the lines `ipld-train` logs at the end of
/// training ("rank R of S: particles of ... peak RSS X MiB").
fn peaks(stderr: &str) -> Vec<f64> {
    let mut peaks: Vec<(usize, f64)> = stderr
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find("rank ")? + 5..];
            let rank: usize = rest.split_whitespace().next()?.parse().ok()?;
            let mib = rest.split("peak RSS ").nth(1)?.split_whitespace().next()?;
            Some((rank, mib.parse().ok()?))
        })
        .collect();
    peaks.sort_by_key(|p| p.0);
    peaks.into_iter().map(|p| p.1).collect()
}

/// The scaling rows as JSON, printing each as it is measured.
pub fn run(root: &Path) -> anyhow::Result<Value> {
    if !mpirun_available() {
        println!("scaling: skipped, mpirun is not installed (docs/distributed.md)");
        return Ok(json!({"skipped": "mpirun is not installed"}));
    }
    let bin = build(root)?;
    let mut rows = serde_json::Map::new();
    for (n, steps) in [(16usize, 400u64), (256, 80)] {
        let one2 = case(&bin, 1, 2, n, steps)?;
        let two1 = case(&bin, 2, 1, n, steps)?;
        let one1 = case(&bin, 1, 1, n, steps)?;
        let same_cores = two1.steps_per_second / one2.steps_per_second;
        let strong = two1.steps_per_second / (2.0 * one1.steps_per_second);
        println!(
            "scaling gmm N = {n}: 1 rank x 2 threads {:.2} steps/s (peak {:?} MiB), 2 ranks x 1 \
             thread {:.2} steps/s (peaks {:?} MiB) = {:.2} of the 1 x 2 rate; 1 x 1 {:.2} \
             steps/s, so 2 ranks are {strong:.2} of ideal",
            one2.steps_per_second,
            one2.peak_rss_mib,
            two1.steps_per_second,
            two1.peak_rss_mib,
            same_cores,
            one1.steps_per_second
        );
        rows.insert(
            n.to_string(),
            json!({
                "steps": steps,
                "one_rank_2_threads": {"steps_per_second": one2.steps_per_second, "peak_rss_mib": one2.peak_rss_mib},
                "two_ranks_1_thread": {"steps_per_second": two1.steps_per_second, "peak_rss_mib": two1.peak_rss_mib},
                "one_rank_1_thread": {"steps_per_second": one1.steps_per_second, "peak_rss_mib": one1.peak_rss_mib},
                "two_ranks_over_one_rank_2_threads": same_cores,
                "efficiency_vs_2x_one_thread": strong,
            }),
        );
    }
    Ok(Value::Object(rows))
}

#[cfg(test)]
mod tests {
    #[test]
    fn peaks_are_read_per_rank_in_rank_order() {
        // Two ranks' lines as `ipld-train` logs them (in whatever order they arrive), among
        // other log lines.
        let log = "2026-12-07T11:12:00Z  INFO training step=10 total=40 loss=1\n\
                   2026-12-07T11:12:01Z  INFO rank 1 of 2: particles of 5000 points (29.3 MiB \
                   with their moments), peak RSS 675.3 MiB\n\
                   2026-12-07T11:12:01Z  INFO rank 0 of 2: particles of 5000 points (29.3 MiB \
                   with their moments), peak RSS 675.1 MiB\n\
                   error: something else about rank 3\n";
        assert_eq!(super::peaks(log), [675.1, 675.3]);
        assert!(super::peaks("no memory lines\n").is_empty());
    }
}
