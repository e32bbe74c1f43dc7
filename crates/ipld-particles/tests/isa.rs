//! Issue 24: every instruction-set path the CPU supports gives the same bits as the portable one,
//! for the noise and for each eager update rule (and the lazy update), and `IPLD_ISA` names are
//! checked.

use ipld_particles::{
    AdaptiveLangevin, Isa, KineticLangevin, Langevin, LazyNoise, NoiseGenerator, NoiseStream,
    ParticleCloud, ParticleUpdate, StepContext, UpdateConfig, set_isa,
};

fn ctx(step: u64, batch: usize, total: usize) -> StepContext {
    StepContext {
        step,
        gamma: 0.3,
        step_size: 0.05,
        batch_size: batch,
        total_points: total,
        noise_scale: ipld_particles::NoiseScale::Posterior,
        epoch: 2,
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Noise, three eager rules and the lazy update under the active ISA: every value they write.
fn everything() -> Vec<Vec<u32>> {
    let mut out = Vec::new();
    for generator in [NoiseGenerator::Philox4x32_7, NoiseGenerator::Philox4x32_10] {
        let s = NoiseStream::new(0xfeed, 5).with_generator(generator);
        let mut v = vec![0f32; 4099];
        s.fill(7, 13, &mut v);
        out.push(bits(&v));
    }
    // Rows of 3 x 5 = 15 floats, an odd width, so the kernels' remainders run too.
    let (m, n, d, b) = (1037, 3, 5, 129);
    let batch: Vec<usize> = (0..b).map(|i| (i * 7919) % m).collect();
    let grads: Vec<f32> = (0..b * n * d)
        .map(|i| ((i % 17) as f32 - 8.0) * 1e-4)
        .collect();
    let rules: [&dyn ParticleUpdate; 3] = [
        &AdaptiveLangevin::default(),
        &Langevin {},
        &KineticLangevin::default(),
    ];
    for rule in rules {
        let mut cloud = ParticleCloud::gaussian(0, m, n, d, 3).unwrap();
        cloud.set_visits(&vec![1; m]).unwrap();
        let noise = NoiseStream::new(9, 2).with_generator(NoiseGenerator::Philox4x32_7);
        for t in 0..3 {
            rule.step(&mut cloud, &batch, &grads, &ctx(t, b, m), &noise)
                .unwrap();
        }
        out.extend([
            bits(cloud.z()),
            bits(cloud.momentum()),
            bits(cloud.second_moment()),
        ]);
    }
    let mut cloud = ParticleCloud::gaussian(0, m, n, d, 3).unwrap();
    let rule = UpdateConfig::AdaptiveLangevin(AdaptiveLangevin::default());
    let mut lazy = LazyNoise::new(&cloud, 0, 1e-8);
    let (noise, lazy_noise) = (
        NoiseStream::new(3, 7),
        NoiseStream::new(3, ipld_particles::LAZY_STREAM),
    );
    for t in 0..4u64 {
        let batch: Vec<usize> = (0..b).map(|i| (i * 31 + t as usize * 101) % m).collect();
        lazy.sync(&mut cloud, &batch, t, &lazy_noise).unwrap();
        lazy.step(&rule, &mut cloud, &batch, &grads, &ctx(t, b, m), &noise)
            .unwrap();
    }
    lazy.sync(&mut cloud, &(0..m).collect::<Vec<_>>(), 4, &lazy_noise)
        .unwrap();
    out.push(bits(cloud.z()));
    out
}

#[test]
fn every_supported_isa_gives_the_portable_bits() {
    let available = Isa::available();
    assert_eq!(available.last(), Some(&Isa::Portable));
    set_isa(Some(Isa::Portable)).unwrap();
    let reference = everything();
    for &isa in &available {
        set_isa(Some(isa)).unwrap();
        assert_eq!(ipld_particles::active_isa(), isa);
        let got = everything();
        for (i, (a, b)) in got.iter().zip(&reference).enumerate() {
            assert!(
                a == b,
                "{}: output {i} differs from the portable path",
                isa.name()
            );
        }
    }
    set_isa(None).unwrap();
    eprintln!(
        "compared {}",
        available
            .iter()
            .map(|i| i.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
}

#[test]
fn isa_names_parse_and_bad_ones_are_named() {
    for &isa in Isa::ALL {
        if isa.supported() {
            assert_eq!(Isa::parse(isa.name()).unwrap(), isa);
            assert_eq!(Isa::parse(&isa.name().to_uppercase()).unwrap(), isa);
        } else {
            let e = Isa::parse(isa.name()).unwrap_err().to_string();
            assert!(e.contains("IPLD_ISA") && e.contains("cannot run"), "{e}");
        }
    }
    let e = Isa::parse("avx9").unwrap_err().to_string();
    assert!(
        e.contains("IPLD_ISA") && e.contains("avx9") && e.contains("portable"),
        "{e}"
    );
    assert_eq!(Isa::parse("portable").unwrap(), Isa::Portable);
}
