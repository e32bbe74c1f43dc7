//! Dense layers y = act(x W^T + b) with a hand-written backward pass on the CPU: the MLP
//! epsilon-network of Appendix B.1 is four of them, and the synthetic training step is mostly
//! that network's forward and backward pass on B x N rows.
//!
//! candle runs a dense layer as matmul + broadcast_add (+ relu). Its backward reduces the bias
//! gradient over the rows by a strided scalar loop (11% of a `gmm` step at N = 16 under perf)
//! and differentiates relu in four passes (zeros_like, ge, to_dtype, mul). Here the forward is
//! one gemm into a buffer preloaded with the bias, relu applied in place; the backward is one
//! masking pass, two gemms and a row-blocked column sum. The bias may be one row \[O\] or one row
//! per input row [R, O] (the MLP's first layer adds a per-row timestep term that way). Devices
//! other than the CPU, and dtypes other than f32/f64, take the plain candle ops, which are also
//! the reference the tests compare with.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

/// The nonlinearity applied after the affine map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// y = x W^T + b.
    Identity,
    /// y = max(x W^T + b, 0).
    Relu,
}

/// act(x W^T + b) for x [R, I], w [O, I] and b \[O\] or [R, O]; differentiable in all three.
pub fn dense(x: &Tensor, w: &Tensor, b: &Tensor, act: Activation) -> candle_core::Result<Tensor> {
    let (r, i) = x.dims2()?;
    let (o, wi) = w.dims2()?;
    let per_row = match b.dims() {
        [bo] if *bo == o => false,
        [br, bo] if *br == r && *bo == o => true,
        d => candle_core::bail!("dense: bias shape {d:?} for {r} rows and {o} outputs"),
    };
    if wi != i {
        candle_core::bail!("dense: input has {i} features, weight [{o}, {wi}]");
    }
    let fused = x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
        && w.dtype() == x.dtype()
        && b.dtype() == x.dtype();
    if fused {
        let (x, w, b) = (x.contiguous()?, w.contiguous()?, b.contiguous()?);
        return x.apply_op3(&w, &b, Dense { act, per_row });
    }
    dense_reference(x, w, b, act)
}

/// The same layer from candle's own differentiable ops.
pub fn dense_reference(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    act: Activation,
) -> candle_core::Result<Tensor> {
    let y = x.matmul(&w.t()?)?.broadcast_add(b)?;
    match act {
        Activation::Identity => Ok(y),
        Activation::Relu => y.relu(),
    }
}

struct Dense {
    act: Activation,
    per_row: bool,
}

/// Below this many output elements the elementwise passes stay on the calling thread.
const PARALLEL_MIN: usize = 1 << 16;

pub(crate) trait Float:
    candle_core::WithDType
    + Copy
    + Default
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::AddAssign
    + Send
    + Sync
    + 'static
{
    const ZERO: Self;
    const ONE: Self;
    /// max(v, 0) as candle's relu computes it (a NaN becomes 0), branch-free.
    fn relu(self) -> Self;
}
impl Float for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn relu(self) -> Self {
        self.max(0.0)
    }
}
impl Float for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn relu(self) -> Self {
        self.max(0.0)
    }
}

thread_local! {
    static ON_THIS_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with this crate's CPU kernels (dense layers, convolutions) kept on the calling
/// thread, for callers that already run one such job per core (e.g. data-parallel shards of a
/// minibatch): nested rayon splits there cost more in wake-ups than they gain. Results are the
/// same bits either way.
pub fn on_this_thread<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            ON_THIS_THREAD.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(ON_THIS_THREAD.with(|c| c.replace(true)));
    f()
}

/// The threads this crate's kernels may use from the calling thread: candle's count, or 1
/// inside [`on_this_thread`].
pub(crate) fn threads() -> usize {
    if ON_THIS_THREAD.with(|c| c.get()) {
        1
    } else {
        candle_core::utils::get_num_threads()
    }
}

