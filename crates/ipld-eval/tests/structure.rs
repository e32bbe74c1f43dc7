//! Mode and ring metrics on constructed samples whose scores have closed forms: the data score
//! about 0.99, a sample spread uniformly over the data's hull scores the disks' area fraction,
//! a one-mode sample covers 1 of 25 with KL = ln 25, and a sample off the data's plane scores 0.

use ipld_eval::{mode_metrics, ring_metrics};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

const DIM: usize = 8;

/// Two orthonormal rows of 8: the plane (x0 + x1, x2 - x3) / sqrt(2), so no coordinate alone
/// shows it.
fn plane() -> Vec<f64> {
    let s = std::f64::consts::FRAC_1_SQRT_2;
    let mut p = vec![0.0; 2 * DIM];
    p[0] = s;
    p[1] = s;
    p[DIM + 2] = s;
    p[DIM + 3] = -s;
    p
}

fn lift(z: &[(f64, f64)], off_plane: f64) -> Vec<f32> {
    let p = plane();
    let mut x = Vec::with_capacity(z.len() * DIM);
    for &(a, b) in z {
        for j in 0..DIM {
            x.push((a * p[j] + b * p[DIM + j]) as f32);
        }
        // Coordinate 7 is orthogonal to the plane.
        let last = x.len() - 1;
        x[last] += off_plane as f32;
    }
    x
}

fn gmm_means() -> Vec<(f64, f64)> {
    let mut m = Vec::new();
    for i in -2..=2 {
        for j in -2..=2 {
            m.push((8.0 * i as f64, 8.0 * j as f64));
        }
    }
    m
}

fn gaussian(rng: &mut ChaCha8Rng) -> f64 {
    rng.sample(StandardNormal)
}

/// |observed - expected| within 4 binomial standard errors.
fn within_4_se(observed: f64, p: f64, n: usize) {
    let se = (p * (1.0 - p) / n as f64).sqrt();
    assert!(
        (observed - p).abs() < 4.0 * se,
        "{observed} vs {p} (4 s.e. = {})",
        4.0 * se
    );
}

#[test]
fn mode_metrics_score_the_data_a_uniform_hull_and_one_mode_as_their_closed_forms() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let means = gmm_means();
    let centers = lift(&means, 0.0);
    let n = 20_000;
    let data: Vec<(f64, f64)> = (0..n)
        .map(|i| {
            let (a, b) = means[i % 25];
            (a + gaussian(&mut rng), b + gaussian(&mut rng))
        })
        .collect();
    let r = mode_metrics(&lift(&data, 0.0), DIM, &centers, 3.0).unwrap();
    // P(|N(0, I_2)| <= 3) = 1 - exp(-9/2).
    within_4_se(r.precision, 1.0 - (-4.5f64).exp(), n);
    assert_eq!((r.modes_covered, r.modes), (25, 25));
    // 25 cells of about 790 precise samples each: KL of an equal split is 0, sampling noise
    // gives about (K - 1) / (2 n) = 6e-4.
    assert!(r.kl_to_uniform < 3e-3, "{}", r.kl_to_uniform);

    // Uniform over [-19, 19]²: the 25 disjoint disks of radius 3 cover 25 * 9 pi / 38².
    let hull: Vec<(f64, f64)> = (0..n)
        .map(|_| (rng.random_range(-19.0..19.0), rng.random_range(-19.0..19.0)))
        .collect();
    let r = mode_metrics(&lift(&hull, 0.0), DIM, &centers, 3.0).unwrap();
    within_4_se(
        r.precision,
        25.0 * 9.0 * std::f64::consts::PI / (38.0 * 38.0),
        n,
    );
    // Each disk still holds 0.49 / 25 = 2% of the samples, above a quarter of the 4% share:
    // the blob covers every mode, and only the precision tells it from the data.
    assert_eq!(r.modes_covered, 25);

    // One mode: every precise sample in the centre component.
    let one: Vec<(f64, f64)> = (0..n)
        .map(|_| (gaussian(&mut rng), gaussian(&mut rng)))
        .collect();
    let r = mode_metrics(&lift(&one, 0.0), DIM, &centers, 3.0).unwrap();
    within_4_se(r.precision, 1.0 - (-4.5f64).exp(), n);
    assert_eq!(r.modes_covered, 1);
    assert!((r.kl_to_uniform - 25f64.ln()).abs() < 1e-12);

    // The data moved 5 off their plane: no sample is within 3 of a mode.
    let r = mode_metrics(&lift(&data, 5.0), DIM, &centers, 3.0).unwrap();
    assert_eq!(r.precision, 0.0);
    assert_eq!(r.modes_covered, 0);
    assert!((r.kl_to_uniform - 25f64.ln()).abs() < 1e-12);
}

