//! The particle update on an NVIDIA GPU (feature `cuda`): Algorithm 1 (eqs. 19-22) and
//! Algorithm 2 (eqs. 65-66) as one CUDA kernel compiled at run time with NVRTC through cudarc,
//! over a cloud kept in device memory. The in-kernel noise is the CPU's: Philox4x32-10 at
//! counter (block, step, stream), the same planar layout of 64-element groups, and the same
//! libm-free Box-Muller and (V + eps)^(-1/4), compiled with `--fmad=false` so that no multiply-add
//! is contracted: the GPU should reproduce [`NoiseStream`] and the CPU kernels bit for bit, for
//! any launch geometry.
//!
//! Status: compiled in CI (`cargo clippy --features cuda`) but not yet run on a GPU; `cargo
//! xtask cuda-check` compares it with the CPU kernel (moments and element-wise agreement) and
//! times it on a machine that has one.

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};

use crate::update::batch_positions;
use crate::{NoiseStream, ParticleCloud, ParticleError, StepContext, UpdateConfig};

/// CUDA C source of the kernel (one thread per Philox block, i.e. four particle elements).
pub const KERNEL_SOURCE: &str = r#"
__device__ __forceinline__ void ipld_philox(unsigned int c[4], unsigned int k0, unsigned int k1) {
    const unsigned int M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
    for (int round = 0; round < 10; ++round) {
        if (round > 0) { k0 += 0x9E3779B9u; k1 += 0xBB67AE85u; }
        unsigned int hi0 = __umulhi(M0, c[0]), lo0 = M0 * c[0];
        unsigned int hi1 = __umulhi(M1, c[2]), lo1 = M1 * c[2];
        unsigned int n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
        c[0] = n0; c[1] = lo1; c[2] = n2; c[3] = lo0;
    }
}

// ln x for x in [2^-24, 1]: the CPU's `ln_unit` (rng.rs), operation for operation.
__device__ __forceinline__ float ipld_ln_unit(float x) {
    unsigned int bits = __float_as_uint(x);
    int e = ((int)(bits - 0x3f3504f3u)) >> 23;
    float m = __uint_as_float(bits - ((unsigned int)e << 23));
    float s = (m - 1.0f) / (m + 1.0f);
    float s2 = s * s;
    float p = s2 * (1.0f / 3.0f + s2 * (1.0f / 5.0f + s2 * (1.0f / 7.0f + s2 * (1.0f / 9.0f))));
    float ef = (float)e;
    return ef * __uint_as_float(0x3f317180u) + (2.0f * s + (2.0f * s * p + ef * 9.0580015e-6f));
}

// (sin, cos) of 2 pi k / 2^24: the CPU's `sincos_turn24`.
__device__ __forceinline__ void ipld_sincos_turn24(unsigned int k, float *sn, float *cs) {
    unsigned int qk = (k + (1u << 21)) >> 22;
    float r = (float)((int)k - (int)(qk << 22)) * (1.0f / 4194304.0f);
    float t = r * __uint_as_float(0x3fc90fdbu);
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
    const float SCALE = 1.0f / 16777216.0f;
    for (int p = 0; p < 2; ++p) {
        float u1 = (float)((b[2 * p] >> 8) + 1u) * SCALE;
        float r = sqrtf(-2.0f * ipld_ln_unit(u1));
        float s, c;
        ipld_sincos_turn24(b[2 * p + 1] >> 8, &s, &c);
        out[2 * p] = r * c;
        out[2 * p + 1] = r * s;
    }
}

// x^(-1/4): the CPU's `inv_fourth_root` (update.rs).
__device__ __forceinline__ float ipld_inv_fourth_root(float x) {
    float y = __uint_as_float(0x4f586000u - (__float_as_uint(x) >> 2));
    for (int i = 0; i < 3; ++i) {
        float y2 = y * y;
        y *= 1.25f - 0.25f * (x * (y2 * y2));
    }
    return y;
}

