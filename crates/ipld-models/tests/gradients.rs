//! Every trainable tensor of every model gets a finite, non-zero gradient through the losses it
//! is trained with, and small f64 configurations pass finite-difference checks.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use ipld_diffusion::{DiffusionLoss, EpsModel, LossWeighting, ScheduleConfig, timestep_tensor};
use ipld_gradcheck::{FdConfig, assert_gradients_flow, check_finite_differences};
use ipld_models::{
    Decoder, LinearDecoder, LinearDecoderConfig, MlpEps, MlpEpsConfig, gaussian_nll,
};

fn named(vars: &VarMap) -> Vec<(String, Var)> {
    let mut v: Vec<(String, Var)> = vars
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn mlp_eps_and_linear_decoder_gradients_through_the_ipld_loss() {
    // The per-sample loss of eq. (64): gamma * L_simple(theta, z) + ||x - g_phi(z)||² / 2.
    let dev = Device::Cpu;
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F64, &dev);
    let cfg = MlpEpsConfig {
        hidden: 8,
        layers: 3,
        time_embedding: 4,
    };
    let eps_net = MlpEps::new(&cfg, 2, vb.pp("eps")).unwrap();
    let dec = LinearDecoder::new(
        &LinearDecoderConfig {
            bias: true,
            sigma: 1.0,
            ..Default::default()
        },
        2,
        5,
        vb.pp("dec"),
    )
    .unwrap();
    let schedule = ScheduleConfig::default().build().unwrap();
    let loss = DiffusionLoss::new(&schedule, LossWeighting::Simple, &dev).unwrap();
    let z =
        Var::from_tensor(&Tensor::new(&[[0.3f64, -0.7], [1.2, 0.4], [-0.5, -1.1]], &dev).unwrap())
            .unwrap();
    let x = Tensor::new(
        &[
            [1.0f64, 0.0, -1.0, 0.5, 2.0],
            [0.0, 1.0, 0.3, -0.2, 0.1],
            [0.4, -0.4, 0.0, 1.0, -1.0],
        ],
        &dev,
    )
    .unwrap();
    let eps = Tensor::new(&[[0.5f64, -1.0], [0.1, 0.2], [-1.5, 0.3]], &dev).unwrap();
    // Distinct timesteps take the per-row first layer; a repeated one takes the table of
    // distinct timesteps gathered per row (MlpEps::timestep_term).
    for ks in [[3u32, 250, 900], [7, 7, 7]] {
        let k = timestep_tensor(&ks, 1000, &dev).unwrap();
        let mut all: Vec<(String, Var)> = named(&vars);
        let n_params = all.len();
        all.push(("z".into(), z.clone()));
        let f = |v: &[Tensor]| -> candle_core::Result<Tensor> {
            // v[..n_params] are the VarMap's vars (shared storage), v[n_params] is z.
            let z = &v[n_params];
            let d = loss
                .per_sample(&eps_net, z, &eps, &k)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?
                .total;
            let nll = gaussian_nll(&x, &dec.decode(z)?, 1.0)?;
            ((d * 0.01)? + nll)?.mean_all()
        };
        let refs: Vec<(&str, Var)> = all.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
        assert_eq!(
            n_params,
            2 * 4 + 2,
            "4 eps layers with bias + decoder weight and bias"
        );
        assert_gradients_flow(&f, &refs).unwrap();
        let report = check_finite_differences(
            &f,
            &refs,
            &FdConfig {
                max_entries_per_var: 12,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(report.checked > 60);
    }
}

#[test]
fn full_size_mlp_gets_gradients_in_f32() {
    let dev = Device::Cpu;
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &dev);
    let net = MlpEps::new(&MlpEpsConfig::default(), 2, vb.pp("eps")).unwrap();
    let z = Tensor::new(&[[0.3f32, -0.7], [1.2, 0.4]], &dev).unwrap();
    let k = Tensor::new(&[1u32, 999], &dev).unwrap();
    let all = named(&vars);
    let refs: Vec<(&str, Var)> = all.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
    let f = |_: &[Tensor]| net.predict_eps(&z, &k)?.sqr()?.sum_all();
    assert_gradients_flow(&f, &refs).unwrap();
    assert_eq!(net.predict_eps(&z, &k).unwrap().dims(), &[2, 2]);
}

#[test]
fn gaussian_nll_matches_hand_computation() {
    let dev = Device::Cpu;
    let x = Tensor::new(&[[1.0f32, 2.0], [0.0, 0.0]], &dev).unwrap();
    let m = Tensor::new(&[[0.0f32, 0.0], [3.0, 4.0]], &dev).unwrap();
    let v: Vec<f32> = gaussian_nll(&x, &m, 2.0).unwrap().to_vec1().unwrap();
    assert_eq!(v, vec![5.0 / 8.0, 25.0 / 8.0]);
}

#[test]
fn bad_configs_are_rejected() {
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
    let bad = MlpEpsConfig {
        time_embedding: 3,
        ..Default::default()
    };
    assert!(
        MlpEps::new(&bad, 2, vb.pp("e"))
            .unwrap_err()
            .to_string()
            .contains("time_embedding")
    );
    let bad = LinearDecoderConfig {
        bias: false,
        sigma: 0.0,
        ..Default::default()
    };
    assert!(
        LinearDecoder::new(&bad, 2, 4, vb.pp("d"))
            .unwrap_err()
            .to_string()
            .contains("sigma")
    );
}

#[test]
fn uniform_timestep_path_equals_the_general_path_and_the_concatenation() {
    let dev = Device::Cpu;
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F64, &dev);
    let cfg = MlpEpsConfig {
        hidden: 16,
        layers: 3,
        time_embedding: 8,
    };
    let net = MlpEps::new(&cfg, 3, vb.pp("eps")).unwrap();
    let z = Tensor::new(
        &[[0.3f64, -0.7, 1.0], [1.2, 0.4, -2.0], [0.0, 0.5, 0.25]],
        &dev,
    )
    .unwrap();
    let k = Tensor::new(&[417u32, 417, 417], &dev).unwrap();
    let a: Vec<Vec<f64>> = net.predict_eps(&z, &k).unwrap().to_vec2().unwrap();
    let b: Vec<Vec<f64>> = net.predict_eps_uniform(&z, 417).unwrap().to_vec2().unwrap();
    // Independent reference: the textbook MLP on the concatenation [z, emb(k)].
    let data = vars.data().lock().unwrap();
    let lin = |i: usize, x: &Tensor| -> Tensor {
        let w = data[&format!("eps.l{i}.weight")].as_tensor().clone();
        let bias = data[&format!("eps.l{i}.bias")].as_tensor().clone();
        x.matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&bias)
            .unwrap()
    };
    let freqs = ipld_models::sinusoidal_frequencies(8, &dev).unwrap();
    let emb = ipld_models::sinusoidal_embedding(&k, &freqs, DType::F64).unwrap();
    let mut h = Tensor::cat(&[&z, &emb], 1).unwrap();
    for i in 0..4 {
        h = lin(i, &h);
        if i < 3 {
            h = h.relu().unwrap();
        }
    }
    let c: Vec<Vec<f64>> = h.to_vec2().unwrap();
    for r in 0..3 {
        for j in 0..3 {
            assert!(
                (a[r][j] - c[r][j]).abs() < 1e-12 && (b[r][j] - c[r][j]).abs() < 1e-12,
                "{a:?} {b:?} {c:?}"
            );
        }
    }
}

