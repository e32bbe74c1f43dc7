//! Issue 23, nothing lost: SIGINT/SIGTERM stop training after the step in progress with a
//! checkpoint (a second signal, or one outside training, exits at once); a run stopped before
//! its first checkpoint restarts from step 0; one invocation per run directory at a time (the
//! lock names its holder, a stale one is reported); a resume on changed data is refused; a new
//! run refuses a non-empty directory that holds no run; `run.json` records every invocation.
//! Each case runs the binary.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{assert_same_checkpoints, bin, stderr, tiny};
use ipld_train::RunConfig;

const BIN: &str = env!("CARGO_BIN_EXE_ipld-train");

fn write_config(dir: &Path, name: &str, cfg: &RunConfig) -> String {
    std::fs::write(dir.join(name), cfg.to_toml()).unwrap();
    name.to_string()
}

/// A child whose stderr lines arrive on a channel.
fn spawn(args: &[&str], cwd: &Path) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: sending a signal to our own child process.
    let rc = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(rc, 0, "kill({sig})");
}

/// Waits up to a minute for `cond`.
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn metrics_steps(dir: &Path) -> Vec<u64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["step"].as_u64())
        .collect()
}

fn record(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap()
}

fn drain(rx: &mpsc::Receiver<String>) -> String {
    rx.try_iter().collect::<Vec<_>>().join("\n")
}

#[test]
fn sigint_stops_after_a_step_with_a_checkpoint_and_the_resume_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let long = write_config(tmp.path(), "long.toml", &tiny(1_000_000));
    let (mut child, rx) = spawn(&["--config", &long, "--out", "r", "--quiet"], tmp.path());
    let dir = tmp.path().join("r");
    wait_for("training to log", || metrics_steps(&dir).len() >= 2);
    signal(&child, libc::SIGINT);
    let status = child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let err = drain(&rx);
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(
        err.contains("stopping after this step") && err.contains("ipld-train --resume r"),
        "{err}"
    );
    let at: u64 = err
        .split("interrupted at step ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no step in: {err}"));
    assert!(dir.join("checkpoint.safetensors").exists());
    assert!(!dir.join("run.lock").exists(), "the lock is released");
    assert!(!dir.join("summary.json").exists());
    let rec = record(&dir);
    assert_eq!(rec["invocations"][0]["outcome"], "interrupted");
    assert_eq!(rec["invocations"][0]["to_step"], at);

    // Resumed to `at + 7` steps, it ends where an uninterrupted run of that length does.
    let total = (at + 7).to_string();
    let out = bin(
        &[
            "--resume",
            "r",
            "--set",
            &format!("train.steps={total}"),
            "--quiet",
        ],
        tmp.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let fresh = write_config(tmp.path(), "fresh.toml", &tiny(at + 7));
    let out = bin(&["--config", &fresh, "--out", "f", "--quiet"], tmp.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_checkpoints(
        &dir,
        &tmp.path().join("f"),
        "interrupted and resumed vs straight",
    );
    let steps = metrics_steps(&dir);
    assert!(
        steps.windows(2).all(|w| w[0] < w[1]),
        "no repeated metrics lines: {steps:?}"
    );
    let rec = record(&dir);
    let inv = rec["invocations"].as_array().unwrap();
    assert_eq!(inv.len(), 2);
    assert_eq!(
        (inv[1]["from_step"].as_u64(), inv[1]["outcome"].as_str()),
        (Some(at), Some("finished"))
    );
}

#[test]
fn a_second_signal_exits_at_once_and_the_run_restarts_from_step_0() {
    let tmp = tempfile::tempdir().unwrap();
    // Slow steps (a large cloud per batch) and no checkpoint before the signals.
    let cfg = tiny(1_000_000)
        .with_overrides(
            &[
                "data.points=1000".into(),
                "train.batch_size=1000".into(),
                "particles.count=64".into(),
                "train.log_every=1".into(),
                "train.checkpoint_every=100000".into(),
            ],
            "test",
        )
        .unwrap();
    let slow = write_config(tmp.path(), "slow.toml", &cfg);
    let (mut child, rx) = spawn(&["--config", &slow, "--out", "r", "--quiet"], tmp.path());
    let dir = tmp.path().join("r");
    wait_for("the first step", || !metrics_steps(&dir).is_empty());
    // Two signal kinds, so the kernel cannot merge them into one.
    signal(&child, libc::SIGINT);
    signal(&child, libc::SIGTERM);
    let status = child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let err = drain(&rx);
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("exiting at once"), "{err}");
    assert!(!dir.join("checkpoint.safetensors").exists(), "{err}");
    assert!(
        !dir.join("run.lock").exists(),
        "the lock is released: {err}"
    );

    // Without a checkpoint the directory is still a run: --out refuses it with the way out,
    // --resume restarts it from step 0 and ends as a fresh run does.
    let out = bin(&["--config", &slow, "--out", "r", "--quiet"], tmp.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("restart it from step 0 with --resume"),
        "{}",
        stderr(&out)
    );
    let out = bin(&["--resume", "r", "--set", "train.steps=3"], tmp.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "has no checkpoint (it stopped before its first): restarting it from step 0 of 3"
        ),
        "{}",
        stderr(&out)
    );
    assert_eq!(metrics_steps(&dir), vec![1, 2, 3]);
    let cfg3 = cfg
        .with_overrides(&["train.steps=3".into()], "test")
        .unwrap();
    let fresh = write_config(tmp.path(), "fresh.toml", &cfg3);
    let out = bin(&["--config", &fresh, "--out", "f", "--quiet"], tmp.path());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_same_checkpoints(&dir, &tmp.path().join("f"), "restarted vs fresh");
}

