//! The dataset interface the trainer uses (length, dimension, gather rows by index) and an
//! in-memory, row-major f32 implementation that validates its contents once, up front.

use candle_core::{Device, Tensor};

use crate::DataError;

/// A finite set of points x^1..x^M in R^d, addressed by 0-based index.
pub trait Dataset {
    /// Number of points M.
    fn len(&self) -> usize;
    /// Dimension d of each point.
    fn dim(&self) -> usize;
    /// True if there are no points.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Appends the rows `indices` (row-major) to `out`.
    fn gather_into(&self, indices: &[usize], out: &mut Vec<f32>) -> Result<(), DataError>;
    /// The rows `indices` as an f32 tensor [indices.len(), d] on `device`.
    fn gather(&self, indices: &[usize], device: &Device) -> Result<Tensor, DataError> {
        let mut out = Vec::with_capacity(indices.len() * self.dim());
        self.gather_into(indices, &mut out)?;
        Ok(Tensor::from_vec(out, (indices.len(), self.dim()), device)?)
    }
}

/// A validated [M, d] row-major f32 matrix held in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct InMemoryDataset {
    data: Vec<f32>,
    rows: usize,
    cols: usize,
}

impl InMemoryDataset {
    /// Wraps `data` as [rows, cols]; `source` names where it came from for error messages.
    /// Rejects a length mismatch, zero columns, and any NaN/Inf (naming the first bad row).
    pub fn new(data: Vec<f32>, rows: usize, cols: usize, source: &str) -> Result<Self, DataError> {
        if cols == 0 {
            return Err(DataError::Shape(format!(
                "{source}: points must have at least one column"
            )));
        }
        if data.len() != rows * cols {
            return Err(DataError::Shape(format!(
                "{source}: {} values do not fill a [{rows}, {cols}] matrix",
                data.len()
            )));
        }
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(DataError::NonFinite {
                source_name: source.to_string(),
                row: i / cols,
                col: i % cols,
                value: data[i],
            });
        }
        Ok(Self { data, rows, cols })
    }

    /// The matrix, row-major.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// The whole matrix as a tensor [M, d].
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor, DataError> {
        Ok(Tensor::from_slice(
            &self.data,
            (self.rows, self.cols),
            device,
        )?)
    }

    /// Consumes the dataset, returning its row-major values.
    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }
}

impl Dataset for InMemoryDataset {
    fn len(&self) -> usize {
        self.rows
    }
    fn dim(&self) -> usize {
        self.cols
    }
    fn gather_into(&self, indices: &[usize], out: &mut Vec<f32>) -> Result<(), DataError> {
        out.reserve(indices.len() * self.cols);
        for &i in indices {
            if i >= self.rows {
                return Err(DataError::Shape(format!(
                    "index {i} out of range for a dataset of {} points",
                    self.rows
                )));
            }
            out.extend_from_slice(self.row(i));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gathers_rows_in_order() {
        let d = InMemoryDataset::new((0..12).map(|v| v as f32).collect(), 4, 3, "test").unwrap();
        let t: Vec<Vec<f32>> = d
            .gather(&[2, 0, 2], &Device::Cpu)
            .unwrap()
            .to_vec2()
            .unwrap();
        assert_eq!(
            t,
            vec![vec![6., 7., 8.], vec![0., 1., 2.], vec![6., 7., 8.]]
        );
        assert!(
            d.gather(&[4], &Device::Cpu)
                .unwrap_err()
                .to_string()
                .contains("index 4")
        );
    }

    #[test]
    fn rejects_non_finite_naming_row_and_source() {
        let mut v = vec![0.0f32; 10];
        v[7] = f32::NAN;
        let e = InMemoryDataset::new(v, 5, 2, "points.npy")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("points.npy") && e.contains("row 3") && e.contains("column 1"),
            "{e}"
        );
        let e = InMemoryDataset::new(vec![1.0, f32::INFINITY], 1, 2, "m").unwrap_err();
        assert!(matches!(e, DataError::NonFinite { row: 0, col: 1, .. }));
        assert!(InMemoryDataset::new(vec![0.0; 5], 2, 3, "m").is_err());
    }
}
