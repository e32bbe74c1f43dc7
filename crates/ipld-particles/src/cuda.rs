//! The particle update on an NVIDIA GPU (feature `cuda`): Algorithm 1 (eqs. 19-22) and
//! Algorithm 2 (eqs. 65-66) as one CUDA kernel compiled at run time with NVRTC, launched as a
//! candle in-place op on candle's CUDA storage and candle's stream. The cloud (z, momentum,
//! second moment) is one candle tensor on the GPU, so the gradients of a candle backward pass
//! feed the update and the minibatch's particles are gathered from it without leaving the device.
//! The in-kernel noise is the CPU's: Philox4x32-R (the stream's [`crate::NoiseGenerator`], 7 or
//! 10 rounds) at counter (block, step, stream), the same planar layout of 64-element groups, and
//! the same libm-free Box-Muller and (V + eps)^(-1/4), compiled with `--fmad=false` so that no
//! multiply-add is contracted: the GPU should reproduce [`NoiseStream`] and the CPU kernels bit
//! for bit, for any launch geometry.
//!
//! Status: compiled in CI (`cargo clippy --features cuda`, with CUDA 11.8's nvcc for candle's
//! own kernels), and a test there checks that NVRTC accepts the source with no multiply-add in
//! the PTX; it has not run on a GPU yet. `cargo xtask cuda-check` compares it with the CPU kernel
//! (moments and element-wise agreement) and times it on a machine that has one.

use std::sync::OnceLock;