/// Products with fewer multiply-adds than this run on the calling thread: waking rayon's workers
/// costs more than the split saves.
pub(crate) fn parallelism(macs: usize) -> gemm::Parallelism {
    // 2^24 was best of 2^0, 2^22, 2^24, 2^26, 2^30 for gmm training at N = 1 and 16 (2 cores).
    match threads() {
        n if n > 1 && macs >= 1 << 24 => gemm::Parallelism::Rayon(n),
        _ => gemm::Parallelism::None,
    }
}

/// dst[m, n] (+)= lhs[m, k] rhs[k, n] with explicit (row, column) strides for each operand.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_into<T: Float>(
    mnk @ (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    accumulate: bool,
    lhs: &[T],
    lhs_strides: (usize, usize),
    rhs: &[T],
    rhs_strides: (usize, usize),
) {
    let par = parallelism(m * n * k);
    matmul_into_with(
        par,
        mnk,
        dst,
        accumulate,
        lhs,
        lhs_strides,
        rhs,
        rhs_strides,
    );
}

/// [`matmul_into`] with the caller's choice of threads (e.g. none inside a parallel loop).
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_into_with<T: Float>(
    par: gemm::Parallelism,
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    accumulate: bool,
    lhs: &[T],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[T],
    (rhs_rs, rhs_cs): (usize, usize),
) {
    assert_eq!(dst.len(), m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(T::ZERO);
        }
        return;
    }
    // The largest element each operand's strides reach must be inside its slice.
    assert!((m - 1) * lhs_rs + (k - 1) * lhs_cs < lhs.len());
    assert!((k - 1) * rhs_rs + (n - 1) * rhs_cs < rhs.len());
    // SAFETY: the asserts above bound every index gemm reads, and dst is m x n row-major.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            par,
        );
    }
}

pub(crate) fn slice<'a, T: Float>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [T]> {
    let (start, end) = l.contiguous_offsets().ok_or_else(|| {
        candle_core::Error::Msg("ipld-models custom op: operand is not contiguous".into())
    })?;
    Ok(&s.as_slice::<T>()?[start..end])
}

/// Row chunks of `cols` columns, in parallel when the buffer is large.
fn for_rows<T: Float>(buf: &mut [T], cols: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    if buf.len() >= PARALLEL_MIN && threads() > 1 {
        let rows_per = (PARALLEL_MIN / 4 / cols).max(1);
        buf.par_chunks_mut(rows_per * cols)
            .enumerate()
            .for_each(|(c, chunk)| {
                for (j, row) in chunk.chunks_mut(cols).enumerate() {
                    f(c * rows_per + j, row);
                }
            });
    } else {
        for (r, row) in buf.chunks_mut(cols).enumerate() {
            f(r, row);
        }
    }
}

impl Dense {
    fn forward<T: Float>(
        &self,
        x: &[T],
        w: &[T],
        b: &[T],
        (r, i, o): (usize, usize, usize),
    ) -> Vec<T> {
        // The bias, then the product accumulated onto it.
        let mut y = if self.per_row {
            b.to_vec()
        } else {
            b.repeat(r)
        };
        matmul_into((r, o, i), &mut y, true, x, (i, 1), w, (1, i));
        if self.act == Activation::Relu {
            for_rows(&mut y, o, |_, out| {
                for v in out {
                    *v = v.relu();
                }
            });
        }
        y
    }

