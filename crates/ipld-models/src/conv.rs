//! 2-d convolution for the LDM decoder and encoder of Appendix B.2 (Table 2) with a hand-written
//! CPU backward pass that rebuilds its im2col columns instead of keeping them.
//!
//! Forward, per sample: columns C (c_in k² x H'W') from the zero-padded input, then
//! y = W C + b as one GEMM. Backward, per sample: dL/dx = col2im(Wᵀ g), dL/dW = Σ_b g_b C_bᵀ with
//! C_b rebuilt, dL/db = Σ g. The autograd graph keeps only x, W, b and y, so a convolution costs
//! its output's memory, not the k² times larger columns: with the columns kept (the composite
//! [`conv2d_im2col`]), DiT-S + the Table 2 decoder at batch 64 outgrew this project's 24 GB CPU.
//! Samples run in parallel with single-threaded GEMMs; the weight gradient sums the samples in
//! order with threaded GEMMs, so results do not depend on scheduling. Devices other than the
//! CPU, and dtypes other than f32/f64, take the composite, which is also the tests' reference.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

use crate::dense::{Float, matmul_into, matmul_into_with, parallelism, slice};

/// `conv2d(x, w) + b` for x `[n, c_in, h, w]`, w `[c_out, c_in, kh, kw]`, b `[c_out]`, zero
/// padding `padding` on every side, stride `stride`; differentiable in all three.
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> candle_core::Result<Tensor> {
    let cout = check_shapes("conv2d", x, w, b, stride, padding)?;
    let fused = x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && w.dtype() == x.dtype()
        && b.is_none_or(|b| b.dtype() == x.dtype());
    if !fused {
        return conv2d_im2col(x, w, b, stride, padding);
    }
    let zeros;
    let b = match b {
        Some(b) => b,
        None => {
            zeros = Tensor::zeros(cout, x.dtype(), x.device())?;
            &zeros
        }
    };
    let (x, w, b) = (x.contiguous()?, w.contiguous()?, b.contiguous()?);
    x.apply_op3(&w, &b, Conv2d { stride, padding })
}

