//! The published PGD and MPGD particle steps against closed forms: MPGD's transition coefficients
//! against a numerical integration of the SDE's moment equations, both rules' stationary laws on
//! a quadratic with minibatches |B| < M, and the catch-up as one longer transition.

use ipld_particles::{
    BatchLangevin, NoiseScale, NoiseStream, ParticleCloud, ParticleUpdate, StepContext,
    UnderdampedLangevin,
};

fn ctx(step: u64, h: f64, batch: usize, total: usize, temperature: f64) -> StepContext {
    StepContext {
        step,
        epoch: 0,
        gamma: temperature,
        step_size: h,
        batch_size: batch,
        total_points: total,
        noise_scale: NoiseScale::Paper,
    }
}

/// The exact mean and covariance of dz = eta u dt, du = (s - gamma eta u) dt + sqrt(2 gamma) dW
/// over `dt` from (z0, u0) = (0, u0) with a constant score s, by RK4 on the moment equations
/// (independent of the closed forms under test): returns (E z, E u, Var z, Cov(z, u), Var u).
fn moments_by_rk4(gamma: f64, eta: f64, dt: f64, u0: f64, s: f64) -> [f64; 5] {
    // State: [mz, mu, pzz, pzu, puu].
    let f = |y: [f64; 5]| -> [f64; 5] {
        let [_, mu, pzz, pzu, puu] = y;
        let _ = pzz;
        [
            eta * mu,
            s - gamma * eta * mu,
            2.0 * eta * pzu,
            eta * puu - gamma * eta * pzu,
            -2.0 * gamma * eta * puu + 2.0 * gamma,
        ]
    };
    let steps = 20_000;
    let h = dt / steps as f64;
    let mut y = [0.0, u0, 0.0, 0.0, 0.0];
    let add =
        |a: [f64; 5], b: [f64; 5], c: f64| -> [f64; 5] { std::array::from_fn(|i| a[i] + c * b[i]) };
    for _ in 0..steps {
        let k1 = f(y);
        let k2 = f(add(y, k1, h / 2.0));
        let k3 = f(add(y, k2, h / 2.0));
        let k4 = f(add(y, k3, h));
        y = std::array::from_fn(|i| y[i] + h / 6.0 * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i]));
    }
    y
}

#[test]
fn underdamped_coefficients_solve_the_sde_over_one_step() {
    // gamma eta dt from 4.5e-5 (the series branch) through 0.045 (Lim et al.'s CIFAR-10 setting:
    // gamma 0.9, eta 500, dt 1e-4) to 2.
    for (gamma, eta, dt) in [
        (0.9, 500.0, 1e-7),
        (0.9, 500.0, 1e-4),
        (1.0, 1.0, 0.1),
        (2.0, 0.5, 2.0),
    ] {
        let rule = UnderdampedLangevin {
            gamma,
            eta,
            catch_up: false,
        };
        let c = rule.coefficients(dt);
        let (u0, s) = (0.7, -1.3);
        let [mz, mu, pzz, pzu, puu] = moments_by_rk4(gamma, eta, dt, u0, s);
        let close = |got: f64, want: f64, what: &str| {
            assert!(
                (got - want).abs() <= 1e-9 * want.abs().max(1e-300) + 1e-300,
                "{what} at (gamma, eta, dt) = ({gamma}, {eta}, {dt}): {got:e} vs {want:e}"
            );
        };
        close(c.z_from_u * u0 + c.z_from_s * s, mz, "E z");
        close(c.decay * u0 + c.u_from_s * s, mu, "E u");
        close(c.s_zz, pzz, "Var z");
        close(c.s_uz, pzu, "Cov(z, u)");
        close(c.s_uu, puu, "Var u");
    }
}

/// Mean and variance of `xs` and the standard errors of both (iid samples).
fn stats(xs: &[f64]) -> (f64, f64, f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let m4 = xs.iter().map(|x| (x - mean).powi(4)).sum::<f64>() / n;
    (mean, var, (var / n).sqrt(), ((m4 - var * var) / n).sqrt())
}

const M: usize = 1000;
const B: usize = 100;
const N: usize = 10;
const D: usize = 2;

/// Each point's own target mean: U_m(z) = ||z - mu_m||² / (2 s2).
fn mu(m: usize, j: usize) -> f32 {
    ((m * 7 + j * 3) % 11) as f32 * 0.5 - 2.5
}