    /// (dL/dx, dL/dw, dL/db) from dL/dy `g` and the output `y`, each only where `need` asks
    /// (an input nothing differentiates, like the timestep embedding, costs no product).
    #[allow(clippy::type_complexity)]
    fn backward<T: Float>(
        &self,
        x: &[T],
        w: &[T],
        y: &[T],
        g: &[T],
        (r, i, o): (usize, usize, usize),
        need: [bool; 3],
    ) -> (Option<Vec<T>>, Option<Vec<T>>, Option<Vec<T>>) {
        // Through relu: the gradient passes where the output is positive.
        let g: std::borrow::Cow<[T]> = match self.act {
            Activation::Identity => g.into(),
            Activation::Relu => {
                let mut m = g.to_vec();
                for_rows(&mut m, o, |row, out| {
                    let yr = &y[row * o..(row + 1) * o];
                    for (v, &yv) in out.iter_mut().zip(yr) {
                        // A select, not a conditional store, so the loop vectorises.
                        *v = if yv > T::ZERO { *v } else { T::ZERO };
                    }
                });
                m.into()
            }
        };
        let gx = need[0].then(|| {
            let mut gx = vec![T::ZERO; r * i];
            matmul_into((r, i, o), &mut gx, false, &g, (o, 1), w, (i, 1));
            gx
        });
        let gw = need[1].then(|| {
            let mut gw = vec![T::ZERO; o * i];
            matmul_into((o, i, r), &mut gw, false, &g, (1, o), x, (i, 1));
            gw
        });
        let gb = need[2].then(|| {
            if self.per_row {
                g.to_vec()
            } else {
                column_sum(&g, o)
            }
        });
        (gx, gw, gb)
    }
}

/// Sum over the rows of a row-major [R, cols] buffer; blocks of rows in parallel when large.
fn column_sum<T: Float>(g: &[T], cols: usize) -> Vec<T> {
    let add_rows = |block: &[T]| {
        let mut acc = vec![T::ZERO; cols];
        for row in block.chunks_exact(cols) {
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v;
            }
        }
        acc
    };
    if g.len() < PARALLEL_MIN {
        return add_rows(g);
    }
    // Fixed blocks, partial sums added in block order: the result does not depend on how rayon
    // schedules the blocks, so runs stay bit-reproducible.
    let rows_per = (PARALLEL_MIN / 4 / cols).max(1);
    let partial: Vec<Vec<T>> = if threads() > 1 {
        g.par_chunks(rows_per * cols).map(add_rows).collect()
    } else {
        g.chunks(rows_per * cols).map(add_rows).collect()
    };
    let mut acc = vec![T::ZERO; cols];
    for p in &partial {
        for (a, &v) in acc.iter_mut().zip(p) {
            *a += v;
        }
    }
    acc
}

/// The [R, I], [O, I] shapes as (R, I, O).
fn dims(l1: &Layout, l2: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    let (r, i) = l1.shape().dims2()?;
    let (o, _) = l2.shape().dims2()?;
    Ok((r, i, o))
}

