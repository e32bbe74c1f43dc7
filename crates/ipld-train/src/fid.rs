//! `ipld-train fid`: Fréchet Inception Distance (Heusel et al. 2017) between two image sets, the
//! paper's image metric (5.2, B.2: 50,000 samples against the data). Each side is a folder of
//! images or a statistics file (`.safetensors` with `mu`, `sigma`, written by `--save-stats` or
//! cached per dataset), so reference statistics are computed once. A run's own FID
//! ([`fid_of_samples`]) compares its samples with its training images through that cache.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use ipld_data::{Dataset, ImageSet, load_image_folder_native};
use ipld_eval::inception::FEATURE_DIM;
use ipld_eval::{GaussianStats, InceptionV3, frechet_distance};
use serde::Serialize;

use crate::data::{load_images, resolve_image_path};
use crate::error::RunError;
use crate::eval::reference_indices;
use crate::progress::Progress;
use crate::trainer::Trainer;

/// Options of an FID computation.
#[derive(Debug, Clone)]
pub struct FidOptions {
    /// Use at most this many images per side (50,000 in the paper).
    pub limit: usize,
    /// Inception batch size.
    pub batch: usize,
    /// The converted Inception weights (`cargo xtask fetch-inception`).
    pub weights: PathBuf,
    /// Write the statistics of the first input here (when it is a folder).
    pub save_stats: Option<PathBuf>,
    /// Progress display.
    pub progress: Progress,
}

/// The default Inception weights: under `$IPLD_DATA_DIR` (or `~/.cache/ipld/data`).
pub fn default_weights() -> PathBuf {
    ipld_eval::inception::weights_path(&ipld_data::default_data_dir())
}

/// The result line.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FidSummary {
    /// The Fréchet distance.
    pub fid: f64,
    /// Images (or the statistics' count) of the first input.
    pub real_count: usize,
    /// Images (or the statistics' count) of the second input.
    pub fake_count: usize,
    /// Seconds spent extracting features.
    pub feature_seconds: f64,
    /// What makes this number less comparable (too few images on a side).
    pub warnings: Vec<String>,
}

/// Inception statistics of the first `limit` images of `set`.
pub fn image_stats(
    net: &InceptionV3,
    set: &ImageSet,
    limit: usize,
    batch: usize,
    progress: Progress,
    label: &str,
) -> Result<GaussianStats, RunError> {
    let n = set.len().min(limit);
    let [c, h, w] = set.shape();
    let pixels = set.pixels_255();
    let pixels = &pixels[..n * c * h * w];
    let bar = progress.bar(
        n as u64,
        &format!("{label} {{bar:30}} {{pos}}/{{len}} images [{{elapsed_precise}}<{{eta_precise}}]"),
    );
    let mut last_log = 0;
    let feats = net
        .features_u8(pixels, (c, h, w), batch, |done| {
            if let Some(b) = &bar {
                b.set_position(done as u64);
            } else if progress == Progress::Log && (done - last_log >= 500 || done == n) {
                last_log = done;
                tracing::info!(done, total = n, "{label}: Inception features");
            }
        })
        .map_err(|e| RunError::eval(Path::new(set.source()), e))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    GaussianStats::from_features(&feats, FEATURE_DIM)
        .map_err(|e| RunError::eval(Path::new(set.source()), e))
}

/// One side of an FID comparison, opened (and its images counted) before any features.
enum Input {
    /// Saved statistics.
    Stats(GaussianStats),
    /// An image folder, its first `limit` images used.
    Images(ImageSet),
}

