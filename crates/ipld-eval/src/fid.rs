//! Fréchet Inception Distance (Heusel et al. 2017), the image metric of the paper's Table 1 (5.2,
//! B.4): the Fréchet distance between Gaussians fitted to two feature sets,
//! d² = ||mu1 - mu2||² + tr S1 + tr S2 - 2 tr (S1 S2)^{1/2}.
//!
//! Everything is f64. tr (S1 S2)^{1/2} is computed as tr (S1^{1/2} S2 S1^{1/2})^{1/2}: both factors
//! are symmetric positive semi-definite, so two symmetric eigendecompositions suffice and no
//! complex square root of a non-symmetric matrix (scipy's `sqrtm`) is needed. Eigenvalues that
//! round-off pushes below zero are clamped to zero.

use std::path::Path;

use nalgebra::{DMatrix, DVector, SymmetricEigen};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::EvalError;

/// Mean and covariance of a feature set (the "statistics" FID compares).
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianStats {
    /// Feature mean, length d.
    pub mu: Vec<f64>,
    /// Covariance, d x d row-major, with the unbiased (n - 1) normaliser as in `np.cov`.
    pub sigma: Vec<f64>,
    /// Number of feature vectors the statistics came from.
    pub count: usize,
}

impl GaussianStats {
    /// Feature dimension d.
    pub fn dim(&self) -> usize {
        self.mu.len()
    }

    /// Statistics of `n` feature rows of width `d` (row-major f32), accumulated in f64.
    pub fn from_features(features: &[f32], d: usize) -> Result<Self, EvalError> {
        if d == 0 || !features.len().is_multiple_of(d) {
            return Err(EvalError::Input(format!(
                "features: {} values do not form rows of width {d}",
                features.len()
            )));
        }
        let n = features.len() / d;
        if n < 2 {
            return Err(EvalError::Input(format!(
                "features: a covariance needs at least 2 rows, got {n}"
            )));
        }
        if let Some(i) = features.iter().position(|v| !v.is_finite()) {
            return Err(EvalError::Input(format!(
                "features: non-finite value at row {}, column {}",
                i / d,
                i % d
            )));
        }
        let mut mu = vec![0f64; d];
        for row in features.chunks_exact(d) {
            for (m, &v) in mu.iter_mut().zip(row) {
                *m += v as f64;
            }
        }
        mu.iter_mut().for_each(|m| *m /= n as f64);
        // Centered Gram matrix through nalgebra's blocked product: X_c^T X_c / (n - 1).
        let xc = DMatrix::from_fn(n, d, |i, j| features[i * d + j] as f64 - mu[j]);
        let cov = xc.tr_mul(&xc) / (n as f64 - 1.0);
        Ok(Self {
            mu,
            sigma: row_major(&cov),
            count: n,
        })
    }

    fn check(&self, what: &str) -> Result<(), EvalError> {
        let d = self.dim();
        if d == 0 || self.sigma.len() != d * d {
            return Err(EvalError::Input(format!(
                "{what}: covariance has {} entries, expected {d} x {d}",
                self.sigma.len()
            )));
        }
        if self.mu.iter().chain(&self.sigma).any(|v| !v.is_finite()) {
            return Err(EvalError::Input(format!("{what}: non-finite statistics")));
        }
        Ok(())
    }

    /// Serialises as safetensors with f64 tensors `mu` \[d\], `sigma` [d, d] and metadata `count`.
    pub fn to_safetensors(&self) -> Result<Vec<u8>, EvalError> {
        self.check("statistics")?;
        let d = self.dim();
        let mu: Vec<u8> = self.mu.iter().flat_map(|v| v.to_le_bytes()).collect();
        let sigma: Vec<u8> = self.sigma.iter().flat_map(|v| v.to_le_bytes()).collect();
        let views = [
            ("mu", TensorView::new(Dtype::F64, vec![d], &mu)),
            ("sigma", TensorView::new(Dtype::F64, vec![d, d], &sigma)),
        ];
        let views: Vec<(&str, TensorView)> = views
            .into_iter()
            .map(|(k, v)| v.map(|v| (k, v)))
            .collect::<Result<_, _>>()
            .map_err(|e| EvalError::Input(format!("statistics: {e}")))?;
        let meta = std::collections::HashMap::from([
            ("format".to_string(), "ipld-fid-stats-v1".to_string()),
            ("count".to_string(), self.count.to_string()),
        ]);
        safetensors::serialize(views, Some(meta))
            .map_err(|e| EvalError::Input(format!("statistics: {e}")))
    }

