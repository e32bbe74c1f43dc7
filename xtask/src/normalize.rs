//! `cargo xtask experiment normalize`: which `data.normalize` a user's raw file should get (issue
//! 22). The gmm data of the preset, as a user would hand it over: with every feature offset (by
//! 50 + 5 j) and, in a second variant, also scaled per feature (by 10^((j mod 8 - 3.5) / 2),
//! 0.018 to 56, mixed units). Each is trained with `none`, `center` and `standardize`, beside the
//! tidy data itself, with the gmm preset's settings otherwise. Samples are scored in the data's
//! own units (MMD² at the median-heuristic bandwidth) and, mapped back to the tidy units, by the
//! mode metrics (precision, modes covered) against the GMM's known means.
//!
//! Writes `results.md` (mean and each seed per row) under `--out`.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use candle_core::Device;
use ipld_data::{Dataset, InMemoryDataset, KnownStructure};
use ipld_eval::{MmdConfig, median_heuristic_gamma, mmd2_unbiased, mode_metrics};
use ipld_train::data::synthetic_config;
use ipld_train::eval::{generate, reference};
use ipld_train::{RunConfig, Trainer};

/// How the tidy data are turned into a user's raw file.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Units {
    Tidy,
    Offset,
    OffsetScaled,
}

impl Units {
    fn label(self) -> &'static str {
        match self {
            Self::Tidy => "tidy (the preset's data)",
            Self::Offset => "offset",
            Self::OffsetScaled => "offset + per-feature scale",
        }
    }

    /// Feature j's raw value is a_j x + b_j.
    fn affine(self, j: usize) -> (f64, f64) {
        match self {
            Self::Tidy => (1.0, 0.0),
            Self::Offset => (1.0, 50.0 + 5.0 * j as f64),
            Self::OffsetScaled => (
                10f64.powf(((j % 8) as f64 - 3.5) / 2.0),
                50.0 + 5.0 * j as f64,
            ),
        }
    }

    fn apply(self, x: &InMemoryDataset) -> anyhow::Result<InMemoryDataset> {
        let d = x.dim();
        let v = x
            .as_slice()
            .chunks_exact(d)
            .flat_map(|r| {
                r.iter().enumerate().map(move |(j, &v)| {
                    let (a, b) = self.affine(j);
                    (a * v as f64 + b) as f32
                })
            })
            .collect();
        Ok(InMemoryDataset::new(v, x.len(), d, self.label())?)
    }

    fn undo(self, rows: &mut [f32], d: usize) {
        for r in rows.chunks_exact_mut(d) {
            for (j, v) in r.iter_mut().enumerate() {
                let (a, b) = self.affine(j);
                *v = ((*v as f64 - b) / a) as f32;
            }
        }
    }
}

/// The rows: data units and normalisation.
const ROWS: &[(Units, &str)] = &[
    (Units::Tidy, "none"),
    (Units::Offset, "none"),
    (Units::Offset, "center"),
    (Units::Offset, "standardize"),
    (Units::OffsetScaled, "none"),
    (Units::OffsetScaled, "center"),
    (Units::OffsetScaled, "standardize"),
];

/// Settings of the experiment.
pub struct Normalize {
    /// Seeds per row.
    pub seeds: u64,
    /// Particles per point.
    pub particles: usize,
    /// Output directory.
    pub out_dir: PathBuf,
}

/// One run's scores: MMD² at the median-heuristic bandwidth in the data's units, precision and
/// modes covered in the tidy units, and the final loss.
struct Scores {
    mmd_median: f64,
    precision: f64,
    modes: usize,
    loss: f64,
}

fn one(units: Units, normalize: &str, seed: u64, n: usize) -> anyhow::Result<Scores> {
    let sets = [
        format!("data.normalize={normalize}"),
        format!("particles.count={n}"),
        format!("seed={seed}"),
    ];
    let cfg = RunConfig::preset("gmm")?.with_overrides(&sets, "normalize")?;
    let synthetic = synthetic_config(&cfg)
        .context("the gmm preset names synthetic data")?
        .generate()?;
    let raw = units.apply(&synthetic.observed)?;
    let d = raw.dim();
    let mut t = Trainer::new(cfg.validated("normalize")?, raw, Device::Cpu)?;
    let mut loss = f64::NAN;
    while t.step() < t.config().train.steps {
        loss = t.train_step()?.loss;
    }
    let cfg = t.config().clone();
    let mut s = generate(&t, cfg.eval.samples, &cfg.eval.sampler, seed, &mut |_| {})?;
    let refs = reference(&t)?;
    let gamma = median_heuristic_gamma(&s.data, &refs, d, 1000)?;
    let kernel = MmdConfig {
        gamma,
        ..cfg.eval.mmd
    };
    let mmd_median = mmd2_unbiased(&s.data, &refs, d, &kernel)?;
    units.undo(&mut s.data, d);
    let KnownStructure::Modes { centers, sd } = synthetic.structure() else {
        anyhow::bail!("gmm has modes");
    };
    let m = mode_metrics(&s.data, d, &centers, 3.0 * sd)?;
    Ok(Scores {
        mmd_median,
        precision: m.precision,
        modes: m.modes_covered,
        loss,
    })
}

impl Normalize {
    /// Runs every row for every seed, prints and writes the table.
    pub fn run(&self) -> anyhow::Result<()> {
        let mut md = format!(
            "gmm preset, N = {}, 1,000 steps, seeds 0..{}; MMD² at the median-heuristic bandwidth \
             in the data's units; precision and modes covered after mapping samples back to the \
             tidy units.\n\n| data | data.normalize | MMD² (median bw) | precision | modes \
             covered | final loss | precision per seed |\n| --- | --- | --- | --- | --- | --- | --- |\n",
            self.particles, self.seeds
        );
        for &(units, normalize) in ROWS {
            let runs = (0..self.seeds)
                .map(|s| one(units, normalize, s, self.particles))
                .collect::<anyhow::Result<Vec<_>>>()
                .with_context(|| format!("{} / {normalize}", units.label()))?;
            let k = runs.len() as f64;
            let mean = |f: &dyn Fn(&Scores) -> f64| runs.iter().map(f).sum::<f64>() / k;
            let each: Vec<String> = runs.iter().map(|r| format!("{:.3}", r.precision)).collect();
            let mut row = String::new();
            writeln!(
                row,
                "| {} | {normalize} | {:.5} | {:.3} | {:.1} | {:.3} | {} |",
                units.label(),
                mean(&|r| r.mmd_median),
                mean(&|r| r.precision),
                mean(&|r| r.modes as f64),
                mean(&|r| r.loss),
                each.join(", ")
            )?;
            print!("{row}");
            md.push_str(&row);
        }
        crate::results::write_results(&self.out_dir, &md)
    }
}
