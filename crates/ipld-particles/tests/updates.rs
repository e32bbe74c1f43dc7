//! The update rules against closed forms.

use ipld_particles::{
    AdaptiveLangevin, Langevin, NoiseScale, NoiseStream, ParticleCloud, ParticleUpdate, StepContext,
};

fn ctx(
    step: u64,
    gamma: f64,
    h: f64,
    batch: usize,
    total: usize,
    precondition: bool,
) -> StepContext {
    StepContext {
        step,
        gamma,
        step_size: h,
        batch_size: batch,
        total_points: total,
        noise_scale: ipld_particles::NoiseScale::Paper,
        epoch: precondition as u64,
    }
}

/// Langevin on U(z) = ||z - mu||² / (2 s²) with the full batch: the chain
/// z' = z - h (z - mu)/s² + sqrt(2h) W has stationary law N(mu, v) with
/// v = 2h / (1 - (1 - h/s²)²) = s² / (1 - h / (2 s²)) (exact for the discretised chain).
#[test]
fn langevin_on_a_quadratic_reaches_the_discrete_stationary_law() {
    let (rows, n, d) = (2000usize, 2usize, 2usize);
    let (mu, s2, h) = ([1.5f32, -2.0], 0.8f64, 0.1f64);
    let mut cloud = ParticleCloud::gaussian(0, rows, n, d, 1).unwrap();
    let batch: Vec<usize> = (0..rows).collect();
    let noise = NoiseStream::new(2, 1);
    // The rule applies M N h to d L-hat/dz; L-hat = (1/(N|B|)) sum U, so pass grad U / (M N).
    let scale = 1.0 / (rows * n) as f32;
    for t in 0..300 {
        let grads: Vec<f32> = cloud
            .z()
            .iter()
            .enumerate()
            .map(|(i, z)| (z - mu[i % d]) / s2 as f32 * scale)
            .collect();
        Langevin {}
            .step(
                &mut cloud,
                &batch,
                &grads,
                &ctx(t, 1.0, h, rows, rows, false),
                &noise,
            )
            .unwrap();
    }
    // After 300 steps the initial law has contracted by 0.875^300 ~ 4e-18: samples are stationary.
    let v = s2 / (1.0 - h / (2.0 * s2));
    let count = (rows * n) as f64;
    for j in 0..d {
        let xs: Vec<f64> = cloud
            .z()
            .iter()
            .skip(j)
            .step_by(d)
            .map(|x| *x as f64)
            .collect();
        let mean = xs.iter().sum::<f64>() / count;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (count - 1.0);
        assert!(
            (mean - mu[j] as f64).abs() < 5.0 * (v / count).sqrt(),
            "coord {j}: mean {mean}"
        );
        assert!(
            (var - v).abs() < 5.0 * v * (2.0 / (count - 1.0)).sqrt(),
            "coord {j}: var {var} vs {v}"
        );
    }
}

