//! Shared helpers: a small, fast configuration for tests.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write;
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
    tensors_of(&std::fs::read(path).unwrap())
}

/// [`tensors`] of a checkpoint held in memory (its metadata, e.g. the config, left out).
pub fn tensors_of(bytes: &[u8]) -> HashMap<String, (Vec<usize>, Vec<u8>)> {
    let st = SafeTensors::deserialize(bytes).unwrap();
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

/// Image runs at toy size (tests/images.rs, tests/mpi.rs). 24 grey 8 x 8 "digits": a bright bar whose position and orientation depend on the index.
pub fn write_image_csv(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    for i in 0..24 {
        let mut row = Vec::new();
        for y in 0..8 {
            for x in 0..8 {
                let on = if i % 2 == 0 { x == i % 8 } else { y == i % 8 };
                row.push(if on {
                    "250".to_string()
                } else {
                    format!("{}", (x * 3 + y) % 20)
                });
            }
        }
        row.push((i % 10).to_string());
        writeln!(f, "{}", row.join(",")).unwrap();
    }
}

pub fn image_config(csv: &Path, steps: u64, extra: &[&str]) -> RunConfig {
    let text = format!(
        r#"
method = "ipld"
seed = 3
[data]
synthetic = "gmm"
path = ""
points = 0
ambient_dim = 0
seed = 0
latent_dim = 8
images = {{ format = "csv", path = "{}", height = 8, width = 8, max_value = 255 }}
[model.prior]
type = "dit"
channels = 2
size = 2
patch = 1
hidden = 8
depth = 1
heads = 2
mlp_ratio = 2
frequency_dim = 8
[model.decoder]
type = "conv"
latent_channels = 2
latent_size = 2
out_channels = 1
base_channels = 4
channel_mult = [1, 2, 2]
res_blocks = 0
groups = 2
sigma = 0.5
[diffusion]
loss = "simple"
[diffusion.schedule]
steps = 50
kind = {{ type = "linear", beta_start = 1e-4, beta_end = 0.02 }}
[particles]
count = 2
warm_start_steps = 6
step_size = {{ initial = 0.05, decay_per_epoch = 0.995 }}
update = {{ type = "adaptive-langevin", momentum = 0.9, second_moment = 0.999, eps = 1e-8, batch_noise_scale = true }}
[train]
steps = {steps}
batch_size = 8
kl = {{ coefficient = 0.01, warmup_steps = 10 }}
optimizer_theta = {{ lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.01 }}
optimizer_phi = {{ lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.01 }}
optimizer_encoder = {{ lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.01 }}
lr_decay_phi = 0.9
ema = {{ decay = 0.9, start_step = 4 }}
two_stage = false
log_every = 4
checkpoint_every = 100
[eval]
samples = 16
reference_points = 24
sampler = {{ type = "ddim", steps = 10, eta = 0.0 }}
mmd = {{ gamma = 0.01, block = 64 }}
fid = false
"#,
        csv.display()
    );
    let cfg = RunConfig::from_toml(&text, "test config").unwrap();
    let sets: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    cfg.with_overrides(&sets, "test config").unwrap()
}
