//! `cargo xtask bench`: a quick performance suite (a few minutes) that prints a table and writes
//! `target/bench/summary.json`:
//! - memcpy bandwidth of this machine (the yardstick; the best of 9 copies of 256 MiB on one
//!   thread and 9 split over all threads);
//! - the eager particle update (Algorithm 2 over the whole cloud) in GB/s of particle state
//!   moved, and as a fraction of memcpy, with the presets' noise generator (Philox4x32-7) and
//!   with Philox4x32-10 (a config without `particles.noise`);
//! - the lazy update's seconds per step for M = 10^4, 10^5, 10^6 (N = 16, d_z = 2; should be
//!   flat in M), and for M = 10^4, 10^5 at d_z = 256 (M = 10^6 would need 49 GB of particle
//!   state: z, momentum and second moment of 10^6 x 16 x 256 f32);
//! - `gmm` training steps per second for N = 1, 16, 256 (batch 500);
//! - the eager update and gmm training at N = 1 and 16 once per instruction set this CPU has
//!   (`by_isa`: AVX-512, AVX2, portable), side by side in one process;
//! - DDIM-100 sampling throughput of a trained-size prior and decoder;
//! - peak resident memory of the process;
//! - scaling over MPI ranks (`scaling`): gmm at N = 16 and 256 as 1 rank x 2 threads against
//!   2 ranks x 1 thread, with each rank's peak memory (skipped, saying so, without mpirun).
//!
//! Criterion benches (`cargo bench -p ipld-benches`) give the careful, per-case numbers.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use ipld_particles::{
    AdaptiveLangevin, LazyNoise, NoiseGenerator, NoiseStream, ParticleCloud, ParticleUpdate,
    StepContext, UpdateConfig,
};
use ipld_train::rundir::preset_trainer;
use serde_json::json;