#[test]
fn adaptive_drift_matches_a_hand_computed_step() {
    // One training point in the batch (of M = 4), N = 2, d = 1; gamma = 0 switches noise off.
    let z = vec![0.5f32, -1.0, 2.0, 3.0, 0.0, 0.0, 7.0, 7.0];
    let m1 = vec![0.2f32, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0];
    let m2 = vec![0.04f32, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0];
    let mut cloud = ParticleCloud::from_parts(0, [4, 2, 1], &z, &m1, &m2).unwrap();
    let rule = AdaptiveLangevin {
        momentum: 0.9,
        second_moment: 0.999,
        eps: 1e-8,
        batch_noise_scale: true,
        bias_correction: false,
        second_moment_of: ipld_particles::SecondMomentOf::Particle,
    };
    let grads = [0.01f32, -0.02]; // d L-hat / dz for point 0's two particles
    rule.step(
        &mut cloud,
        &[0],
        &grads,
        &ctx(0, 0.0, 0.1, 1, 4, true),
        &NoiseStream::new(0, 0),
    )
    .unwrap();
    // By hand: g = M N grad = 8 * (0.01, -0.02) = (0.08, -0.16)
    // M = 0.9 * (0.2, 0) + 0.1 * g = (0.188, -0.016)
    // V = 0.999 * (0.04, 0) + 0.001 * g² = (0.0399664, 0.0000256)
    // z = z - 0.1 * M / sqrt(V + 1e-8) = (0.4059605..., -0.6838340...)
    let want_m = [0.188f64, -0.016];
    let want_v = [0.039_966_4f64, 0.000_025_6];
    let want_z = [
        0.5 - 0.1 * 0.188 / (0.039_966_4f64 + 1e-8).sqrt(),
        -1.0 + 0.1 * 0.016 / (0.000_025_6f64 + 1e-8).sqrt(),
    ];
    for i in 0..2 {
        assert!((cloud.momentum()[i] as f64 - want_m[i]).abs() < 1e-7);
        assert!((cloud.second_moment()[i] as f64 - want_v[i]).abs() < 1e-9);
        assert!(
            (cloud.z()[i] as f64 - want_z[i]).abs() < 1e-5,
            "{} vs {}",
            cloud.z()[i],
            want_z[i]
        );
    }
    assert!((want_z[0] - 0.405_960_5).abs() < 1e-6 && (want_z[1] + 0.683_834_0).abs() < 1e-6);
    // Rows outside the batch are untouched when there is no noise.
    assert_eq!(&cloud.z()[2..], &z[2..]);
    assert_eq!(&cloud.momentum()[2..], &m1[2..]);
}

#[test]
fn adaptive_drift_descends_the_loss() {
    // A positive gradient must decrease z (the sign issue in the paper's pseudo-code).
    let mut cloud = ParticleCloud::zeros(0, 1, 1, 3).unwrap();
    let rule = AdaptiveLangevin::default();
    rule.step(
        &mut cloud,
        &[0],
        &[1.0, -1.0, 0.0],
        &ctx(0, 0.0, 0.1, 1, 1, false),
        &NoiseStream::new(0, 0),
    )
    .unwrap();
    assert!(
        cloud.z()[0] < 0.0 && cloud.z()[1] > 0.0 && cloud.z()[2] == 0.0,
        "{:?}",
        cloud.z()
    );
}

#[test]
fn adaptive_noise_has_the_stated_scale() {
    // Rows outside the batch get only noise: sqrt(2 h gamma / M) / |B| * (V + eps)^(-1/4).
    let (rows, n, d) = (5000usize, 2usize, 2usize);
    let v = 0.25f32;
    let mut cloud = ParticleCloud::from_parts(
        0,
        [rows, n, d],
        &vec![0.0; rows * n * d],
        &vec![0.0; rows * n * d],
        &vec![v; rows * n * d],
    )
    .unwrap();
    // Rows with V set have been visited (a row never visited gets G = I).
    cloud.set_visits(&vec![1; rows]).unwrap();
    let (h, gamma, batch_size, m_total) = (0.1f64, 0.5f64, 10usize, 10_000usize);
    let rule = AdaptiveLangevin {
        batch_noise_scale: true,
        bias_correction: false,
        second_moment_of: ipld_particles::SecondMomentOf::Particle,
        ..Default::default()
    };
    for precondition in [false, true] {
        let mut c = cloud.clone();
        rule.step(
            &mut c,
            &[],
            &[],
            &ctx(3, gamma, h, batch_size, m_total, precondition),
            &NoiseStream::new(5, 1),
        )
        .unwrap();
        let mut sd = (2.0 * h * gamma / m_total as f64).sqrt() / batch_size as f64;
        if precondition {
            sd /= (v as f64 + 1e-8).powf(0.25);
        }
        let count = c.z().len() as f64;
        let var = c.z().iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / count;
        assert!(
            (var / (sd * sd) - 1.0).abs() < 5.0 * (2.0 / count).sqrt(),
            "precondition={precondition}: {var} vs {}",
            sd * sd
        );
    }
    cloud = ParticleCloud::zeros(0, rows, n, d).unwrap();
    Langevin {}
        .step(
            &mut cloud,
            &[],
            &[],
            &ctx(0, gamma, h, batch_size, m_total, false),
            &NoiseStream::new(5, 1),
        )
        .unwrap();
    let want = 2.0 * h * gamma * batch_size as f64 / m_total as f64;
    let count = cloud.z().len() as f64;
    let var = cloud.z().iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / count;
    assert!(
        (var / want - 1.0).abs() < 5.0 * (2.0 / count).sqrt(),
        "Langevin noise {var} vs {want}"
    );
}

