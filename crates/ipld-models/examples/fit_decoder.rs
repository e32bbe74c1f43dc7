//! Fitting the linear Gaussian decoder p_phi(x | z) = N(W z, sigma² I) of Appendix B.1 by AdamW
//! on its negative log-likelihood, with the latents known: the maximum-likelihood W is the least
//! squares solution W* = X^T Z (Z^T Z)^(-1), which the example computes in closed form and
//! compares with the trained weights. Also builds the MLP epsilon-network and checks its output
//! shape.
//!
//! `cargo run --release -p ipld-models --example fit_decoder`

use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use ipld_diffusion::EpsModel;
use ipld_models::{
    Decoder, LinearDecoder, LinearDecoderConfig, MlpEps, MlpEpsConfig, gaussian_nll, seeded_init,
};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (n, dz, dx) = (4_000usize, 2usize, 6usize);
    let dev = Device::Cpu;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let mut normal =
        |k: usize| -> Vec<f32> { (0..k).map(|_| StandardNormal.sample(&mut rng)).collect() };
    // x = A z + 0.3 e with a fixed A.
    let a: Vec<f32> = (0..dx * dz)
        .map(|i| ((i * 7 % 5) as f32 - 2.0) / 2.0)
        .collect();
    let z = normal(n * dz);
    let e = normal(n * dx);
    let mut x = vec![0f32; n * dx];
    for r in 0..n {
        for i in 0..dx {
            let s: f32 = (0..dz).map(|j| a[i * dz + j] * z[r * dz + j]).sum();
            x[r * dx + i] = s + 0.3 * e[r * dx + i];
        }
    }
    // Closed form: W* = (X^T Z)(Z^T Z)^(-1), in f64 (Z^T Z is 2 x 2).
    let mut ztz = [[0f64; 2]; 2];
    let mut xtz = vec![[0f64; 2]; dx];
    for r in 0..n {
        for j in 0..dz {
            for k in 0..dz {
                ztz[j][k] += (z[r * dz + j] * z[r * dz + k]) as f64;
            }
            for i in 0..dx {
                xtz[i][j] += (x[r * dx + i] * z[r * dz + j]) as f64;
            }
        }
    }
    let det = ztz[0][0] * ztz[1][1] - ztz[0][1] * ztz[1][0];
    let inv = [
        [ztz[1][1] / det, -ztz[0][1] / det],
        [-ztz[1][0] / det, ztz[0][0] / det],
    ];
    let w_star: Vec<f64> = (0..dx * dz)
        .map(|e| {
            let (i, j) = (e / dz, e % dz);
            xtz[i][0] * inv[0][j] + xtz[i][1] * inv[1][j]
        })
        .collect();

    let vars = VarMap::new();
    let cfg = LinearDecoderConfig {
        bias: false,
        sigma: 0.3,
        ..Default::default()
    };
    let decoder = LinearDecoder::new(
        &cfg,
        dz,
        dx,
        VarBuilder::from_varmap(&vars, DType::F32, &dev),
    )?;
    seeded_init(&vars, 0)?;
    let (zt, xt) = (
        Tensor::from_vec(z, (n, dz), &dev)?,
        Tensor::from_vec(x, (n, dx), &dev)?,
    );
    let mut opt = candle_nn::AdamW::new_lr(vars.all_vars(), 0.05)?;
    for step in 0..=400 {
        let nll = gaussian_nll(&xt, &decoder.decode(&zt)?, cfg.sigma)?.mean_all()?;
        if step % 100 == 0 {
            println!("step {step:3}: mean NLL {:.5}", nll.to_scalar::<f32>()?);
        }
        opt.backward_step(&nll)?;
    }
    let w: Vec<f32> = vars.all_vars()[0].as_tensor().flatten_all()?.to_vec1()?;
    let err = w
        .iter()
        .zip(&w_star)
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0f64, f64::max);
    println!("max |W - W*| = {err:.2e} (W* the least-squares solution)");

    let vars = VarMap::new();
    let eps = MlpEps::new(
        &MlpEpsConfig::default(),
        dz,
        VarBuilder::from_varmap(&vars, DType::F32, &dev).pp("eps"),
    )?;
    seeded_init(&vars, 0)?;
    let k = Tensor::new(&[1u32, 500, 1000], &dev)?;
    let out = eps.predict_eps(&Tensor::zeros((3, dz), DType::F32, &dev)?, &k)?;
    println!(
        "MLP epsilon-network (Appendix B.1) output shape: {:?}",
        out.dims()
    );
    Ok(())
}