/// Checks a convolution's operands (channels, stride, kernel against the padded input, bias
/// shape) and returns the output channels; `op` names the function in the error.
fn check_shapes(
    op: &str,
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> candle_core::Result<usize> {
    let (_, cin, h, wd) = x.dims4()?;
    let (cout, cin_w, kh, kw) = w.dims4()?;
    if cin != cin_w || stride == 0 {
        candle_core::bail!("{op}: input has {cin} channels, weight {cin_w}; stride {stride}");
    }
    if h + 2 * padding < kh || wd + 2 * padding < kw {
        candle_core::bail!(
            "{op}: input {h} x {wd} with padding {padding} smaller than the {kh} x {kw} kernel"
        );
    }
    if let Some(b) = b
        && b.dims() != [cout]
    {
        candle_core::bail!("{op}: bias shape {:?} for {cout} output channels", b.dims());
    }
    Ok(cout)
}

struct Conv2d {
    stride: usize,
    padding: usize,
}

/// The sizes of one convolution.
#[derive(Debug, Clone, Copy)]
struct Geom {
    n: usize,
    cin: usize,
    h: usize,
    w: usize,
    cout: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

impl Geom {
    fn new(x: &Layout, w: &Layout, stride: usize, pad: usize) -> candle_core::Result<Self> {
        let (n, cin, h, wd) = x.shape().dims4()?;
        let (cout, _, kh, kw) = w.shape().dims4()?;
        Ok(Self {
            n,
            cin,
            h,
            w: wd,
            cout,
            kh,
            kw,
            stride,
            pad,
            ho: (h + 2 * pad - kh) / stride + 1,
            wo: (wd + 2 * pad - kw) / stride + 1,
        })
    }

    /// Rows of the column matrix, c_in k².
    fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }

    fn in_size(&self) -> usize {
        self.cin * self.h * self.w
    }

    fn out_plane(&self) -> usize {
        self.ho * self.wo
    }

    /// A 1 x 1, stride-1, unpadded convolution: the input is its own column matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }

    /// For kernel column `j`, the output columns whose input column lies inside the image, and
    /// that input column for the first of them.
    fn valid_cols(&self, j: usize) -> (usize, usize) {
        let (s, p) = (self.stride, self.pad);
        // ox s + j - p >= 0 and ox s + j - p < w.
        let lo = if p > j { (p - j).div_ceil(s) } else { 0 }.min(self.wo);
        let hi = (self.w + p).saturating_sub(j).div_ceil(s).min(self.wo);
        (lo, hi.max(lo))
    }

    /// Input row for output row `oy` and kernel row `i`, if inside the image.
    fn in_row(&self, oy: usize, i: usize) -> Option<usize> {
        (oy * self.stride + i)
            .checked_sub(self.pad)
            .filter(|&iy| iy < self.h)
    }

    /// Samples run in parallel (single-threaded GEMMs) when there are several and the work is
    /// worth waking the pool for; otherwise one sample at a time with threaded GEMMs.
    fn per_sample_parallel(&self) -> bool {
        crate::dense::threads() > 1
            && self.n > 1
            && self.cout * self.k() * self.out_plane() * self.n >= 1 << 22
    }
}

/// The column matrix (c_in k² x H'W', row (c, i, j) holds x[c, oy s + i - p, ox s + j - p]).
fn im2col<T: Float>(g: &Geom, x: &[T], cols: &mut [T]) {
    let plane = g.out_plane();
    for c in 0..g.cin {
        let xc = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = &mut cols[((c * g.kh + i) * g.kw + j) * plane..][..plane];
                let (lo, hi) = g.valid_cols(j);
                for (oy, out) in row.chunks_exact_mut(g.wo).enumerate() {
                    let Some(iy) = g.in_row(oy, i) else {
                        out.fill(T::ZERO);
                        continue;
                    };
                    let src = &xc[iy * g.w..(iy + 1) * g.w];
                    out[..lo].fill(T::ZERO);
                    out[hi..].fill(T::ZERO);
                    if lo == hi {
                        continue;
                    }
                    let first = lo * g.stride + j - g.pad;
                    if g.stride == 1 {
                        out[lo..hi].copy_from_slice(&src[first..first + hi - lo]);
                    } else {
                        for (o, v) in out[lo..hi]
                            .iter_mut()
                            .zip(src[first..].iter().step_by(g.stride))
                        {
                            *o = *v;
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: adds each column entry back onto the input position it came from.
fn col2im_add<T: Float>(g: &Geom, cols: &[T], gx: &mut [T]) {
    let plane = g.out_plane();
    for c in 0..g.cin {
        let gxc = &mut gx[c * g.h * g.w..(c + 1) * g.h * g.w];
        for i in 0..g.kh {
            for j in 0..g.kw {
                let row = &cols[((c * g.kh + i) * g.kw + j) * plane..][..plane];
                let (lo, hi) = g.valid_cols(j);
                for (oy, src) in row.chunks_exact(g.wo).enumerate() {
                    let Some(iy) = g.in_row(oy, i) else { continue };
                    if lo == hi {
                        continue;
                    }
                    let dst = &mut gxc[iy * g.w..(iy + 1) * g.w];
                    let first = lo * g.stride + j - g.pad;
                    for (d, v) in dst[first..].iter_mut().step_by(g.stride).zip(&src[lo..hi]) {
                        *d += *v;
                    }
                }
            }
        }
    }
}

/// Runs `f(sample, out_chunk, scratch)` over the samples' chunks of `out`, in parallel (each
/// task with its own scratch) or serially, as [`Geom::per_sample_parallel`] decides.
fn per_sample<T: Float>(
    g: &Geom,
    out: &mut [T],
    chunk: usize,
    scratch: usize,
    f: impl Fn(usize, &mut [T], &mut Vec<T>, gemm::Parallelism) + Sync,
) {
    if g.per_sample_parallel() {
        out.par_chunks_mut(chunk).enumerate().for_each_init(
            || vec![T::ZERO; scratch],
            |s, (b, o)| f(b, o, s, gemm::Parallelism::None),
        );
    } else {
        let mut s = vec![T::ZERO; scratch];
        let macs = g.cout * g.k() * g.out_plane();
        let par = parallelism(macs);
        for (b, o) in out.chunks_mut(chunk).enumerate() {
            f(b, o, &mut s, par);
        }
    }
}

impl Conv2d {
    fn forward<T: Float>(&self, g: &Geom, x: &[T], w: &[T], bias: &[T]) -> Vec<T> {
        let (k, plane) = (g.k(), g.out_plane());
        let mut y = vec![T::ZERO; g.n * g.cout * plane];
        let scratch = if g.pointwise() { 0 } else { k * plane };
        per_sample(g, &mut y, g.cout * plane, scratch, |b, yb, cols, par| {
            for (row, &bv) in yb.chunks_exact_mut(plane).zip(bias) {
                row.fill(bv);
            }
            let xb = &x[b * g.in_size()..(b + 1) * g.in_size()];
            let cols: &[T] = if g.pointwise() {
                xb
            } else {
                im2col(g, xb, cols);
                cols
            };
            matmul_into_with(
                par,
                (g.cout, plane, k),
                yb,
                true,
                w,
                (k, 1),
                cols,
                (plane, 1),
            );
        });
        y
    }

    fn grad_x<T: Float>(&self, g: &Geom, w: &[T], gy: &[T]) -> Vec<T> {
        let (k, plane) = (g.k(), g.out_plane());
        let mut gx = vec![T::ZERO; g.n * g.in_size()];
        let scratch = if g.pointwise() { 0 } else { k * plane };
        per_sample(g, &mut gx, g.in_size(), scratch, |b, gxb, cols, par| {
            let gyb = &gy[b * g.cout * plane..(b + 1) * g.cout * plane];
            if g.pointwise() {
                matmul_into_with(
                    par,
                    (k, plane, g.cout),
                    gxb,
                    false,
                    w,
                    (1, k),
                    gyb,
                    (plane, 1),
                );
            } else {
                matmul_into_with(
                    par,
                    (k, plane, g.cout),
                    cols,
                    false,
                    w,
                    (1, k),
                    gyb,
                    (plane, 1),
                );
                col2im_add(g, cols, gxb);
            }
        });
        gx
    }

    fn grad_w<T: Float>(&self, g: &Geom, x: &[T], gy: &[T]) -> Vec<T> {
        let (k, plane) = (g.k(), g.out_plane());
        let mut gw = vec![T::ZERO; g.cout * k];
        let mut cols = vec![T::ZERO; if g.pointwise() { 0 } else { k * plane }];
        for b in 0..g.n {
            let xb = &x[b * g.in_size()..(b + 1) * g.in_size()];
            let c: &[T] = if g.pointwise() {
                xb
            } else {
                im2col(g, xb, &mut cols);
                &cols
            };
            let gyb = &gy[b * g.cout * plane..(b + 1) * g.cout * plane];
            matmul_into(
                (g.cout, k, plane),
                &mut gw,
                b > 0,
                gyb,
                (plane, 1),
                c,
                (1, plane),
            );
        }
        gw
    }

    fn grad_b<T: Float>(&self, g: &Geom, gy: &[T]) -> Vec<T> {
        let plane = g.out_plane();
        let mut gb = vec![T::ZERO; g.cout];
        for sample in gy.chunks_exact(g.cout * plane) {
            for (acc, row) in gb.iter_mut().zip(sample.chunks_exact(plane)) {
                let mut s = T::ZERO;
                for &v in row {
                    s += v;
                }
                *acc += s;
            }
        }
        gb
    }
}

impl CustomOp3 for Conv2d {
    fn name(&self) -> &'static str {
        "ipld-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = Geom::new(l1, l2, self.stride, self.padding)?;
        let storage = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(self.forward(
                &g,
                slice::<f32>(s1, l1)?,
                slice(s2, l2)?,
                slice(s3, l3)?,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(self.forward(
                &g,
                slice::<f64>(s1, l1)?,
                slice(s2, l2)?,
                slice(s3, l3)?,
            )),
            _ => candle_core::bail!("conv2d: only f32 and f64 are fused"),
        };
        Ok((storage, Shape::from((g.n, g.cout, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad_res = grad_res.contiguous()?;
        let (sx, lx) = x.storage_and_layout();
        let (sw, lw) = w.storage_and_layout();
        let (sg, lg) = grad_res.storage_and_layout();
        let (Storage::Cpu(sx), Storage::Cpu(sw), Storage::Cpu(sg)) = (&*sx, &*sw, &*sg) else {
            candle_core::bail!("conv2d: backward on a non-CPU tensor");
        };
        let g = Geom::new(lx, lw, self.stride, self.padding)?;
        let dev = x.device();
        // Only arguments on a path to a variable need a gradient.
        macro_rules! grads {
            ($t:ty) => {{
                let (xs, ws, gy) = (
                    slice::<$t>(sx, lx)?,
                    slice::<$t>(sw, lw)?,
                    slice::<$t>(sg, lg)?,
                );
                (
                    x.track_op()
                        .then(|| Tensor::from_vec(self.grad_x(&g, ws, gy), x.shape(), dev))
                        .transpose()?,
                    w.track_op()
                        .then(|| Tensor::from_vec(self.grad_w(&g, xs, gy), w.shape(), dev))
                        .transpose()?,
                    b.track_op()
                        .then(|| Tensor::from_vec(self.grad_b(&g, gy), b.shape(), dev))
                        .transpose()?,
                )
            }};
        }
        Ok(match x.dtype() {
            DType::F32 => grads!(f32),
            DType::F64 => grads!(f64),
            t => candle_core::bail!("conv2d: unsupported dtype {t:?}"),
        })
    }
}

/// `conv2d(x, w) + b` with zero padding `padding` on every side and stride `stride`, from
/// narrow/stack/matmul so that its backward needs no convolution kernels. It keeps the k² times
/// larger columns for the backward pass; [`conv2d`] is the memory-lean form of the same map.
pub fn conv2d_im2col(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> candle_core::Result<Tensor> {
    let cout = check_shapes("conv2d_im2col", x, w, b, stride, padding)?;
    let (n, cin, _, _) = x.dims4()?;
    let (_, _, kh, kw) = w.dims4()?;
    let xp = if padding > 0 {
        x.pad_with_zeros(2, padding, padding)?
            .pad_with_zeros(3, padding, padding)?
    } else {
        x.clone()
    };
    let (hp, wp) = (xp.dim(2)?, xp.dim(3)?);
    let (ho, wo) = ((hp - kh) / stride + 1, (wp - kw) / stride + 1);
    let y = if kh == 1 && kw == 1 && stride == 1 {
        // 1 x 1: the input is its own column matrix.
        let wm = w.reshape((cout, cin))?;
        wm.broadcast_matmul(&xp.reshape((n, cin, ho * wo))?)?
    } else {
        let mut cols = Vec::with_capacity(kh * kw);
        for i in 0..kh {
            for j in 0..kw {
                let v =
                    xp.narrow(2, i, (ho - 1) * stride + 1)?
                        .narrow(3, j, (wo - 1) * stride + 1)?;
                let v = if stride > 1 {
                    // Keep every stride-th row and column: pad to a multiple, split, take 0.
                    v.pad_with_zeros(2, 0, stride - 1)?
                        .pad_with_zeros(3, 0, stride - 1)?
                        .reshape((n, cin, ho, stride, wo, stride))?
                        .narrow(3, 0, 1)?
                        .narrow(5, 0, 1)?
                        .reshape((n, cin, ho, wo))?
                } else {
                    v
                };
                cols.push(v);
            }
        }
        // [n, cin, k*k, ho, wo] -> [n, cin*k*k, ho*wo], matching the weight's (in, ky, kx) order.
        let cols = Tensor::stack(&cols, 2)?.reshape((n, cin * kh * kw, ho * wo))?;
        w.reshape((cout, cin * kh * kw))?.broadcast_matmul(&cols)?
    };
    let y = y.reshape((n, cout, ho, wo))?;
    match b {
        Some(b) => y.broadcast_add(&b.reshape((1, cout, 1, 1))?),
        None => Ok(y),
    }
}
