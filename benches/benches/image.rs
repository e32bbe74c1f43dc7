//! One IPLD training step's network work on images (Appendix B.2): DiT-S eps-prediction loss plus
//! the Table 2 decoder's Gaussian NLL, forward and backward, at batch 64 on 4 x 8 x 8 latents and
//! 3 x 32 x 32 images. Run with `cargo bench -p ipld-benches --bench image`.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use criterion::{Criterion, criterion_group};
use ipld_diffusion::EpsModel;
use ipld_models::{ConvDecoder, ConvDecoderConfig, Decoder, Dit, DitConfig, gaussian_nll};

fn image_step(c: &mut Criterion) {
    let dev = Device::Cpu;
    let vars = VarMap::new();
    let vb = VarBuilder::from_varmap(&vars, DType::F32, &dev);
    let dit = Dit::new(&DitConfig::s(), vb.pp("eps")).unwrap();
    let dec = ConvDecoder::new(&ConvDecoderConfig::table2_32(), vb.pp("dec")).unwrap();
    Dit::init(&vars, 0).unwrap();
    let b = 64;
    let z = Tensor::randn(0f32, 1.0, (b, 256), &dev).unwrap();
    let eps = Tensor::randn(0f32, 1.0, (b, 256), &dev).unwrap();
    let x = Tensor::randn(0f32, 1.0, (b, 3 * 32 * 32), &dev).unwrap();
    let k: Vec<u32> = (0..b as u32).map(|i| 1 + i * 15).collect();
    let k = Tensor::new(k.as_slice(), &dev).unwrap();
    let mut g = c.benchmark_group("image_train_step");
    g.sample_size(10);
    g.bench_function("dit_s_plus_decoder_b64_fwd_bwd", |bench| {
        bench.iter(|| {
            let pred = dit.predict_eps(&z, &k).unwrap();
            let l_d = (pred - &eps).unwrap().sqr().unwrap().mean_all().unwrap();
            let nll = gaussian_nll(&x, &dec.decode(&z).unwrap(), 1.0)
                .unwrap()
                .mean_all()
                .unwrap();
            (l_d + nll).unwrap().backward().unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, image_step);
ipld_benches::criterion_main_pinned!(benches);