// rule 0: Langevin (Algorithm 1), z += -drift g + sd W.
// rule 1: adaptive Langevin (Algorithm 2), moments on batch rows, G^{1/2}-scaled noise.
extern "C" __global__ void ipld_particle_update(
    float *z, float *m1, float *m2, const float *grads, const int *pos,
    unsigned long long rows, unsigned int w, unsigned long long start,
    unsigned int key0, unsigned int key1, unsigned int stream, unsigned long long step,
    int rule, float drift, float a, float b, float eps, float h, float sd, int precondition) {
    unsigned long long first = start * (unsigned long long)w;
    unsigned long long end = first + rows * (unsigned long long)w;
    // Blocks in groups of 16: output j of block b is element 64 (b / 16) + 16 j + b % 16.
    unsigned long long block = first / 64ull * 16ull + blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (block >= (end + 63ull) / 64ull * 16ull) return;
    unsigned int c[4] = {
        (unsigned int)block, (unsigned int)(block >> 32), (unsigned int)step,
        stream ^ ((((unsigned int)(step >> 32)) << 16) | (((unsigned int)(step >> 32)) >> 16))};
    ipld_philox(c, key0, key1);
    float noise[4];
    ipld_box_muller4(c, noise);
    for (int q = 0; q < 4; ++q) {
        unsigned long long e = block / 16ull * 64ull + 16ull * q + block % 16ull;
        if (e < first || e >= end) continue;
        unsigned long long i = e - first;
        int p = pos[i / w];
        const float *g = p >= 0 ? grads + (unsigned long long)p * w + i % w : 0;
        if (rule == 0) {
            // The CPU's order: z + (-drift g + sd W) on batch rows, z + sd W elsewhere.
            z[i] = g ? z[i] + (-drift * (*g) + sd * noise[q]) : z[i] + sd * noise[q];
        } else {
            float zi = z[i], v = m2[i];
            if (g) {
                float gi = drift * (*g);
                float m = a * m1[i] + (1.0f - a) * gi;
                v = b * v + (1.0f - b) * gi * gi;
                m1[i] = m;
                m2[i] = v;
                zi -= h * m / sqrtf(v + eps);
            }
            float s = precondition ? sd * ipld_inv_fourth_root(v + eps) : sd;
            z[i] = zi + s * noise[q];
        }
    }
}
"#;

const THREADS: u32 = 256;

fn dev(e: impl std::fmt::Display) -> ParticleError {
    ParticleError::Device(e.to_string())
}

/// A particle cloud (z, momentum, second moment) in GPU memory with the compiled update kernel.
pub struct CudaCloud {
    stream: Arc<CudaStream>,
    func: CudaFunction,
    z: CudaSlice<f32>,
    m1: CudaSlice<f32>,
    m2: CudaSlice<f32>,
    shape: [usize; 3],
    start: usize,
}