#[test]
fn a_signal_during_evaluation_exits_at_once_and_resume_evaluates() {
    let tmp = tempfile::tempdir().unwrap();
    // A long evaluation: many DDPM samples after 20 quick steps.
    let cfg = tiny(20)
        .with_overrides(
            &[
                "eval.samples=200000".into(),
                "eval.sampler={ type = \"ddpm\" }".into(),
            ],
            "test",
        )
        .unwrap();
    let c = write_config(tmp.path(), "c.toml", &cfg);
    let (mut child, rx) = spawn(&["--config", &c, "--out", "r", "--quiet"], tmp.path());
    let dir = tmp.path().join("r");
    wait_for("the last checkpoint", || {
        metrics_steps(&dir).last() == Some(&20) && dir.join("checkpoint.safetensors").exists()
    });
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, libc::SIGINT);
    let status = child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let err = drain(&rx);
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("exiting at once"), "{err}");
    assert!(!dir.join("summary.json").exists());
    assert!(!dir.join("run.lock").exists());
    let out = bin(
        &["--resume", "r", "--set", "eval.samples=100", "--quiet"],
        tmp.path(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.join("summary.json").exists());
    let rec = record(&dir);
    assert_eq!(rec["invocations"][1]["from_step"], 20);
    assert_eq!(rec["invocations"][1]["outcome"], "finished");
}

#[test]
fn a_locked_run_is_refused_naming_its_holder_and_stale_locks_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let c = write_config(tmp.path(), "c.toml", &tiny(10));
    let out = bin(&["--config", &c, "--out", "r", "--quiet"], tmp.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = tmp.path().join("r");
    let files = ["config.toml", "metrics.jsonl", "summary.json", "run.json"];
    let before: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(dir.join(f)).unwrap())
        .collect();
    let host = ipld_train::lock::host_name();
    // A live holder (this test process), then one that is gone (above any pid_max).
    for (pid, needle) in [
        (std::process::id(), "is in use by process"),
        (2_147_483_000, "no longer running (a stale lock"),
    ] {
        std::fs::write(
            dir.join("run.lock"),
            format!("pid = {pid}\nhost = \"{host}\"\n"),
        )
        .unwrap();
        let out = bin(
            &["--resume", "r", "--set", "train.steps=20", "--quiet"],
            tmp.path(),
        );
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let e = stderr(&out);
        assert!(
            e.contains(needle) && e.contains(&format!("process {pid}")),
            "{e}"
        );
        assert!(
            dir.join("run.lock").exists(),
            "a lock is never broken silently"
        );
    }
    let after: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(dir.join(f)).unwrap())
        .collect();
    assert!(before == after, "the records are untouched");
}