/// Runs `rule` for `steps` steps with the epoch permutations' minibatches of |B| = 100 of M =
/// 1000, gradients of L-hat = 1/(N |B|) sum U_m, and returns z - mu_m and the velocities.
fn run(rule: &dyn ParticleUpdate, h: f64, s2: f64, temperature: f64, steps: u64) -> [Vec<f64>; 2] {
    let mut cloud = ParticleCloud::gaussian(0, M, N, D, 3).unwrap();
    let noise = NoiseStream::new(5, 1);
    let mut order: Vec<usize> = (0..M).collect();
    let mut state = 11u64;
    for t in 0..steps {
        if (t as usize * B).is_multiple_of(M) {
            // A fresh permutation per epoch (Fisher-Yates with an LCG; any fair shuffle will do).
            for i in (1..M).rev() {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                order.swap(i, (state >> 33) as usize % (i + 1));
            }
        }
        let pos = (t as usize * B) % M;
        let batch = &order[pos..pos + B];
        let scale = 1.0 / (N * B) as f32;
        let mut g = Vec::with_capacity(B * N * D);
        for &m in batch {
            for (k, z) in cloud.particles_of(m).unwrap().iter().enumerate() {
                g.push((z - mu(m, k % D)) / s2 as f32 * scale);
            }
        }
        rule.step(&mut cloud, batch, &g, &ctx(t, h, B, M, temperature), &noise)
            .unwrap();
    }
    let y = (0..M * N * D)
        .map(|i| (cloud.z()[i] - mu(i / (N * D), i % D)) as f64)
        .collect();
    let u = cloud.momentum().iter().map(|&v| v as f64).collect();
    [y, u]
}

#[test]
fn batch_langevin_samples_each_points_posterior() {
    // Per visit y' = (1 - h / s2) y + sqrt(2 h T) W, so the stationary variance of the visited
    // chain is 2 h T / (1 - (1 - h / s2)²) = T s2 / (1 - h / (2 s2)); unvisited steps leave it.
    // 300 steps = 30 visits per point: the start has contracted by 0.8^30 ~ 1e-3 of its offset.
    let (h, s2, temp) = (0.1, 0.5, 1.0);
    let [y, _] = run(&BatchLangevin {}, h, s2, temp, 300);
    let (mean, var, se_mean, se_var) = stats(&y);
    let exact = temp * s2 / (1.0 - h / (2.0 * s2));
    assert!(
        mean.abs() < 4.0 * se_mean + 0.003,
        "mean {mean} (se {se_mean})"
    );
    assert!(
        (var - exact).abs() < 4.0 * se_var,
        "variance {var} vs the chain's {exact} (se {se_var})"
    );
    // The posterior's T s2 = 0.5 lies 11% below: the step's O(h) bias, not the minibatch.
    assert!((exact / (temp * s2) - 1.0 - 1.0 / 9.0).abs() < 1e-12);
}

#[test]
fn batch_langevin_moves_only_the_minibatch() {
    let mut cloud = ParticleCloud::gaussian(0, 6, 2, 3, 1).unwrap();
    let before = cloud.z().to_vec();
    let g = vec![0.5f32; 2 * 2 * 3];
    BatchLangevin {}
        .step(
            &mut cloud,
            &[4, 1],
            &g,
            &ctx(0, 0.1, 2, 6, 1.0),
            &NoiseStream::new(1, 2),
        )
        .unwrap();
    for m in 0..6 {
        let moved = (0..6).any(|k| cloud.z()[m * 6 + k] != before[m * 6 + k]);
        assert_eq!(moved, m == 1 || m == 4, "row {m}");
    }
    assert_eq!(cloud.visits(), &[0, 1, 0, 0, 1, 0]);
}

/// The 2 x 2 stationary covariance of y' = F y + xi, xi ~ N(0, Q), by fixed-point iteration
/// (F is stable): [Var y, Cov, Var u].
fn stationary(f: [[f64; 2]; 2], q: [f64; 3]) -> [f64; 3] {
    let mut s = [0.0f64; 3];
    for _ in 0..200_000 {
        let m = [[s[0], s[1]], [s[1], s[2]]];
        let fm = |i: usize, j: usize| f[i][0] * m[0][j] + f[i][1] * m[1][j];
        let fmf = |i: usize, j: usize| fm(i, 0) * f[j][0] + fm(i, 1) * f[j][1];
        s = [fmf(0, 0) + q[0], fmf(0, 1) + q[1], fmf(1, 1) + q[2]];
    }
    s
}

