//! The training data a configuration names: synthetic (Appendix B.1), a user's matrix file, or an
//! image set, looked up under the data directory when a relative path does not exist here.

use std::path::Path;

use ipld_data::{
    Dataset, ImageSet, ImageSourceConfig, InMemoryDataset, SyntheticConfig, load_matrix,
};

use crate::config::RunConfig;
use crate::error::RunError;

/// Loads the training data the config names.
pub fn load_data(cfg: &RunConfig) -> Result<InMemoryDataset, RunError> {
    if let Some(src) = &cfg.data.images {
        let set = load_images(src, cfg.data.max_points)?;
        let idx: Vec<usize> = (0..set.len()).collect();
        let mut flat = Vec::with_capacity(set.len() * set.dim());
        set.gather_into(&idx, &mut flat)?;
        return Ok(InMemoryDataset::new(
            flat,
            set.len(),
            set.dim(),
            set.source(),
        )?);
    }
    let data = match synthetic_config(cfg) {
        Some(s) => s.generate().map_err(|e| e.under("data"))?.observed,
        None => load_matrix(Path::new(&cfg.data.path))?,
    };
    Ok(data)
}

/// The synthetic benchmark the config trains on; None for a user's file or images.
pub fn synthetic_config(cfg: &RunConfig) -> Option<SyntheticConfig> {
    (cfg.data.images.is_none() && cfg.data.path.is_empty()).then_some(SyntheticConfig {
        kind: cfg.data.synthetic,
        points: cfg.data.points,
        ambient_dim: cfg.data.ambient_dim,
        seed: cfg.data.seed,
    })
}

/// Resolves a configured image path: as given when it exists, else under the data directory.
pub fn resolve_image_path(src: &ImageSourceConfig) -> ImageSourceConfig {
    let p = src.path();
    if p.exists() || p.is_absolute() {
        return src.clone();
    }
    let alt = ipld_data::default_data_dir().join(p);
    let mut out = src.clone();
    if alt.exists() {
        out.set_path(alt);
    }
    out
}

/// Loads the image set of `[data.images]` (the first `max_points` images when > 0).
pub fn load_images(src: &ImageSourceConfig, max_points: usize) -> Result<ImageSet, RunError> {
    let src = resolve_image_path(src);
    let set = src.load().map_err(|source| {
        let hint = if src.path().exists() {
            String::new()
        } else {
            format!(
                " (not found here nor under the data directory {}; mnist5k and digits come from \
                 `cargo xtask fetch-data NAME`)",
                ipld_data::default_data_dir().display()
            )
        };
        RunError::Data {
            source: source.under("data.images"),
            hint,
        }
    })?;
    if max_points == 0 || max_points >= set.len() {
        return Ok(set);
    }
    // Evenly spaced, so a file sorted by class (mnist5k) keeps every class.
    let idx: Vec<usize> = (0..max_points)
        .map(|i| i * set.len() / max_points)
        .collect();
    Ok(set.select(&idx)?)
}