impl CudaCloud {
    /// Copies `cloud` to GPU `ordinal` and compiles the kernel (NVRTC).
    pub fn upload(cloud: &ParticleCloud, ordinal: usize) -> Result<Self, ParticleError> {
        // cudarc panics on first use when a library is missing: check before, to return an error.
        // SAFETY: only tries to open the shared libraries; no CUDA call is made.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(ParticleError::Device(
                "the CUDA driver library (libcuda.so) was not found: is an NVIDIA driver installed?"
                    .into(),
            ));
        }
        // SAFETY: as above.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(ParticleError::Device(
                "NVRTC (libnvrtc.so) was not found: add the CUDA toolkit's lib64 to LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        let ctx = CudaContext::new(ordinal).map_err(dev)?;
        let stream = ctx.default_stream();
        // No multiply-add contraction: the CPU kernels round every product and sum separately.
        let opts = cudarc::nvrtc::CompileOptions {
            fmad: Some(false),
            ..Default::default()
        };
        let ptx = cudarc::nvrtc::compile_ptx_with_opts(KERNEL_SOURCE, opts).map_err(dev)?;
        let module = ctx.load_module(ptx).map_err(dev)?;
        let func = module.load_function("ipld_particle_update").map_err(dev)?;
        Ok(Self {
            z: stream.clone_htod(cloud.z()).map_err(dev)?,
            m1: stream.clone_htod(cloud.momentum()).map_err(dev)?,
            m2: stream.clone_htod(cloud.second_moment()).map_err(dev)?,
            stream,
            func,
            shape: cloud.shape(),
            start: cloud.start(),
        })
    }

    /// The cloud copied back to host memory.
    pub fn download(&self) -> Result<ParticleCloud, ParticleError> {
        let z = self.stream.clone_dtoh(&self.z).map_err(dev)?;
        let m1 = self.stream.clone_dtoh(&self.m1).map_err(dev)?;
        let m2 = self.stream.clone_dtoh(&self.m2).map_err(dev)?;
        ParticleCloud::from_parts(self.start, self.shape, z, m1, m2)
    }

    /// Blocks until the queued updates have finished (for timing).
    pub fn synchronize(&self) -> Result<(), ParticleError> {
        self.stream.synchronize().map_err(dev)
    }

    /// One step of `rule` (Langevin or adaptive Langevin): the same arguments and meaning as
    /// [`crate::ParticleUpdate::step`]; `grads` is copied to the device.
    pub fn step(
        &mut self,
        rule: &UpdateConfig,
        batch: &[usize],
        grads: &[f32],
        ctx: &StepContext,
        noise: &NoiseStream,
    ) -> Result<(), ParticleError> {
        crate::update::check_ctx(ctx)?;
        let [rows, n, d] = self.shape;
        let w = n * d;
        let pos: Vec<i32> = batch_positions(self.start, rows, w, batch, grads)?
            .into_iter()
            .map(|p| if p == u32::MAX { -1 } else { p as i32 })
            .collect();
        let (rule_id, drift, a, b, eps, sd, precondition) = match rule {
            UpdateConfig::Langevin(r) => (
                0i32,
                (ctx.step_size * ctx.total_points as f64 * n as f64) as f32,
                0f32,
                0f32,
                0f32,
                r.step_variance(ctx).plain.sqrt() as f32,
                0i32,
            ),
            UpdateConfig::AdaptiveLangevin(r) => (
                1i32,
                (ctx.total_points as f64 * n as f64) as f32,
                r.momentum as f32,
                r.second_moment as f32,
                r.eps as f32,
                r.noise_sd(ctx) as f32,
                ctx.precondition_noise as i32,
            ),
            UpdateConfig::KineticLangevin(_) => {
                return Err(ParticleError::param(
                    "particles.update.type",
                    "the CUDA kernel implements langevin and adaptive-langevin",
                ));
            }
        };
        let pos = self.stream.clone_htod(&pos).map_err(dev)?;
        // A zero-length device buffer is not allowed: pad an empty batch.
        let grads = if grads.is_empty() {
            self.stream.clone_htod(&[0f32]).map_err(dev)?
        } else {
            self.stream.clone_htod(grads).map_err(dev)?
        };
        let first = self.start as u64 * w as u64;
        let end = first + (rows * w) as u64;
        // Whole groups of 16 Philox blocks (64 elements) covering first..end.
        let blocks = end.div_ceil(64) * 16 - first / 64 * 16;
        let grid = u32::try_from(blocks.div_ceil(THREADS as u64))
            .map_err(|_| ParticleError::Shape(format!("{blocks} noise blocks exceed one grid")))?;
        let cfg = LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (rows64, w32, start64) = (rows as u64, w as u32, self.start as u64);
        let ([key0, key1], stream_id) = (noise.key(), noise.stream_id());
        let h = ctx.step_size as f32;
        let mut launch = self.stream.launch_builder(&self.func);
        launch
            .arg(&mut self.z)
            .arg(&mut self.m1)
            .arg(&mut self.m2)
            .arg(&grads)
            .arg(&pos)
            .arg(&rows64)
            .arg(&w32)
            .arg(&start64)
            .arg(&key0)
            .arg(&key1)
            .arg(&stream_id)
            .arg(&ctx.step)
            .arg(&rule_id)
            .arg(&drift)
            .arg(&a)
            .arg(&b)
            .arg(&eps)
            .arg(&h)
            .arg(&sd)
            .arg(&precondition);
        // SAFETY: the argument list matches `ipld_particle_update`'s signature in KERNEL_SOURCE
        // (types and order), and every index the kernel forms lies inside the buffers: z, m1, m2
        // hold rows * w elements, pos rows, grads |B| * w.
        unsafe { launch.launch(cfg) }.map_err(dev)?;
        Ok(())
    }
}