impl CustomOp3 for Dense {
    fn name(&self) -> &'static str {
        "ipld-dense"
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
        let d = dims(l1, l2)?;
        let storage = match s1 {
            CpuStorage::F32(_) => CpuStorage::F32(self.forward(
                slice::<f32>(s1, l1)?,
                slice(s2, l2)?,
                slice(s3, l3)?,
                d,
            )),
            CpuStorage::F64(_) => CpuStorage::F64(self.forward(
                slice::<f64>(s1, l1)?,
                slice(s2, l2)?,
                slice(s3, l3)?,
                d,
            )),
            _ => candle_core::bail!("dense: only f32 and f64 are fused"),
        };
        Ok((storage, Shape::from((d.0, d.2))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad_res = grad_res.contiguous()?;
        let (sx, lx) = x.storage_and_layout();
        let (sw, lw) = w.storage_and_layout();
        let (sy, ly) = res.storage_and_layout();
        let (sg, lg) = grad_res.storage_and_layout();
        let (Storage::Cpu(sx), Storage::Cpu(sw), Storage::Cpu(sy), Storage::Cpu(sg)) =
            (&*sx, &*sw, &*sy, &*sg)
        else {
            candle_core::bail!("dense: backward on a non-CPU tensor");
        };
        let d @ (r, i, o) = dims(lx, lw)?;
        let dev = x.device();
        // Only arguments on a path to a variable need a gradient.
        let need = [x.track_op(), w.track_op(), b.track_op()];
        macro_rules! grads {
            ($t:ty) => {{
                let (gx, gw, gb) = self.backward::<$t>(
                    slice(sx, lx)?,
                    slice(sw, lw)?,
                    slice(sy, ly)?,
                    slice(sg, lg)?,
                    d,
                    need,
                );
                (
                    gx.map(|v| Tensor::from_vec(v, (r, i), dev)).transpose()?,
                    gw.map(|v| Tensor::from_vec(v, (o, i), dev)).transpose()?,
                    gb.map(|v| Tensor::from_vec(v, b.shape().clone(), dev))
                        .transpose()?,
                )
            }};
        }
        Ok(match x.dtype() {
            DType::F32 => grads!(f32),
            DType::F64 => grads!(f64),
            t => candle_core::bail!("dense: unsupported dtype {t:?}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(rng: &mut ChaCha8Rng, shape: &[usize], dtype: DType) -> Var {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let t = Tensor::from_vec(v, shape, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap();
        Var::from_tensor(&t).unwrap()
    }

    fn max_rel_diff(a: &Tensor, b: &Tensor) -> f64 {
        let flat = |t: &Tensor| -> Vec<f64> {
            t.flatten_all()
                .and_then(|t| t.to_dtype(DType::F64))
                .and_then(|t| t.to_vec1())
                .unwrap()
        };
        let (a, b) = (flat(a), flat(b));
        let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
            / scale
    }

    /// Values and all three gradients equal candle's own ops, for both activations, both bias
    /// shapes, both dtypes, and a size that takes the parallel passes (R O >= 2^16).
    #[test]
    fn matches_candles_ops_in_value_and_gradient() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 2e-5)] {
            for &(r, i, o) in &[(5usize, 3usize, 4usize), (1100, 17, 64)] {
                for per_row in [false, true] {
                    for act in [Activation::Identity, Activation::Relu] {
                        let x = random(&mut rng, &[r, i], dtype);
                        let w = random(&mut rng, &[o, i], dtype);
                        let b_shape: &[usize] = if per_row { &[r, o] } else { &[o] };
                        let b = random(&mut rng, b_shape, dtype);
                        // A fixed random cotangent, so every output element matters.
                        let c = random(&mut rng, &[r, o], dtype);
                        let run = |f: fn(
                            &Tensor,
                            &Tensor,
                            &Tensor,
                            Activation,
                        )
                            -> candle_core::Result<Tensor>| {
                            let y = f(&x, &w, &b, act).unwrap();
                            let loss = (&y * c.as_tensor()).unwrap().sum_all().unwrap();
                            let g = loss.backward().unwrap();
                            let grads: Vec<Tensor> = [&x, &w, &b]
                                .iter()
                                .map(|v| g.get(v.as_tensor()).unwrap().clone())
                                .collect();
                            (y, grads)
                        };
                        let (y, g) = run(dense);
                        let (y_ref, g_ref) = run(dense_reference);
                        let what = format!("{dtype:?} {r}x{i}->{o} per_row {per_row} {act:?}");
                        assert!(max_rel_diff(&y, &y_ref) < tol, "value {what}");
                        for (name, (a, e)) in ["x", "w", "b"].iter().zip(g.iter().zip(&g_ref)) {
                            assert_eq!(a.dims(), e.dims(), "{name} {what}");
                            let d = max_rel_diff(a, e);
                            assert!(d < tol, "grad {name} {what}: {d:e}");
                        }
                    }
                }
            }
        }
    }

    /// An input off every path to a variable gets no gradient (and costs no product); the others
    /// still match candle's ops.
    /// [`on_this_thread`] only moves work between threads: a dense layer and a convolution
    /// large enough for every parallel path (rayon gemm, parallel row passes and column sums,
    /// per-sample convolutions) give the same bits, values and gradients, with and without it.
    #[test]
    fn kernels_on_this_thread_give_the_same_bits() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        // 1100 x 128 x 128 multiply-adds > 2^24 and 1100 x 128 outputs > 2^16.
        let (r, i, o) = (1100, 128, 128);
        let x = random(&mut rng, &[r, i], DType::F32);
        let w = random(&mut rng, &[o, i], DType::F32);
        let b = random(&mut rng, &[o], DType::F32);
        let c = random(&mut rng, &[r, o], DType::F32);
        let xc = random(&mut rng, &[4, 16, 16, 16], DType::F32);
        let wc = random(&mut rng, &[32, 16, 3, 3], DType::F32);
        let bc = random(&mut rng, &[32], DType::F32);
        let cc = random(&mut rng, &[4, 32, 16, 16], DType::F32);
        let bits = |t: &Tensor| -> Vec<u32> {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            v.into_iter().map(f32::to_bits).collect()
        };
        let run = || {
            let y = dense(&x, &w, &b, Activation::Relu).unwrap();
            let yc = crate::conv2d(&xc, &wc, Some(&bc), 1, 1).unwrap();
            let loss = ((&y * c.as_tensor()).unwrap().sum_all().unwrap()
                + (&yc * cc.as_tensor()).unwrap().sum_all().unwrap())
            .unwrap();
            let g = loss.backward().unwrap();
            let mut out = vec![bits(&y), bits(&yc)];
            for v in [&x, &w, &b, &xc, &wc, &bc] {
                out.push(bits(g.get(v.as_tensor()).unwrap()));
            }
            out
        };
        let pooled = run();
        let inline = on_this_thread(run);
        assert!(!ON_THIS_THREAD.with(|c| c.get()), "the flag is restored");
        for (k, (a, e)) in pooled.iter().zip(&inline).enumerate() {
            assert_eq!(a, e, "output {k} differs on this thread");
        }
    }

