//! One IPLD training step on the synthetic `gmm` preset (Algorithm 2 with the MLP prior and
//! linear decoder, eq. 64), at batch 500 for N = 1, 4, 16 particles, eager and lazy noise (the
//! `cargo xtask bench` row `train_gmm` as a criterion bench). Run with `cargo bench -p
//! ipld-benches --bench train`.

use criterion::{Criterion, criterion_group};
use ipld_train::Trainer;
use ipld_train::rundir::preset_trainer;

fn trainer(n: usize, lazy: bool) -> Trainer {
    preset_trainer(
        "gmm",
        &[
            format!("particles.count={n}"),
            format!("particles.lazy_noise={lazy}"),
            // Never reach the end: criterion decides how many steps to time.
            "train.steps=100000000".to_string(),
        ],
    )
    .expect("gmm trainer")
}

fn train_step(c: &mut Criterion) {
    // As `ipld-train` does for the preset's two shards, before the first tensor op.
    ipld_train::quiet_candle_pool(2);
    let mut g = c.benchmark_group("train_step_gmm_b500");
    g.sample_size(20);
    for n in [1usize, 4, 16] {
        for lazy in [false, true] {
            let mut t = trainer(n, lazy);
            let name = format!("n{n}_{}", if lazy { "lazy" } else { "eager" });
            g.bench_function(name, |b| b.iter(|| t.train_step().expect("step")));
        }
    }
    g.finish();
}

criterion_group!(benches, train_step);
ipld_benches::criterion_main_pinned!(benches);
