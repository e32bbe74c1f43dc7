//! A user's own data as an [M, d] matrix in `.npy` (NumPy) or `.safetensors`, read and written.
//! float32 is the native type; float64 is accepted and narrowed. Anything else (other dtypes,
//! rank != 2, truncated or corrupt files, NaN/Inf) is an error naming the file. Writes go to a
//! temporary file in the same directory and are renamed into place, so an existing file is never
//! left half-written.

use std::fs;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

use npyz::{DType as NpyDType, Order, TypeChar, WriterBuilder};
use safetensors::{Dtype, SafeTensors};

use crate::{DataError, Dataset, InMemoryDataset};

/// Name of the tensor written to `.safetensors` files and preferred when reading several.
pub const SAFETENSORS_KEY: &str = "data";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Npy,
    Safetensors,
}

fn format_of(path: &Path) -> Result<Format, DataError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => Ok(Format::Npy),
        Some("safetensors") => Ok(Format::Safetensors),
        _ => Err(DataError::format(
            path,
            "unsupported file type: expected a .npy or .safetensors file",
        )),
    }
}

/// Loads an [M, d] matrix from `path` (`.npy` or `.safetensors`).
pub fn load_matrix(path: &Path) -> Result<InMemoryDataset, DataError> {
    let format = format_of(path)?;
    let (values, rows, cols) = match format {
        Format::Npy => read_npy(path)?,
        Format::Safetensors => read_safetensors(path)?,
    };
    InMemoryDataset::new(values, rows, cols, &path.display().to_string())
}

fn shape2(path: &Path, shape: &[u64]) -> Result<(usize, usize), DataError> {
    match shape {
        [m, d] if *m > 0 && *d > 0 => Ok((*m as usize, *d as usize)),
        [_, _] => Err(DataError::format(
            path,
            format!("matrix has an empty dimension, shape {shape:?}"),
        )),
        _ => Err(DataError::format(
            path,
            format!(
                "expected a rank-2 [M, d] matrix, found rank {} with shape {shape:?}",
                shape.len()
            ),
        )),
    }
}

fn read_npy(path: &Path) -> Result<(Vec<f32>, usize, usize), DataError> {
    let file = fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let npy = npyz::NpyFile::new(BufReader::new(file))
        .map_err(|e| DataError::format(path, format!("not a valid .npy file: {e}")))?;
    let (rows, cols) = shape2(path, npy.shape())?;
    let order = npy.order();
    let size = match npy.dtype() {
        NpyDType::Plain(ts) if ts.type_char() == TypeChar::Float => ts.size_field(),
        other => {
            return Err(DataError::format(
                path,
                format!(
                    "dtype {} is not supported: expected float32 (or float64)",
                    other.descr()
                ),
            ));
        }
    };
    let truncated =
        |e: std::io::Error| DataError::format(path, format!("truncated or corrupt data: {e}"));
    let values: Vec<f32> = match size {
        4 => npy.into_vec::<f32>().map_err(truncated)?,
        8 => npy
            .into_vec::<f64>()
            .map_err(truncated)?
            .into_iter()
            .map(|v| v as f32)
            .collect(),
        _ => {
            return Err(DataError::format(
                path,
                format!(
                    "float{} is not supported: expected float32 (or float64)",
                    size * 8
                ),
            ));
        }
    };
    if values.len() != rows * cols {
        return Err(DataError::format(
            path,
            format!(
                "truncated: header says [{rows}, {cols}] but {} values are present",
                values.len()
            ),
        ));
    }
    let values = match order {
        Order::C => values,
        Order::Fortran => {
            let mut t = vec![0.0f32; values.len()];
            for c in 0..cols {
                for r in 0..rows {
                    t[r * cols + c] = values[c * rows + r];
                }
            }
            t
        }
    };
    Ok((values, rows, cols))
}

