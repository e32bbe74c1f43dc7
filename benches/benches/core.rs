//! Criterion benchmarks of the foundation: MMD² over sample sizes, and DDPM/DDIM sampling
//! throughput with the closed-form Gaussian epsilon (so the numbers measure the sampler, not a
//! network). Run with `cargo bench -p ipld-benches`.

use candle_core::{DType, Device};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use ipld_data::{SyntheticConfig, SyntheticKind};
use ipld_diffusion::{Ddim, Ddpm, GaussianEps, Sampler, ScheduleConfig, gaussian};
use ipld_eval::{MmdConfig, mmd2_unbiased};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn mmd(c: &mut Criterion) {
    let gmm = SyntheticConfig::paper(SyntheticKind::Gmm)
        .generate()
        .unwrap();
    let circles = SyntheticConfig::paper(SyntheticKind::Circles)
        .generate()
        .unwrap();
    let mut group = c.benchmark_group("mmd2_unbiased_64d");
    group.sample_size(10);
    for n in [1_000usize, 4_000, 10_000] {
        let (x, y) = (
            &gmm.observed.as_slice()[..n * 64],
            &circles.observed.as_slice()[..n * 64],
        );
        group.throughput(Throughput::Elements((2 * n * n) as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| mmd2_unbiased(x, y, 64, &MmdConfig::default()).unwrap())
        });
    }
    group.finish();
}

fn samplers(c: &mut Criterion) {
    let schedule = ScheduleConfig::default().build().unwrap();
    let model = GaussianEps::new(&schedule, vec![0.0, 0.0], 1.0).unwrap();
    let mut group = c.benchmark_group("sampler_10k_2d");
    group.sample_size(10);
    let n = 10_000;
    let ddpm = Ddpm::default();
    let ddim = Ddim {
        steps: 100,
        eta: 0.0,
    };
    let cases: [(&str, &dyn Sampler); 2] = [("ddpm_1000", &ddpm), ("ddim_100", &ddim)];
    for (name, sampler) in cases {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(name, |b| {
            let mut rng = ChaCha8Rng::seed_from_u64(0);
            b.iter(|| {
                let z = gaussian(&mut rng, (n, 2), DType::F32, &Device::Cpu).unwrap();
                sampler
                    .sample(&model, &schedule, z, &mut rng, &mut |_| {})
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, mmd, samplers);
ipld_benches::criterion_main_pinned!(benches);
