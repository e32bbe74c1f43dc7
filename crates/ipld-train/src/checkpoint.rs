//! The checkpoint format, written once: a safetensors file of f32 tensors named
//! `<component>/<name>` plus string metadata (`format = "ipld-checkpoint-v1"`, the step, each
//! optimiser's step count, ...). Every stateful part of a training state implements
//! [`Checkpointed`], saving and restoring its own tensors under the prefix it is given, so the
//! layout is defined next to the state it describes and save and load cannot drift apart.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use safetensors::{Dtype, SafeTensors};

use crate::error::TrainError;

/// The format tag in every checkpoint's metadata.
pub const FORMAT: &str = "ipld-checkpoint-v1";

/// A part of the training state that saves and restores itself.
pub trait Checkpointed {
    /// Adds its tensors (as `<prefix>/<name>`) and metadata to `out`.
    fn save(&self, prefix: &str, out: &mut CheckpointWriter) -> Result<(), TrainError>;
    /// Restores itself from what [`save`](Self::save) wrote under `prefix`, refusing missing
    /// tensors and shapes that do not fit the configured state.
    fn load(&mut self, prefix: &str, ck: &CheckpointReader) -> Result<(), TrainError>;
}

/// The variables of `map` sorted by name: the order optimisers, the EMA and checkpoints use.
pub fn sorted_vars(map: &VarMap) -> Vec<(String, Var)> {
    let mut v: Vec<(String, Var)> = map
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Parameters: each variable as `<prefix>/<its VarBuilder path>`.
impl Checkpointed for VarMap {
    fn save(&self, prefix: &str, out: &mut CheckpointWriter) -> Result<(), TrainError> {
        for (name, var) in sorted_vars(self) {
            out.tensor(format!("{prefix}/{name}"), var.as_tensor().clone());
        }
        Ok(())
    }

    fn load(&mut self, prefix: &str, ck: &CheckpointReader) -> Result<(), TrainError> {
        for (name, var) in sorted_vars(self) {
            let t = ck.tensor_shaped(&format!("{prefix}/{name}"), var.dims())?;
            var.set(t)?;
        }
        Ok(())
    }
}

/// Tensors and metadata on their way into a checkpoint file.
#[derive(Debug)]
pub struct CheckpointWriter {
    step: u64,
    tensors: Vec<(String, Tensor)>,
    meta: BTreeMap<String, String>,
}

impl CheckpointWriter {
    /// An empty checkpoint of the state after `step` steps (the metadata `step`).
    pub fn new(step: u64) -> Self {
        let mut w = Self {
            step,
            tensors: Vec::new(),
            meta: BTreeMap::new(),
        };
        w.meta("step", step);
        w
    }

    /// The steps taken by the state being saved.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Adds a tensor (stored as f32).
    pub fn tensor(&mut self, name: String, t: Tensor) {
        self.tensors.push((name, t));
    }

    /// Adds a metadata entry.
    pub fn meta(&mut self, key: &str, value: impl ToString) {
        self.meta.insert(key.to_string(), value.to_string());
    }

    /// The safetensors bytes, with the format tag.
    pub fn to_bytes(mut self) -> Result<Vec<u8>, TrainError> {
        self.meta("format", FORMAT);
        let mut raw: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(self.tensors.len());
        for (name, t) in self.tensors {
            let v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            raw.push((
                name,
                t.dims().to_vec(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ));
        }
        let views = raw
            .iter()
            .map(|(n, s, b)| {
                Ok((
                    n.clone(),
                    safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b)?,
                ))
            })
            .collect::<Result<Vec<_>, TrainError>>()?;
        let meta: HashMap<String, String> = self.meta.into_iter().collect();
        Ok(safetensors::serialize(views, Some(meta))?)
    }
}

/// A checkpoint file read back: its tensors on the state's device and its metadata.
#[derive(Debug)]
pub struct CheckpointReader {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
    meta: HashMap<String, String>,
}

impl CheckpointReader {
    /// Reads and checks `path` (format tag, f32 tensors), placing tensors on `device`.
    pub fn open(path: &Path, device: &Device) -> Result<Self, TrainError> {
        let ck = |reason: String| TrainError::Checkpoint {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| ck(e.to_string()))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| ck(format!("unreadable or truncated: {e}")))?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| ck(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(ck("not an ipld checkpoint (format tag missing)".into()));
        }
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != Dtype::F32 {
                return Err(ck(format!(
                    "tensor `{name}` has dtype {:?}, expected F32",
                    view.dtype()
                )));
            }
            let v: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            tensors.insert(
                name.to_string(),
                Tensor::from_vec(v, view.shape().to_vec(), device)?,
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
            meta,
        })
    }

    /// An error naming this file and `reason`.
    pub fn problem(&self, reason: impl Into<String>) -> TrainError {
        TrainError::Checkpoint {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// The tensor `name`, if present.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// The tensor `name`; `why` says what needs it when it is missing (may be empty).
    pub fn tensor(&self, name: &str, why: &str) -> Result<&Tensor, TrainError> {
        self.get(name)
            .ok_or_else(|| self.problem(format!("missing tensor `{name}`{why}")))
    }

    /// The tensor `name`, which must have shape `dims`.
    pub fn tensor_shaped(&self, name: &str, dims: &[usize]) -> Result<&Tensor, TrainError> {
        let t = self.tensor(name, "")?;
        if t.dims() != dims {
            return Err(self.problem(format!(
                "tensor `{name}` has shape {:?} but the config builds {dims:?}",
                t.dims()
            )));
        }
        Ok(t)
    }

    /// The tensors under `prefix/`, with the prefix stripped.
    pub fn under(&self, prefix: &str) -> HashMap<String, Tensor> {
        let p = format!("{prefix}/");
        self.tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(&p).map(|s| (s.to_string(), v.clone())))
            .collect()
    }

    /// The steps taken by the saved state (the metadata `step`).
    pub fn step(&self) -> Result<u64, TrainError> {
        self.meta_u64("step")
    }

    /// The metadata entry `key`, if present.
    pub fn meta_str(&self, key: &str) -> Option<&str> {
        self.meta.get(key).map(String::as_str)
    }

    /// The metadata entry `key` as a number.
    pub fn meta_u64(&self, key: &str) -> Result<u64, TrainError> {
        self.meta
            .get(key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| self.problem(format!("metadata `{key}` is missing or not a number")))
    }
}
