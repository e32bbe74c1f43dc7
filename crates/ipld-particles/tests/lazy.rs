//! Exact lazy noise against the eager update: identical where it must be (a minibatch of every
//! row, or no noise), the closed-form variance of accumulated noise, and equality in
//! distribution under a fixed gradient field with annealing, step-size decay and the switch to
//! preconditioned noise (moments within standard errors and a two-sample Kolmogorov-Smirnov test),
//! with either noise generator, and between the generators.

use ipld_particles::{
    AdaptiveLangevin, Langevin, LazyNoise, NoiseGenerator, NoiseScale, NoiseStream, ParticleCloud,
    ParticleUpdate, StepContext, UpdateConfig,
};

/// A deterministic batch schedule: epoch e visits rows in a scrambled order, |B| at a time.
fn batch(m: usize, b: usize, t: u64) -> Vec<usize> {
    let per_epoch = (m / b) as u64;
    let (e, pos) = (t / per_epoch, (t % per_epoch) as usize);
    // Multiplication by an odd number modulo a power of two is a permutation.
    let mult = 2 * (e as usize % 97) + 1_000_003;
    (pos * b..(pos + 1) * b)
        .map(|i| (i.wrapping_mul(mult).wrapping_add(e as usize * 7919)) % m)
        .collect()
}

fn ctx(t: u64, m: usize, b: usize, per_epoch: u64) -> StepContext {
    ctx_scaled(t, m, b, per_epoch, NoiseScale::Paper)
}

fn ctx_scaled(t: u64, m: usize, b: usize, per_epoch: u64, noise_scale: NoiseScale) -> StepContext {
    StepContext {
        step: t,
        // KL annealing and a per-epoch step-size decay, as in training.
        gamma: (t as f64 / 400.0).min(1.0),
        step_size: 0.1 * 0.9f64.powi((t / per_epoch) as i32),
        batch_size: b,
        total_points: m,
        noise_scale,
        epoch: t / per_epoch,
    }
}

/// Quadratic potential per particle: grad of L-hat is (z - c) / (M N), so M N grad = z - c.
fn grads(cloud: &ParticleCloud, rows: &[usize], c: f32) -> Vec<f32> {
    let mut z = Vec::new();
    cloud.gather_into(rows, &mut z).unwrap();
    let s = (cloud.rows() * cloud.particles()) as f32;
    z.iter().map(|v| (v - c) / s).collect()
}

/// The rules and noise scales lazy noise must follow: Algorithm 2 as printed, with the posterior
/// noise, with bias correction and with V shared per point; Algorithm 1 as printed and with the
/// posterior noise.
fn rules() -> Vec<(&'static str, UpdateConfig, NoiseScale)> {
    let corrected = UpdateConfig::AdaptiveLangevin(AdaptiveLangevin {
        bias_correction: true,
        second_moment_of: ipld_particles::SecondMomentOf::Particle,
        ..AdaptiveLangevin::default()
    });
    let per_point = UpdateConfig::AdaptiveLangevin(AdaptiveLangevin {
        second_moment_of: ipld_particles::SecondMomentOf::Point,
        ..AdaptiveLangevin::default()
    });
    let langevin = UpdateConfig::Langevin(Langevin {});
    vec![
        ("adaptive", adaptive(), NoiseScale::Paper),
        ("adaptive, posterior", adaptive(), NoiseScale::Posterior),
        (
            "adaptive, posterior, bias-corrected",
            corrected,
            NoiseScale::Posterior,
        ),
        (
            "adaptive, posterior, V per point",
            per_point,
            NoiseScale::Posterior,
        ),
        ("langevin", langevin, NoiseScale::Paper),
        ("langevin, posterior", langevin, NoiseScale::Posterior),
    ]
}

fn run_with(
    rule: &UpdateConfig,
    lazy: bool,
    seed: u64,
    shape: (usize, usize, u64),
    all_rows: bool,
    generator: NoiseGenerator,
) -> Vec<f32> {
    run_scaled(
        rule,
        lazy,
        seed,
        shape,
        all_rows,
        generator,
        NoiseScale::Paper,
    )
}

fn run_scaled(
    rule: &UpdateConfig,
    lazy: bool,
    seed: u64,
    (m, b, steps): (usize, usize, u64),
    all_rows: bool,
    generator: NoiseGenerator,
    scale: NoiseScale,
) -> Vec<f32> {
    let (n, d) = (2, 2);
    let mut cloud = ParticleCloud::gaussian(0, m, n, d, 11).unwrap();
    let noise = NoiseStream::new(seed, 7).with_generator(generator);
    let lazy_noise = NoiseStream::new(seed, ipld_particles::LAZY_STREAM).with_generator(generator);
    let mut state = LazyNoise::for_rule(&cloud, 0, rule);
    let per_epoch = (m / b) as u64;
    for t in 0..steps {
        let rows: Vec<usize> = if all_rows {
            (0..m).collect()
        } else {
            batch(m, b, t)
        };
        let c = ctx_scaled(t, m, if all_rows { m } else { b }, per_epoch, scale);
        if lazy {
            state.sync(&mut cloud, &rows, t, &lazy_noise).unwrap();
            let g = grads(&cloud, &rows, 1.5);
            state.step(rule, &mut cloud, &rows, &g, &c, &noise).unwrap();
        } else {
            let g = grads(&cloud, &rows, 1.5);
            rule.rule().step(&mut cloud, &rows, &g, &c, &noise).unwrap();
        }
    }
    if lazy {
        state.sync_all(&mut cloud, steps, &lazy_noise).unwrap();
        assert!(state.synced().iter().all(|&s| s == steps));
    }
    cloud.z().to_vec()
}

