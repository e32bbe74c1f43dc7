//! The paper's image pictures for a run: the particle clouds of a few training points decoded at
//! chosen epochs (Appendix D.2, Figure 5) and linear interpolation between two training points'
//! particles, decoded (D.1, Figure 4: lerp(x, y, s) = s x + (1 - s) y). Each picture is an 8-bit
//! PNG grid written atomically into the run directory, magnified to at least
//! [`MIN_PICTURE_WIDTH`] pixels, titled with the run's name and step, and with column headers.

use std::path::Path;

use candle_core::{DType, Tensor};
use ipld_data::{Dataset, ImageSet, image_grid, save_png};
use ipld_models::Decoder;

use crate::error::{RunError, TrainError};
use crate::trainer::Trainer;

/// The interpolation picture's file name.
pub const INTERPOLATION_PNG: &str = "interpolation.png";
/// Interpolation points per row (s = 0, 1/(K-1), ..., 1).
pub const INTERPOLATION_STEPS: usize = 10;

/// Pictures are magnified (by a whole factor) to at least this width.
pub const MIN_PICTURE_WIDTH: usize = 512;

const TITLE_PX: f64 = 17.0;
const HEADER_PX: f64 = 13.0;
/// Height in pixels of the title band above a picture's grid.
pub const TITLE_BAND: u32 = 27;
/// Height in pixels of the column-header band between the title and the grid.
pub const HEADER_BAND: u32 = 19;

/// Writes the first `rows * cols` images of `set` as a grid magnified to at least
/// [`MIN_PICTURE_WIDTH`] pixels, under `title` and, when given, one header per column.
pub fn save_labelled_grid(
    set: &ImageSet,
    (rows, cols): (usize, usize),
    title: &str,
    headers: &[String],
    path: &Path,
) -> Result<(), RunError> {
    let [_, _, w] = set.shape();
    let scale = grid_scale(cols, w);
    let grid = image_grid(set, rows, cols, scale);
    let title_h = TITLE_BAND;
    let header_h = if headers.is_empty() { 0 } else { HEADER_BAND };
    let title_w = crate::canvas::layout(title, TITLE_PX).width as u32 + 16;
    let width = grid.width().max(title_w);
    let mut img = image::RgbImage::from_pixel(
        width,
        title_h + header_h + grid.height(),
        image::Rgb([255, 255, 255]),
    );
    let left = (width - grid.width()) / 2;
    image::imageops::replace(&mut img, &grid, left as i64, (title_h + header_h) as i64);
    crate::canvas::draw_text_rgb(&mut img, title, TITLE_PX, width as i32 / 2, 4, [0, 0, 0]);
    let cell = (w * scale + 2) as i32;
    for (j, head) in headers.iter().enumerate().take(cols) {
        let centre = left as i32 + 2 + j as i32 * cell + (w * scale) as i32 / 2;
        crate::canvas::draw_text_rgb(
            &mut img,
            head,
            HEADER_PX,
            centre,
            title_h as i32,
            [60, 60, 60],
        );
    }
    Ok(save_png(&img, path)?)
}

/// The smallest whole magnification that makes `cols` images of width `w`, with their 2-pixel
/// borders, at least [`MIN_PICTURE_WIDTH`] wide.
pub fn grid_scale(cols: usize, w: usize) -> usize {
    let borders = 2 * cols + 2;
    MIN_PICTURE_WIDTH
        .saturating_sub(borders)
        .div_ceil((cols * w).max(1))
        .max(1)
}

/// The run's name for picture titles: its directory's name.
pub fn run_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

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

/// Writes `clouds/epoch-EEEE.png`: one row per picture point, the data image first, then its N
/// decoded particles. Every rank calls it (the particles are gathered from the ranks that hold
/// them); only the one with `write` set writes.
pub fn cloud_snapshot(
    trainer: &Trainer,
    epoch: u64,
    dir: &Path,
    write: bool,
) -> Result<(), RunError> {
    let points = picture_points(trainer, trainer.config().eval.picture_points);
    let Some((z, n)) = trainer.gather_particles(&points)? else {
        return Ok(());
    };
    if !write {
        return Ok(());
    }
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
    let title = format!(
        "{}: particles of {} training points, epoch {epoch} (step {})",
        run_name(dir),
        points.len(),
        trainer.step()
    );
    let mut headers = vec!["data".to_string()];
    headers.extend((1..=n).map(|i| format!("z{i}")));
    save_labelled_grid(&set, (points.len(), n + 1), &title, &headers, &path)
}

/// Writes the interpolation picture: for consecutive pairs of picture points (m1, m2), the
/// decoded lerp(z^{m1,0}, z^{m2,0}, s) for s from 1 down to 0, between the two data images.
/// DiffusionVAE runs (no particles) write nothing. Every rank calls it; only the one with
/// `write` set writes.
pub fn interpolation(trainer: &Trainer, path: &Path, write: bool) -> Result<(), RunError> {
    let points = picture_points(trainer, trainer.config().eval.picture_points.max(2));
    let Some((z, n)) = trainer.gather_particles(&points)? else {
        return Ok(());
    };
    if !write {
        return Ok(());
    }
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
    let title = format!(
        "{}: lerp between two points' first particles, decoded (step {})",
        run_name(path.parent().unwrap_or(Path::new("."))),
        trainer.step()
    );
    let mut headers = vec!["x".to_string()];
    headers.extend((0..k).map(|j| format!("{:.2}", 1.0 - j as f64 / (k - 1) as f64)));
    headers.push("y".to_string());
    save_labelled_grid(&set, (pairs.len(), k + 2), &title, &headers, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The magnification is the smallest whole factor reaching the minimum width.
    #[test]
    fn grid_scale_is_the_smallest_factor_reaching_the_minimum_width() {
        let width = |cols: usize, w: usize, k: usize| cols * (w * k + 2) + 2;
        for (cols, w) in [(8, 28), (3, 28), (12, 8), (1, 64), (40, 32)] {
            let k = grid_scale(cols, w);
            assert!(
                width(cols, w, k) >= MIN_PICTURE_WIDTH || k == 1,
                "{cols} x {w}"
            );
            if k > 1 {
                assert!(
                    width(cols, w, k - 1) < MIN_PICTURE_WIDTH,
                    "{cols} x {w}: {k}"
                );
            }
        }
        // mnist5k's 8 x 8 sample grid: 28-pixel digits magnified 3 times (690 px).
        assert_eq!(grid_scale(8, 28), 3);
        assert_eq!(grid_scale(40, 32), 1);
    }
}
