//! DiT prior and convolutional decoder: gradients reach every tensor (with finite-difference
//! checks on tiny f64 configurations), adaLN-Zero starts at zero, shapes and parameter counts.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use ipld_diffusion::EpsModel;
use ipld_gradcheck::{FdConfig, assert_gradients_flow, check_finite_differences};
use ipld_models::{
    ConvDecoder, ConvDecoderConfig, ConvEncoder, ConvEps, ConvEpsConfig, Decoder, Dit, DitConfig,
    InitRule, gaussian_nll, seeded_init_with, sincos_2d,
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

fn tiny_dit(patch: usize) -> DitConfig {
    DitConfig {
        channels: 2,
        size: 4,
        patch,
        hidden: 8,
        depth: 2,
        heads: 2,
        mlp_ratio: 2,
        frequency_dim: 8,
    }
}

/// max |t| over all entries, in f64.
fn max_abs(t: &Tensor) -> f64 {
    let t = t.to_dtype(DType::F64).unwrap().abs().unwrap();
    t.max_all().unwrap().to_scalar::<f64>().unwrap()
}

fn seq(n: usize, scale: f64, dev: &Device) -> Tensor {
    let v: Vec<f64> = (0..n).map(|i| ((i * 7 + 3) as f64).sin() * scale).collect();
    Tensor::from_vec(v, n, dev).unwrap()
}

/// An eps-network's regression loss on 3 latents at k = 1, 40, 999: every tensor in `vars` and
/// the input get a finite, non-zero gradient that matches finite differences (at most `entries`
/// per tensor); returns (tensors in `vars`, entries checked). `vars` must hold a dense point:
/// zero-initialised layers would give exactly-zero gradients to everything behind them.
fn eps_gradients<M: EpsModel>(net: &M, vars: &VarMap, d: usize, entries: usize) -> (usize, usize) {
    let dev = Device::Cpu;
    let z = Var::from_tensor(&seq(3 * d, 1.0, &dev).reshape((3, d)).unwrap()).unwrap();
    let target = seq(3 * d, 0.5, &dev).reshape((3, d)).unwrap();
    let k = Tensor::new(&[1u32, 40, 999], &dev).unwrap();
    let mut all = named(vars);
    let n = all.len();
    all.push(("z".into(), z));
    let f = |v: &[Tensor]| -> candle_core::Result<Tensor> {
        (net.predict_eps(&v[n], &k)? - &target)?.sqr()?.mean_all()
    };
    let refs: Vec<(&str, Var)> = all.iter().map(|(s, v)| (s.as_str(), v.clone())).collect();
    assert_gradients_flow(&f, &refs).unwrap();
    let report = check_finite_differences(
        &f,
        &refs,
        &FdConfig {
            max_entries_per_var: entries,
            ..Default::default()
        },
    )
    .unwrap();
    (n, report.checked)
}

#[test]
fn dit_gradients_flow_and_match_finite_differences() {
    let dev = Device::Cpu;
    for patch in [1, 2] {
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F64, &dev);
        let cfg = tiny_dit(patch);
        let net = Dit::new(&cfg, vb).unwrap();
        // adaLN-Zero's zero gates: start from a dense random point.
        seeded_init_with(&vars, 5, |_, _| InitRule::Normal(0.4)).unwrap();
        let (n, checked) = eps_gradients(&net, &vars, cfg.latent_dim(), 6);
        // 2 blocks x 5 linears + x_embed, 2 timestep linears, final adaLN and linear, each
        // with a bias.
        assert_eq!(n, 2 * (2 * 5 + 1 + 2 + 2));
        assert!(checked > 150, "{checked}");
    }
}