fn adaptive() -> UpdateConfig {
    UpdateConfig::AdaptiveLangevin(AdaptiveLangevin {
        batch_noise_scale: false,
        bias_correction: false,
        second_moment_of: ipld_particles::SecondMomentOf::Particle,
        ..AdaptiveLangevin::default()
    })
}

#[test]
fn a_minibatch_of_every_row_reproduces_the_eager_update_exactly() {
    let g = NoiseGenerator::default();
    for (name, rule, scale) in rules() {
        let eager = run_scaled(&rule, false, 5, (64, 64, 30), true, g, scale);
        let lazy = run_scaled(&rule, true, 5, (64, 64, 30), true, g, scale);
        assert_eq!(eager, lazy, "{name}");
    }
}

#[test]
fn without_noise_lazy_and_eager_agree_exactly() {
    // gamma = 0 after this rewrite of the schedule: no noise anywhere, only minibatch drift.
    let rule = adaptive();
    let (m, b) = (200, 20);
    let mut e = ParticleCloud::gaussian(0, m, 2, 2, 3).unwrap();
    let mut l = e.clone();
    let noise = NoiseStream::new(9, 7);
    let mut state = LazyNoise::new(&l, 0, 1e-8);
    for t in 0..100 {
        let rows = batch(m, b, t);
        let c = StepContext {
            gamma: 0.0,
            ..ctx(t, m, b, 10)
        };
        let g = grads(&e, &rows, -0.5);
        rule.rule().step(&mut e, &rows, &g, &c, &noise).unwrap();
        state.step(&rule, &mut l, &rows, &g, &c, &noise).unwrap();
    }
    state.sync_all(&mut l, 100, &noise).unwrap();
    assert_eq!(e.z(), l.z());
}

#[test]
fn accumulated_noise_has_the_summed_variance() {
    // Algorithm 1 with zero gradients and every row left alone: after T steps each element is
    // z_0 + N(0, sum_t 2 h_t gamma_t |B| / M). z_0 = 0 here.
    let (m, n, d, b, steps) = (5000usize, 4, 4, 50, 300u64);
    let mut cloud = ParticleCloud::zeros(0, m, n, d).unwrap();
    let rule = Langevin {};
    let mut state = LazyNoise::new(&cloud, 0, UpdateConfig::Langevin(rule).preconditioner_eps());
    let lazy_noise = NoiseStream::new(2, ipld_particles::LAZY_STREAM);
    let mut want = 0.0;
    for t in 0..steps {
        let c = ctx(t, m, b, 100);
        let v = rule.step_variance(&c).unwrap();
        want += v.plain;
        state.record(t, v).unwrap();
    }
    state.sync_all(&mut cloud, steps, &lazy_noise).unwrap();
    let z = cloud.z();
    let k = z.len() as f64;
    let mean = z.iter().map(|&v| v as f64).sum::<f64>() / k;
    let var = z.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / (k - 1.0);
    // Standard errors: sd / sqrt(k) for the mean, var sqrt(2 / (k - 1)) for the variance; 4 SE.
    assert!(mean.abs() < 4.0 * (want / k).sqrt(), "mean {mean}");
    assert!(
        (var - want).abs() < 4.0 * want * (2.0 / (k - 1.0)).sqrt(),
        "var {var} vs {want}"
    );
    // Syncing again to the same step adds nothing.
    let before = cloud.z().to_vec();
    state.sync_all(&mut cloud, steps, &lazy_noise).unwrap();
    assert_eq!(before, cloud.z());
}

/// Two-sample Kolmogorov-Smirnov statistic.
fn ks(a: &[f64], b: &[f64]) -> f64 {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (mut i, mut j, mut d) = (0, 0, 0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / a.len() as f64 - j as f64 / b.len() as f64).abs());
    }
    d
}