#[test]
fn ring_metrics_score_the_data_a_filled_disk_and_one_ring_as_their_closed_forms() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (radii, sd, n) = ([8.0, 4.0], 0.4, 20_000);
    let angle = |rng: &mut ChaCha8Rng| rng.random_range(0.0..std::f64::consts::TAU);
    let data: Vec<(f64, f64)> = (0..n)
        .map(|i| {
            let (r, t) = (radii[i % 2], angle(&mut rng));
            (
                r * t.cos() + sd * gaussian(&mut rng),
                r * t.sin() + sd * gaussian(&mut rng),
            )
        })
        .collect();
    let rep = ring_metrics(&lift(&data, 0.0), DIM, &plane(), &radii, 3.0 * sd).unwrap();
    // The distance to a ring of radius R >> sd is about |radial noise|: P(|N| <= 3) = 0.9973,
    // less a little for the curvature; and equal counts on both rings.
    assert!(rep.ring_fraction > 0.99, "{}", rep.ring_fraction);
    within_4_se(rep.ring_shares[0], 0.5, n);

    // Uniform on the disk of radius 10: the annuli [R - t, R + t] cover 4 pi R t / (100 pi).
    let disk: Vec<(f64, f64)> = (0..n)
        .map(|_| {
            let (r, t) = (10.0 * rng.random::<f64>().sqrt(), angle(&mut rng));
            (r * t.cos(), r * t.sin())
        })
        .collect();
    let rep = ring_metrics(&lift(&disk, 0.0), DIM, &plane(), &radii, 1.2).unwrap();
    within_4_se(rep.ring_fraction, 4.0 * (8.0 + 4.0) * 1.2 / 100.0, n);
    // The outer annulus is twice the inner one's area.
    assert!(
        (rep.ring_shares[0] - 2.0 / 3.0).abs() < 0.03,
        "{:?}",
        rep.ring_shares
    );

    // One ring only, then the same moved 2 off the plane (sqrt(radial² + 4) > 1.2).
    let outer: Vec<(f64, f64)> = data.iter().copied().step_by(2).collect();
    let rep = ring_metrics(&lift(&outer, 0.0), DIM, &plane(), &radii, 1.2).unwrap();
    assert_eq!(rep.ring_shares, vec![1.0, 0.0]);
    let rep = ring_metrics(&lift(&outer, 2.0), DIM, &plane(), &radii, 1.2).unwrap();
    assert_eq!(rep.ring_fraction, 0.0);
    assert_eq!(rep.ring_shares, vec![0.0, 0.0]);
}

#[test]
fn bad_inputs_are_refused_by_name() {
    let centers = lift(&gmm_means(), 0.0);
    let mut x = lift(&[(0.0, 0.0), (8.0, 8.0)], 0.0);
    let e = mode_metrics(&x[..DIM + 1], DIM, &centers, 3.0).unwrap_err();
    assert!(e.to_string().contains("samples"), "{e}");
    let e = mode_metrics(&x, DIM, &centers, 0.0).unwrap_err();
    assert!(e.to_string().contains("radius"), "{e}");
    x[DIM + 3] = f32::NAN;
    let e = mode_metrics(&x, DIM, &centers, 3.0).unwrap_err();
    assert!(
        e.to_string().contains("row 1") && e.to_string().contains("column 3"),
        "{e}"
    );
    let x = lift(&[(8.0, 0.0)], 0.0);
    let e = ring_metrics(&x, DIM, &plane()[..DIM], &[8.0], 1.2).unwrap_err();
    assert!(e.to_string().contains("plane"), "{e}");
    let e = ring_metrics(&x, DIM, &plane(), &[8.0, -1.0], 1.2).unwrap_err();
    assert!(e.to_string().contains("radii"), "{e}");
    let e = ring_metrics(&x, DIM, &plane(), &[8.0], f64::NAN).unwrap_err();
    assert!(e.to_string().contains("tolerance"), "{e}");
}
