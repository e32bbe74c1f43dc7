//! The paper's synthetic benchmarks (Appendix B.1): generate the 25-component GMM and the two
//! circles, lifted from 2-d to 64-d, write the GMM to `.npy` and read it back, and print how the
//! latents spread over the mixture's components and the circles' rings.
//!
//! `cargo run --release -p ipld-data --example synthetic`

use ipld_data::{
    CIRCLE_RADII, Dataset, GMM_SPACING, SyntheticConfig, SyntheticKind, load_matrix, save_matrix,
};

fn main() -> Result<(), ipld_data::DataError> {
    let gmm = SyntheticConfig::paper(SyntheticKind::Gmm).generate()?;
    println!(
        "gmm: {} points, observed in {}-d, latents in {}-d",
        gmm.observed.len(),
        gmm.observed.dim(),
        gmm.latent.dim()
    );
    // Component of each latent: the nearest of the 5 x 5 grid of means (GMM_SPACING) i, j in
    // {-2, ..., 2}.
    let mut counts = [0usize; 25];
    for z in gmm.latent.as_slice().chunks_exact(2) {
        let cell = |v: f32| ((v as f64 / GMM_SPACING).round().clamp(-2.0, 2.0) + 2.0) as usize;
        counts[cell(z[0]) * 5 + cell(z[1])] += 1;
    }
    let (lo, hi) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    println!("gmm: points per component between {lo} and {hi} (uniform would be 400)");

    let path = std::env::temp_dir().join(format!("ipld-gmm-{}.npy", std::process::id()));
    save_matrix(&path, &gmm.observed)?;
    let back = load_matrix(&path)?;
    let same = back.as_slice() == gmm.observed.as_slice();
    println!("wrote and read back {}: identical = {same}", path.display());
    let _ = std::fs::remove_file(&path);

    let circles = SyntheticConfig::paper(SyntheticKind::Circles).generate()?;
    let radii: Vec<f32> = circles
        .latent
        .as_slice()
        .chunks_exact(2)
        .map(|z| (z[0] * z[0] + z[1] * z[1]).sqrt())
        .collect();
    let split = ((CIRCLE_RADII[0] + CIRCLE_RADII[1]) / 2.0) as f32;
    let inner = radii.iter().filter(|&&r| r < split).count();
    println!(
        "circles: {inner} points inside radius {split} (the ring of radius {}), {} outside",
        CIRCLE_RADII[1],
        radii.len() - inner
    );
    Ok(())
}
