//! `cargo xtask cuda-check` (feature `cuda`): validates the CUDA particle kernel against the CPU
//! kernel and times it. Validation: both run the same 60 adaptive-Langevin steps (Algorithm 2,
//! the noise switching to preconditioned after 20; with the paper's and the posterior noise
//! scale) and 60 Langevin steps (Algorithm 1) from the
//! same cloud with the same gradients and noise counters; they must agree element-wise to 1e-4
//! of the cloud's scale and in the first two moments of the moved cloud. (Both sides use the same
//! libm-free Box-Muller and no FMA contraction, so they are designed to agree bit for bit; the
//! tolerance leaves room for a device whose division or square root rounds differently.) The GPU
//! side is the candle path a trainer uses: gradients as device tensors, the kernel as an in-place
//! op on candle's stream. Timing: ms per eager step (gradients already on the device) and GB/s of
//! particle state for (M, N, d) = (10^5, 16, 2) and CIFAR-10's (5 x 10^4, 10, 256). Writes
//! `target/bench/cuda.json`.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use candle_core::{Device, Tensor};
use ipld_particles::{
    AdaptiveLangevin, CudaCloud, Langevin, NoiseGenerator, NoiseScale, NoiseStream, ParticleCloud,
    ParticleUpdate, StepContext, UpdateConfig,
};
use serde_json::json;

fn ctx(step: u64, m: usize, b: usize, precondition: bool) -> StepContext {
    StepContext {
        step,
        gamma: 0.01,
        step_size: 0.1,
        batch_size: b,
        total_points: m,
        noise_scale: NoiseScale::Paper,
        epoch: precondition as u64,
    }
}

/// A deterministic gradient field for step `t`: varies by element and step.
fn grads(t: u64, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| 1e-5 * (((i as u64 * 2_654_435_761 + t * 97) % 2001) as f32 - 1000.0) / 1000.0)
        .collect()
}

fn moments(z: &[f32]) -> (f64, f64) {
    let n = z.len() as f64;
    let mean = z.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = z.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var)
}

fn agree(
    device: &Device,
    rule: &UpdateConfig,
    generator: NoiseGenerator,
    noise_scale: NoiseScale,
) -> anyhow::Result<serde_json::Value> {
    let name = format!(
        "{}, {}, {} noise",
        rule.name(),
        generator.name(),
        noise_scale.name()
    );
    let (m, n, d, b) = (4096, 8, 4, 256);
    let cloud = ParticleCloud::gaussian(0, m, n, d, 11)?;
    let mut cpu = cloud.clone();
    let mut gpu = CudaCloud::upload(&cloud, device)?;
    let noise = NoiseStream::new(5, 7).with_generator(generator);
    for t in 0..60u64 {
        let batch: Vec<usize> = (0..b).map(|i| (i * 16 + t as usize) % m).collect();
        let g = grads(t, b * n * d);
        let c = StepContext {
            noise_scale,
            ..ctx(t, m, b, t >= 20)
        };
        rule.rule().step(&mut cpu, &batch, &g, &c, &noise)?;
        let g = Tensor::from_vec(g, (b, n, d), device)?;
        gpu.step(rule, &batch, &g, &c, &noise)?;
    }
    let gpu = gpu.download()?;
    let max_diff = cpu
        .z()
        .iter()
        .zip(gpu.z())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let (mc, vc) = moments(cpu.z());
    let (mg, vg) = moments(gpu.z());
    let moved = cpu
        .z()
        .iter()
        .zip(cloud.z())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!(
        "{name}: max |z_cpu - z_gpu| = {max_diff:.3e} (the cloud moved up to {moved:.3e}); mean {mc:.6} vs {mg:.6}, var {vc:.6} vs {vg:.6}"
    );
    let se_mean = (vc / cpu.z().len() as f64).sqrt();
    if !(max_diff <= 1e-4
        && moved > 1e-3
        && (mc - mg).abs() < 5.0 * se_mean
        && (vc - vg).abs() < 1e-3 * vc)
    {
        bail!("{name}: the CUDA kernel disagrees with the CPU kernel");
    }
    Ok(json!({ "max_abs_diff": max_diff, "mean": [mc, mg], "var": [vc, vg] }))
}

fn timing(device: &Device, m: usize, n: usize, d: usize) -> anyhow::Result<serde_json::Value> {
    let b = 500.min(m);
    let cloud = ParticleCloud::gaussian(0, m, n, d, 1)?;
    let mut gpu = CudaCloud::upload(&cloud, device)?;
    let rule = UpdateConfig::AdaptiveLangevin(AdaptiveLangevin::default());
    let noise = NoiseStream::new(3, 7).with_generator(ipld_train::RunConfig::presets_noise()?);
    let batch: Vec<usize> = (0..b).map(|i| i * (m / b)).collect();
    let g = Tensor::full(1e-6f32, (b, n, d), device)?;
    for t in 0..3 {
        gpu.step(&rule, &batch, &g, &ctx(t, m, b, true), &noise)?;
    }
    gpu.synchronize()?;
    let steps = 50u64;
    let start = Instant::now();
    for t in 3..3 + steps {
        gpu.step(&rule, &batch, &g, &ctx(t, m, b, true), &noise)?;
    }
    gpu.synchronize()?;
    let secs = start.elapsed().as_secs_f64() / steps as f64;
    // As in `cargo xtask bench`: z and V read, z written per element; batch rows also M.
    let bytes = (m * n * d) as f64 * 12.0 + (b * n * d) as f64 * 8.0;
    println!(
        "eager CUDA step, M {m}, N {n}, d {d}: {:.3} ms, {:.1} GB/s",
        secs * 1e3,
        bytes / secs / 1e9
    );
    Ok(json!({ "m": m, "n": n, "d": d, "seconds_per_step": secs, "gb_per_s": bytes / secs / 1e9 }))
}

/// Runs the check and the timing; fails if the kernels disagree.
pub fn run(out: &Path) -> anyhow::Result<()> {
    let device = Device::new_cuda(0).context("opening CUDA device 0 through candle")?;
    let mut agreement = serde_json::Map::new();
    for rule in [
        UpdateConfig::AdaptiveLangevin(AdaptiveLangevin::default()),
        UpdateConfig::Langevin(Langevin::default()),
    ] {
        for generator in [NoiseGenerator::Philox4x32_7, NoiseGenerator::Philox4x32_10] {
            let key = format!("{} {}", rule.name(), generator.name());
            agreement.insert(key, agree(&device, &rule, generator, NoiseScale::Paper)?);
        }
        // The posterior noise (issue 21): other sd and preconditioning through the same kernel.
        let generator = NoiseGenerator::Philox4x32_7;
        let key = format!("{} {} posterior", rule.name(), generator.name());
        agreement.insert(
            key,
            agree(&device, &rule, generator, NoiseScale::Posterior)?,
        );
    }
    let small = timing(&device, 100_000, 16, 2)?;
    let cifar = timing(&device, 50_000, 10, 256)?;
    let summary = json!({
        "agreement": agreement,
        "timing": [small, cifar],
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    ipld_data::write_atomically(out, serde_json::to_string_pretty(&summary)?.as_bytes())
        .with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}
