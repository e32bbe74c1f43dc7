//! Criterion benchmarks of the particle update (Algorithm 2), eager over the whole cloud and
//! lazy over the minibatch only, parametrised by M (points), N (particles per point) and d_z,
//! and (eager) by the noise generator: Philox4x32-7 as the presets draw, and 10 rounds.
//! Run with `cargo bench -p ipld-benches --bench particles`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use ipld_particles::{
    AdaptiveLangevin, LAZY_STREAM, LazyNoise, NoiseGenerator, NoiseStream, ParticleCloud,
    ParticleUpdate, StepContext, UpdateConfig,
};

/// The generator the presets draw their particle noise with (`particles.noise`).
fn presets() -> NoiseGenerator {
    ipld_train::RunConfig::presets_noise().expect("the embedded presets parse")
}

const BATCH: usize = 500;

fn ctx(step: u64, m: usize) -> StepContext {
    StepContext {
        step,
        gamma: 0.01,
        step_size: 0.1,
        batch_size: BATCH,
        total_points: m,
        noise_scale: ipld_particles::NoiseScale::Paper,
        epoch: 1,
    }
}

fn eager(c: &mut Criterion) {
    let mut g = c.benchmark_group("particle_update_eager");
    g.sample_size(10);
    let shapes = [
        (10_000, 16, 2),
        (100_000, 16, 2),
        (10_000, 16, 256),
        (100_000, 1, 2),
    ];
    let presets = presets();
    let cases = shapes
        .map(|s| (s, presets))
        .into_iter()
        .chain([((100_000, 16, 2), NoiseGenerator::Philox4x32_10)]);
    for ((m, n, d), generator) in cases {
        let mut cloud = ParticleCloud::gaussian(0, m, n, d, 1).unwrap();
        // Every point visited, as after a run's first epoch: the noise is preconditioned.
        cloud.set_visits(&vec![1; m]).unwrap();
        let rule = AdaptiveLangevin::default();
        let noise = NoiseStream::new(3, 7).with_generator(generator);
        let grads = vec![1e-6f32; BATCH * n * d];
        // Bytes of particle state per step: z and V read, z written, for every element.
        g.throughput(Throughput::Bytes((m * n * d * 12) as u64));
        let mut t = 0;
        g.bench_with_input(
            BenchmarkId::new(generator.name(), format!("{m}x{n}x{d}")),
            &(),
            |b, _| {
                b.iter(|| {
                    rule.step(
                        &mut cloud,
                        &ipld_benches::scrambled_batch(m, BATCH, t),
                        &grads,
                        &ctx(t, m),
                        &noise,
                    )
                    .unwrap();
                    t += 1;
                })
            },
        );
    }
    g.finish();
}

fn lazy(c: &mut Criterion) {
    let mut g = c.benchmark_group("particle_update_lazy");
    g.sample_size(20);
    let presets = presets();
    for (m, n, d) in [
        (10_000, 16, 2),
        (100_000, 16, 2),
        (1_000_000, 16, 2),
        (10_000, 16, 256),
        (100_000, 16, 256),
    ] {
        let mut cloud = ParticleCloud::gaussian(0, m, n, d, 1).unwrap();
        // Every point visited, as after a run's first epoch: the noise is preconditioned.
        cloud.set_visits(&vec![1; m]).unwrap();
        let rule = UpdateConfig::AdaptiveLangevin(AdaptiveLangevin::default());
        let mut state = LazyNoise::new(&cloud, 0, 1e-8);
        let (noise, lazy_noise) = (
            NoiseStream::new(3, 7).with_generator(presets),
            NoiseStream::new(3, LAZY_STREAM).with_generator(presets),
        );
        let grads = vec![1e-6f32; BATCH * n * d];
        let mut t = 0;
        g.bench_with_input(
            BenchmarkId::new("m_n_d", format!("{m}x{n}x{d}")),
            &(),
            |b, _| {
                b.iter(|| {
                    let rows = ipld_benches::scrambled_batch(m, BATCH, t);
                    state.sync(&mut cloud, &rows, t, &lazy_noise).unwrap();
                    state
                        .step(&rule, &mut cloud, &rows, &grads, &ctx(t, m), &noise)
                        .unwrap();
                    t += 1;
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, eager, lazy);
ipld_benches::criterion_main_pinned!(benches);
