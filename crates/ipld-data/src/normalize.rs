//! Per-feature affine normalisation of a data matrix, x' = (x - shift) / scale, and its inverse
//! for samples. Raw measurements are rarely centred: a bias-free linear decoder (Appendix B.1)
//! then spends a latent direction on the data's mean. Centring (shift = the feature means) or
//! standardising (also scale = the feature standard deviations) before training, and mapping
//! samples back after decoding, lets the model spend its latents on the data's structure.

use serde::{Deserialize, Serialize};

use crate::{DataError, Dataset, InMemoryDataset};

/// Which normalisation to fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Normalize {
    /// Train on the data as given.
    None,
    /// Subtract each feature's mean.
    Center,
    /// Subtract each feature's mean and divide by its standard deviation (a constant feature is
    /// only centred).
    Standardize,
}

impl Normalize {
    /// The name as configs spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Center => "center",
            Self::Standardize => "standardize",
        }
    }

    /// The kind a name spells, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::None, Self::Center, Self::Standardize]
            .into_iter()
            .find(|k| k.name() == name)
    }
}

/// A fitted normalisation: per-feature shift and scale, applied as (x - shift) / scale.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalizer {
    kind: Normalize,
    shift: Vec<f32>,
    scale: Vec<f32>,
}

impl Normalizer {
    /// The identity on `dim` features (`Normalize::None`).
    pub fn identity(dim: usize) -> Self {
        Self {
            kind: Normalize::None,
            shift: vec![0.0; dim],
            scale: vec![1.0; dim],
        }
    }

    /// Fits `kind` to `data`: means and (population) standard deviations per feature, summed in
    /// f64 so the statistics do not depend on the row count's rounding.
    pub fn fit(kind: Normalize, data: &InMemoryDataset) -> Self {
        let (rows, dim) = (data.len(), data.dim());
        if kind == Normalize::None || rows == 0 {
            return Self::identity(dim);
        }
        let mut mean = vec![0f64; dim];
        for row in data.as_slice().chunks_exact(dim) {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += v as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= rows as f64);
        let mut scale = vec![1f32; dim];
        if kind == Normalize::Standardize {
            let mut var = vec![0f64; dim];
            for row in data.as_slice().chunks_exact(dim) {
                for ((s, &v), m) in var.iter_mut().zip(row).zip(&mean) {
                    *s += (v as f64 - m).powi(2);
                }
            }
            for (s, v) in scale.iter_mut().zip(&var) {
                let sd = (v / rows as f64).sqrt() as f32;
                // A constant feature has nothing to scale; dividing by ~0 would blow it up.
                if sd.is_normal() {
                    *s = sd;
                }
            }
        }
        Self {
            kind,
            shift: mean.iter().map(|&m| m as f32).collect(),
            scale,
        }
    }

    /// Rebuilds a normalizer from saved statistics (a checkpoint's), checking their shapes and
    /// values.
    pub fn from_parts(
        kind: Normalize,
        shift: Vec<f32>,
        scale: Vec<f32>,
    ) -> Result<Self, DataError> {
        if shift.len() != scale.len() {
            return Err(DataError::Shape(format!(
                "normalisation: {} shifts but {} scales",
                shift.len(),
                scale.len()
            )));
        }
        if let Some(i) = shift.iter().position(|v| !v.is_finite()) {
            return Err(DataError::Shape(format!(
                "normalisation: shift of feature {i} is {}",
                shift[i]
            )));
        }
        if let Some(i) = scale.iter().position(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(DataError::Shape(format!(
                "normalisation: scale of feature {i} is {} (must be finite and > 0)",
                scale[i]
            )));
        }
        Ok(Self { kind, shift, scale })
    }

    /// The kind this was fitted as.
    pub fn kind(&self) -> Normalize {
        self.kind
    }

    /// Whether this changes nothing (`Normalize::None`); then neither direction touches data.
    pub fn is_identity(&self) -> bool {
        self.kind == Normalize::None
    }

    /// Per-feature shift (the means, or zeros).
    pub fn shift(&self) -> &[f32] {
        &self.shift
    }

    /// Per-feature scale (the standard deviations, or ones).
    pub fn scale(&self) -> &[f32] {
        &self.scale
    }

    /// Maps raw rows (row-major, `shift.len()` columns) to training units in place.
    pub fn apply(&self, rows: &mut [f32]) {
        if self.is_identity() {
            return;
        }
        for row in rows.chunks_exact_mut(self.shift.len()) {
            for ((v, s), c) in row.iter_mut().zip(&self.shift).zip(&self.scale) {
                *v = (*v - s) / c;
            }
        }
    }

