//! `cargo xtask experiment ppca`: do the particles sample the posterior? IPLD trained on
//! probabilistic PCA (x = A z + e, z ~ N(0, I_2), e ~ N(0, I_8), A = 2 [I_2; 0]; M = 2,000,
//! |B| = 200, N = 16, c_KL = 1, no warm-up, 2,000 steps), then the ratio of the particles' mean
//! per-point covariance trace to the closed-form posterior's, tr((C^-1 + W^T W)^-1) with W the
//! trained decoder and C the covariance of all particles (`ipld_train::diagnostics`). A sampler
//! scores 1. One row per update rule and noise scale (docs/training.md, "Noise scale").
//!
//! Writes `results.md` (a table: mean and each seed) under `--out`.

use std::path::PathBuf;

use anyhow::Context;
use candle_core::Device;
use ipld_data::probabilistic_pca;
use ipld_train::diagnostics::{PPCA_OVERRIDES, PPCA_POINTS, PPCA_SEED, posterior_spread};
use ipld_train::{RunConfig, Trainer};

/// The variants: a label and its `--set` overrides (on top of the common PPCA settings).
pub const VARIANTS: &[(&str, &[&str])] = &[
    (
        "Algorithm 1, paper noise (h = 0.01)",
        &[
            "particles.update.type=langevin",
            "particles.step_size.initial=0.01",
            "particles.noise_scale=paper",
        ],
    ),
    (
        "Algorithm 1, posterior noise (h = 0.01)",
        &[
            "particles.update.type=langevin",
            "particles.step_size.initial=0.01",
            "particles.noise_scale=posterior",
        ],
    ),
    ("Algorithm 2, paper noise", &["particles.noise_scale=paper"]),
    (
        "Algorithm 2, posterior noise, V per particle (eq. 66b)",
        &["particles.noise_scale=posterior"],
    ),
    (
        "Algorithm 2, posterior noise, V per particle, bias-corrected",
        &[
            "particles.noise_scale=posterior",
            "particles.update.bias_correction=true",
        ],
    ),
    (
        "Algorithm 2, posterior noise, V per point",
        &[
            "particles.noise_scale=posterior",
            "particles.update.second_moment_of=point",
        ],
    ),
    (
        "Algorithm 2, posterior noise, V per point, bias-corrected",
        &[
            "particles.noise_scale=posterior",
            "particles.update.second_moment_of=point",
            "particles.update.bias_correction=true",
        ],
    ),
];

/// Settings of the experiment.
pub struct Ppca {
    /// Seeds per variant.
    pub seeds: u64,
    /// Output directory.
    pub out_dir: PathBuf,
}

/// Trains one variant and returns its ratio.
fn ratio(sets: &[&str], seed: u64) -> anyhow::Result<f64> {
    let sets: Vec<String> = PPCA_OVERRIDES
        .iter()
        .chain(sets)
        .map(|s| s.to_string())
        .chain([format!("seed={seed}")])
        .collect();
    let cfg = RunConfig::preset("gmm")?.with_overrides(&sets, "ppca")?;
    let steps = cfg.train.steps;
    let data = probabilistic_pca(PPCA_POINTS, PPCA_SEED)?;
    let mut t = Trainer::new(cfg.validated("ppca")?, data, Device::Cpu)?;
    for _ in 0..steps {
        t.train_step()?;
    }
    Ok(posterior_spread(&t)?.ratio)
}

impl Ppca {
    /// Runs every variant for every seed, prints and writes the table.
    pub fn run(&self) -> anyhow::Result<()> {
        let mut md = String::from("| variant | ratio (mean) | per seed |\n| --- | --- | --- |\n");
        for (label, sets) in VARIANTS {
            let rs = (0..self.seeds)
                .map(|s| ratio(sets, s))
                .collect::<anyhow::Result<Vec<_>>>()
                .with_context(|| label.to_string())?;
            let mean = rs.iter().sum::<f64>() / rs.len() as f64;
            let each: Vec<String> = rs.iter().map(|r| format!("{r:.3}")).collect();
            let row = format!("| {label} | {mean:.3} | {} |\n", each.join(", "));
            print!("{row}");
            md.push_str(&row);
        }
        crate::results::write_results(&self.out_dir, &md)
    }
}