use candle_core::cuda_backend::CudaDevice;
use candle_core::cuda_backend::cudarc::driver::{CudaFunction, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::cudarc::nvrtc::{CompileOptions, compile_ptx_with_opts};
use candle_core::{CpuStorage, CudaStorage, DType, Device, InplaceOp2, InplaceOp3, Layout, Tensor};

use crate::kernel::{check_ctx, local_rows};
use crate::{NoiseStream, ParticleCloud, ParticleError, ParticleUpdate, StepContext};

/// CUDA C source of the kernels: the update (one thread per Philox block, i.e. four particle
/// elements) and the batch-position scatter.
pub const KERNEL_SOURCE: &str = r#"
__device__ __forceinline__ void ipld_philox(
    unsigned int c[4], unsigned int k0, unsigned int k1, int rounds) {
    const unsigned int M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
    for (int round = 0; round < rounds; ++round) {
        if (round > 0) { k0 += 0x9E3779B9u; k1 += 0xBB67AE85u; }
        unsigned int hi0 = __umulhi(M0, c[0]), lo0 = M0 * c[0];
        unsigned int hi1 = __umulhi(M1, c[2]), lo1 = M1 * c[2];
        unsigned int n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
        c[0] = n0; c[1] = lo1; c[2] = n2; c[3] = lo0;
    }
}

// -2 ln(k 2^-24) for k in [1, 2^24]: the CPU's `neg2_ln_draw` (rng.rs), operation for operation.
__device__ __forceinline__ float ipld_neg2_ln_draw(unsigned int k) {
    unsigned int bits = __float_as_uint((float)k);
    int e24 = ((int)(bits - 0x3f3504f3u)) >> 23;
    float m = __uint_as_float(bits - ((unsigned int)e24 << 23));
    float s = (m - 1.0f) / (m + 1.0f);
    float s2 = s * s;
    float p4 = s2 * (-4.0f * (1.0f / 3.0f) + s2 * (-4.0f * (1.0f / 5.0f)
        + s2 * (-4.0f * (1.0f / 7.0f) + s2 * (-4.0f * (1.0f / 9.0f)))));
    float ef = (float)(e24 - 24);
    float two_s = s + s;
    return ef * (-2.0f * __uint_as_float(0x3f317180u))
        + ((s * p4 + ef * (-2.0f * 9.0580015e-6f)) - (two_s + two_s));
}

// (sin, cos) of 2 pi k / 2^24: the CPU's `sincos_turn24`.
__device__ __forceinline__ void ipld_sincos_turn24(unsigned int k, float *sn, float *cs) {
    unsigned int qk = (k + (1u << 21)) >> 22;
    // (pi/2) 2^-22 (the f32 pi/2, 0x3fc90fdb, with its exponent lowered by 22).
    float t = (float)((int)k - (int)(qk << 22)) * __uint_as_float(0x34c90fdbu);
    float t2 = t * t;
    float s = t + t * t2
        * (-1.0f / 6.0f + t2 * (1.0f / 120.0f + t2 * (-1.0f / 5040.0f + t2 * (1.0f / 362880.0f))));
    float c = 1.0f + t2 * (-0.5f + t2 * (1.0f / 24.0f + t2 * (-1.0f / 720.0f
        + t2 * (1.0f / 40320.0f + t2 * (-1.0f / 3628800.0f)))));
    unsigned int q = qk & 3u;
    if (q & 1u) { float tmp = s; s = c; c = tmp; }
    *sn = __uint_as_float(__float_as_uint(s) ^ ((q >> 1) << 31));
    *cs = __uint_as_float(__float_as_uint(c) ^ (((q ^ (q >> 1)) & 1u) << 31));
}

__device__ __forceinline__ void ipld_box_muller4(const unsigned int b[4], float out[4]) {
    for (int p = 0; p < 2; ++p) {
        float r = sqrtf(ipld_neg2_ln_draw((b[2 * p] >> 8) + 1u));
        float s, c;
        ipld_sincos_turn24(b[2 * p + 1] >> 8, &s, &c);
        out[2 * p] = r * c;
        out[2 * p + 1] = r * s;
    }
}

// x^(-1/4): the CPU's `inv_fourth_root` (update.rs).
__device__ __forceinline__ float ipld_inv_fourth_root(float x) {
    float y = __uint_as_float(0x4f586000u - (__float_as_uint(x) >> 2));
    float xq = 0.25f * x;
    for (int i = 0; i < 3; ++i) {
        float y2 = y * y;
        y *= 1.25f - xq * (y2 * y2);
    }
    return y;
}

// rule 0: Langevin (Algorithm 1), z += -drift g + sd W.
// rule 1: adaptive Langevin (Algorithm 2), moments on batch rows, G^{1/2}-scaled noise.
// The noise scale (paper or posterior) arrives in `sd` and `precondition`.
// `state` holds three planes of `plane` floats: z, the momentum M and the second moment V.
// `pos[r]` is local row r's position in the batch, or 0xFFFFFFFF when it is not in it.
extern "C" __global__ void ipld_particle_update(
    float *state, unsigned long long plane, const float *grads, const unsigned int *pos,
    unsigned long long rows, unsigned int w, unsigned long long start,
    unsigned int key0, unsigned int key1, unsigned int stream, unsigned long long step,
    int rounds, int rule, float drift, float a, float b, float eps, float h, float sd, int precondition) {
    float *z = state, *m1 = state + plane, *m2 = state + 2ull * plane;
    unsigned long long first = start * (unsigned long long)w;
    unsigned long long end = first + rows * (unsigned long long)w;
    // Blocks in groups of 16: output j of block b is element 64 (b / 16) + 16 j + b % 16.
    unsigned long long block = first / 64ull * 16ull + blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (block >= (end + 63ull) / 64ull * 16ull) return;
    unsigned int c[4] = {
        (unsigned int)block, (unsigned int)(block >> 32), (unsigned int)step,
        stream ^ ((((unsigned int)(step >> 32)) << 16) | (((unsigned int)(step >> 32)) >> 16))};
    ipld_philox(c, key0, key1, rounds);
    float noise[4];
    ipld_box_muller4(c, noise);
    for (int q = 0; q < 4; ++q) {
        unsigned long long e = block / 16ull * 64ull + 16ull * q + block % 16ull;
        if (e < first || e >= end) continue;
        unsigned long long i = e - first;
        unsigned int p = pos[i / w];
        const float *g = p != 0xFFFFFFFFu ? grads + (unsigned long long)p * w + i % w : 0;
        if (rule == 0) {
            // The CPU's order: z + (-drift g + sd W) on batch rows, z + sd W elsewhere.
            z[i] = g ? z[i] + (-drift * (*g) + sd * noise[q]) : z[i] + sd * noise[q];
        } else {
            float zi = z[i], v = m2[i];
            if (g) {
                float gi = drift * (*g);
                float m = a * m1[i] + (1.0f - a) * gi;
                // The CPU's V_FLOOR (the smallest normal float): V = 0 only before a visit.
                v = fmaxf(b * v + (1.0f - b) * gi * gi, 1.17549435e-38f);
                m1[i] = m;
                m2[i] = v;
                zi -= h * m / sqrtf(v + eps);
            }
            // G = I for a particle never visited: the device has no visit counts, but V = 0
            // exactly until the first visit and never after it (V_FLOOR).
            float s = precondition ? sd * (v == 0.0f ? 1.0f : ipld_inv_fourth_root(v + eps)) : sd;
            z[i] = zi + s * noise[q];
        }
    }
}

// Marks the batch's local rows in `pos` (their batch positions) or clears them again.
extern "C" __global__ void ipld_batch_positions(
    unsigned int *pos, const unsigned int *rows, unsigned int n, int clear) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) pos[rows[i]] = clear ? 0xFFFFFFFFu : i;
}
"#;