#[test]
fn dit_starts_at_zero_and_keeps_shapes() {
    let dev = Device::Cpu;
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &dev);
    let cfg = tiny_dit(2);
    let net = Dit::new(&cfg, vb).unwrap();
    Dit::init(&vars, 0).unwrap();
    let z = seq(2 * 32, 1.0, &dev)
        .to_dtype(DType::F32)
        .unwrap()
        .reshape((2, 2, 4, 4))
        .unwrap();
    let out = net.predict_eps_uniform(&z, 500).unwrap();
    assert_eq!(out.dims(), &[2, 2, 4, 4]);
    // adaLN-Zero: the final linear layer is zero, so the initial prediction is exactly 0.
    let v: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
    assert!(v.iter().all(|x| *x == 0.0));
    // Same seed, same weights.
    let again = VarMap::new();
    Dit::new(&cfg, VarBuilder::from_varmap(&again, DType::F32, &dev)).unwrap();
    Dit::init(&again, 0).unwrap();
    let w = |m: &VarMap| -> Vec<f32> {
        m.data().lock().unwrap()["blocks.0.attn.qkv.weight"]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    assert_eq!(w(&vars), w(&again));
    // Xavier bound for qkv [24, 8]: sqrt(6 / 32).
    assert!(w(&vars).iter().all(|x| x.abs() <= (6.0f32 / 32.0).sqrt()));
}

#[test]
fn dit_s_has_the_papers_size() {
    // DiT-S/1 on 4 x 8 x 8, epsilon only, unconditional. Closed form, h = 384, F = 256:
    //   x_embed 4h + h; timestep MLP F h + h + h² + h;
    //   12 blocks x (qkv 3h² + 3h, proj h² + h, fc1 4h² + 4h, fc2 4h² + h, adaLN 6h² + 6h);
    //   final adaLN 2h² + 2h; final linear 4h + 4                        = 32,465,284.
    // Peebles & Xie's DiT-S/2 (33.0M) adds a 1001 x 384 class embedding and the frozen position
    // table, with a 2x2 patch and learned-sigma output: 32,963,380 by the same count.
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu);
    Dit::new(&DitConfig::s(), vb).unwrap();
    let count: usize = vars.all_vars().iter().map(|v| v.elem_count()).sum();
    assert_eq!(count, 32_465_284);
}

#[test]
fn sincos_position_embedding_matches_the_formula() {
    let e: Vec<Vec<f32>> = sincos_2d(8, 3, &Device::Cpu).unwrap().to_vec2().unwrap();
    // Token (row 1, col 2) = index 5: [sin(1 w), cos(1 w), sin(2 w), cos(2 w)], w = (1, 0.01).
    let w = [1.0f64, 0.01];
    let mut want = Vec::new();
    for p in [1.0f64, 2.0] {
        want.extend(w.iter().map(|w| (p * w).sin()));
        want.extend(w.iter().map(|w| (p * w).cos()));
    }
    for (a, b) in e[5].iter().zip(&want) {
        assert!((*a as f64 - b).abs() < 1e-6, "{:?} vs {want:?}", e[5]);
    }
}

fn tiny_decoder() -> ConvDecoderConfig {
    ConvDecoderConfig {
        latent_channels: 2,
        latent_size: 2,
        out_channels: 1,
        base_channels: 4,
        channel_mult: vec![1, 2],
        res_blocks: 1,
        groups: 2,
        sigma: 1.0,
    }
}