impl Input {
    fn open(path: &Path, limit: usize) -> Result<Self, RunError> {
        if !path.exists() {
            return Err(RunError::invalid(
                path,
                "does not exist (FID takes an image folder or a statistics file)",
            ));
        }
        if path.is_file() {
            return GaussianStats::load(path).map(Input::Stats).map_err(|e| {
                let detail = if path.extension().is_some_and(|x| x == "safetensors") {
                    format!(" ({e})")
                } else {
                    String::new()
                };
                RunError::invalid(
                    path,
                    format!(
                        "neither an image folder nor an FID statistics file (a .safetensors with \
                         `mu`, `sigma` and `count`, written by `fid --save-stats`){detail}"
                    ),
                )
            });
        }
        if !path.is_dir() {
            return Err(RunError::invalid(
                path,
                "neither an image folder nor a statistics file",
            ));
        }
        let set = load_image_folder_native(path)?;
        if set.len().min(limit) < 2 {
            return Err(RunError::invalid(
                path,
                format!("FID needs at least 2 images; the folder has {}", set.len()),
            ));
        }
        Ok(Input::Images(set))
    }

    /// Images (or the statistics' sample count) this side contributes.
    fn count(&self, limit: usize) -> usize {
        match self {
            Input::Stats(s) => s.count,
            Input::Images(set) => set.len().min(limit),
        }
    }
}

/// Below this many images a side's covariance (2,048 features) is rank-deficient and FID is
/// biased upwards (Chong & Forsyth 2020); the paper uses 50,000.
pub const FID_MIN_UNBIASED: usize = 2048;

/// Statistics of one opened side.
fn stats_of(
    input: Input,
    net: &mut Option<InceptionV3>,
    opts: &FidOptions,
    label: &str,
) -> Result<GaussianStats, RunError> {
    let set = match input {
        Input::Stats(s) => return Ok(s),
        Input::Images(set) => set,
    };
    if net.is_none() {
        *net = Some(
            InceptionV3::load(&opts.weights, &Device::Cpu)
                .map_err(|e| RunError::eval(&opts.weights, e))?,
        );
    }
    image_stats(
        net.as_ref().expect("loaded"),
        &set,
        opts.limit,
        opts.batch,
        opts.progress,
        label,
    )
}

/// FID between `real` and `fake` (folders of images or statistics files). Both sides are opened
/// and counted before any features are computed, so a missing or wrong input fails at once.
pub fn fid_paths(real: &Path, fake: &Path, opts: &FidOptions) -> Result<FidSummary, RunError> {
    if opts.limit < 2 || opts.batch == 0 {
        return Err(RunError::invalid(
            real,
            format!(
                "--limit {} / --batch {}: need limit >= 2 and batch >= 1",
                opts.limit, opts.batch
            ),
        ));
    }
    let start = Instant::now();
    let a = Input::open(real, opts.limit)?;
    let b = Input::open(fake, opts.limit)?;
    if opts.save_stats.is_some() && !matches!(a, Input::Images(_)) {
        return Err(RunError::invalid(
            real,
            "--save-stats needs an image folder as the first input",
        ));
    }
    let needs_net = [&a, &b].iter().any(|i| matches!(i, Input::Images(_)));
    if needs_net && !opts.weights.is_file() {
        return Err(RunError::invalid(
            &opts.weights,
            "the Inception weights are missing: run `cargo xtask fetch-inception` or pass \
             `--inception FILE`",
        ));
    }
    let mut warnings = Vec::new();
    for (side, path, input) in [("real", real, &a), ("fake", fake, &b)] {
        let n = input.count(opts.limit);
        // Statistics written by other tools may not record their count (0).
        if n > 0 && n < FID_MIN_UNBIASED {
            let w = format!(
                "{side} side {}: {n} images, fewer than {FID_MIN_UNBIASED} (the feature \
                 dimension): FID is biased upwards and comparable only at equal counts; the \
                 paper uses 50,000",
                path.display()
            );
            tracing::warn!("{w}");
            warnings.push(w);
        }
    }
    tracing::info!(
        real = a.count(opts.limit),
        fake = b.count(opts.limit),
        "FID inputs"
    );
    let mut net = None;
    let a = stats_of(a, &mut net, opts, "real")?;
    if let Some(out) = &opts.save_stats {
        a.save(out).map_err(|e| RunError::eval(out, e))?;
    }
    let b = stats_of(b, &mut net, opts, "fake")?;
    let fid = frechet_distance(&a, &b).map_err(|e| RunError::eval(fake, e))?;
    Ok(FidSummary {
        fid,
        real_count: a.count,
        fake_count: b.count,
        feature_seconds: start.elapsed().as_secs_f64(),
        warnings,
    })
}

