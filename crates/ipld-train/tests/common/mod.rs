//! Shared helpers: a small, fast configuration for tests.

#![allow(dead_code)]

use ipld_train::RunConfig;

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
        "model.eps.hidden=32",
        "model.eps.time_embedding=16",
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
    ipld_train::config::method_overrides(method).unwrap()
}