#[test]
fn shards_update_like_the_whole_cloud() {
    let whole0 = ParticleCloud::gaussian(0, 12, 3, 2, 11).unwrap();
    let batch = [1usize, 7, 10];
    let grads: Vec<f32> = (0..batch.len() * 6)
        .map(|i| (i as f32 - 8.0) * 0.01)
        .collect();
    let c = ctx(4, 0.3, 0.1, 3, 12, true);
    let noise = NoiseStream::new(8, 1);
    let rule = AdaptiveLangevin::default();
    let mut whole = whole0.clone();
    rule.step(&mut whole, &batch, &grads, &c, &noise).unwrap();
    let mut lo = ParticleCloud::gaussian(0, 6, 3, 2, 11).unwrap();
    let mut hi = ParticleCloud::gaussian(6, 6, 3, 2, 11).unwrap();
    rule.step(&mut lo, &batch[..1], &grads[..6], &c, &noise)
        .unwrap();
    rule.step(&mut hi, &batch[1..], &grads[6..], &c, &noise)
        .unwrap();
    for m in 0..12 {
        let shard = if m < 6 { &lo } else { &hi };
        assert_eq!(
            whole.particles_of(m).unwrap(),
            shard.particles_of(m).unwrap(),
            "row {m}"
        );
    }
}

/// A cloud of 80,000 elements is updated in parallel tasks, each of its 40,000-element halves
/// on the calling thread: the bits must agree (noise is a function of (step, element) only).
#[test]
fn parallel_and_serial_passes_give_the_same_bits() {
    let (rows, n, d) = (20_000usize, 2usize, 2usize);
    let half = rows / 2;
    let whole0 = ParticleCloud::gaussian(0, rows, n, d, 5).unwrap();
    let batch: Vec<usize> = (0..rows).step_by(37).collect();
    let grads: Vec<f32> = (0..batch.len() * n * d)
        .map(|i| ((i % 23) as f32 - 11.0) * 1e-4)
        .collect();
    let noise = NoiseStream::new(9, 1);
    let rule = AdaptiveLangevin::default();
    for (t, precondition) in [(0u64, false), (1, true)] {
        let c = ctx(t, 0.3, 0.1, batch.len(), rows, precondition);
        let mut whole = whole0.clone();
        rule.step(&mut whole, &batch, &grads, &c, &noise).unwrap();
        let split = batch.partition_point(|&m| m < half);
        let w = n * d;
        let mut lo = ParticleCloud::gaussian(0, half, n, d, 5).unwrap();
        let mut hi = ParticleCloud::gaussian(half, half, n, d, 5).unwrap();
        rule.step(&mut lo, &batch[..split], &grads[..split * w], &c, &noise)
            .unwrap();
        rule.step(&mut hi, &batch[split..], &grads[split * w..], &c, &noise)
            .unwrap();
        for m in 0..rows {
            let shard = if m < half { &lo } else { &hi };
            assert_eq!(
                whole.particles_of(m).unwrap(),
                shard.particles_of(m).unwrap(),
                "row {m}, step {t}"
            );
        }
    }
}

#[test]
fn bad_batches_are_rejected() {
    let mut cloud = ParticleCloud::zeros(0, 3, 1, 1).unwrap();
    let rule = AdaptiveLangevin::default();
    let c = ctx(0, 0.1, 0.1, 2, 3, false);
    let noise = NoiseStream::new(0, 0);
    assert!(
        rule.step(&mut cloud, &[0, 0], &[0.0, 0.0], &c, &noise)
            .unwrap_err()
            .to_string()
            .contains("twice")
    );
    assert!(
        rule.step(&mut cloud, &[5], &[0.0], &c, &noise)
            .unwrap_err()
            .to_string()
            .contains("outside")
    );
    assert!(
        rule.step(&mut cloud, &[0], &[0.0, 1.0], &c, &noise)
            .is_err()
    );
}