/// FID of decoded samples against the first `eval.reference_points` training images (a seeded
/// subset when fewer, the MMD reference), the reference statistics cached under the data
/// directory's `fid-stats/`.
pub fn fid_of_samples(
    trainer: &Trainer,
    set: &ImageSet,
    progress: Progress,
) -> Result<f64, RunError> {
    let cfg = trainer.config();
    let dir = Path::new(set.source());
    let src = cfg
        .data
        .images
        .as_ref()
        .ok_or_else(|| RunError::invalid(dir, "FID needs an image run"))?;
    let shape = src.shape();
    let weights = default_weights();
    let net = InceptionV3::load(&weights, &Device::Cpu).map_err(|e| RunError::eval(&weights, e))?;
    let n_ref = cfg.eval.reference_points.min(trainer.data().len());
    let src = resolve_image_path(src);
    // The same training points as the MMD reference (a seeded subset when fewer).
    let idx = reference_indices(trainer);
    let key = reference_stats_key(
        &cfg.data.name(),
        &shape,
        src.path(),
        cfg.data.max_points,
        &idx,
    );
    let cache = ipld_data::default_data_dir()
        .join("fid-stats")
        .join(format!("{key}.safetensors"));
    let real = match GaussianStats::load(&cache) {
        Ok(s) if s.count == n_ref => s,
        _ => {
            let data = load_images(&src, cfg.data.max_points)?.select(&idx)?;
            let s = image_stats(&net, &data, n_ref, 50, progress, "FID reference")?;
            if let Some(parent) = cache.parent() {
                std::fs::create_dir_all(parent).map_err(|e| RunError::io(parent, e))?;
            }
            s.save(&cache).map_err(|e| RunError::eval(&cache, e))?;
            s
        }
    };
    let fake = image_stats(&net, set, usize::MAX, 50, progress, "FID samples")?;
    frechet_distance(&real, &fake).map_err(|e| RunError::eval(dir, e))
}

/// The cache name of a reference set's statistics. It hashes the file, `data.max_points` and the
/// chosen indices: runs on other subsets of one file (another `max_points`, seed or
/// `eval.reference_points`) must not share statistics.
fn reference_stats_key(
    name: &str,
    shape: &[usize],
    path: &Path,
    max_points: usize,
    idx: &[usize],
) -> String {
    let mut id = path.display().to_string().into_bytes();
    id.extend_from_slice(&(max_points as u64).to_le_bytes());
    for &i in idx {
        id.extend_from_slice(&(i as u64).to_le_bytes());
    }
    let shape: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!(
        "{name}-{}-{}-{:016x}",
        shape.join("x"),
        idx.len(),
        fnv1a(&id)
    )
}

/// FNV-1a, 64 bit: a stable short hash for cache file names.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_stats_key_separates_subsets_of_one_file() {
        let path = Path::new("/data/mnist5k/mnist_5k.csv.gz");
        let shape = [1, 28, 28];
        let every_fifth: Vec<usize> = (0..1000).map(|i| i * 5).collect();
        let seeded: Vec<usize> = (0..1000).map(|i| i * 5 + 1).collect();
        let base = reference_stats_key("mnist_5k", &shape, path, 1000, &every_fifth);
        assert_eq!(
            base,
            reference_stats_key("mnist_5k", &shape, path, 1000, &every_fifth)
        );
        assert!(base.starts_with("mnist_5k-1x28x28-1000-"), "{base}");
        // Another `max_points` with the same positions, other positions, another file.
        assert_ne!(
            base,
            reference_stats_key("mnist_5k", &shape, path, 5000, &every_fifth)
        );
        assert_ne!(
            base,
            reference_stats_key("mnist_5k", &shape, path, 1000, &seeded)
        );
        assert_ne!(
            base,
            reference_stats_key(
                "mnist_5k",
                &shape,
                Path::new("/other.csv"),
                1000,
                &every_fifth
            )
        );
    }
}