const THREADS: u32 = 256;
const MODULE: &str = "ipld_particles";
const ABSENT: u32 = u32::MAX;

fn dev(e: impl std::fmt::Display) -> ParticleError {
    ParticleError::Device(e.to_string())
}

/// The kernels' PTX, compiled once per process.
fn ptx() -> Result<&'static str, ParticleError> {
    static PTX: OnceLock<Result<String, String>> = OnceLock::new();
    PTX.get_or_init(|| {
        // No multiply-add contraction: the CPU kernels round every product and sum separately.
        let opts = CompileOptions {
            fmad: Some(false),
            ..Default::default()
        };
        compile_ptx_with_opts(KERNEL_SOURCE, opts)
            .map(|p| p.to_src())
            .map_err(|e| format!("compiling the particle kernels with NVRTC: {e}"))
    })
    .as_deref()
    .map_err(|e| ParticleError::Device(e.clone()))
}

/// Kernel `name` from the module compiled from [`KERNEL_SOURCE`] (loaded once per device by
/// candle); launch it on `device.cuda_stream()`, candle's stream.
fn kernel(device: &CudaDevice, name: &str) -> candle_core::Result<CudaFunction> {
    let func =
        device.get_or_load_custom_func(name, MODULE, ptx().map_err(candle_core::Error::wrap)?)?;
    Ok(func.into_cuda_function())
}

/// The element range that the contiguous layout `l` addresses in its storage.
fn range(l: &Layout, what: &str) -> candle_core::Result<std::ops::Range<usize>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(a..b),
        None => candle_core::bail!("{what} must be contiguous"),
    }
}

/// Sets (or clears) `pos[rows[i]] = i` on the device.
struct BatchPositions {
    clear: bool,
}

impl InplaceOp2 for BatchPositions {
    fn name(&self) -> &'static str {
        "ipld-batch-positions"
    }

    fn cpu_fwd(
        &self,
        _: &mut CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<()> {
        candle_core::bail!("ipld-batch-positions runs on CUDA only")
    }

    fn cuda_fwd(
        &self,
        pos: &mut CudaStorage,
        pos_l: &Layout,
        rows: &CudaStorage,
        rows_l: &Layout,
    ) -> candle_core::Result<()> {
        let (pr, rr) = (
            range(pos_l, "batch positions")?,
            range(rows_l, "batch rows")?,
        );
        let n = rr.len() as u32;
        let (func, stream) = (
            kernel(&pos.device, "ipld_batch_positions")?,
            pos.device.cuda_stream(),
        );
        let rows = rows.as_cuda_slice::<u32>()?.slice(rr);
        let mut pos = pos.as_cuda_slice_mut::<u32>()?.slice_mut(pr);
        let clear = self.clear as i32;
        let mut launch = stream.launch_builder(&func);
        launch.arg(&mut pos).arg(&rows).arg(&n).arg(&clear);
        let cfg = LaunchConfig::for_num_elems(n);
        // SAFETY: the arguments match `ipld_batch_positions` in KERNEL_SOURCE (types and order);
        // `rows` holds n local row indices, each checked < pos.len() by `CudaCloud::step`.
        unsafe { launch.launch(cfg) }.map_err(candle_core::Error::wrap)?;
        Ok(())
    }
}

/// One update of the cloud `state` [3, rows, w] given the batch's gradients and positions.
struct Update {
    rows: u64,
    w: u32,
    start: u64,
    key: [u32; 2],
    stream: u32,
    step: u64,
    rounds: i32,
    rule: i32,
    drift: f32,
    a: f32,
    b: f32,
    eps: f32,
    h: f32,
    sd: f32,
    precondition: i32,
}