/// Two clouds' coordinates agree in distribution: means and variances within 4 standard
/// errors, and a two-sample KS test at alpha = 0.001 (which a shift of a fifth of an sd fails).
fn assert_same_distribution(name: &str, a: &[f32], b: &[f32]) {
    let (a, b): (Vec<f64>, Vec<f64>) = (
        a.iter().map(|&v| v as f64).collect(),
        b.iter().map(|&v| v as f64).collect(),
    );
    // Per coordinate (d = 2), pooled over points and particles.
    for j in 0..2 {
        let pick = |v: &[f64]| v.iter().skip(j).step_by(2).copied().collect::<Vec<f64>>();
        let (x, y) = (pick(&a), pick(&b));
        let k = x.len() as f64;
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let var = |v: &[f64]| {
            let m = mean(v);
            v.iter().map(|a| (a - m).powi(2)).sum::<f64>() / (v.len() as f64 - 1.0)
        };
        let (mx, my, vx, vy) = (mean(&x), mean(&y), var(&x), var(&y));
        // Difference of means: SE sqrt(vx/k + vy/k); of variances: sqrt(2/(k-1)) (vx + vy)
        // / sqrt(2) roughly; 4 SE each. The N = 2 particles of a point are correlated, so k
        // counts points, not particles, to stay conservative.
        let k_eff = k / 2.0;
        assert!(
            (mx - my).abs() < 4.0 * ((vx + vy) / k_eff).sqrt(),
            "{name} mean {mx} vs {my}"
        );
        assert!(
            (vx - vy).abs() < 4.0 * (vx + vy) * (1.0 / (k_eff - 1.0)).sqrt(),
            "{name} var {vx} vs {vy}"
        );
        // KS at alpha = 0.001 with the effective sample size: c = 1.95.
        let d = ks(&x, &y);
        assert!(
            d < 1.95 * (2.0 / k_eff).sqrt(),
            "{name} coordinate {j}: KS {d}"
        );
        // And the test can fail: shifting one sample by a fifth of an sd is detected (4 SE of
        // the means' difference is about 0.09 sd here).
        let shifted: Vec<f64> = y.iter().map(|a| a + 0.2 * vy.sqrt()).collect();
        assert!(
            ks(&x, &shifted) > 1.95 * (2.0 / k_eff).sqrt()
                || (mean(&shifted) - mx).abs() > 4.0 * ((vx + vy) / k_eff).sqrt(),
            "{name} coordinate {j}: a shifted sample passes"
        );
    }
}

#[test]
fn lazy_and_eager_clouds_agree_in_distribution() {
    // 4000 points, |B| = 40 (100 steps per epoch), 600 steps: each particle is visited ~6 times
    // and misses ~99 steps between visits; annealing, step decay and the switch to
    // preconditioned noise at epoch 1 all fall inside the run. Independent seeds. Lazy against
    // eager with each generator, and the two generators' eager clouds against each other.
    let shape = (4000, 40, 600);
    let (ten, seven) = (NoiseGenerator::Philox4x32_10, NoiseGenerator::Philox4x32_7);
    for (name, rule) in [
        ("adaptive", adaptive()),
        ("langevin", UpdateConfig::Langevin(Langevin {})),
    ] {
        let eager10 = run_with(&rule, false, 21, shape, false, ten);
        let lazy10 = run_with(&rule, true, 22, shape, false, ten);
        assert_same_distribution(&format!("{name}, 10 rounds"), &eager10, &lazy10);
        let eager7 = run_with(&rule, false, 23, shape, false, seven);
        let lazy7 = run_with(&rule, true, 24, shape, false, seven);
        assert_same_distribution(&format!("{name}, 7 rounds"), &eager7, &lazy7);
        assert_same_distribution(&format!("{name}, 10 vs 7 rounds"), &eager10, &eager7);
    }
    // The posterior noise scale and the bias correction, with the presets' generator.
    for (name, rule, scale) in rules().into_iter().filter(|r| r.2 == NoiseScale::Posterior) {
        let eager = run_scaled(&rule, false, 25, shape, false, seven, scale);
        let lazy = run_scaled(&rule, true, 26, shape, false, seven, scale);
        assert_same_distribution(name, &eager, &lazy);
    }
}

#[test]
fn lazy_noise_rejects_kinetic_langevin_duplicates_and_unrecorded_steps() {
    let mut cloud = ParticleCloud::zeros(0, 10, 1, 2).unwrap();
    let mut state = LazyNoise::new(&cloud, 0, 1e-8);
    let noise = NoiseStream::new(0, 7);
    let c = ctx(0, 10, 2, 5);
    let e = state
        .step(
            &UpdateConfig::KineticLangevin(Default::default()),
            &mut cloud,
            &[0, 1],
            &[0.0; 4],
            &c,
            &noise,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("kinetic"), "{e}");
    let e = state
        .step(&adaptive(), &mut cloud, &[3, 3], &[0.0; 4], &c, &noise)
        .unwrap_err()
        .to_string();
    assert!(e.contains("twice"), "{e}");
    let e = state
        .sync(&mut cloud, &[0], 5, &noise)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not recorded"), "{e}");
    let e = state.record(3, Default::default()).unwrap_err().to_string();
    assert!(e.contains("out of order"), "{e}");
}