/// Kinetic Langevin on U(z) = (z - mu)² / (2 s²), full batch, gamma = 1 (so T = 1): the chain
/// (z, v) -> A (z, v) + noise is linear, with A = [[1 - h² c, h a], [-h c, a]], c = 1/s², and
/// noise (h e, e), e ~ N(0, (1 - a²)). Its stationary covariance solves S = A S A^T + Q; we
/// iterate that recursion (independently of the update code) and compare Var(z), Var(v).
#[test]
fn kinetic_langevin_reaches_the_discrete_stationary_law() {
    use ipld_particles::KineticLangevin;
    let (rows, d) = (4000usize, 1usize);
    let (mu, s2, h, a) = (0.5f32, 0.5f64, 0.1f64, 0.8f64);
    let mut cloud = ParticleCloud::gaussian(0, rows, 1, d, 3).unwrap();
    let batch: Vec<usize> = (0..rows).collect();
    let noise = NoiseStream::new(4, 1);
    let rule = KineticLangevin { damping: a };
    for t in 0..600 {
        let grads: Vec<f32> = cloud
            .z()
            .iter()
            .map(|z| (z - mu) / s2 as f32 / rows as f32)
            .collect();
        rule.step(
            &mut cloud,
            &batch,
            &grads,
            &ctx(t, 1.0, h, rows, rows, false),
            &noise,
        )
        .unwrap();
    }
    let c = 1.0 / s2;
    let aa = [[1.0 - h * h * c, h * a], [-h * c, a]];
    let q = 1.0 - a * a;
    let qm = [[h * h * q, h * q], [h * q, q]];
    let mut sig = [[0.0f64; 2]; 2];
    for _ in 0..20_000 {
        let mut next = qm;
        for i in 0..2 {
            for j in 0..2 {
                for k in 0..2 {
                    for l in 0..2 {
                        next[i][j] += aa[i][k] * sig[k][l] * aa[j][l];
                    }
                }
            }
        }
        sig = next;
    }
    let n = rows as f64;
    let z: Vec<f64> = cloud.z().iter().map(|x| *x as f64).collect();
    let v: Vec<f64> = cloud.momentum().iter().map(|x| *x as f64).collect();
    let mean = z.iter().sum::<f64>() / n;
    let var_z = z.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let var_v = v.iter().map(|x| x * x).sum::<f64>() / n;
    assert!(
        (mean - mu as f64).abs() < 5.0 * (sig[0][0] / n).sqrt(),
        "mean {mean}"
    );
    assert!(
        (var_z / sig[0][0] - 1.0).abs() < 5.0 * (2.0 / n).sqrt(),
        "Var z {var_z} vs {}",
        sig[0][0]
    );
    assert!(
        (var_v / sig[1][1] - 1.0).abs() < 5.0 * (2.0 / n).sqrt(),
        "Var v {var_v} vs {}",
        sig[1][1]
    );
    // And close to the continuous-time law N(mu, s²), N(0, 1) for this small step.
    assert!((sig[0][0] - s2).abs() < 0.1 * s2 && (sig[1][1] - 1.0).abs() < 0.1);
}