    #[test]
    fn untracked_input_gets_no_gradient() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let x = random(&mut rng, &[6, 4], DType::F64).as_tensor().detach();
        let w = random(&mut rng, &[3, 4], DType::F64);
        let b = random(&mut rng, &[3], DType::F64);
        let grads =
            |f: fn(&Tensor, &Tensor, &Tensor, Activation) -> candle_core::Result<Tensor>| {
                let y = f(&x, w.as_tensor(), b.as_tensor(), Activation::Relu).unwrap();
                y.sqr().unwrap().sum_all().unwrap().backward().unwrap()
            };
        let (g, g_ref) = (grads(dense), grads(dense_reference));
        assert!(g.get(&x).is_none());
        for v in [&w, &b] {
            let d = max_rel_diff(
                g.get(v.as_tensor()).unwrap(),
                g_ref.get(v.as_tensor()).unwrap(),
            );
            assert!(d < 1e-12, "{d:e}");
        }
    }

    #[test]
    fn relu_zeroes_negative_outputs() {
        let dev = Device::Cpu;
        let x = Tensor::new(&[[1.0f32, -2.0], [0.5, 0.5]], &dev).unwrap();
        let w = Tensor::new(&[[1.0f32, 0.0], [0.0, 1.0], [1.0, 1.0]], &dev).unwrap();
        let b = Tensor::new(&[0.0f32, 0.0, -1.0], &dev).unwrap();
        let y: Vec<Vec<f32>> = dense(&x, &w, &b, Activation::Relu)
            .unwrap()
            .to_vec2()
            .unwrap();
        // Rows: [1, -2, -2] -> [1, 0, 0]; [0.5, 0.5, 0] -> [0.5, 0.5, 0].
        assert_eq!(y, vec![vec![1.0, 0.0, 0.0], vec![0.5, 0.5, 0.0]]);
    }

    #[test]
    fn bad_shapes_are_errors() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((4, 3), DType::F32, &dev).unwrap();
        let w = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
        let w_bad = Tensor::zeros((2, 5), DType::F32, &dev).unwrap();
        let b = Tensor::zeros(2, DType::F32, &dev).unwrap();
        let b_bad = Tensor::zeros((3, 2), DType::F32, &dev).unwrap();
        assert!(dense(&x, &w_bad, &b, Activation::Relu).is_err());
        assert!(dense(&x, &w, &b_bad, Activation::Relu).is_err());
        assert!(dense(&x, &w, &b, Activation::Relu).is_ok());
    }
}