impl InplaceOp3 for Update {
    fn name(&self) -> &'static str {
        "ipld-particle-update"
    }

    fn cpu_fwd(
        &self,
        _: &mut CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<()> {
        candle_core::bail!(
            "ipld-particle-update runs on CUDA only (the CPU kernels are ParticleUpdate)"
        )
    }

    fn cuda_fwd(
        &self,
        state: &mut CudaStorage,
        state_l: &Layout,
        grads: &CudaStorage,
        grads_l: &Layout,
        pos: &CudaStorage,
        pos_l: &Layout,
    ) -> candle_core::Result<()> {
        let (sr, gr, pr) = (
            range(state_l, "the particle state")?,
            range(grads_l, "the gradients")?,
            range(pos_l, "the batch positions")?,
        );
        let (func, stream) = (
            kernel(&state.device, "ipld_particle_update")?,
            state.device.cuda_stream(),
        );
        let first = self.start * self.w as u64;
        let end = first + self.rows * self.w as u64;
        // Whole groups of 16 Philox blocks (64 elements) covering first..end.
        let blocks = end.div_ceil(64) * 16 - first / 64 * 16;
        let Ok(grid) = u32::try_from(blocks.div_ceil(THREADS as u64)) else {
            candle_core::bail!("{blocks} noise blocks exceed one grid")
        };
        let cfg = LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let plane = self.rows * self.w as u64;
        let grads = grads.as_cuda_slice::<f32>()?.slice(gr);
        let pos = pos.as_cuda_slice::<u32>()?.slice(pr);
        let mut state = state.as_cuda_slice_mut::<f32>()?.slice_mut(sr);
        let mut launch = stream.launch_builder(&func);
        launch
            .arg(&mut state)
            .arg(&plane)
            .arg(&grads)
            .arg(&pos)
            .arg(&self.rows)
            .arg(&self.w)
            .arg(&self.start)
            .arg(&self.key[0])
            .arg(&self.key[1])
            .arg(&self.stream)
            .arg(&self.step)
            .arg(&self.rounds)
            .arg(&self.rule)
            .arg(&self.drift)
            .arg(&self.a)
            .arg(&self.b)
            .arg(&self.eps)
            .arg(&self.h)
            .arg(&self.sd)
            .arg(&self.precondition);
        // SAFETY: the arguments match `ipld_particle_update` in KERNEL_SOURCE (types and order),
        // and every index the kernel forms lies inside the buffers: state holds 3 planes of
        // rows * w elements, pos rows entries, grads |B| * w (checked by `CudaCloud::step`), and
        // pos holds only ABSENT or positions < |B|.
        unsafe { launch.launch(cfg) }.map_err(candle_core::Error::wrap)?;
        Ok(())
    }
}

/// A particle cloud on a candle CUDA device: one f32 tensor [3, rows, N, d] holding z, the
/// momentum and the second moment, updated in place by the CUDA kernel on candle's stream.
pub struct CudaCloud {
    state: Tensor,
    /// Each local row's position in the current batch (ABSENT outside it), kept all-ABSENT
    /// between steps so a step touches only its batch's entries.
    pos: Tensor,
    shape: [usize; 3],
    start: usize,
}

impl CudaCloud {
    /// Copies `cloud` to `device`, which must be a CUDA device (`Device::new_cuda(ordinal)`).
    pub fn upload(cloud: &ParticleCloud, device: &Device) -> Result<Self, ParticleError> {
        if !device.is_cuda() {
            return Err(ParticleError::Device(format!(
                "CudaCloud needs a CUDA device, got {device:?}"
            )));
        }
        let [rows, n, d] = cloud.shape();
        let mut host = Vec::with_capacity(3 * rows * n * d);
        for part in [cloud.z(), cloud.momentum(), cloud.second_moment()] {
            host.extend_from_slice(part);
        }
        Ok(Self {
            state: Tensor::from_vec(host, (3, rows, n, d), device).map_err(dev)?,
            pos: Tensor::full(ABSENT, rows, device).map_err(dev)?,
            shape: [rows, n, d],
            start: cloud.start(),
        })
    }