/// What lazy noise and the CUDA kernel read from a rule, through the trait: the kernel's
/// arguments are the eager kernel's constants, adaptive Langevin preconditions its noise from
/// the second epoch on (A.4.2), and kinetic Langevin refuses both forms with its name.
#[test]
fn rules_report_their_lazy_and_kernel_forms_through_the_trait() {
    use ipld_particles::{KineticLangevin, RuleKind, UpdateConfig};
    let (m, n, b, h, gamma) = (1000usize, 4usize, 50usize, 0.1f64, 0.3f64);
    let c0 = ctx(5, gamma, h, b, m, false);
    let c1 = ctx(25, gamma, h, b, m, true);
    let lang = Langevin {}.kernel_params(&c0, n).unwrap();
    assert_eq!(lang.rule, 0);
    assert_eq!(lang.drift, (h * m as f64 * n as f64) as f32);
    assert_eq!(
        lang.sd,
        (2.0 * h * gamma * b as f64 / m as f64).sqrt() as f32
    );
    assert!(Langevin {}.supports_lazy_noise());
    let ada = AdaptiveLangevin::default();
    let sd = ((2.0 * h * gamma / m as f64).sqrt() / b as f64) as f32;
    for (c, pre) in [(c0, false), (c1, true)] {
        let p = ada.kernel_params(&c, n).unwrap();
        assert_eq!((p.rule, p.sd, p.precondition), (1, sd, pre));
        assert_eq!(ada.preconditions_noise(&c), pre);
        let v = ada.step_variance(&c).unwrap();
        let want = (sd as f64).powi(2);
        let got = if pre { v.preconditioned } else { v.plain };
        assert!((got / want - 1.0).abs() < 1e-6, "{got} vs {want}");
    }
    assert_eq!(ada.preconditioner_eps(), 1e-8);
    let kin = KineticLangevin::default();
    assert!(!kin.supports_lazy_noise());
    let mut cloud = ParticleCloud::zeros(0, 10, 1, 2).unwrap();
    let noise = NoiseStream::new(0, 1);
    for e in [
        kin.step_variance(&c0).unwrap_err(),
        kin.step_batch_rows(&mut cloud, &[0], &[0.0; 2], &c0, &noise)
            .unwrap_err(),
        kin.kernel_params(&c0, 1).unwrap_err(),
    ] {
        assert!(e.to_string().contains("kinetic-langevin"), "{e}");
    }
    // The registry forwards to the rule and names its kind.
    let cfg = UpdateConfig::KineticLangevin(kin);
    assert_eq!(
        (cfg.kind(), cfg.name()),
        (RuleKind::KineticLangevin, "kinetic-langevin")
    );
    assert!(!cfg.supports_lazy_noise());
    // The posterior noise: sqrt(2 h gamma) for both rules, preconditioned from step 0.
    let post = |c: StepContext| StepContext {
        noise_scale: NoiseScale::Posterior,
        ..c
    };
    let want = (2.0 * h * gamma).sqrt() as f32;
    assert_eq!(Langevin {}.kernel_params(&post(c0), n).unwrap().sd, want);
    for c in [c0, c1] {
        let p = ada.kernel_params(&post(c), n).unwrap();
        assert_eq!((p.sd, p.precondition), (want, true));
        let v = ada.step_variance(&post(c)).unwrap();
        assert_eq!(v.plain, 0.0);
        assert!((v.preconditioned / (2.0 * h * gamma) - 1.0).abs() < 1e-12);
    }
    // Bias correction: forwarded by the registry; the CUDA kernel refuses it.
    let corrected = AdaptiveLangevin {
        bias_correction: true,
        second_moment_of: ipld_particles::SecondMomentOf::Particle,
        ..AdaptiveLangevin::default()
    };
    assert_eq!(ada.second_moment_bias_correction(), None);
    assert_eq!(
        UpdateConfig::AdaptiveLangevin(corrected).second_moment_bias_correction(),
        Some(0.999)
    );
    let e = corrected.kernel_params(&post(c1), n).unwrap_err();
    assert!(e.to_string().contains("bias_correction"), "{e}");
}

/// A particle never visited has V = 0: its preconditioned noise uses G = I, not
/// eps^(-1/2) (100 times the standard deviation at eps = 1e-8), in both noise scales.
#[test]
fn never_visited_particles_get_unpreconditioned_noise() {
    let (rows, n, d) = (4000usize, 2usize, 2usize);
    let (h, gamma, b, m) = (0.1f64, 0.5f64, 10usize, 10_000usize);
    for scale in [NoiseScale::Paper, NoiseScale::Posterior] {
        let mut cloud = ParticleCloud::zeros(0, rows, n, d).unwrap();
        let c = StepContext {
            noise_scale: scale,
            ..ctx(7, gamma, h, b, m, true)
        };
        let rule = AdaptiveLangevin::default();
        assert!(rule.preconditions_noise(&c));
        rule.step(&mut cloud, &[], &[], &c, &NoiseStream::new(5, 1))
            .unwrap();
        let sd = match scale {
            NoiseScale::Paper => (2.0 * h * gamma / m as f64).sqrt() / b as f64,
            NoiseScale::Posterior => (2.0 * h * gamma).sqrt(),
        };
        let count = cloud.z().len() as f64;
        let var = cloud.z().iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / count;
        assert!(
            (var / (sd * sd) - 1.0).abs() < 5.0 * (2.0 / count).sqrt(),
            "{scale:?}: {var} vs {}",
            sd * sd
        );
    }
}