#[test]
fn conv_decoder_gradients_flow_and_match_finite_differences() {
    let dev = Device::Cpu;
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F64, &dev);
    let cfg = tiny_decoder();
    let dec = ConvDecoder::new(&cfg, vb).unwrap();
    seeded_init_with(&vars, 2, |_, _| InitRule::Normal(0.5)).unwrap();
    let z = Var::from_tensor(&seq(2 * 8, 1.0, &dev).reshape((2, 8)).unwrap()).unwrap();
    let x = seq(2 * 16, 0.8, &dev).reshape((2, 16)).unwrap();
    let mut all = named(&vars);
    let n = all.len();
    all.push(("z".into(), z));
    let f = |v: &[Tensor]| -> candle_core::Result<Tensor> {
        gaussian_nll(&x, &dec.decode(&v[n])?, 1.0)?.mean_all()
    };
    let refs: Vec<(&str, Var)> = all.iter().map(|(s, v)| (s.as_str(), v.clone())).collect();
    assert_gradients_flow(&f, &refs).unwrap();
    let report = check_finite_differences(
        &f,
        &refs,
        &FdConfig {
            max_entries_per_var: 4,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(report.checked > 100, "{}", report.checked);
}

#[test]
fn conv_decoder_shapes_follow_table_2() {
    assert_eq!(ConvDecoderConfig::table2_32().image_size(), 32);
    assert_eq!(ConvDecoderConfig::table2_64().image_size(), 64);
    let dev = Device::Cpu;
    let vars = VarMap::new();
    let cfg = ConvDecoderConfig {
        base_channels: 32,
        ..ConvDecoderConfig::table2_32()
    };
    let dec = ConvDecoder::new(&cfg, VarBuilder::from_varmap(&vars, DType::F32, &dev)).unwrap();
    ConvDecoder::init(&vars, 0).unwrap();
    let z = Tensor::zeros((2, 256), DType::F32, &dev).unwrap();
    assert_eq!(dec.decode(&z).unwrap().dims(), &[2, 3 * 32 * 32]);
    let z4 = Tensor::zeros((1, 4, 8, 8), DType::F32, &dev).unwrap();
    assert_eq!(dec.decode(&z4).unwrap().dims(), &[1, 3, 32, 32]);
    let bad = ConvDecoderConfig {
        groups: 5,
        ..tiny_decoder()
    };
    let err = ConvDecoder::new(&bad, VarBuilder::from_varmap(&vars, DType::F32, &dev))
        .unwrap_err()
        .to_string();
    assert!(err.contains("groups"), "{err}");
}

#[test]
fn conv_encoder_mirrors_the_decoder_and_gets_gradients() {
    let dev = Device::Cpu;
    // Shapes for Table 2: 3 x 32 x 32 -> mean and log-variance of 4 x 8 x 8 each.
    let vars = VarMap::new();
    let cfg = ConvDecoderConfig {
        base_channels: 32,
        ..ConvDecoderConfig::table2_32()
    };
    let enc = ConvEncoder::new(&cfg, VarBuilder::from_varmap(&vars, DType::F32, &dev)).unwrap();
    ConvDecoder::init(&vars, 0).unwrap();
    let x = Tensor::zeros((2, 3, 32, 32), DType::F32, &dev).unwrap();
    let (mean, logvar) = enc.encode(&x).unwrap();
    assert_eq!((mean.dims(), logvar.dims()), (&[2, 256][..], &[2, 256][..]));

    // Tiny f64 version: every tensor gets a gradient through a reparameterised KL-style loss,
    // and finite differences agree.
    let vars = VarMap::new();
    let enc = ConvEncoder::new(
        &tiny_decoder(),
        VarBuilder::from_varmap(&vars, DType::F64, &dev),
    )
    .unwrap();
    seeded_init_with(&vars, 4, |_, _| InitRule::Normal(0.5)).unwrap();
    let x = Var::from_tensor(&seq(2 * 16, 0.9, &dev).reshape((2, 16)).unwrap()).unwrap();
    let noise = seq(2 * 8, 0.7, &dev).reshape((2, 8)).unwrap();
    let mut all = named(&vars);
    let n = all.len();
    all.push(("x".into(), x));
    let f = |v: &[Tensor]| -> candle_core::Result<Tensor> {
        let (m, lv) = enc.encode(&v[n])?;
        let z = (m + (&lv * 0.5)?.exp()?.mul(&noise)?)?;
        (z.sqr()?.sum_all()? - lv.sum_all()?)? * 0.5
    };
    let refs: Vec<(&str, Var)> = all.iter().map(|(s, v)| (s.as_str(), v.clone())).collect();
    assert_gradients_flow(&f, &refs).unwrap();
    let report = check_finite_differences(
        &f,
        &refs,
        &FdConfig {
            max_entries_per_var: 4,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(report.checked > 80, "{}", report.checked);
}

type ConvFn = fn(&Tensor, &Tensor, Option<&Tensor>, usize, usize) -> candle_core::Result<Tensor>;

/// `conv` against candle's conv2d (forward, and its conv_transpose-based backward) in `dtype`:
/// values and the gradients of a weighted sum in x, w and b, within `tol` relative to the
/// largest reference entry.
fn check_conv_against_candle(conv: ConvFn, dtype: DType, tol: f64) {
    let dev = Device::Cpu;
    // (batch, c_in, c_out, k, stride, padding, size): 3 x 3 same, stride-2 valid (odd and even
    // sizes, the encoder's downsampling), 1 x 1 (the shortcut), padding wider than the kernel's
    // reach on a 1-pixel image, a kernel wider than the image (some kernel columns never touch
    // it), a stride larger than the image, and one large enough for the per-sample parallel path.
    for (n, cin, cout, k, stride, pad, h) in [
        (2, 3, 4, 3, 1, 1, 6),
        (2, 2, 3, 3, 2, 0, 7),
        (2, 2, 3, 3, 2, 0, 8),
        (2, 4, 2, 1, 1, 0, 5),
        (3, 2, 2, 3, 1, 2, 1),
        (1, 2, 2, 7, 1, 2, 3),
        (1, 2, 3, 3, 3, 4, 2),
        (2, 3, 2, 3, 2, 1, 5),
        (4, 16, 16, 3, 1, 1, 24),
    ] {
        let var = |t: Tensor| Var::from_tensor(&t.to_dtype(dtype).unwrap()).unwrap();
        let x = var(seq(n * cin * h * h, 1.0, &dev)
            .reshape((n, cin, h, h))
            .unwrap());
        let w = var(seq(cout * cin * k * k, 0.3, &dev)
            .reshape((cout, cin, k, k))
            .unwrap());
        let b = var(seq(cout, 0.5, &dev));
        let ours = conv(
            x.as_tensor(),
            w.as_tensor(),
            Some(b.as_tensor()),
            stride,
            pad,
        )
        .unwrap();
        let reference = x
            .as_tensor()
            .conv2d(w.as_tensor(), pad, stride, 1, 1)
            .unwrap()
            .broadcast_add(&b.as_tensor().reshape((1, cout, 1, 1)).unwrap())
            .unwrap();
        assert_eq!(ours.dims(), reference.dims());
        let rel = |a: &Tensor, b: &Tensor| -> f64 {
            let (a, b) = (
                a.to_dtype(DType::F64).unwrap(),
                b.to_dtype(DType::F64).unwrap(),
            );
            max_abs(&(a - &b).unwrap()) / max_abs(&b).max(1e-30)
        };
        let case = format!("{dtype:?} n {n} c {cin}->{cout} k {k} s {stride} p {pad} h {h}");
        assert!(rel(&ours, &reference) < tol, "forward {case}");
        // Gradients of a weighted sum, so every output position matters differently.
        let r = seq(ours.elem_count(), 1.0, &dev)
            .to_dtype(dtype)
            .unwrap()
            .reshape(ours.dims())
            .unwrap();
        let g1 = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (reference * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (name, v) in [("x", &x), ("w", &w), ("b", &b)] {
            let (a, c) = (
                g1.get(v.as_tensor()).unwrap(),
                g2.get(v.as_tensor()).unwrap(),
            );
            assert!(rel(a, c) < tol, "gradient {name} {case}: {}", rel(a, c));
        }
    }
}

#[test]
fn im2col_convolution_matches_candle_conv2d_values_and_gradients() {
    check_conv_against_candle(ipld_models::conv2d_im2col, DType::F64, 1e-12);
}

#[test]
fn lean_convolution_matches_candle_conv2d_values_and_gradients() {
    // f64: rounding only; f32: rounding of sums of up to 144 x 576 products.
    check_conv_against_candle(ipld_models::conv2d, DType::F64, 1e-12);
    check_conv_against_candle(ipld_models::conv2d, DType::F32, 1e-5);
}

#[test]
fn lean_convolution_without_bias_or_input_gradient() {
    // No bias, and an input that is not a variable: only w gets a gradient, equal to the
    // composite's.
    let dev = Device::Cpu;
    let x = seq(2 * 3 * 5 * 5, 1.0, &dev).reshape((2, 3, 5, 5)).unwrap();
    let w = Var::from_tensor(&seq(4 * 3 * 9, 0.3, &dev).reshape((4, 3, 3, 3)).unwrap()).unwrap();
    let ours = ipld_models::conv2d(&x, w.as_tensor(), None, 1, 1).unwrap();
    let reference = ipld_models::conv2d_im2col(&x, w.as_tensor(), None, 1, 1).unwrap();
    assert!(max_abs(&(&ours - &reference).unwrap()) < 1e-12);
    let g1 = ours.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let g2 = reference
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(g1.get(&x).is_none());
    let d = max_abs(&(g1.get(w.as_tensor()).unwrap() - g2.get(w.as_tensor()).unwrap()).unwrap());
    assert!(d < 1e-10, "{d}");
}

#[test]
fn lean_convolution_rejects_mismatched_shapes() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 3, 4, 4), DType::F32, &dev).unwrap();
    let w = Tensor::zeros((2, 2, 3, 3), DType::F32, &dev).unwrap();
    let e = ipld_models::conv2d(&x, &w, None, 1, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("3 channels") && e.contains("weight 2"), "{e}");
    let w = Tensor::zeros((2, 3, 7, 7), DType::F32, &dev).unwrap();
    let e = ipld_models::conv2d(&x, &w, None, 1, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("smaller than the 7 x 7 kernel"), "{e}");
    let w = Tensor::zeros((2, 3, 3, 3), DType::F32, &dev).unwrap();
    let b = Tensor::zeros(3, DType::F32, &dev).unwrap();
    let e = ipld_models::conv2d(&x, &w, Some(&b), 1, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bias shape"), "{e}");
}

fn tiny_conv_eps() -> ConvEpsConfig {
    ConvEpsConfig {
        channels: 2,
        size: 3,
        width: 4,
        blocks: 2,
        groups: 2,
        frequency_dim: 6,
        attention_heads: 0,
    }
}

#[test]
fn conv_eps_gradients_flow_and_match_finite_differences() {
    let dev = Device::Cpu;
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F64, &dev);
    let cfg = tiny_conv_eps();
    let net = ConvEps::new(&cfg, vb).unwrap();
    // The zero-initialised convolutions: start from a dense random point.
    seeded_init_with(&vars, 3, |_, _| InitRule::Normal(0.5)).unwrap();
    let (n, checked) = eps_gradients(&net, &vars, cfg.latent_dim(), 8);
    // Per block: 2 norms, 2 convs and the modulation linear (weight and bias each); plus the
    // 2 timestep linears, conv_in, norm_out and conv_out.
    assert_eq!(n, 2 * (2 * 5 + 5));
    assert!(checked > 170, "{checked}");
}

#[test]
fn conv_eps_starts_at_zero_keeps_shapes_and_shares_one_timestep() {
    let dev = Device::Cpu;
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &dev);
    let cfg = tiny_conv_eps();
    let net = ConvEps::new(&cfg, vb).unwrap();
    ConvEps::init(&vars, 0).unwrap();
    let z = seq(2 * 18, 1.0, &dev)
        .to_dtype(DType::F32)
        .unwrap()
        .reshape((2, 2, 3, 3))
        .unwrap();
    let out = net.predict_eps_uniform(&z, 500).unwrap();
    assert_eq!(out.dims(), &[2, 2, 3, 3]);
    // conv_out starts at zero, so the initial prediction is exactly 0.
    let v: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
    assert!(v.iter().all(|x| *x == 0.0));
    // From a dense point: flat input gives the flat output, and one shared timestep equals the
    // per-row path with that timestep repeated.
    seeded_init_with(&vars, 1, |_, _| InitRule::Normal(0.3)).unwrap();
    let flat = z.reshape((2, 18)).unwrap();
    let shared = net.predict_eps_uniform(&flat, 37).unwrap();
    assert_eq!(shared.dims(), &[2, 18]);
    let rows = net
        .predict_eps(&flat, &Tensor::new(&[37u32, 37], &dev).unwrap())
        .unwrap();
    assert!(max_abs(&(shared - &rows).unwrap()) < 1e-6);
    assert!(max_abs(&rows) > 1e-3);
    // Bad shapes are refused when the network is built.
    let bad = ConvEpsConfig { groups: 3, ..cfg };
    let e = ConvEps::new(
        &bad,
        VarBuilder::from_varmap(&VarMap::new(), DType::F32, &dev),
    )
    .unwrap_err();
    assert!(e.to_string().contains("groups"), "{e}");
    let bad = ConvEpsConfig {
        attention_heads: 3,
        ..cfg
    };
    let e = ConvEps::new(
        &bad,
        VarBuilder::from_varmap(&VarMap::new(), DType::F32, &dev),
    )
    .unwrap_err();
    assert!(e.to_string().contains("attention_heads"), "{e}");
}