#[test]
fn diffusion_vae_loss_reaches_encoder_decoder_and_prior() {
    // loss = nll(x, g(z)) + gamma (L_simple(theta, z) - H(q(z|x))), z = mu + sigma eps.
    use ipld_models::LinearGaussianEncoder;
    let dev = Device::Cpu;
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F64, &dev);
    let eps_net = MlpEps::new(
        &MlpEpsConfig {
            hidden: 8,
            layers: 3,
            time_embedding: 4,
        },
        2,
        vb.pp("eps"),
    )
    .unwrap();
    let dec = LinearDecoder::new(&LinearDecoderConfig::default(), 2, 4, vb.pp("dec")).unwrap();
    let enc = LinearGaussianEncoder::new(4, 2, vb.pp("enc")).unwrap();
    let schedule = ScheduleConfig::default().build().unwrap();
    let loss = DiffusionLoss::new(&schedule, LossWeighting::Simple, &dev).unwrap();
    let x = Tensor::new(&[[1.0f64, 0.0, -1.0, 0.5], [0.0, 1.0, 0.3, -0.2]], &dev).unwrap();
    let noise = Tensor::new(&[[0.5f64, -1.0], [0.1, 0.2]], &dev).unwrap();
    let e = Tensor::new(&[[0.3f64, 0.9], [-1.2, 0.4]], &dev).unwrap();
    let k = timestep_tensor(&[5, 700], 1000, &dev).unwrap();
    let all = named(&vars);
    let refs: Vec<(&str, Var)> = all.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
    let f = |_: &[Tensor]| -> candle_core::Result<Tensor> {
        let (mu, lv) = enc.encode(&x)?;
        let z = LinearGaussianEncoder::sample(&mu, &lv, &e)?;
        let d = loss
            .per_sample(&eps_net, &z, &noise, &k)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?
            .total;
        let kl = (d - LinearGaussianEncoder::entropy(&lv)?)?;
        (gaussian_nll(&x, &dec.decode(&z)?, 1.0)? + (kl * 0.1)?)?.mean_all()
    };
    assert_gradients_flow(&f, &refs).unwrap();
    check_finite_differences(
        &f,
        &refs,
        &FdConfig {
            max_entries_per_var: 8,
            ..Default::default()
        },
    )
    .unwrap();
}