fn read_safetensors(path: &Path) -> Result<(Vec<f32>, usize, usize), DataError> {
    let bytes = fs::read(path).map_err(|e| DataError::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| DataError::format(path, format!("not a valid .safetensors file: {e}")))?;
    let names = st.names();
    let name = if names.len() == 1 {
        names[0].to_string()
    } else if names.contains(&SAFETENSORS_KEY) {
        SAFETENSORS_KEY.to_string()
    } else {
        let mut listed: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        listed.sort_unstable();
        return Err(DataError::format(
            path,
            format!(
                "holds {} tensors {listed:?}; expected one, or one named `{SAFETENSORS_KEY}`",
                names.len()
            ),
        ));
    };
    let view = st
        .tensor(&name)
        .map_err(|e| DataError::format(path, e.to_string()))?;
    let shape: Vec<u64> = view.shape().iter().map(|d| *d as u64).collect();
    let (rows, cols) = shape2(path, &shape)?;
    let data = view.data();
    let values: Vec<f32> = match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
            .collect(),
        other => {
            return Err(DataError::format(
                path,
                format!("tensor `{name}` has dtype {other:?}: expected F32 (or F64)"),
            ));
        }
    };
    Ok((values, rows, cols))
}

/// Writes `data` to `path` atomically: a temporary sibling file, then a rename.
pub fn save_matrix(path: &Path, data: &InMemoryDataset) -> Result<(), DataError> {
    let format = format_of(path)?;
    let bytes = match format {
        Format::Npy => npy_bytes(path, data)?,
        Format::Safetensors => safetensors_bytes(path, data)?,
    };
    write_atomically(path, &bytes)
}

fn npy_bytes(path: &Path, data: &InMemoryDataset) -> Result<Vec<u8>, DataError> {
    let mut buf = Vec::new();
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&[data.len() as u64, data.dim() as u64])
        .writer(&mut buf)
        .begin_nd()
        .map_err(|e| DataError::io(path, e))?;
    w.extend(data.as_slice().iter().copied())
        .map_err(|e| DataError::io(path, e))?;
    w.finish().map_err(|e| DataError::io(path, e))?;
    Ok(buf)
}