/// Median of `reps` timings of `f` in seconds.
fn time_median(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn memcpy_gb_per_s() -> f64 {
    use rayon::prelude::*;
    let n = 64 << 20; // 256 MiB of f32
    // The best of 9 copies, on one thread and split over all threads (as the eager update is),
    // between buffers with ordinary pages and with huge pages (as the particle cloud has): this
    // VM's memory bandwidth swings by half between runs (noisy neighbours), and the best copy is
    // the machine's capability, so fractions of it are conservative.
    let threads = rayon::current_num_threads().max(1);
    let best = |huge: bool| {
        // Advised before the first touch, so the pages are faulted in as huge pages.
        let buffer = |value: f32| {
            let mut v = vec![0.0f32; n];
            if huge {
                ipld_particles::advise_huge_pages(&mut v);
            }
            v.fill(value);
            v
        };
        let (src, mut dst) = (buffer(1.0), buffer(0.0));
        [1, threads]
            .into_iter()
            .flat_map(|t| std::iter::repeat_n(n.div_ceil(t), 9))
            .map(|chunk| {
                let s = Instant::now();
                dst.par_chunks_mut(chunk)
                    .zip(src.par_chunks(chunk))
                    .for_each(|(d, s)| d.copy_from_slice(std::hint::black_box(s)));
                std::hint::black_box(&mut dst);
                s.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    };
    let secs = best(false).min(best(true));
    // Read + write.
    2.0 * (n * 4) as f64 / secs / 1e9
}

fn ctx(step: u64, m: usize, b: usize) -> StepContext {
    StepContext {
        step,
        gamma: 0.01,
        step_size: 0.1,
        batch_size: b,
        total_points: m,
        noise_scale: ipld_particles::NoiseScale::Paper,
        epoch: 1,
    }
}

/// Eager Algorithm 2 over M = 10^5 points, N = 16, d = 2 with a batch of 500: seconds per step
/// and GB/s of particle state (z and V read, z written, per element; the batch rows also
/// read/write M).
fn eager_update(generator: NoiseGenerator) -> (f64, f64, [usize; 3]) {
    let (m, n, d, b) = (100_000, 16, 2, 500);
    let mut cloud = ParticleCloud::gaussian(0, m, n, d, 1).expect("cloud");
    // Every point visited, as after a run's first epoch: the noise is preconditioned.
    cloud.set_visits(&vec![1; m]).expect("visits");
    let rule = AdaptiveLangevin::default();
    let noise = NoiseStream::new(3, 7).with_generator(generator);
    let batch: Vec<usize> = (0..b).map(|i| i * (m / b)).collect();
    let grads = vec![1e-6f32; b * n * d];
    let mut t = 0;
    let secs = time_median(21, || {
        rule.step(&mut cloud, &batch, &grads, &ctx(t, m, b), &noise)
            .expect("step");
        t += 1;
    });
    let bytes = (m * n * d) as f64 * 12.0 + (b * n * d) as f64 * 8.0;
    (secs, bytes / secs / 1e9, [m, n, d])
}

/// Lazy steps (sync the batch, update it, record) for growing M at N = 16.
fn lazy_update(m: usize, d: usize, generator: NoiseGenerator) -> f64 {
    let (n, b) = (16, 500);
    let mut cloud = ParticleCloud::gaussian(0, m, n, d, 1).expect("cloud");
    // Every point visited, as after a run's first epoch: the noise is preconditioned.
    cloud.set_visits(&vec![1; m]).expect("visits");
    let rule = UpdateConfig::AdaptiveLangevin(AdaptiveLangevin::default());
    let mut lazy = LazyNoise::new(&cloud, 0, 1e-8);
    let (noise, lazy_noise) = (
        NoiseStream::new(3, 7).with_generator(generator),
        NoiseStream::new(3, ipld_particles::LAZY_STREAM).with_generator(generator),
    );
    let grads = vec![1e-6f32; b * n * d];
    let mut t = 0u64;
    time_median(21, || {
        let batch = ipld_benches::scrambled_batch(m, b, t);
        lazy.sync(&mut cloud, &batch, t, &lazy_noise).expect("sync");
        lazy.step(&rule, &mut cloud, &batch, &grads, &ctx(t, m, b), &noise)
            .expect("step");
        t += 1;
    })
}

fn train_gmm(n: usize, steps: u64) -> anyhow::Result<f64> {
    let mut trainer = preset_trainer(
        "gmm",
        &[
            format!("particles.count={n}"),
            format!("train.steps={steps}"),
        ],
    )?;
    trainer.train_step()?; // warm-up
    let start = Instant::now();
    for _ in 1..steps {
        trainer.train_step()?;
    }
    Ok((steps - 1) as f64 / start.elapsed().as_secs_f64())
}

fn sampling() -> anyhow::Result<f64> {
    let trainer = preset_trainer("gmm", &[])?;
    let sampler = ipld_diffusion::SamplerConfig::Ddim(ipld_diffusion::Ddim {
        steps: 100,
        eta: 0.0,
    });
    let n = 10_000;
    let s = ipld_train::eval::generate(&trainer, n, &sampler, 0, &mut |_| {})?;
    Ok(n as f64 / s.seconds)
}

/// The CPU's model name (`/proc/cpuinfo`), so a number names the machine it came from.
fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Runs the suite and writes `out` (JSON).
pub fn run(out: &Path) -> anyhow::Result<()> {
    // As `ipld-train` does for the presets' two shards (before any thread or tensor op).
    ipld_train::quiet_candle_pool(2);
    let memcpy = memcpy_gb_per_s();
    println!(
        "CPU {}, particle kernels on {} (IPLD_ISA to force one)",
        cpu_model().unwrap_or_else(|| "unknown".into()),
        ipld_particles::active_isa().name()
    );
    println!("memcpy: {memcpy:.2} GB/s");
    let presets = ipld_train::RunConfig::presets_noise()?;
    let (eager_s, eager_gbs, shape) = eager_update(presets);
    println!(
        "eager update {shape:?}, {}: {:.2} ms/step, {eager_gbs:.2} GB/s",
        presets.name(),
        eager_s * 1e3
    );
    let ten = NoiseGenerator::Philox4x32_10;
    let (eager10_s, eager10_gbs, _) = eager_update(ten);
    println!(
        "eager update {shape:?}, {}: {:.2} ms/step, {eager10_gbs:.2} GB/s",
        ten.name(),
        eager10_s * 1e3
    );
    let mut lazy = BTreeMap::new();
    for m in [10_000usize, 100_000, 1_000_000] {
        let s = lazy_update(m, 2, presets);
        println!("lazy update M = {m}, d 2: {:.3} ms/step", s * 1e3);
        lazy.insert(m.to_string(), s);
    }
    let mut lazy256 = BTreeMap::new();
    for m in [10_000usize, 100_000] {
        let s = lazy_update(m, 256, presets);
        println!("lazy update M = {m}, d 256: {:.3} ms/step", s * 1e3);
        lazy256.insert(m.to_string(), s);
    }
    let mut train = BTreeMap::new();
    for (n, steps) in [(1usize, 101u64), (16, 41), (256, 6)] {
        let sps = train_gmm(n, steps)?;
        println!("train gmm N = {n}: {sps:.2} steps/s");
        train.insert(n.to_string(), sps);
    }
    // Side by side on this CPU: every instruction set it has (IPLD_ISA picks the default).
    let default_isa = ipld_particles::active_isa();
    let mut eager_by_isa = BTreeMap::new();
    let mut train_by_isa = BTreeMap::new();
    for isa in ipld_particles::Isa::available() {
        ipld_particles::set_isa(Some(isa))?;
        let (s, gbs, _) = eager_update(presets);
        let (n1, n16) = (train_gmm(1, 101)?, train_gmm(16, 41)?);
        println!(
            "{}: eager update {:.2} ms/step, {gbs:.2} GB/s ({:.0}% of memcpy); gmm N = 1 {n1:.1} \
             steps/s, N = 16 {n16:.1} steps/s",
            isa.name(),
            s * 1e3,
            100.0 * gbs / memcpy
        );
        eager_by_isa.insert(
            isa.name(),
            json!({"seconds_per_step": s, "gb_per_s": gbs, "fraction_of_memcpy": gbs / memcpy}),
        );
        train_by_isa.insert(isa.name(), json!({"1": n1, "16": n16}));
    }
    ipld_particles::set_isa(None)?;
    let samples_per_s = sampling()?;
    println!("DDIM-100 sampling (gmm MLP prior + decoder): {samples_per_s:.0} samples/s");
    let peak = peak_rss_mib();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let scaling = crate::scaling::run(&root)?;
    let spread = |by_m: &BTreeMap<String, f64>| {
        by_m.values().copied().fold(f64::MIN, f64::max)
            / by_m.values().copied().fold(f64::MAX, f64::min)
    };
    let summary = json!({
        "machine": {
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "cpu_model": cpu_model(),
            "isa": default_isa.name(),
        },
        "memcpy_gb_per_s": memcpy,
        "particle_update_eager": {
            "shape_m_n_d": shape,
            "noise": presets.name(),
            "seconds_per_step": eager_s,
            "gb_per_s": eager_gbs,
            "fraction_of_memcpy": eager_gbs / memcpy,
            "by_isa": eager_by_isa,
        },
        "particle_update_eager_philox4x32_10": {
            "shape_m_n_d": shape,
            "noise": ten.name(),
            "seconds_per_step": eager10_s,
            "gb_per_s": eager10_gbs,
            "fraction_of_memcpy": eager10_gbs / memcpy,
        },
        "particle_update_lazy": {
            "n": 16, "d": 2, "batch": 500,
            "seconds_per_step_by_m": lazy,
            "max_over_min": spread(&lazy),
            "d256": {
                "seconds_per_step_by_m": lazy256,
                "max_over_min": spread(&lazy256),
            },
        },
        "train_gmm": {
            "batch": 500,
            "steps_per_second_by_n": train,
            "by_isa": train_by_isa,
        },
        "sampling_ddim100_samples_per_second": samples_per_s,
        "peak_rss_mib": peak,
        "scaling_mpi": scaling,
    });
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    ipld_data::write_atomically(out, serde_json::to_string_pretty(&summary)?.as_bytes())
        .with_context(|| format!("writing {}", out.display()))?;
    println!();
    println!("| measure | value |");
    println!("| --- | --- |");
    println!("| memcpy bandwidth | {memcpy:.2} GB/s |");
    for (g, s, gbs) in [(presets, eager_s, eager_gbs), (ten, eager10_s, eager10_gbs)] {
        println!(
            "| eager particle update (M 1e5, N 16, d 2), {} | {:.2} ms/step, {gbs:.2} GB/s = {:.0}% of memcpy |",
            g.name(),
            s * 1e3,
            100.0 * gbs / memcpy
        );
    }
    for (m, s) in &lazy {
        println!(
            "| lazy particle update, N 16, d 2, M = {m} | {:.3} ms/step |",
            s * 1e3
        );
    }
    for (m, s) in &lazy256 {
        println!(
            "| lazy particle update, N 16, d 256, M = {m} | {:.3} ms/step |",
            s * 1e3
        );
    }
    for (n, s) in &train {
        println!("| gmm training, N = {n} | {s:.2} steps/s |");
    }
    for (isa, e) in &eager_by_isa {
        println!(
            "| eager update, {isa} | {:.2} ms/step = {:.0}% of memcpy |",
            e["seconds_per_step"].as_f64().unwrap_or(f64::NAN) * 1e3,
            100.0 * e["fraction_of_memcpy"].as_f64().unwrap_or(f64::NAN)
        );
    }
    for (isa, t) in &train_by_isa {
        println!(
            "| gmm training, {isa} | N = 1: {:.1} steps/s, N = 16: {:.1} steps/s |",
            t["1"].as_f64().unwrap_or(f64::NAN),
            t["16"].as_f64().unwrap_or(f64::NAN)
        );
    }
    println!("| DDIM-100 sampling | {samples_per_s:.0} samples/s |");
    if let Some(p) = peak {
        println!("| peak RSS | {p:.0} MiB |");
    }
    if let Some(rows) = scaling.as_object().filter(|o| !o.contains_key("skipped")) {
        for (n, r) in rows {
            let f = |k: &str, q: &str| r[k][q].clone();
            println!(
                "| scaling, gmm N = {n}: 1 rank x 2 threads / 2 ranks x 1 thread | {:.2} / {:.2} steps/s ({:.2}); peak RSS {} / {} MiB |",
                f("one_rank_2_threads", "steps_per_second")
                    .as_f64()
                    .unwrap_or(f64::NAN),
                f("two_ranks_1_thread", "steps_per_second")
                    .as_f64()
                    .unwrap_or(f64::NAN),
                r["two_ranks_over_one_rank_2_threads"]
                    .as_f64()
                    .unwrap_or(f64::NAN),
                f("one_rank_2_threads", "peak_rss_mib"),
                f("two_ranks_1_thread", "peak_rss_mib"),
            );
        }
    }
    println!("\nwrote {}", out.display());
    Ok(())
}