    /// The cloud copied back to host memory.
    pub fn download(&self) -> Result<ParticleCloud, ParticleError> {
        let all = self
            .state
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(dev)?;
        let len = all.len() / 3;
        let (z, rest) = all.split_at(len);
        let (m1, m2) = rest.split_at(len);
        ParticleCloud::from_parts(self.start, self.shape, z, m1, m2)
    }

    /// The particles z as a [rows, N, d] tensor on the device, sharing the cloud's storage: gather
    /// a minibatch's latents from it with `index_select` (local row indices).
    pub fn z(&self) -> Result<Tensor, ParticleError> {
        self.state.get(0).map_err(dev)
    }

    /// The whole state [3, rows, N, d] (z, momentum, second moment), e.g. for a checkpoint.
    pub fn state(&self) -> &Tensor {
        &self.state
    }

    /// Blocks until the queued updates have finished (for timing).
    pub fn synchronize(&self) -> Result<(), ParticleError> {
        self.state.device().synchronize().map_err(dev)
    }

    /// One step of `rule` (Langevin or adaptive Langevin): the same arguments and meaning as
    /// [`crate::ParticleUpdate::step`], except that the gradients are a device tensor [|B|, N, d]
    /// (f32, contiguous, in batch order), typically straight from a candle backward pass.
    pub fn step(
        &mut self,
        rule: &dyn ParticleUpdate,
        batch: &[usize],
        grads: &Tensor,
        ctx: &StepContext,
        noise: &NoiseStream,
    ) -> Result<(), ParticleError> {
        check_ctx(ctx)?;
        let [rows, n, d] = self.shape;
        let w = n * d;
        if grads.dtype() != DType::F32 || grads.elem_count() != batch.len() * w {
            return Err(ParticleError::Shape(format!(
                "gradients must be f32 with {} x {w} values for a batch of {} rows, got {:?} {:?}",
                batch.len(),
                batch.len(),
                grads.dtype(),
                grads.dims()
            )));
        }
        if !grads.device().same_device(self.state.device()) {
            return Err(ParticleError::Device(
                "the gradients are not on the cloud's CUDA device".into(),
            ));
        }
        let local = local_rows(self.start, rows, batch)?;
        let p = rule.kernel_params(ctx, n)?;
        let update = Update {
            rows: rows as u64,
            w: w as u32,
            start: self.start as u64,
            key: noise.key(),
            stream: noise.stream_id(),
            step: ctx.step,
            rounds: noise.generator().rounds() as i32,
            rule: p.rule,
            drift: p.drift,
            a: p.a,
            b: p.b,
            eps: p.eps,
            h: ctx.step_size as f32,
            sd: p.sd,
            precondition: p.precondition as i32,
        };
        let grads = grads.contiguous().map_err(dev)?;
        if local.is_empty() {
            // No batch: noise only (pos is all ABSENT; grads is never read).
            let pad = Tensor::zeros(1, DType::F32, self.state.device()).map_err(dev)?;
            return self
                .state
                .inplace_op3(&pad, &self.pos, &update)
                .map_err(dev);
        }
        let local = Tensor::from_vec(local, batch.len(), self.state.device()).map_err(dev)?;
        // All three ops queue on candle's stream, in order.
        self.pos
            .inplace_op2(&local, &BatchPositions { clear: false })
            .and_then(|()| self.state.inplace_op3(&grads, &self.pos, &update))
            .and_then(|()| {
                self.pos
                    .inplace_op2(&local, &BatchPositions { clear: true })
            })
            .map_err(dev)
    }
}

#[cfg(test)]
mod tests {
    /// NVRTC (no GPU needed) accepts the kernel source, both entry points are in the PTX, and
    /// `--fmad=false` held: no fused multiply-add that the CPU kernels would not do.
    #[test]
    fn kernels_compile_with_nvrtc_without_contraction() {
        let ptx = super::ptx().expect("NVRTC compiles KERNEL_SOURCE");
        for entry in ["ipld_particle_update", "ipld_batch_positions"] {
            assert!(ptx.contains(&format!(".entry {entry}(")), "{entry} missing");
        }
        assert!(ptx.contains("mul.rn.f32") || ptx.contains("mul.f32"));
        assert!(
            !ptx.contains("fma.rn.f32"),
            "the PTX contracts a multiply-add"
        );
    }
}
