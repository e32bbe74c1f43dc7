//! The paper's image pictures for a run: the particle clouds of a few training points decoded at
//! chosen epochs (Appendix D.2, Figure 5) and linear interpolation between two training points'
//! particles, decoded (D.1, Figure 4: lerp(x, y, s) = s x + (1 - s) y). Each picture is an 8-bit
//! PNG grid written atomically into the run directory.

use std::path::Path;

use candle_core::{DType, Tensor};
use ipld_data::{Dataset, ImageSet, save_image_grid};
use ipld_models::Decoder;

use crate::error::{RunError, TrainError};
use crate::trainer::Trainer;

/// The interpolation picture's file name.
pub const INTERPOLATION_PNG: &str = "interpolation.png";
/// Interpolation points per row (s = 0, 1/(K-1), ..., 1).
pub const INTERPOLATION_STEPS: usize = 10;

/// `k` training indices spread evenly over the data (so sorted files show every class).
pub fn picture_points(trainer: &Trainer, k: usize) -> Vec<usize> {
    let m = trainer.data().len();
    let k = k.clamp(1, m);
    (0..k).map(|i| i * m / k).collect()
}

fn image_shape(trainer: &Trainer) -> Result<[usize; 3], TrainError> {
    trainer
        .config()
        .data
        .images
        .as_ref()
        .map(|s| s.shape())
        .ok_or_else(|| TrainError::Invalid("pictures need image data".into()))
}

fn decode(trainer: &Trainer, z: Vec<f32>, rows: usize) -> Result<Vec<f32>, TrainError> {
    let dz = trainer.config().data.latent_dim;
    let z = Tensor::from_vec(z, (rows, dz), trainer.device())?;
    Ok(trainer
        .decoder()
        .decode(&z)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?)
}

/// The latents a point is represented by: its particles, or for DiffusionVAE none.
fn particles(trainer: &Trainer, points: &[usize]) -> Result<Option<(Vec<f32>, usize)>, TrainError> {
    let Some(cloud) = trainer.synced_cloud()? else {
        return Ok(None);
    };
    let mut z = Vec::new();
    cloud.gather_into(points, &mut z)?;
    Ok(Some((z, cloud.particles())))
}

/// Writes `clouds/epoch-EEEE.png`: one row per picture point, the data image first, then its N
/// decoded particles.
pub fn cloud_snapshot(trainer: &Trainer, epoch: u64, dir: &Path) -> Result<(), RunError> {
    let points = picture_points(trainer, trainer.config().eval.picture_points);
    let Some((z, n)) = particles(trainer, &points)? else {
        return Ok(());
    };
    let shape = image_shape(trainer)?;
    let dx = trainer.data().dim();
    let decoded = decode(trainer, z, points.len() * n)?;
    let mut data = Vec::new();
    trainer.data().gather_into(&points, &mut data)?;
    let mut grid = Vec::with_capacity(points.len() * (n + 1) * dx);
    for (i, _) in points.iter().enumerate() {
        grid.extend_from_slice(&data[i * dx..(i + 1) * dx]);
        grid.extend_from_slice(&decoded[i * n * dx..(i + 1) * n * dx]);
    }
    let set = ImageSet::from_f32(&grid, shape, "particle cloud")?;
    let out = dir.join("clouds");
    std::fs::create_dir_all(&out).map_err(|e| RunError::io(&out, e))?;
    let path = out.join(format!("epoch-{epoch:04}.png"));
    save_image_grid(&set, points.len(), n + 1, &path)?;
    Ok(())
}

/// Writes the interpolation picture: for consecutive pairs of picture points (m1, m2), the
/// decoded lerp(z^{m1,0}, z^{m2,0}, s) for s from 1 down to 0, between the two data images.
/// DiffusionVAE runs (no particles) write nothing.
pub fn interpolation(trainer: &Trainer, path: &Path) -> Result<(), RunError> {
    let points = picture_points(trainer, trainer.config().eval.picture_points.max(2));
    let Some((z, n)) = particles(trainer, &points)? else {
        return Ok(());
    };
    let dz = trainer.config().data.latent_dim;
    let shape = image_shape(trainer)?;
    let dx = trainer.data().dim();
    let pairs: Vec<(usize, usize)> = (0..points.len() / 2).map(|p| (2 * p, 2 * p + 1)).collect();
    let k = INTERPOLATION_STEPS;
    let mut lat = Vec::with_capacity(pairs.len() * k * dz);
    for &(a, b) in &pairs {
        let (za, zb) = (
            &z[a * n * dz..a * n * dz + dz],
            &z[b * n * dz..b * n * dz + dz],
        );
        for j in 0..k {
            let s = 1.0 - j as f32 / (k - 1) as f32;
            lat.extend(za.iter().zip(zb).map(|(x, y)| s * x + (1.0 - s) * y));
        }
    }
    let decoded = decode(trainer, lat, pairs.len() * k)?;
    let mut data = Vec::new();
    trainer.data().gather_into(&points, &mut data)?;
    let mut grid = Vec::with_capacity(pairs.len() * (k + 2) * dx);
    for (p, &(a, b)) in pairs.iter().enumerate() {
        grid.extend_from_slice(&data[a * dx..(a + 1) * dx]);
        grid.extend_from_slice(&decoded[p * k * dx..(p + 1) * k * dx]);
        grid.extend_from_slice(&data[b * dx..(b + 1) * dx]);
    }
    let set = ImageSet::from_f32(&grid, shape, "interpolation")?;
    Ok(save_image_grid(&set, pairs.len(), k + 2, path)?)
}
