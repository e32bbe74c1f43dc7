//! `ipld-train fid`: Fréchet Inception Distance (Heusel et al. 2017) between two image sets, the
//! paper's image metric (5.2, B.2: 50,000 samples against the data). Each side is a folder of
//! images or a statistics file (`.safetensors` with `mu`, `sigma`, written by `--save-stats` or
//! cached per dataset), so reference statistics are computed once.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use ipld_data::{Dataset, ImageSet, load_image_folder_native};
use ipld_eval::inception::FEATURE_DIM;
use ipld_eval::{GaussianStats, InceptionV3, frechet_distance};
use serde::Serialize;

use crate::{Progress, RunError};

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
}

fn err(path: &Path, e: impl std::fmt::Display) -> RunError {
    RunError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
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
    let bar = (progress == Progress::Bar).then(|| {
        let b = indicatif::ProgressBar::new(n as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(&format!(
                "{label} {{bar:30}} {{pos}}/{{len}} images [{{elapsed_precise}}<{{eta_precise}}]"
            ))
            .expect("template"),
        );
        b
    });
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
        .map_err(|e| err(Path::new(set.source()), e))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    GaussianStats::from_features(&feats, FEATURE_DIM).map_err(|e| err(Path::new(set.source()), e))
}

fn stats_of(
    path: &Path,
    net: &mut Option<InceptionV3>,
    opts: &FidOptions,
    label: &str,
) -> Result<(GaussianStats, bool), RunError> {
    if path.is_file() {
        return Ok((GaussianStats::load(path).map_err(|e| err(path, e))?, false));
    }
    if !path.is_dir() {
        return Err(err(path, "neither an image folder nor a statistics file"));
    }
    let set = load_image_folder_native(path).map_err(|e| err(path, e))?;
    if set.len().min(opts.limit) < 2 {
        return Err(err(path, "FID needs at least 2 images"));
    }
    if net.is_none() {
        *net = Some(
            InceptionV3::load(&opts.weights, &Device::Cpu).map_err(|e| err(&opts.weights, e))?,
        );
    }
    let stats = image_stats(
        net.as_ref().expect("loaded"),
        &set,
        opts.limit,
        opts.batch,
        opts.progress,
        label,
    )?;
    Ok((stats, true))
}

/// FID between `real` and `fake` (folders of images or statistics files).
pub fn fid_paths(real: &Path, fake: &Path, opts: &FidOptions) -> Result<FidSummary, RunError> {
    if opts.limit < 2 || opts.batch == 0 {
        return Err(err(
            real,
            format!(
                "--limit {} / --batch {}: need limit >= 2 and batch >= 1",
                opts.limit, opts.batch
            ),
        ));
    }
    let start = Instant::now();
    let mut net = None;
    let (a, a_from_images) = stats_of(real, &mut net, opts, "real")?;
    if let Some(out) = &opts.save_stats {
        if !a_from_images {
            return Err(err(
                real,
                "--save-stats needs an image folder as the first input",
            ));
        }
        a.save(out).map_err(|e| err(out, e))?;
    }
    let (b, _) = stats_of(fake, &mut net, opts, "fake")?;
    let fid = frechet_distance(&a, &b).map_err(|e| err(fake, e))?;
    Ok(FidSummary {
        fid,
        real_count: a.count,
        fake_count: b.count,
        feature_seconds: start.elapsed().as_secs_f64(),
    })
}

/// FNV-1a, 64 bit: a stable short hash for cache file names.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}