    /// Maps rows in training units (decoded samples) back to the data's raw units in place.
    pub fn invert(&self, rows: &mut [f32]) {
        if self.is_identity() {
            return;
        }
        for row in rows.chunks_exact_mut(self.shift.len()) {
            for ((v, s), c) in row.iter_mut().zip(&self.shift).zip(&self.scale) {
                *v = *v * c + s;
            }
        }
    }

    /// `data` in training units (a copy; the identity returns it unchanged).
    pub fn normalized(&self, data: InMemoryDataset) -> Result<InMemoryDataset, DataError> {
        if self.is_identity() {
            return Ok(data);
        }
        let (rows, cols) = (data.len(), data.dim());
        let mut v = data.into_vec();
        self.apply(&mut v);
        InMemoryDataset::new(v, rows, cols, "normalised data")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: &[[f32; 3]]) -> InMemoryDataset {
        let v: Vec<f32> = rows.iter().flatten().copied().collect();
        InMemoryDataset::new(v, rows.len(), 3, "test").unwrap()
    }

    #[test]
    fn standardize_gives_zero_mean_unit_variance_and_inverts() {
        // Column 0: mean 2, population sd sqrt(8/3); column 1 constant 5; column 2: mean -10,
        // sd 100 sqrt(2/3) (values -110, -10, 90).
        let raw = [[0.0, 5.0, -110.0], [2.0, 5.0, -10.0], [4.0, 5.0, 90.0]];
        let d = matrix(&raw);
        let n = Normalizer::fit(Normalize::Standardize, &d);
        assert_eq!(n.shift(), &[2.0, 5.0, -10.0]);
        let sd0 = (8.0f64 / 3.0).sqrt() as f32;
        let sd2 = (100.0 * (2.0f64 / 3.0).sqrt()) as f32;
        assert!((n.scale()[0] - sd0).abs() < 1e-6, "{:?}", n.scale());
        assert_eq!(n.scale()[1], 1.0, "a constant feature is only centred");
        assert!((n.scale()[2] - sd2).abs() < 1e-4, "{:?}", n.scale());
        let z = n.normalized(d.clone()).unwrap();
        for c in 0..3 {
            let col: Vec<f64> = (0..3).map(|r| z.row(r)[c] as f64).collect();
            let mean = col.iter().sum::<f64>() / 3.0;
            let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 3.0;
            assert!(mean.abs() < 1e-6, "column {c} mean {mean}");
            let want = if c == 1 { 0.0 } else { 1.0 };
            assert!((var - want).abs() < 1e-5, "column {c} variance {var}");
        }
        let mut back = z.into_vec();
        n.invert(&mut back);
        for (b, r) in back.iter().zip(raw.iter().flatten()) {
            assert!((b - r).abs() <= 1e-5 * r.abs().max(1.0), "{b} vs {r}");
        }
    }

    #[test]
    fn center_only_shifts_and_none_is_the_identity() {
        let d = matrix(&[[1.0, 10.0, 3.0], [3.0, 30.0, 3.0]]);
        let c = Normalizer::fit(Normalize::Center, &d);
        assert_eq!(c.shift(), &[2.0, 20.0, 3.0]);
        assert_eq!(c.scale(), &[1.0, 1.0, 1.0]);
        assert_eq!(
            c.normalized(d.clone()).unwrap().as_slice(),
            &[-1.0, -10.0, 0.0, 1.0, 10.0, 0.0]
        );
        let none = Normalizer::fit(Normalize::None, &d);
        assert!(none.is_identity());
        assert_eq!(none.normalized(d.clone()).unwrap(), d);
    }

    #[test]
    fn saved_statistics_are_checked() {
        assert!(Normalizer::from_parts(Normalize::Center, vec![0.0], vec![1.0]).is_ok());
        let e = Normalizer::from_parts(Normalize::Standardize, vec![0.0], vec![0.0]).unwrap_err();
        assert!(e.to_string().contains("scale of feature 0"), "{e}");
        let e = Normalizer::from_parts(Normalize::Center, vec![f32::NAN], vec![1.0]).unwrap_err();
        assert!(e.to_string().contains("shift of feature 0"), "{e}");
        assert!(Normalizer::from_parts(Normalize::Center, vec![0.0; 2], vec![1.0]).is_err());
        for k in [Normalize::None, Normalize::Center, Normalize::Standardize] {
            assert_eq!(Normalize::from_name(k.name()), Some(k));
        }
        assert_eq!(Normalize::from_name("zscore"), None);
    }
}