    /// Parses what [`Self::to_safetensors`] wrote; `origin` names the source in errors.
    pub fn from_safetensors(bytes: &[u8], origin: &str) -> Result<Self, EvalError> {
        let bad = |what: String| EvalError::Input(format!("{origin}: {what}"));
        let (_, meta) = SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        let count = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("count"))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let read = |name: &str| -> Result<(Vec<usize>, Vec<f64>), EvalError> {
            let t = st
                .tensor(name)
                .map_err(|_| bad(format!("missing tensor `{name}`")))?;
            let data: Vec<f64> = match t.dtype() {
                Dtype::F64 => t
                    .data()
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
                Dtype::F32 => t
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64)
                    .collect(),
                other => return Err(bad(format!("tensor `{name}` has dtype {other:?}"))),
            };
            Ok((t.shape().to_vec(), data))
        };
        let (mshape, mu) = read("mu")?;
        let (sshape, sigma) = read("sigma")?;
        let d = mu.len();
        if mshape.len() != 1 || sshape != [d, d] {
            return Err(bad(format!(
                "shapes mu {mshape:?} and sigma {sshape:?} do not match"
            )));
        }
        let stats = Self { mu, sigma, count };
        stats.check(origin)?;
        Ok(stats)
    }

    /// Reads a statistics file written by [`Self::save`].
    pub fn load(path: &Path) -> Result<Self, EvalError> {
        let bytes = std::fs::read(path)
            .map_err(|e| EvalError::Input(format!("reading {}: {e}", path.display())))?;
        Self::from_safetensors(&bytes, &path.display().to_string())
    }

    /// Writes the statistics atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<(), EvalError> {
        let bytes = self.to_safetensors()?;
        let tmp = path.with_extension("safetensors.tmp");
        std::fs::write(&tmp, &bytes)
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|e| EvalError::Input(format!("writing {}: {e}", path.display())))
    }
}

fn row_major(m: &DMatrix<f64>) -> Vec<f64> {
    // nalgebra is column-major; the matrices here are symmetric but we transpose for clarity.
    m.transpose().as_slice().to_vec()
}

/// Symmetric square root U diag(sqrt(max(l, 0))) U^T of a symmetric PSD matrix.
fn sym_sqrt(m: DMatrix<f64>) -> DMatrix<f64> {
    let eig = SymmetricEigen::new(m);
    let s = DVector::from_iterator(
        eig.eigenvalues.len(),
        eig.eigenvalues.iter().map(|&l| l.max(0.0).sqrt()),
    );
    &eig.eigenvectors * DMatrix::from_diagonal(&s) * eig.eigenvectors.transpose()
}

/// tr (A B)^{1/2} for symmetric PSD A, B, as tr (A^{1/2} B A^{1/2})^{1/2}.
pub fn trace_sqrt_product(a: &[f64], b: &[f64], d: usize) -> f64 {
    let a = DMatrix::from_row_slice(d, d, a);
    let b = DMatrix::from_row_slice(d, d, b);
    let ra = sym_sqrt(symmetrize(a));
    let inner = symmetrize(&ra * b * &ra);
    // Only the eigenvalues: no eigenvectors accumulated (about half the cost at d = 2048).
    inner
        .symmetric_eigenvalues()
        .iter()
        .map(|&l| l.max(0.0).sqrt())
        .sum()
}

fn symmetrize(m: DMatrix<f64>) -> DMatrix<f64> {
    (&m + m.transpose()) * 0.5
}

/// Squared Fréchet distance between N(mu1, S1) and N(mu2, S2) (the FID when the statistics are
/// Inception pool features).
pub fn frechet_distance(a: &GaussianStats, b: &GaussianStats) -> Result<f64, EvalError> {
    a.check("first statistics")?;
    b.check("second statistics")?;
    if a.dim() != b.dim() {
        return Err(EvalError::Input(format!(
            "statistics have dimensions {} and {}",
            a.dim(),
            b.dim()
        )));
    }
    let d = a.dim();
    let mean: f64 = a.mu.iter().zip(&b.mu).map(|(x, y)| (x - y).powi(2)).sum();
    let trace = |s: &[f64]| (0..d).map(|i| s[i * d + i]).sum::<f64>();
    let cross = trace_sqrt_product(&a.sigma, &b.sigma, d);
    Ok(mean + trace(&a.sigma) + trace(&b.sigma) - 2.0 * cross)
}
