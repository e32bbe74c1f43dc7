//! Shared helpers: a small, fast configuration for tests.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;

use ipld_train::{Progress, RunConfig, RunPlan};
use safetensors::SafeTensors;

/// A quiet run of `cfg` in `dir` (a resume when `resume`).
pub fn plan(cfg: RunConfig, dir: &Path, resume: bool) -> RunPlan {
    RunPlan {
        config: cfg,
        run_dir: dir.to_path_buf(),
        resume,
        progress: Progress::Quiet,
        accept_data_change: false,
        from_step: None,
    }
}

/// Asserts that two run directories hold the same checkpoint, tensor for tensor, bit for bit.
pub fn assert_same_checkpoints(a: &Path, b: &Path, what: &str) {
    let file = ipld_train::rundir::CHECKPOINT_FILE;
    let (ta, tb) = (tensors(&a.join(file)), tensors(&b.join(file)));
    assert_eq!(ta.len(), tb.len(), "{what}: tensor count");
    for (name, t) in &ta {
        assert_eq!(Some(t), tb.get(name), "{what}: tensor {name} differs");
    }
}

/// Every tensor of a checkpoint file: name -> (shape, little-endian bytes).
pub fn tensors(path: &Path) -> HashMap<String, (Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n.to_string(), (v.shape().to_vec(), v.data().to_vec())))
        .collect()
}

/// The gmm preset shrunk for tests: 300 points in 8-d, N = 2, batch 50, a narrow MLP, DDIM eval.
pub fn tiny(steps: u64) -> RunConfig {
    let sets: Vec<String> = [
        "data.points=300",
        "data.ambient_dim=8",
        "particles.count=2",
        "train.batch_size=50",
        "train.log_every=5",
        "train.checkpoint_every=10",
        "train.kl.warmup_steps=20",
        "model.prior.hidden=32",
        "model.prior.time_embedding=16",
        "eval.samples=200",
        "eval.reference_points=300",
        "eval.sampler.type=ddim",
        "eval.sampler.steps=20",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("train.steps={steps}")])
    .collect();
    RunConfig::preset("gmm")
        .unwrap()
        .with_overrides(&sets, "tiny")
        .unwrap()
}

/// Overrides that select `method` with its particle rule and step size.
pub fn method_sets(method: &str) -> Vec<String> {
    ipld_train::config::method_overrides(method, false).unwrap()
}

/// Runs the `ipld-train` binary with `args` in `cwd`.
pub fn bin(args: &[&str], cwd: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ipld-train"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

/// The binary's stderr as text.
pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The binary's last stdout line as JSON (the commands' result line).
pub fn last_json(out: &std::process::Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no stdout; stderr: {}", stderr(out)));
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("last stdout line is not JSON ({e}): {line}"))
}

/// Every line of a JSON-lines file (`metrics.jsonl`).
pub fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
