//! The paper's synthetic benchmarks (Section 5.1, Appendix B.1): 2-d latent points z lifted to
//! d_x = 64 by x = A^T z, with A (2 x 64) having orthonormal rows.
//!
//! - `gmm`: 25 equally weighted components N((8i, 8j), I), i, j in {-2, ..., 2}.
//! - `circles`: radii 8 and 4 with equal counts, uniform angle, isotropic N(0, 0.4^2 I) noise,
//!   and A = [I_2, 0] so the first two ambient coordinates show the latent picture.
//!
//! For `gmm`, A^T is the Q factor of a seeded 64 x 2 Gaussian matrix (the construction behind
//! PyTorch's orthogonal initialisation, Saxe et al. 2014). Every draw uses ChaCha8 seeded from
//! the config, so the data are a pure function of (kind, points, ambient_dim, seed); the
//! constants the paper leaves open are recorded in docs/synthetic-data.md.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::{DataError, InMemoryDataset};

/// Which synthetic distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyntheticKind {
    /// 25-component Gaussian mixture on a 5 x 5 grid of spacing 8.
    Gmm,
    /// Two noisy concentric circles of radii 8 and 4.
    Circles,
}

impl SyntheticKind {
    /// The config name (`gmm`, `circles`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Gmm => "gmm",
            Self::Circles => "circles",
        }
    }
}

/// How to generate a synthetic dataset.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticConfig {
    /// The distribution.
    pub kind: SyntheticKind,
    /// Number of points M (10,000 in the paper).
    pub points: usize,
    /// Ambient dimension d_x (64 in the paper); must be at least the latent dimension 2.
    pub ambient_dim: usize,
    /// Seed of every random draw (latents and the lifting matrix).
    pub seed: u64,
}

impl SyntheticConfig {
    /// The paper's setting for `kind`: 10,000 points in 64 dimensions, with seed 0.
    pub fn paper(kind: SyntheticKind) -> Self {
        Self {
            kind,
            points: 10_000,
            ambient_dim: 64,
            seed: 0,
        }
    }

    /// Generates the dataset.
    pub fn generate(&self) -> Result<SyntheticData, DataError> {
        SyntheticData::generate(self)
    }
}

/// Latent dimension of both synthetic distributions.
pub const LATENT_DIM: usize = 2;
/// Grid spacing of the GMM means.
pub const GMM_SPACING: f64 = 8.0;
/// Radii of the two circles.
pub const CIRCLE_RADII: [f64; 2] = [8.0, 4.0];
/// Standard deviation of the isotropic noise added to circle points.
pub const CIRCLE_NOISE_STD: f64 = 0.4;

/// A generated synthetic dataset: latents, lifted observations and the lift.
#[derive(Debug, Clone)]
pub struct SyntheticData {
    /// The configuration that produced it.
    pub config: SyntheticConfig,
    /// Latent points z, [M, 2].
    pub latent: InMemoryDataset,
    /// Observations x = A^T z, [M, d_x].
    pub observed: InMemoryDataset,
    /// A, [2, d_x] row-major, with orthonormal rows.
    pub lift: Vec<f64>,
}