/// Adam's bias correction by visit count, by hand: a point on its 3rd visit (2 before) with
/// M = 0.2, V = 0.04 and g = M N grad = 0.08 (M = 4 points, N = 2, d = 1; gamma = 0, no noise).
#[test]
fn bias_corrected_step_matches_a_hand_computed_step() {
    let z = [0.5f32, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
    let m1 = [0.2f32, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
    let m2 = [0.04f32, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
    let mut cloud = ParticleCloud::from_parts(0, [4, 2, 1], &z, &m1, &m2).unwrap();
    cloud.set_visits(&[2, 0, 5, 1]).unwrap();
    let rule = AdaptiveLangevin {
        bias_correction: true,
        second_moment_of: ipld_particles::SecondMomentOf::Particle,
        ..AdaptiveLangevin::default()
    };
    let c = StepContext {
        noise_scale: NoiseScale::Posterior,
        ..ctx(0, 0.0, 0.1, 1, 4, true)
    };
    rule.step(&mut cloud, &[0], &[0.01, 0.0], &c, &NoiseStream::new(0, 0))
        .unwrap();
    // k = 3: M = 0.9 * 0.2 + 0.1 * 0.08 = 0.188, V = 0.999 * 0.04 + 0.001 * 0.0064 = 0.0399664,
    // M-hat = 0.188 / (1 - 0.9^3) = 0.693727, V-hat = 0.0399664 / (1 - 0.999^3) = 13.3354,
    // z = 0.5 - 0.1 * 0.693727 / sqrt(13.3354 + 1e-8) = 0.4810030.
    let (mh, vh) = (
        0.188 / (1.0 - 0.9f64.powi(3)),
        0.039_966_4 / (1.0 - 0.999f64.powi(3)),
    );
    let want = 0.5 - 0.1 * mh / (vh + 1e-8).sqrt();
    assert!((want - 0.481_003_0).abs() < 1e-6, "{want}");
    assert!(
        (cloud.z()[0] as f64 - want).abs() < 1e-6,
        "{}",
        cloud.z()[0]
    );
    // Its second particle (zero gradient, zero moments) stays put: M = 0, no drift, and V is
    // the floor that marks it visited (V = 0 means never visited, also on the GPU).
    assert_eq!(cloud.z()[1], -1.0);
    assert_eq!(cloud.second_moment()[1], ipld_particles::V_FLOOR);
    assert_eq!(cloud.visits(), &[3, 0, 5, 1]);
}

/// V shared per point: the N particles' V becomes b V + (1 - b) mean_n g², the same for each;
/// the momentum and the drift stay per particle.
#[test]
fn point_shared_second_moment_matches_a_hand_computed_step() {
    // M = 2 points, N = 2, d = 2; point 0 in the batch; gamma = 0 (no noise).
    let z = [0.0f32; 8];
    let m1 = [0.0f32; 8];
    let m2 = [0.5f32, 0.25, 0.5, 0.25, 0.0, 0.0, 0.0, 0.0];
    let mut cloud = ParticleCloud::from_parts(0, [2, 2, 2], &z, &m1, &m2).unwrap();
    let rule = AdaptiveLangevin {
        second_moment_of: ipld_particles::SecondMomentOf::Point,
        ..AdaptiveLangevin::default()
    };
    let c = StepContext {
        noise_scale: NoiseScale::Posterior,
        ..ctx(0, 0.0, 0.1, 1, 2, true)
    };
    // d L-hat / dz; g = M N grad = 4 grad: particle 0 (1, -2), particle 1 (3, 0).
    let grads = [0.25f32, -0.5, 0.75, 0.0];
    rule.step(&mut cloud, &[0], &grads, &c, &NoiseStream::new(0, 0))
        .unwrap();
    // mean g²: coordinate 0 (1 + 9) / 2 = 5, coordinate 1 (4 + 0) / 2 = 2.
    let v = [0.999 * 0.5 + 0.001 * 5.0, 0.999 * 0.25 + 0.001 * 2.0];
    let g = [1.0f64, -2.0, 3.0, 0.0];
    for i in 0..4 {
        let want_v = v[i % 2];
        let want_m = 0.1 * g[i];
        assert!(
            (cloud.second_moment()[i] as f64 - want_v).abs() < 1e-7,
            "V {i}"
        );
        assert!((cloud.momentum()[i] as f64 - want_m).abs() < 1e-7, "M {i}");
        let want_z = -0.1 * want_m / (want_v + 1e-8).sqrt();
        assert!((cloud.z()[i] as f64 - want_z).abs() < 1e-6, "z {i}");
    }
    assert_eq!(&cloud.second_moment()[4..], &[0.0; 4]);
    // The CUDA kernel keeps one V per particle and refuses this.
    assert!(rule.kernel_params(&c, 2).is_err());
}

/// With one particle per point, V per point is V per particle to the bit (and the CUDA kernel,
/// which keeps one V per particle, takes it).
#[test]
fn point_shared_second_moment_with_one_particle_is_the_papers() {
    let (rows, d) = (60usize, 3usize);
    let batch: Vec<usize> = (0..rows).step_by(4).collect();
    let noise = NoiseStream::new(5, 1);
    let per_particle = AdaptiveLangevin::default();
    let per_point = AdaptiveLangevin {
        second_moment_of: ipld_particles::SecondMomentOf::Point,
        ..per_particle
    };
    let c = StepContext {
        noise_scale: NoiseScale::Posterior,
        ..ctx(40, 0.2, 0.05, batch.len(), rows, true)
    };
    let mut a = ParticleCloud::gaussian(0, rows, 1, d, 2).unwrap();
    let mut b = a.clone();
    for step in 0..5 {
        let grads: Vec<f32> = (0..batch.len() * d)
            .map(|i| ((i + 7 * step) as f32 * 0.37).sin())
            .collect();
        per_particle
            .step(&mut a, &batch, &grads, &c, &noise)
            .unwrap();
        per_point.step(&mut b, &batch, &grads, &c, &noise).unwrap();
    }
    assert_eq!(a, b);
    assert!(per_point.kernel_params(&c, 1).is_ok());
    assert!(per_point.kernel_params(&c, 2).is_err());
}

/// Stepping through the registry enum gives the rule's bits.
#[test]
fn the_registry_steps_exactly_like_its_rule() {
    use ipld_particles::UpdateConfig;
    let (rows, n, d) = (300usize, 2usize, 3usize);
    let batch: Vec<usize> = (0..rows).step_by(3).collect();
    let grads: Vec<f32> = (0..batch.len() * n * d)
        .map(|i| (i as f32 * 0.37).sin())
        .collect();
    let noise = NoiseStream::new(9, 1);
    let c = ctx(40, 0.2, 0.05, batch.len(), rows, true);
    let rule = AdaptiveLangevin::default();
    let mut a = ParticleCloud::gaussian(0, rows, n, d, 2).unwrap();
    let mut b = a.clone();
    rule.step(&mut a, &batch, &grads, &c, &noise).unwrap();
    UpdateConfig::AdaptiveLangevin(rule)
        .step(&mut b, &batch, &grads, &c, &noise)
        .unwrap();
    assert_eq!(a, b);
}

/// A library names keys relative to its own struct; `under` adds the path a program nests it at.
#[test]
fn parameter_errors_take_the_path_they_are_nested_under() {
    use ipld_particles::{KineticLangevin, UpdateConfig};
    let e = UpdateConfig::KineticLangevin(KineticLangevin { damping: 1.5 })
        .validate()
        .unwrap_err();
    assert!(e.to_string().contains("`damping`"), "{e}");
    let e = e.under("particles.update").to_string();
    assert!(
        e.contains("`particles.update.damping`") && e.contains("1.5"),
        "{e}"
    );
}