#[test]
fn underdamped_langevin_samples_each_points_posterior() {
    // Per visit (y, u) -> F (y, u) + xi with s = -y / s2 frozen over the step, so F =
    // [[1 - c_zs / s2, c_zu], [-c_us / s2, e^-k]] and Cov xi = T S: the visited chain's exact
    // stationary covariance solves S* = F S* F^T + T S. gamma = eta = 1, h = 0.1: 2,000 steps =
    // 200 visits = 20 time units, about 10 of the slowest relaxation time 2 / gamma eta.
    let rule = UnderdampedLangevin {
        gamma: 1.0,
        eta: 1.0,
        catch_up: false,
    };
    let (h, s2, temp) = (0.1, 0.5, 0.8);
    let c = rule.coefficients(h);
    let f = [
        [1.0 - c.z_from_s / s2, c.z_from_u],
        [-c.u_from_s / s2, c.decay],
    ];
    let exact = stationary(f, [temp * c.s_zz, temp * c.s_uz, temp * c.s_uu]);
    let [y, u] = run(&rule, h, s2, temp, 2000);
    let (ym, yv, yse, yvse) = stats(&y);
    let (um, uv, use_, uvse) = stats(&u);
    assert!(
        ym.abs() < 4.0 * yse + 0.003,
        "z mean offset {ym} (se {yse})"
    );
    assert!(um.abs() < 4.0 * use_, "velocity mean {um} (se {use_})");
    assert!(
        (yv - exact[0]).abs() < 4.0 * yvse,
        "Var z {yv} vs {} (se {yvse})",
        exact[0]
    );
    assert!(
        (uv - exact[2]).abs() < 4.0 * uvse,
        "Var u {uv} vs {} (se {uvse})",
        exact[2]
    );
    // The posterior's T s2 and the velocity's T / eta, up to the frozen score's O(h) bias: both
    // variances are 11.1% high here (exact[0] = 0.4444, exact[2] = 0.8887 for 0.4 and 0.8), as
    // large as the overdamped step's at the same h (the test above), and shrinking with h.
    assert!(
        (exact[0] / (temp * s2) - 1.0 - 0.111).abs() < 0.002,
        "{exact:?}"
    );
    assert!(
        (exact[2] / (temp / rule.eta) - 1.0 - 0.111).abs() < 0.002,
        "{exact:?}"
    );
    let fine = rule.coefficients(h / 10.0);
    let f = [
        [1.0 - fine.z_from_s / s2, fine.z_from_u],
        [-fine.u_from_s / s2, fine.decay],
    ];
    let q = [temp * fine.s_zz, temp * fine.s_uz, temp * fine.s_uu];
    let bias = stationary(f, q)[0] / (temp * s2) - 1.0;
    assert!(bias > 0.0 && bias < 0.015, "bias at h / 10: {bias}");
}

#[test]
fn catch_up_is_one_transition_over_the_missed_steps() {
    // At T = 0 the transition is deterministic: a row that missed k steps moves by the
    // coefficients of dt = k h; a row with k = 0 does not move, and no visit is counted.
    let rule = UnderdampedLangevin {
        gamma: 0.9,
        eta: 5.0,
        catch_up: true,
    };
    let (n, d, h) = (2usize, 2usize, 0.05);
    let mut cloud = ParticleCloud::gaussian(0, 4, n, d, 2).unwrap();
    rule.initial_velocity(&mut cloud, &NoiseStream::new(9, 4), 1);
    let (z0, u0) = (cloud.z().to_vec(), cloud.momentum().to_vec());
    let batch = [3usize, 0, 2];
    let missed = [4u64, 0, 17];
    let g: Vec<f32> = (0..3 * n * d).map(|i| 0.01 * i as f32 - 0.03).collect();
    rule.catch_up(
        &mut cloud,
        &batch,
        &g,
        &missed,
        &ctx(9, h, 3, 4, 0.0),
        &NoiseStream::new(1, 1),
    )
    .unwrap();
    let w = n * d;
    for (p, (&m, &k)) in batch.iter().zip(&missed).enumerate() {
        let c = rule.coefficients(h * k as f64);
        for j in 0..w {
            let i = m * w + j;
            let s = -((n * 3) as f64) * g[p * w + j] as f64;
            let (z, u) = (z0[i] as f64, u0[i] as f64);
            let (want_z, want_u) = if k == 0 {
                (z, u)
            } else {
                (
                    z + c.z_from_u * u + c.z_from_s * s,
                    c.decay * u + c.u_from_s * s,
                )
            };
            assert!((cloud.z()[i] as f64 - want_z).abs() < 1e-6, "z row {m}");
            assert!(
                (cloud.momentum()[i] as f64 - want_u).abs() < 1e-6,
                "u row {m}"
            );
        }
    }
    assert_eq!(
        &cloud.z()[w..2 * w],
        &z0[w..2 * w],
        "row 1 is not in the batch"
    );
    assert_eq!(cloud.visits(), &[0, 0, 0, 0]);
    // The initial velocities are N(0, 1 / eta): 16 values, a loose check of the scale.
    let var = u0.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / u0.len() as f64;
    assert!(
        var > 0.05 && var < 0.5,
        "velocity variance {var} for 1 / eta = 0.2"
    );
}

#[test]
fn underdamped_langevin_rejects_bad_coefficients() {
    for (gamma, eta) in [(0.0, 1.0), (1.0, -2.0), (f64::NAN, 1.0)] {
        let e = UnderdampedLangevin {
            gamma,
            eta,
            catch_up: false,
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("gamma") || e.contains("eta"), "{e}");
    }
}