impl SyntheticData {
    /// Generates the dataset described by `config`.
    pub fn generate(config: &SyntheticConfig) -> Result<Self, DataError> {
        if config.points == 0 {
            return Err(DataError::Param {
                key: "points".into(),
                reason: "must be at least 1".into(),
            });
        }
        if config.ambient_dim < LATENT_DIM {
            return Err(DataError::Param {
                key: "ambient_dim".into(),
                reason: format!("must be at least {LATENT_DIM}, got {}", config.ambient_dim),
            });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let z = match config.kind {
            SyntheticKind::Gmm => gmm_latents(&mut rng, config.points),
            SyntheticKind::Circles => circle_latents(&mut rng, config.points),
        };
        let lift = match config.kind {
            SyntheticKind::Gmm => orthonormal_rows(&mut rng, LATENT_DIM, config.ambient_dim),
            SyntheticKind::Circles => {
                let mut a = vec![0.0; LATENT_DIM * config.ambient_dim];
                for i in 0..LATENT_DIM {
                    a[i * config.ambient_dim + i] = 1.0;
                }
                a
            }
        };
        let x = lift_points(&z, &lift, config.ambient_dim);
        let name = config.kind.name();
        Ok(Self {
            config: *config,
            latent: InMemoryDataset::new(
                z.iter().map(|v| *v as f32).collect(),
                config.points,
                LATENT_DIM,
                name,
            )?,
            observed: InMemoryDataset::new(x, config.points, config.ambient_dim, name)?,
            lift,
        })
    }
}

/// The structure a synthetic dataset's samples should show, in its ambient space: what the mode
/// and ring metrics of ipld-eval compare samples with (issue 22).
#[derive(Debug, Clone, PartialEq)]
pub enum KnownStructure {
    /// `gmm`: the 25 component means A^T mu_k, [25, d_x] row-major, and the components' common
    /// standard deviation (1).
    Modes {
        /// Component means in the ambient space.
        centers: Vec<f32>,
        /// Standard deviation of every component, per latent coordinate.
        sd: f64,
    },
    /// `circles`: the plane A (2 x d_x, orthonormal rows), the radii, and the noise standard
    /// deviation.
    Rings {
        /// The plane's two orthonormal rows.
        plane: Vec<f64>,
        /// Radii of the circles.
        radii: Vec<f64>,
        /// Standard deviation of the isotropic noise.
        sd: f64,
    },
}

impl SyntheticData {
    /// The structure of this dataset's distribution (not of its sample): the GMM's means or the
    /// circles' plane and radii, lifted by this dataset's A.
    pub fn structure(&self) -> KnownStructure {
        let dim = self.config.ambient_dim;
        match self.config.kind {
            SyntheticKind::Gmm => {
                let means: Vec<f64> = (0..25)
                    .flat_map(|c| {
                        let (i, j) = ((c / 5) as f64 - 2.0, (c % 5) as f64 - 2.0);
                        [GMM_SPACING * i, GMM_SPACING * j]
                    })
                    .collect();
                KnownStructure::Modes {
                    centers: lift_points(&means, &self.lift, dim),
                    sd: 1.0,
                }
            }
            SyntheticKind::Circles => KnownStructure::Rings {
                plane: self.lift.clone(),
                radii: CIRCLE_RADII.to_vec(),
                sd: CIRCLE_NOISE_STD,
            },
        }
    }
}

/// Latent and ambient dimensions of [`probabilistic_pca`].
pub const PPCA_DIMS: (usize, usize) = (2, 8);

/// Probabilistic PCA (Tipping & Bishop 1999), the model whose posterior the particle-noise checks
/// compare with in closed form (docs/training.md, "Noise scale"): x = A z + e with
/// z ~ N(0, I_2), e ~ N(0, I_8) and A = 2 [I_2; 0], `points` rows of 8, drawn with ChaCha8
/// from `seed`.
pub fn probabilistic_pca(points: usize, seed: u64) -> Result<InMemoryDataset, DataError> {
    let (dz, dx) = PPCA_DIMS;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut x = Vec::with_capacity(points * dx);
    for _ in 0..points {
        let z: Vec<f64> = (0..dz).map(|_| normal(&mut rng)).collect();
        for i in 0..dx {
            let signal = if i < dz { 2.0 * z[i] } else { 0.0 };
            x.push((signal + normal(&mut rng)) as f32);
        }
    }
    InMemoryDataset::new(x, points, dx, "probabilistic PCA")
}

fn normal<R: Rng>(rng: &mut R) -> f64 {
    rng.sample(StandardNormal)
}

/// Points from the 25-component mixture, component chosen uniformly per point.
fn gmm_latents<R: Rng>(rng: &mut R, n: usize) -> Vec<f64> {
    let mut z = Vec::with_capacity(n * 2);
    for _ in 0..n {
        let c = rng.random_range(0..25usize);
        let (i, j) = ((c / 5) as f64 - 2.0, (c % 5) as f64 - 2.0);
        z.push(GMM_SPACING * i + normal(rng));
        z.push(GMM_SPACING * j + normal(rng));
    }
    z
}

/// First half on the outer circle, second half on the inner one (equal counts; an odd point goes
/// to the outer circle), uniform angles, plus isotropic noise.
fn circle_latents<R: Rng>(rng: &mut R, n: usize) -> Vec<f64> {
    let outer = n.div_ceil(2);
    let mut z = Vec::with_capacity(n * 2);
    for p in 0..n {
        let r = if p < outer {
            CIRCLE_RADII[0]
        } else {
            CIRCLE_RADII[1]
        };
        let angle = rng.random_range(0.0..std::f64::consts::TAU);
        z.push(r * angle.cos() + CIRCLE_NOISE_STD * normal(rng));
        z.push(r * angle.sin() + CIRCLE_NOISE_STD * normal(rng));
    }
    z
}

/// A [rows, cols] matrix with orthonormal rows: Q^T from the QR factorisation of a Gaussian
/// [cols, rows] matrix, by modified Gram-Schmidt applied twice, signs fixed so diag(R) > 0.
pub fn orthonormal_rows<R: Rng>(rng: &mut R, rows: usize, cols: usize) -> Vec<f64> {
    assert!(rows <= cols, "need rows <= cols for orthonormal rows");
    let mut q: Vec<Vec<f64>> = (0..rows)
        .map(|_| (0..cols).map(|_| normal(rng)).collect())
        .collect();
    for i in 0..rows {
        for _pass in 0..2 {
            for j in 0..i {
                let dot: f64 = q[i].iter().zip(&q[j]).map(|(a, b)| a * b).sum();
                let qj = q[j].clone();
                for (a, b) in q[i].iter_mut().zip(&qj) {
                    *a -= dot * b;
                }
            }
        }
        let norm = q[i].iter().map(|a| a * a).sum::<f64>().sqrt();
        for a in &mut q[i] {
            *a /= norm;
        }
    }
    q.concat()
}

/// x_m = A^T z_m for every row of `z` ([M, rows]) and `a` ([rows, cols]).
fn lift_points(z: &[f64], a: &[f64], cols: usize) -> Vec<f32> {
    let rows = a.len() / cols;
    let mut x = Vec::with_capacity(z.len() / rows * cols);
    for zm in z.chunks_exact(rows) {
        for c in 0..cols {
            x.push((0..rows).map(|r| zm[r] * a[r * cols + c]).sum::<f64>() as f32);
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Dataset;

    fn gram(a: &[f64], rows: usize, cols: usize) -> Vec<f64> {
        let mut g = vec![0.0; rows * rows];
        for i in 0..rows {
            for j in 0..rows {
                g[i * rows + j] = (0..cols).map(|c| a[i * cols + c] * a[j * cols + c]).sum();
            }
        }
        g
    }

    #[test]
    fn lift_has_orthonormal_rows() {
        for kind in [SyntheticKind::Gmm, SyntheticKind::Circles] {
            let d = SyntheticConfig::paper(kind).generate().unwrap();
            let g = gram(&d.lift, 2, 64);
            for (i, v) in g.iter().enumerate() {
                let want = if i % 3 == 0 { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-12, "{kind:?} A A^T = {g:?}");
            }
            assert_eq!((d.observed.len(), d.observed.dim()), (10_000, 64));
            assert_eq!((d.latent.len(), d.latent.dim()), (10_000, 2));
        }
        let c = SyntheticConfig::paper(SyntheticKind::Circles)
            .generate()
            .unwrap();
        assert_eq!(&c.lift[..2], &[1.0, 0.0]);
        assert_eq!(&c.lift[64..66], &[0.0, 1.0]);
        // Circles: the first two ambient coordinates are the latent point, the rest are zero.
        assert_eq!(&c.observed.row(5)[..2], c.latent.row(5));
        assert!(c.observed.row(5)[2..].iter().all(|v| *v == 0.0));
    }

    #[test]
    fn lift_is_an_isometry_on_latents() {
        // ||x_m|| = ||z_m|| because A has orthonormal rows; and A x_m recovers z_m.
        let d = SyntheticConfig::paper(SyntheticKind::Gmm)
            .generate()
            .unwrap();
        for m in [0, 17, 9999] {
            let (x, z) = (d.observed.row(m), d.latent.row(m));
            let nx: f64 = x.iter().map(|v| (*v as f64).powi(2)).sum();
            let nz: f64 = z.iter().map(|v| (*v as f64).powi(2)).sum();
            assert!((nx - nz).abs() < 1e-4 * nz.max(1.0));
            for (r, zr) in z.iter().enumerate() {
                let back: f64 = (0..64).map(|c| d.lift[r * 64 + c] * x[c] as f64).sum();
                assert!((back - *zr as f64).abs() < 1e-4);
            }
        }
    }

    #[test]
    fn gmm_statistics_match_the_mixture() {
        // Mean 0 and per-coordinate variance 1 + 8^2 * Var(Unif{-2..2}) = 1 + 64 * 2 = 129;
        // every point lies near one of the 25 means (|offset| < 6 sd has prob ~1e-9 each).
        let d = SyntheticConfig::paper(SyntheticKind::Gmm)
            .generate()
            .unwrap();
        let n = d.latent.len() as f64;
        let mut counts = [0usize; 25];
        for c in 0..2 {
            let xs: Vec<f64> = (0..d.latent.len())
                .map(|m| d.latent.row(m)[c] as f64)
                .collect();
            let mean = xs.iter().sum::<f64>() / n;
            let var = xs.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
            // s.e. of the mean: sqrt(129 / n) = 0.114; allow 5 s.e.
            assert!(mean.abs() < 5.0 * (129.0 / n).sqrt(), "mean {mean}");
            // Var of the sample variance for this mixture: (mu4 - sigma^4)/n, mu4 = E[(X)^4]
            // with X = 8U + e: E[X^4] = 4096 E[U^4] + 6*64 E[U^2] + 3 = 4096*6.8 + 768 + 3.
            let mu4 = 4096.0 * 6.8 + 768.0 + 3.0;
            let se = ((mu4 - 129.0f64.powi(2)) / n).sqrt();
            assert!((var - 129.0).abs() < 5.0 * se, "var {var} (s.e. {se})");
        }
        for m in 0..d.latent.len() {
            let z = d.latent.row(m);
            let (i, j) = ((z[0] / 8.0).round(), (z[1] / 8.0).round());
            assert!(i.abs() <= 2.0 && j.abs() <= 2.0);
            assert!(
                (z[0] as f64 - 8.0 * i as f64).abs() < 6.0
                    && (z[1] as f64 - 8.0 * j as f64).abs() < 6.0
            );
            counts[((i + 2.0) * 5.0 + j + 2.0) as usize] += 1;
        }
        // Each count ~ Bin(10000, 1/25): mean 400, sd 19.6; allow 5 sd.
        assert!(
            counts
                .iter()
                .all(|c| (*c as f64 - 400.0).abs() < 5.0 * 19.6),
            "{counts:?}"
        );
    }

    #[test]
    fn probabilistic_pca_has_its_covariance() {
        // Cov x = A A^T + I = diag(5, 5, 1, ..., 1); sample variances within 5 s.e.
        // (var sqrt(2 / n)), covariances within 5 / sqrt(n) of 0 scaled by the sds.
        let n = 20_000;
        let d = probabilistic_pca(n, 3).unwrap();
        let (_, dx) = PPCA_DIMS;
        let x = d.as_slice();
        for i in 0..dx {
            for j in 0..=i {
                let c = (0..n)
                    .map(|m| x[m * dx + i] as f64 * x[m * dx + j] as f64)
                    .sum::<f64>()
                    / n as f64;
                let vi = if i < 2 { 5.0 } else { 1.0 };
                let vj = if j < 2 { 5.0 } else { 1.0 };
                let (want, tol) = if i == j {
                    (vi, 5.0 * vi * (2.0 / n as f64).sqrt())
                } else {
                    (0.0, 5.0 * (vi * vj / n as f64).sqrt())
                };
                assert!((c - want).abs() < tol, "cov {i} {j}: {c} vs {want}");
            }
        }
    }

    #[test]
    fn circles_have_equal_counts_and_right_radii() {
        let d = SyntheticConfig::paper(SyntheticKind::Circles)
            .generate()
            .unwrap();
        let radius = |m: usize| {
            let z = d.latent.row(m);
            ((z[0] as f64).powi(2) + (z[1] as f64).powi(2)).sqrt()
        };
        for (range, r) in [(0..5000, 8.0), (5000..10_000, 4.0)] {
            let rs: Vec<f64> = range.map(radius).collect();
            let n = rs.len() as f64;
            let mean = rs.iter().sum::<f64>() / n;
            // Radial noise has sd ~0.4 and mean offset ~ 0.4^2/(2r) (Rice): tolerance 5 s.e. + bias.
            assert!(
                (mean - r).abs() < 5.0 * 0.4 / n.sqrt() + 0.4 * 0.4 / r,
                "radius {mean} vs {r}"
            );
            assert!(rs.iter().all(|x| (x - r).abs() < 3.0));
        }
    }

    #[test]
    fn fully_determined_by_seed() {
        let a = SyntheticConfig::paper(SyntheticKind::Gmm)
            .generate()
            .unwrap();
        let b = SyntheticConfig::paper(SyntheticKind::Gmm)
            .generate()
            .unwrap();
        assert_eq!(a.observed, b.observed);
        let c = SyntheticConfig {
            seed: 1,
            ..SyntheticConfig::paper(SyntheticKind::Gmm)
        }
        .generate()
        .unwrap();
        assert_ne!(a.observed, c.observed);
        assert!(
            SyntheticConfig {
                points: 0,
                ..SyntheticConfig::paper(SyntheticKind::Gmm)
            }
            .generate()
            .is_err()
        );
    }

    /// The structure is the distribution's, in the ambient space: a gmm point's distance to its
    /// nearest lifted mean is its latent distance to the nearest grid mean (A has orthonormal
    /// rows), and a circles point's norm in the plane is its latent radius.
    #[test]
    fn the_structure_lifts_the_latent_means_and_plane() {
        let data = SyntheticConfig::paper(SyntheticKind::Gmm)
            .generate()
            .unwrap();
        let KnownStructure::Modes { centers, sd } = data.structure() else {
            panic!("gmm has modes")
        };
        assert_eq!((centers.len(), sd), (25 * 64, 1.0));
        let (z, x) = (data.latent.as_slice(), data.observed.as_slice());
        for m in 0..200 {
            let latent = (0..25)
                .map(|c| {
                    let (i, j) = ((c / 5) as f64 - 2.0, (c % 5) as f64 - 2.0);
                    (z[2 * m] as f64 - 8.0 * i).powi(2) + (z[2 * m + 1] as f64 - 8.0 * j).powi(2)
                })
                .fold(f64::INFINITY, f64::min);
            let ambient = centers
                .chunks_exact(64)
                .map(|c| {
                    x[64 * m..64 * (m + 1)]
                        .iter()
                        .zip(c)
                        .map(|(a, b)| (*a as f64 - *b as f64).powi(2))
                        .sum::<f64>()
                })
                .fold(f64::INFINITY, f64::min);
            assert!((latent.sqrt() - ambient.sqrt()).abs() < 1e-4, "point {m}");
        }
        let data = SyntheticConfig::paper(SyntheticKind::Circles)
            .generate()
            .unwrap();
        let KnownStructure::Rings { plane, radii, sd } = data.structure() else {
            panic!("circles has rings")
        };
        assert_eq!((radii, sd), (vec![8.0, 4.0], 0.4));
        let (z, x) = (data.latent.as_slice(), data.observed.as_slice());
        for m in 0..200 {
            let proj = |row: usize| {
                (0..64)
                    .map(|j| x[64 * m + j] as f64 * plane[64 * row + j])
                    .sum::<f64>()
            };
            let r_latent = (z[2 * m] as f64).hypot(z[2 * m + 1] as f64);
            assert!(
                (proj(0).hypot(proj(1)) - r_latent).abs() < 1e-4,
                "point {m}"
            );
        }
    }
}