#[test]
fn a_resume_on_changed_data_is_refused_unless_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("points.npy");
    let write = |shift: f32| {
        let v: Vec<f32> = (0..300 * 4)
            .map(|i| (i % 17) as f32 * 0.3 + shift)
            .collect();
        let m = ipld_data::InMemoryDataset::new(v, 300, 4, "test").unwrap();
        ipld_data::save_matrix(&data, &m).unwrap();
    };
    write(0.0);
    let cfg = tiny(10)
        .with_overrides(&[format!("data.path={}", data.display())], "test")
        .unwrap();
    let c = write_config(tmp.path(), "c.toml", &cfg);
    let out = bin(&["--config", &c, "--out", "r", "--quiet"], tmp.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = tmp.path().join("r");
    let rec = record(&dir);
    assert_eq!(
        (rec["data"]["points"].as_u64(), rec["data"]["dim"].as_u64()),
        (Some(300), Some(4))
    );
    let sha = rec["data"]["sha256"].as_str().unwrap().to_string();
    assert_eq!(sha.len(), 64);

    write(0.5);
    let before = std::fs::read(dir.join("metrics.jsonl")).unwrap();
    let resume = ["--resume", "r", "--set", "train.steps=20", "--quiet"];
    let out = bin(&resume, tmp.path());
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(
        e.contains("the data differ")
            && e.contains(&sha[..16])
            && e.contains("--accept-data-change"),
        "{e}"
    );
    assert_eq!(std::fs::read(dir.join("metrics.jsonl")).unwrap(), before);
    // `--set` cannot override the check; the flag can, with a warning.
    let mut accepted = resume.to_vec();
    accepted.push("--accept-data-change");
    let out = bin(&accepted, tmp.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let rec = record(&dir);
    assert_ne!(rec["data"]["sha256"].as_str(), Some(sha.as_str()));
    assert_eq!(rec["invocations"].as_array().unwrap().len(), 2);
    // Put back, the original data are now the changed ones.
    write(0.0);
    let out = bin(
        &["--resume", "r", "--set", "train.steps=30", "--quiet"],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

#[test]
fn a_new_run_refuses_a_non_empty_directory_without_a_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mine");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("metrics.jsonl"), "my own metrics\n").unwrap();
    let c = write_config(tmp.path(), "c.toml", &tiny(10));
    let out = bin(&["--config", &c, "--out", "mine", "--quiet"], tmp.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is not empty (it holds metrics.jsonl) and holds no run"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap(),
        "my own metrics\n"
    );
    // An empty directory is fine, and its record names this invocation.
    std::fs::create_dir(tmp.path().join("empty")).unwrap();
    let out = bin(&["--config", &c, "--out", "empty", "--quiet"], tmp.path());
    assert!(out.status.success(), "{}", stderr(&out));
    let rec = record(&tmp.path().join("empty"));
    let inv = &rec["invocations"][0];
    assert_eq!(inv["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(inv["outcome"], "finished");
    assert_eq!(inv["to_step"], 10);
    assert!(
        inv["command"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "empty")
    );
    assert!(!inv["host"].as_str().unwrap().is_empty());
    let (s, e) = (
        inv["started"].as_str().unwrap(),
        inv["ended"].as_str().unwrap(),
    );
    assert!(s.ends_with('Z') && s <= e, "{s} .. {e}");
}
