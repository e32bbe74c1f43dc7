//! Fréchet distance against closed forms and a NumPy reference.

use ipld_eval::{GaussianStats, frechet_distance, trace_sqrt_product};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

fn stats(mu: Vec<f64>, sigma: Vec<f64>) -> GaussianStats {
    GaussianStats {
        mu,
        sigma,
        count: 0,
    }
}

fn diag(v: &[f64]) -> Vec<f64> {
    let d = v.len();
    let mut m = vec![0.0; d * d];
    for i in 0..d {
        m[i * d + i] = v[i];
    }
    m
}

#[test]
fn diagonal_covariances_match_the_closed_form() {
    // Commuting covariances: d² = ||dmu||² + sum (sqrt a_i - sqrt b_i)².
    let a: [f64; 4] = [1.0, 4.0, 0.25, 9.0];
    let b: [f64; 4] = [2.0, 1.0, 0.5, 16.0];
    let mu1: Vec<f64> = vec![0.0, 1.0, -2.0, 0.5];
    let mu2 = vec![1.0, 1.0, 0.0, 0.0];
    let expected: f64 = mu1
        .iter()
        .zip(&mu2)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        + a.iter()
            .zip(&b)
            .map(|(x, y)| (x.sqrt() - y.sqrt()).powi(2))
            .sum::<f64>();
    let d2 = frechet_distance(&stats(mu1, diag(&a)), &stats(mu2, diag(&b))).unwrap();
    assert!((d2 - expected).abs() < 1e-12, "{d2} vs {expected}");
}

#[test]
fn two_by_two_non_commuting_matches_the_closed_form() {
    // For 2 x 2 PSD A, B: tr (AB)^{1/2} = sqrt(tr(AB) + 2 sqrt(det(AB))), since the eigenvalues
    // l1, l2 of AB are real and non-negative and (sqrt l1 + sqrt l2)² = l1 + l2 + 2 sqrt(l1 l2).
    let a: [f64; 4] = [2.0, 0.7, 0.7, 1.0];
    let b: [f64; 4] = [1.5, -0.4, -0.4, 0.3];
    let ab = [
        a[0] * b[0] + a[1] * b[2],
        a[0] * b[1] + a[1] * b[3],
        a[2] * b[0] + a[3] * b[2],
        a[2] * b[1] + a[3] * b[3],
    ];
    let det = ab[0] * ab[3] - ab[1] * ab[2];
    let expected = (ab[0] + ab[3] + 2.0 * det.sqrt()).sqrt();
    let got = trace_sqrt_product(&a, &b, 2);
    assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");
}

#[test]
fn general_case_matches_numpy() {
    // Reference (NumPy 2, float64), an independent route through the eigenvalues of S1 S2:
    //   d=4
    //   L1=np.array([[np.sin(i*4+j+1) for j in range(d)] for i in range(d)])
    //   L2=np.array([[np.cos(2*i+3*j) for j in range(d)] for i in range(d)])
    //   S1=L1@L1.T+0.1*np.eye(d); S2=L2@L2.T+0.1*np.eye(d)
    //   mu1=np.array([i*0.5 for i in range(d)]); mu2=np.array([1-i*0.25 for i in range(d)])
    //   tr=np.sum(np.sqrt(np.linalg.eigvals(S1@S2).real))      # 7.122140298729727
    //   np.sum((mu1-mu2)**2)+np.trace(S1)+np.trace(S2)-2*tr    # 6.955069407205929
    let d = 4;
    let gram = |f: &dyn Fn(usize, usize) -> f64| {
        let mut s = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                s[i * d + j] =
                    (0..d).map(|k| f(i, k) * f(j, k)).sum::<f64>() + if i == j { 0.1 } else { 0.0 };
            }
        }
        s
    };
    let s1 = gram(&|i, j| ((i * 4 + j + 1) as f64).sin());
    let s2 = gram(&|i, j| ((2 * i + 3 * j) as f64).cos());
    let mu1 = (0..d).map(|i| i as f64 * 0.5).collect();
    let mu2 = (0..d).map(|i| 1.0 - i as f64 * 0.25).collect();
    let tr = trace_sqrt_product(&s1, &s2, d);
    assert!((tr - 7.122140298729727).abs() < 1e-10, "{tr}");
    let d2 = frechet_distance(&stats(mu1, s1), &stats(mu2, s2)).unwrap();
    assert!((d2 - 6.955069407205929).abs() < 1e-10, "{d2}");
}

#[test]
fn statistics_of_a_set_against_itself_give_zero_and_round_trip() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let (n, d) = (500, 16);
    let x: Vec<f32> = (0..n * d)
        .map(|i| {
            let z: f64 = StandardNormal.sample(&mut rng);
            (z * (1.0 + (i % d) as f64 * 0.1)) as f32
        })
        .collect();
    let s = GaussianStats::from_features(&x, d).unwrap();
    assert_eq!(s.count, n);
    // Sample variance of column j is about (1 + 0.1 j)²: within 4 standard errors
    // (var of a sample variance ~ 2 s⁴ / (n - 1)).
    for j in 0..d {
        let v = (1.0 + j as f64 * 0.1).powi(2);
        let se = (2.0f64 / (n - 1) as f64).sqrt() * v;
        assert!((s.sigma[j * d + j] - v).abs() < 4.0 * se, "column {j}");
    }
    let d2 = frechet_distance(&s, &s).unwrap();
    assert!(d2.abs() < 1e-8, "{d2}");
    let back = GaussianStats::from_safetensors(&s.to_safetensors().unwrap(), "mem").unwrap();
    assert_eq!(back, s);
}

#[test]
fn bad_inputs_are_rejected_with_a_location() {
    let err = GaussianStats::from_features(&[1.0, f32::NAN, 0.0, 1.0], 2).unwrap_err();
    assert!(err.to_string().contains("row 0, column 1"), "{err}");
    assert!(GaussianStats::from_features(&[1.0, 2.0, 3.0], 2).is_err());
    let a = stats(vec![0.0; 2], diag(&[1.0, 1.0]));
    let b = stats(vec![0.0; 3], diag(&[1.0, 1.0, 1.0]));
    assert!(frechet_distance(&a, &b).is_err());
    let err = GaussianStats::from_safetensors(b"garbage", "x.safetensors").unwrap_err();
    assert!(err.to_string().contains("x.safetensors"), "{err}");
}
