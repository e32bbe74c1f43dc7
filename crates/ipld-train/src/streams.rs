//! Every random draw of a run is a pure function of (seed, stream, counter): the stream ids live
//! here, in one enum, so no two kinds of draw can share one. ChaCha8 streams are seeded by
//! [`mix_seed`]`(seed, id, counter)`; the Philox streams of ipld-particles are keyed by the seed
//! with the id in the counter. The two families cannot collide with each other (different
//! generators), but ids are distinct across both anyway (tested).

use ipld_particles::{INIT_STREAM, LAZY_STREAM, NoiseStream};

/// The run's random streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// The networks' initial weights (counter: 1 the prior, 2 the decoder, 3 the encoder).
    NetworkInit,
    /// The epoch permutation (counter: the epoch).
    Batch,
    /// Timesteps and noise of the diffusion loss, and DiffusionVAE's reparameterisation noise
    /// (counter: the step).
    Loss,
    /// Evaluation samples: the prior's initial noise and the sampler's noise (counter: the
    /// number of samples).
    Sample,
    /// The seeded subset of training points that samples are compared with (counter: 0), and
    /// its split into halves for the data-vs-data MMD² (counter: 1).
    Reference,
    /// The prior refit's points, timesteps and noise (counter: the step). Was 3 before the
    /// architecture refactor, the id of `Sample`: see [`Stream::id`].
    Refit,
    /// The Philox noise of the particle updates (counter: step and element).
    ParticleNoise,
    /// ipld-particles' initial particles z ~ N(0, I).
    ParticleInit,
    /// ipld-particles' lazy-noise catch-up draws.
    LazyNoise,
    /// The extra points of the stable target field's reference batch (counter: the step).
    StfReference,
}

impl Stream {
    /// Every stream.
    pub const ALL: [Stream; 10] = [
        Self::NetworkInit,
        Self::Batch,
        Self::Loss,
        Self::Sample,
        Self::Reference,
        Self::Refit,
        Self::ParticleNoise,
        Self::ParticleInit,
        Self::LazyNoise,
        Self::StfReference,
    ];

    /// The stream's id. `Refit` is 5: it used to be 3, which `Sample` also used, so a refit
    /// step t and an evaluation of n = t samples drew from one ChaCha8 sequence.
    pub fn id(self) -> u64 {
        match self {
            Self::NetworkInit => 0,
            Self::Batch => 1,
            Self::Loss => 2,
            Self::Sample => 3,
            Self::Reference => 4,
            Self::Refit => 5,
            Self::ParticleNoise => 7,
            Self::ParticleInit => INIT_STREAM as u64,
            Self::LazyNoise => LAZY_STREAM as u64,
            Self::StfReference => 8,
        }
    }

    /// The 64-bit seed of this stream at `counter` ([`mix_seed`]).
    pub fn seed(self, seed: u64, counter: u64) -> u64 {
        mix_seed(seed, self.id(), counter)
    }

    /// A ChaCha8 generator for this stream at `counter`.
    pub fn rng(self, seed: u64, counter: u64) -> rand_chacha::ChaCha8Rng {
        rand::SeedableRng::seed_from_u64(self.seed(seed, counter))
    }

    /// The Philox noise stream of this id (the particle streams).
    pub fn noise(self, seed: u64, generator: ipld_particles::NoiseGenerator) -> NoiseStream {
        NoiseStream::new(seed, self.id() as u32).with_generator(generator)
    }
}

/// SplitMix64 finaliser: mixes (seed, a, b) into one well-spread 64-bit seed.
pub fn mix_seed(seed: u64, a: u64, b: u64) -> u64 {
    let f = |mut z: u64| {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    f(seed ^ f(a ^ f(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_are_distinct() {
        let mut ids: Vec<u64> = Stream::ALL.iter().map(|s| s.id()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), Stream::ALL.len(), "{ids:?}");
    }

    /// Reference values from an independent Python model of the same mixer:
    /// ```python
    /// M = (1 << 64) - 1
    /// def f(z):
    ///     z = (z + 0x9E3779B97F4A7C15) & M
    ///     z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
    ///     z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
    ///     return z ^ (z >> 31)
    /// mix = lambda s, a, b: f(s ^ f(a ^ f(b)))
    /// ```
    /// (f(0) = 0xE220A8397B1DCDAF is SplitMix64's first output from state 0.)
    #[test]
    fn mix_seed_matches_an_independent_model() {
        assert_eq!(mix_seed(0, 1, 0), 0x44e5_b981_00c6_7fb0);
        assert_eq!(mix_seed(42, 2, 999), 0x1aa8_402b_abdf_e8be);
        assert_eq!(mix_seed(7, 5, 1000), 0x18ac_3309_0b95_d1d6);
    }
}