fn safetensors_bytes(path: &Path, data: &InMemoryDataset) -> Result<Vec<u8>, DataError> {
    let raw: Vec<u8> = data
        .as_slice()
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let view = safetensors::tensor::TensorView::new(Dtype::F32, vec![data.len(), data.dim()], &raw)
        .map_err(|e| DataError::format(path, e.to_string()))?;
    safetensors::serialize([(SAFETENSORS_KEY, view)], None)
        .map_err(|e| DataError::format(path, e.to_string()))
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, and renames it over `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| DataError::format(path, "not a file path"))?
        .to_string_lossy()
        .into_owned();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(DataError::io(path, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> InMemoryDataset {
        InMemoryDataset::new(vec![1.0, 2.0, 3.0, 4.5, -5.0, 6.25], 3, 2, "sample").unwrap()
    }

    #[test]
    fn round_trips_both_formats() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["m.npy", "m.safetensors"] {
            let p = dir.path().join(name);
            save_matrix(&p, &sample()).unwrap();
            assert_eq!(load_matrix(&p).unwrap(), sample(), "{name}");
        }
    }

    fn npy_with(dtype: &str, shape: &[u64], payload: &[u8], fortran: bool) -> Vec<u8> {
        // A .npy v1.0 file written by hand (the format is documented in numpy's NEP 1).
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        let shape_s = if dims.len() == 1 {
            format!("({},)", dims[0])
        } else {
            format!("({})", dims.join(", "))
        };
        let mut header = format!(
            "{{'descr': '{dtype}', 'fortran_order': {}, 'shape': {shape_s}, }}",
            if fortran { "True" } else { "False" }
        );
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend((header.len() as u16).to_le_bytes());
        out.extend(header.as_bytes());
        out.extend(payload);
        out
    }

    #[test]
    fn reads_float64_and_fortran_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f64.npy");
        // Column-major [[1, 2], [3, 4], [5, 6]] stored as 1 3 5 2 4 6.
        let payload: Vec<u8> = [1.0f64, 3.0, 5.0, 2.0, 4.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        fs::write(&p, npy_with("<f8", &[3, 2], &payload, true)).unwrap();
        let d = load_matrix(&p).unwrap();
        assert_eq!(d.as_slice(), &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let check = |name: &str, bytes: &[u8], needle: &str| {
            let p = dir.path().join(name);
            fs::write(&p, bytes).unwrap();
            let e = load_matrix(&p).unwrap_err().to_string();
            assert!(e.contains(name), "error does not name the file: {e}");
            assert!(e.contains(needle), "expected `{needle}` in: {e}");
        };
        let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        check(
            "rank1.npy",
            &npy_with("<f4", &[4], &f32s(&[1., 2., 3., 4.]), false),
            "rank 1",
        );
        check(
            "ints.npy",
            &npy_with("<i8", &[1, 1], &7i64.to_le_bytes(), false),
            "not supported",
        );
        check(
            "short.npy",
            &npy_with("<f4", &[3, 2], &f32s(&[1., 2.]), false),
            "truncated",
        );
        check(
            "nan.npy",
            &npy_with("<f4", &[2, 2], &f32s(&[1., 2., f32::NAN, 4.]), false),
            "row 1",
        );
        check("garbage.npy", b"hello world", "not a valid .npy");
        check(
            "garbage.safetensors",
            b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}",
            "not a valid .safetensors",
        );
        let p = dir.path().join("missing.npy");
        assert!(
            load_matrix(&p)
                .unwrap_err()
                .to_string()
                .contains("missing.npy")
        );
        let p = dir.path().join("data.csv");
        assert!(
            load_matrix(&p)
                .unwrap_err()
                .to_string()
                .contains("data.csv")
        );

        // Safetensors: wrong dtype, wrong rank, several tensors without `data`, NaN.
        let st = |tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)>| {
            let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
                .iter()
                .map(|(n, d, s, b)| {
                    (
                        n.to_string(),
                        safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
                    )
                })
                .collect();
            safetensors::serialize(views, None).unwrap()
        };
        check(
            "i32.safetensors",
            &st(vec![("x", Dtype::I32, vec![1, 1], vec![0; 4])]),
            "I32",
        );
        check(
            "r3.safetensors",
            &st(vec![("x", Dtype::F32, vec![1, 1, 1], vec![0; 4])]),
            "rank 3",
        );
        check(
            "two.safetensors",
            &st(vec![
                ("a", Dtype::F32, vec![1, 1], vec![0; 4]),
                ("b", Dtype::F32, vec![1, 1], vec![0; 4]),
            ]),
            "[\"a\", \"b\"]",
        );
        check(
            "inf.safetensors",
            &st(vec![(
                "x",
                Dtype::F32,
                vec![1, 2],
                f32s(&[0.0, f32::INFINITY]),
            )]),
            "column 1",
        );
        let mut bytes = st(vec![("x", Dtype::F32, vec![2, 2], f32s(&[0.0; 4]))]);
        bytes.truncate(bytes.len() - 3);
        check("cut.safetensors", &bytes, "not a valid .safetensors");
    }

    #[test]
    fn failed_save_leaves_existing_file_intact() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keep.npy");
        save_matrix(&p, &sample()).unwrap();
        let before = fs::read(&p).unwrap();
        // An unsupported extension fails before anything is written...
        assert!(save_matrix(&dir.path().join("keep.txt"), &sample()).is_err());
        // ...and a save into a missing directory fails without touching other files.
        assert!(save_matrix(&dir.path().join("nope/keep.npy"), &sample()).is_err());
        assert_eq!(fs::read(&p).unwrap(), before);
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary files left behind");
    }
}
