//! `samples.png`: the first two coordinates of training data beside generated samples (the view
//! of Figure 2), drawn with plotters and an embedded font so it renders on any machine.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;

use crate::canvas::Canvas;
use crate::error::RunError;

/// Draws a picture with `draw` into a temporary sibling of `path` (plotters writes PNGs in
/// place), then renames it over `path`; on failure the temporary file is removed and `path`
/// is left as it was.
pub fn draw_atomically(
    path: &Path,
    draw: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<(), RunError> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.tmp{}.png", std::process::id()));
    let result = draw(&tmp)
        .map_err(|message| RunError::Plot {
            path: path.to_path_buf(),
            message,
        })
        .and_then(|_| std::fs::rename(&tmp, path).map_err(|e| RunError::io(path, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

static FONT: Once = Once::new();

/// Registers the embedded sans-serif font with plotters (idempotent). Text is drawn by
/// [`Canvas`]; plotters still asks the font for sizes in a few places.
pub fn register_font() {
    FONT.call_once(|| {
        // Ubuntu Light, shipped inside the epaint_default_fonts crate (Ubuntu font licence).
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        );
    });
}

/// Draws two scatter panels, data and samples, sharing axes; rows are [n, dim] with dim >= 2.
pub fn scatter_pair(
    path: &Path,
    title: &str,
    data: &[f32],
    samples: &[f32],
    dim: usize,
) -> Result<(), String> {
    register_font();
    let xy = |v: &[f32]| -> Vec<(f32, f32)> {
        v.chunks_exact(dim)
            .map(|r| (r[0], if dim > 1 { r[1] } else { 0.0 }))
            .collect()
    };
    let (a, b) = (xy(data), xy(samples));
    let finite = a
        .iter()
        .chain(&b)
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for (x, y) in finite {
        lo = lo.min(x.min(*y));
        hi = hi.max(x.max(*y));
    }
    if !lo.is_finite() || !hi.is_finite() {
        return Err("no finite points to plot".into());
    }
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let range = (lo - pad)..(hi + pad);
    let root = Canvas::new(path, (1000, 520)).into_drawing_area();
    let e = |e: &dyn std::fmt::Display| e.to_string();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(|x| e(&x))?;
    let panels = root.split_evenly((1, 2));
    for (area, (name, pts, color)) in panels.iter().zip([
        ("training data", &a, RGBColor(40, 90, 160)),
        ("generated", &b, RGBColor(200, 60, 40)),
    ]) {
        let mut chart = ChartBuilder::on(area)
            .caption(format!("{name} (x1, x2)"), ("sans-serif", 18))
            .margin(8)
            // Room for the last x tick label, centred on the axis's end.
            .margin_right(24)
            .x_label_area_size(30)
            .y_label_area_size(40)
            .build_cartesian_2d(range.clone(), range.clone())
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .disable_mesh()
            .draw()
            .map_err(|x| e(&x))?;
        chart
            .draw_series(
                pts.iter()
                    .map(|p| Circle::new(*p, 1, color.mix(0.35).filled())),
            )
            .map_err(|x| e(&x))?;
    }
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