#[test]
fn conv_eps_attention_gradients_flow_and_match_finite_differences() {
    let dev = Device::Cpu;
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F64, &dev);
    let cfg = ConvEpsConfig {
        attention_heads: 2,
        ..tiny_conv_eps()
    };
    let net = ConvEps::new(&cfg, vb).unwrap();
    seeded_init_with(&vars, 5, |_, _| InitRule::Normal(0.5)).unwrap();
    let (n, checked) = eps_gradients(&net, &vars, cfg.latent_dim(), 8);
    // The convolutional network's 30 tensors plus, per block, the attention's norm, qkv and
    // output projection (weight and bias each).
    assert_eq!(n, 30 + 2 * 6);
    assert!(checked > 200, "{checked}");
}

#[test]
fn conv_eps_attention_starts_as_the_identity() {
    // With every attention's output projection at zero (its initialisation), the network with
    // attention computes exactly what the same weights compute without it.
    let dev = Device::Cpu;
    let plain_vars = VarMap::new();
    let cfg = tiny_conv_eps();
    let plain = ConvEps::new(&cfg, VarBuilder::from_varmap(&plain_vars, DType::F64, &dev)).unwrap();
    seeded_init_with(&plain_vars, 7, |_, _| InitRule::Normal(0.4)).unwrap();
    let attn_vars = VarMap::new();
    let with = ConvEpsConfig {
        attention_heads: 2,
        ..cfg
    };
    let attn = ConvEps::new(&with, VarBuilder::from_varmap(&attn_vars, DType::F64, &dev)).unwrap();
    ConvEps::init(&attn_vars, 0).unwrap();
    let plain_data = plain_vars.data().lock().unwrap();
    for (name, var) in attn_vars.data().lock().unwrap().iter() {
        if let Some(p) = plain_data.get(name) {
            var.set(p.as_tensor()).unwrap();
        } else {
            assert!(name.starts_with("attention."), "{name}");
            if name.contains(".proj.") {
                assert_eq!(max_abs(var.as_tensor()), 0.0, "{name}");
            }
        }
    }
    let z = seq(3 * 18, 0.7, &dev).reshape((3, 18)).unwrap();
    let k = Tensor::new(&[1u32, 400, 999], &dev).unwrap();
    let a = attn.predict_eps(&z, &k).unwrap();
    let b = plain.predict_eps(&z, &k).unwrap();
    assert_eq!(max_abs(&(&a - &b).unwrap()), 0.0);
    assert!(max_abs(&b) > 1e-3);
}
