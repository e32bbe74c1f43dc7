//! Counter-based Gaussian noise: Philox4x32 (Salmon et al. 2011, "Parallel random numbers: as
//! easy as 1, 2, 3") with 10 or 7 rounds ([`NoiseGenerator`]) turned into standard normals by
//! Box-Muller. The noise for element `e` of the particle buffer at step `t` is a pure function of
//! (seed, t, e), so any partition of the rows (threads, shards, a GPU kernel) draws exactly the
//! same numbers, and resuming needs no state.
//!
//! Layout: elements come in groups of 64 = 16 Philox blocks x 4 outputs, planar within a group:
//! element 64 g + 16 j + l is output j of block 16 g + l. Sixteen consecutive blocks then fill
//! four contiguous runs of 16 values, which is one vector register per output word, with no
//! transpose (the transpose cost a fifth of the generator's time).

use serde::{Deserialize, Serialize};

use crate::cpu::{Isa, active_isa, prefetch};

/// Philox4x32 round multipliers and Weyl key increments (Random123).
const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Which counter-based generator draws the noise: Philox4x32 with R rounds, then the same
/// Box-Muller. Salmon et al. (2011, Table 2) find 7 rounds the fewest that pass all of TestU01's
/// BigCrush and recommend 10 as a safety margin (Random123's and cuRAND's default). With 7 the
/// eager update takes about 15% less time (docs/performance.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NoiseGenerator {
    /// Philox4x32-10: the library default, and what a config without the key means.
    #[default]
    #[serde(rename = "philox4x32-10")]
    Philox4x32_10,
    /// Philox4x32-7: the presets' choice.
    #[serde(rename = "philox4x32-7")]
    Philox4x32_7,
}

impl NoiseGenerator {
    /// Philox rounds R.
    pub fn rounds(self) -> usize {
        match self {
            Self::Philox4x32_10 => 10,
            Self::Philox4x32_7 => 7,
        }
    }

    /// The config name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Philox4x32_10 => "philox4x32-10",
            Self::Philox4x32_7 => "philox4x32-7",
        }
    }
}

/// One Philox4x32-10 block: 128 random bits from a 128-bit counter and a 64-bit key.
#[inline]
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    philox4x32(counter, key, 10)
}

/// One Philox4x32-R block with `rounds` rounds.
#[inline]
pub fn philox4x32(counter: [u32; 4], key: [u32; 2], rounds: usize) -> [u32; 4] {
    let [mut c0, mut c1, mut c2, mut c3] = counter;
    let [mut k0, mut k1] = key;
    for round in 0..rounds {
        if round > 0 {
            k0 = k0.wrapping_add(W0);
            k1 = k1.wrapping_add(W1);
        }
        let p0 = (M0 as u64) * (c0 as u64);
        let p1 = (M1 as u64) * (c2 as u64);
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0);
    }
    [c0, c1, c2, c3]
}

/// Blocks per group (see the module doc): 16 Philox blocks (64 normals), one AVX-512 register
/// (or two AVX2 registers) per counter word.
pub(crate) const LANES: usize = 16;

/// -2 ln(u) for u = k 2^-24, k in [1, 2^24]: Box-Muller's squared radius for a 24-bit uniform
/// in (0, 1], in f32 from +, -, *, / only. With u = 2^e m, m in [sqrt(1/2), sqrt(2)),
/// ln m = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.172, by its odd series to s^9 (truncation
/// < 3e-9 relative), and ln 2 split (fdlibm's logf constants) so that e * LN2_HI is exact. No
/// libm call and no data-dependent branch, so the same code vectorises and gives the same bits in
/// scalar and SIMD form on every CPU. Scaling by a power of two commutes with IEEE rounding, so
/// the 2^-24 is an exponent offset and the -2 rides in the constants: the bits are those of the
/// plain form, -2 times ln(u) computed from u (`ln_unit` in the tests, checked for every k), in
/// three fewer multiplies.
#[inline(always)]
fn neg2_ln_draw(k: u32) -> f32 {
    const LN2_HI: f32 = f32::from_bits(0x3f31_7180); // 0.693138122...
    const LN2_LO: f32 = 9.058_001_5e-6;
    let bits = (k as f32).to_bits();
    let e24 = (bits.wrapping_sub(0x3f35_04f3) as i32) >> 23; // e + 24, the exponent of k
    let m = f32::from_bits(bits.wrapping_sub((e24 as u32) << 23));
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    // -4 times the series' s2 (1/3 + s2 (1/5 + ...)): every constant times -4.
    let p4 = s2
        * (-4.0 * (1.0 / 3.0)
            + s2 * (-4.0 * (1.0 / 5.0) + s2 * (-4.0 * (1.0 / 7.0) + s2 * (-4.0 * (1.0 / 9.0)))));
    let ef = (e24 - 24) as f32;
    let two_s = s + s;
    // -2 (e LN2_HI + (2 s + (2 s p + e LN2_LO))).
    ef * (-2.0 * LN2_HI) + ((s * p4 + ef * (-2.0 * LN2_LO)) - (two_s + two_s))
}

/// (sin, cos) of 2 pi k / 2^24 for a 24-bit integer k, branch-free: k is split exactly into a
/// quadrant q and a remainder theta in [-pi/4, pi/4], where Taylor polynomials to theta^9 (sin)
/// and theta^10 (cos) are accurate to < 2e-9; the quadrant then swaps and negates.
#[inline(always)]
fn sincos_turn24(k: u32) -> (f32, f32) {
    const HALF_PI: f32 = std::f32::consts::FRAC_PI_2;
    let qk = (k + (1 << 21)) >> 22; // nearest quarter turn, 0..=4
    // theta = remainder * (pi/2) 2^-22 in one multiply: the power of two is exact either way.
    let t = (k as i32 - (qk << 22) as i32) as f32 * (HALF_PI / (1u32 << 22) as f32);
    let t2 = t * t;
    let s = t + t
        * t2
        * (-1.0 / 6.0 + t2 * (1.0 / 120.0 + t2 * (-1.0 / 5_040.0 + t2 * (1.0 / 362_880.0))));
    let c = 1.0
        + t2 * (-0.5
            + t2 * (1.0 / 24.0
                + t2 * (-1.0 / 720.0 + t2 * (1.0 / 40_320.0 + t2 * (-1.0 / 3_628_800.0)))));
    let q = qk & 3;
    let (s, c) = if q & 1 == 1 { (c, s) } else { (s, c) };
    let sin_neg = (q >> 1) << 31;
    let cos_neg = ((q ^ (q >> 1)) & 1) << 31;
    (
        f32::from_bits(s.to_bits() ^ sin_neg),
        f32::from_bits(c.to_bits() ^ cos_neg),
    )
}

/// Two standard normals from two 32-bit words by Box-Muller: the radius from a 24-bit uniform in
/// (0, 1] (so the logarithm is finite), the angle from another 24-bit uniform in [0, 1).
#[inline(always)]
fn box_muller2(a: u32, b: u32) -> (f32, f32) {
    let r = neg2_ln_draw((a >> 8) + 1).sqrt();
    let (s, c) = sincos_turn24(b >> 8);
    (r * c, r * s)
}

/// Four standard normals from four 32-bit words by Box-Muller in f32 (pairs (0, 1) and (2, 3)).
#[inline]
pub fn box_muller4(bits: [u32; 4]) -> [f32; 4] {
    let (a, b) = box_muller2(bits[0], bits[1]);
    let (c, d) = box_muller2(bits[2], bits[3]);
    [a, b, c, d]
}

/// The 16 Philox blocks `first..first + 16` at one step, lane-parallel: counter word j of
/// block first + l is `c[j][l]`, so each round is a handful of vector operations per word.
#[inline(always)]
fn philox_group<const R: usize>(key: [u32; 2], c23: [u32; 2], first: u64) -> [[u32; LANES]; 4] {
    const L: usize = LANES;
    let mut c0 = [0u32; L];
    let mut c1 = [0u32; L];
    for l in 0..L {
        let b = first + l as u64;
        c0[l] = b as u32;
        c1[l] = (b >> 32) as u32;
    }
    let mut c2 = [c23[0]; L];
    let mut c3 = [c23[1]; L];
    let [mut k0, mut k1] = key;
    for _ in 0..R {
        for l in 0..L {
            let p0 = (M0 as u64) * (c0[l] as u64);
            let p1 = (M1 as u64) * (c2[l] as u64);
            let n0 = (p1 >> 32) as u32 ^ c1[l] ^ k0;
            let n2 = (p0 >> 32) as u32 ^ c3[l] ^ k1;
            (c0[l], c1[l], c2[l], c3[l]) = (n0, p1 as u32, n2, p0 as u32);
        }
        k0 = k0.wrapping_add(W0);
        k1 = k1.wrapping_add(W1);
    }
    [c0, c1, c2, c3]
}

/// Box-Muller on a group's Philox words, written planar to `out` (64 values: output j of block
/// l at 16 j + l, see the module doc).
#[inline(always)]
fn box_muller_group(c: &[[u32; LANES]; 4], out: &mut [f32]) {
    let (a, b) = out.split_at_mut(2 * LANES);
    let (o0, o1) = a.split_at_mut(LANES);
    let (o2, o3) = b.split_at_mut(LANES);
    for l in 0..LANES {
        (o0[l], o1[l]) = box_muller2(c[0][l], c[1][l]);
        (o2[l], o3[l]) = box_muller2(c[2][l], c[3][l]);
    }
}

/// The normals of the `out.len() / 64` groups of 16 blocks from block `first` (a multiple of
/// 16), planar per group. Same bits as [`NoiseStream::block`] for every block. With each group
/// it prefetches the matching positions of the `ahead` buffers, which the caller reads next: the
/// loads then overlap the generator's arithmetic at a steady rate.
#[inline(always)]
fn normals_groups<const R: usize>(
    key: [u32; 2],
    c23: [u32; 2],
    first: u64,
    out: &mut [f32],
    ahead: Ahead,
) {
    for (g, o) in out.chunks_exact_mut(4 * LANES).enumerate() {
        ahead.group(g);
        box_muller_group(&philox_group::<R>(key, c23, first + (g * LANES) as u64), o);
    }
}

/// Buffers a caller reads right after the noise, prefetched group by group as it is drawn:
/// group g of the drawn run prefetches positions `offset + 64 g ..` of each buffer.
#[derive(Clone, Copy)]
struct Ahead<'a> {
    bufs: &'a [&'a [f32]],
    offset: usize,
}

impl Ahead<'_> {
    const NONE: Ahead<'static> = Ahead {
        bufs: &[],
        offset: 0,
    };

    #[inline(always)]
    fn group(&self, g: usize) {
        for a in self.bufs {
            prefetch(&a[self.offset + g * 4 * LANES..][..4 * LANES]);
        }
    }
}

/// [`philox_group`] in AVX-512 intrinsics. Each counter word lives in the low half of a 64-bit
/// lane (two registers of 8 blocks per word): `vpmuludq` reads only those low halves and leaves
/// the whole 64-bit product in the lane, so the product *is* the next round's c1 / c3 (its high
/// half is garbage nothing reads) and its high word is one shift away. A round is then 2
/// multiplies, 2 shifts and 2 three-way xors per 8 blocks, against 9 operations when the
/// 32-bit lanes are split into even and odd products and blended back. Integer arithmetic, so
/// the bits are those of the portable version.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw")]
fn philox_group_avx512<const R: usize>(
    key: [u32; 2],
    c23: [u32; 2],
    first: u64,
) -> [[u32; LANES]; 4] {
    use std::arch::x86_64::*;
    // a ^ b ^ c as one vpternlogd.
    const XOR3: i32 = 0x96;
    let lanes = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
    // first is a multiple of 16, so first + l never carries into the high word.
    let lo = _mm512_set1_epi64(first as u32 as i64);
    let mut c0 = [
        _mm512_add_epi64(lo, lanes),
        _mm512_add_epi64(_mm512_add_epi64(lo, _mm512_set1_epi64(8)), lanes),
    ];
    let mut c1 = [_mm512_set1_epi64((first >> 32) as i64); 2];
    let mut c2 = [_mm512_set1_epi64(c23[0] as i64); 2];
    let mut c3 = [_mm512_set1_epi64(c23[1] as i64); 2];
    let (m0, m1) = (_mm512_set1_epi64(M0 as i64), _mm512_set1_epi64(M1 as i64));
    let [mut k0, mut k1] = key;
    for _ in 0..R {
        let (k0v, k1v) = (_mm512_set1_epi32(k0 as i32), _mm512_set1_epi32(k1 as i32));
        for h in 0..2 {
            let p0 = _mm512_mul_epu32(c0[h], m0);
            let p1 = _mm512_mul_epu32(c2[h], m1);
            let n0 = _mm512_ternarylogic_epi32::<XOR3>(_mm512_srli_epi64::<32>(p1), c1[h], k0v);
            let n2 = _mm512_ternarylogic_epi32::<XOR3>(_mm512_srli_epi64::<32>(p0), c3[h], k1v);
            (c0[h], c1[h], c2[h], c3[h]) = (n0, p1, n2, p0);
        }
        k0 = k0.wrapping_add(W0);
        k1 = k1.wrapping_add(W1);
    }
    // The low halves of both registers, in block order.
    let evens = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    let mut out = [[0u32; LANES]; 4];
    for (o, c) in out.iter_mut().zip([c0, c1, c2, c3]) {
        let v = _mm512_permutex2var_epi32(c[0], evens, c[1]);
        // SAFETY: `o` is 16 u32 = 64 writable bytes; storeu has no alignment requirement.
        unsafe { _mm512_storeu_si512(o.as_mut_ptr().cast(), v) };
    }
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw")]
fn normals_groups_avx512<const R: usize>(
    key: [u32; 2],
    c23: [u32; 2],
    first: u64,
    out: &mut [f32],
    ahead: Ahead,
) {
    debug_assert!(first.is_multiple_of(LANES as u64));
    for (g, o) in out.chunks_exact_mut(4 * LANES).enumerate() {
        ahead.group(g);
        box_muller_group(
            &philox_group_avx512::<R>(key, c23, first + (g * LANES) as u64),
            o,
        );
    }
}

/// [`philox_group`] in AVX2 intrinsics, the trick of [`philox_group_avx512`] on 4 64-bit lanes:
/// each counter word sits in the low half of a 64-bit lane, `vpmuludq` multiplies those low
/// halves into whole 64-bit products that serve as the next c1 / c3 as they are, and a shift
/// gives their high words. The 16 blocks run as two halves of 8 (two registers per word), so
/// the 8 state registers, the 4 constants and the temporaries fit the 16 ymm registers without
/// spilling, with two independent multiply chains per word for the pipeline. Integer arithmetic:
/// the bits are the portable version's.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn philox_group_avx2<const R: usize>(
    key: [u32; 2],
    c23: [u32; 2],
    first: u64,
) -> [[u32; LANES]; 4] {
    use std::arch::x86_64::*;
    let lanes = _mm256_set_epi64x(3, 2, 1, 0);
    // first is a multiple of 16, so first + l never carries into the high word.
    let lo = first as u32 as i64;
    let (m0, m1) = (_mm256_set1_epi64x(M0 as i64), _mm256_set1_epi64x(M1 as i64));
    // Gathers the low halves of a register's 4 lanes into its low 128 bits.
    let evens = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    let mut out = [[0u32; LANES]; 4];
    for half in 0..2 {
        let base = lo + 8 * half as i64;
        let mut c0 = [
            _mm256_add_epi64(_mm256_set1_epi64x(base), lanes),
            _mm256_add_epi64(_mm256_set1_epi64x(base + 4), lanes),
        ];
        let mut c1 = [_mm256_set1_epi64x((first >> 32) as i64); 2];
        let mut c2 = [_mm256_set1_epi64x(c23[0] as i64); 2];
        let mut c3 = [_mm256_set1_epi64x(c23[1] as i64); 2];
        let [mut k0, mut k1] = key;
        for _ in 0..R {
            let (k0v, k1v) = (_mm256_set1_epi32(k0 as i32), _mm256_set1_epi32(k1 as i32));
            for h in 0..2 {
                let p0 = _mm256_mul_epu32(c0[h], m0);
                let p1 = _mm256_mul_epu32(c2[h], m1);
                let n0 =
                    _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64::<32>(p1), c1[h]), k0v);
                let n2 =
                    _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64::<32>(p0), c3[h]), k1v);
                (c0[h], c1[h], c2[h], c3[h]) = (n0, p1, n2, p0);
            }
            k0 = k0.wrapping_add(W0);
            k1 = k1.wrapping_add(W1);
        }
        for (o, c) in out.iter_mut().zip([c0, c1, c2, c3]) {
            let a = _mm256_permutevar8x32_epi32(c[0], evens);
            let b = _mm256_permutevar8x32_epi32(c[1], evens);
            let v = _mm256_permute2x128_si256::<0x20>(a, b);
            // SAFETY: o[8 half..][..8] is 8 u32 = 32 writable bytes; storeu is unaligned.
            unsafe { _mm256_storeu_si256(o[8 * half..].as_mut_ptr().cast(), v) };
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn normals_groups_avx2<const R: usize>(
    key: [u32; 2],
    c23: [u32; 2],
    first: u64,
    out: &mut [f32],
    ahead: Ahead,
) {
    debug_assert!(first.is_multiple_of(LANES as u64));
    for (g, o) in out.chunks_exact_mut(4 * LANES).enumerate() {
        ahead.group(g);
        box_muller_group(
            &philox_group_avx2::<R>(key, c23, first + (g * LANES) as u64),
            o,
        );
    }
}

/// Runs [`normals_groups`] compiled for the widest vector unit this CPU has. Only the
/// instruction set differs: the arithmetic is the same IEEE operations in the same order (Rust
/// never contracts to FMA), so every path gives the same bits.
fn normals_groups_dispatch<const R: usize>(
    key: [u32; 2],
    c23: [u32; 2],
    first: u64,
    out: &mut [f32],
    ahead: Ahead,
) {
    match active_isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `active_isa` only returns an ISA this CPU supports.
        Isa::Avx512 => unsafe { normals_groups_avx512::<R>(key, c23, first, out, ahead) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { normals_groups_avx2::<R>(key, c23, first, out, ahead) },
        Isa::Portable => normals_groups::<R>(key, c23, first, out, ahead),
    }
}

/// A stream of standard normals indexed by (step, element), keyed by a seed and a stream id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoiseStream {
    key: [u32; 2],
    stream: u32,
    generator: NoiseGenerator,
}

impl NoiseStream {
    /// Streams with different `stream` ids are independent for the same seed. Draws with
    /// Philox4x32-10; see [`with_generator`](Self::with_generator).
    pub fn new(seed: u64, stream: u32) -> Self {
        Self {
            key: [seed as u32, (seed >> 32) as u32],
            stream,
            generator: NoiseGenerator::default(),
        }
    }

    /// The same stream drawn by `generator` (other bits, same distribution).
    pub fn with_generator(self, generator: NoiseGenerator) -> Self {
        Self { generator, ..self }
    }

    /// The generator drawing this stream.
    pub fn generator(&self) -> NoiseGenerator {
        self.generator
    }

    /// The Philox key (the seed's low and high words).
    pub fn key(&self) -> [u32; 2] {
        self.key
    }

    /// The stream id (the counter's fourth word, xor the step's high word rotated by 16).
    pub fn stream_id(&self) -> u32 {
        self.stream
    }

    /// Counter words 2 and 3 at `step`: the step's low word, and the stream id xor the step's
    /// high word rotated by 16.
    #[inline]
    fn counter_hi(&self, step: u64) -> [u32; 2] {
        [
            step as u32,
            self.stream ^ ((step >> 32) as u32).rotate_left(16),
        ]
    }

    /// The four normals of Philox block `block` at `step`: elements 64 g + 16 j + l for
    /// j = 0..4, where g = block / 16 and l = block % 16 (module doc).
    #[inline]
    pub fn block(&self, step: u64, block: u64) -> [f32; 4] {
        // Counter layout: [block lo, block hi, step, stream id].
        let [c2, c3] = self.counter_hi(step);
        box_muller4(philox4x32(
            [block as u32, (block >> 32) as u32, c2, c3],
            self.key,
            self.generator.rounds(),
        ))
    }

    /// Fills `out` with the normals of elements `start..start + out.len()` at `step`, a group of
    /// 64 at a time through the vectorised path (a partial group at either end is drawn whole
    /// and cut).
    pub fn fill(&self, step: u64, start: u64, out: &mut [f32]) {
        self.fill_prefetching(step, start, out, &[]);
    }

    /// [`fill`](Self::fill) that also prefetches the same positions of each `ahead` buffer
    /// (each as long as `out`) as it goes, for a caller that reads them next.
    pub(crate) fn fill_prefetching(
        &self,
        step: u64,
        start: u64,
        out: &mut [f32],
        ahead: &[&[f32]],
    ) {
        let group = 4 * LANES;
        let c23 = self.counter_hi(step);
        // Elements before the first group boundary, then whole groups, then the tail.
        let head = (start.next_multiple_of(group as u64) - start).min(out.len() as u64) as usize;
        let body = (out.len() - head) / group * group;
        for a in ahead {
            prefetch(&a[..head]);
            prefetch(&a[head + body..]);
        }
        let (h, rest) = out.split_at_mut(head);
        let (b, t) = rest.split_at_mut(body);
        let partial = |e0: u64, part: &mut [f32]| {
            if part.is_empty() {
                return;
            }
            let g = e0 / group as u64;
            let mut tmp = [0f32; 4 * LANES];
            self.groups(c23, g * LANES as u64, &mut tmp, Ahead::NONE);
            let off = (e0 - g * group as u64) as usize;
            part.copy_from_slice(&tmp[off..off + part.len()]);
        };
        partial(start, h);
        if !b.is_empty() {
            let first = (start + head as u64) / group as u64 * LANES as u64;
            let ahead = Ahead {
                bufs: ahead,
                offset: head,
            };
            self.groups(c23, first, b, ahead);
        }
        partial(start + (head + body) as u64, t);
    }

    /// The vectorised groups, monomorphised per round count.
    #[inline]
    fn groups(&self, c23: [u32; 2], first: u64, out: &mut [f32], ahead: Ahead) {
        match self.generator {
            NoiseGenerator::Philox4x32_10 => {
                normals_groups_dispatch::<10>(self.key, c23, first, out, ahead)
            }
            NoiseGenerator::Philox4x32_7 => {
                normals_groups_dispatch::<7>(self.key, c23, first, out, ahead)
            }
        }
    }

    /// Element by element from [`block`](Self::block): the layout's definition, for tests.
    #[cfg(test)]
    fn fill_scalar(&self, step: u64, start: u64, out: &mut [f32]) {
        let group = 4 * LANES as u64;
        for (i, o) in out.iter_mut().enumerate() {
            let e = start + i as u64;
            let (g, j, l) = (e / group, (e % group) / LANES as u64, e % LANES as u64);
            *o = self.block(step, g * LANES as u64 + l)[j as usize];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_matches_known_answers() {
        // Known-answer vectors: the first two are Random123's kat_vectors for philox4x32-10; all
        // four were reproduced with randomgen 2.5.1 (pip install randomgen):
        //   from randomgen import Philox
        //   def block(c, k):   # randomgen increments the counter before each block
        //       c = sum(w << (32*i) for i, w in enumerate(c)); k = sum(w << (32*i) for i, w in enumerate(k))
        //       return [hex(v) for v in Philox(counter=(c-1) % (1<<128), key=k, number=4, width=32).random_raw(4)]
        let cases: [([u32; 4], [u32; 2], [u32; 4]); 4] = [
            (
                [0; 4],
                [0; 2],
                [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8],
            ),
            (
                [u32::MAX; 4],
                [u32::MAX; 2],
                [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
            ),
            (
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0],
                [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
            ),
            (
                [7, 1, 0, 0],
                [42, 0],
                [0x05b263f6, 0x91fc9ed6, 0x8ebf32b1, 0x73e0f896],
            ),
        ];
        for (c, k, want) in cases {
            assert_eq!(philox4x32_10(c, k), want, "counter {c:x?} key {k:x?}");
        }
    }

    #[test]
    fn philox7_matches_known_answers() {
        // The first three are Random123's kat_vectors lines for philox4x32 7 (zeros, all ones,
        // the digits of pi); all four come out of this independent Python model of the round,
        // which also reproduces the 10-round vectors above with rounds = 10:
        //   M0, M1, W0, W1, MASK = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85, 0xFFFFFFFF
        //   def philox4x32(c, k, rounds):
        //       c, (k0, k1) = list(c), k
        //       for r in range(rounds):
        //           if r:
        //               k0, k1 = (k0 + W0) & MASK, (k1 + W1) & MASK
        //           p0, p1 = M0 * c[0], M1 * c[2]
        //           c = [(p1 >> 32) ^ c[1] ^ k0, p1 & MASK, (p0 >> 32) ^ c[3] ^ k1, p0 & MASK]
        //       return ['%08x' % v for v in c]
        let cases: [([u32; 4], [u32; 2], [u32; 4]); 4] = [
            (
                [0; 4],
                [0; 2],
                [0x5f6fb709, 0x0d893f64, 0x4f121f81, 0x4f730a48],
            ),
            (
                [u32::MAX; 4],
                [u32::MAX; 2],
                [0x5207ddc2, 0x45165e59, 0x4d8ee751, 0x8c52f662],
            ),
            (
                [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
                [0xa4093822, 0x299f31d0],
                [0x4dfccaba, 0x190a87f0, 0xc47362ba, 0xb6b5242a],
            ),
            (
                [7, 1, 0, 0],
                [42, 0],
                [0x2d2038e9, 0x24a5ca6b, 0x9b29ca22, 0xda8d8292],
            ),
        ];
        for (c, k, want) in cases {
            assert_eq!(philox4x32(c, k, 7), want, "counter {c:x?} key {k:x?}");
        }
        assert_eq!(NoiseGenerator::Philox4x32_7.rounds(), 7);
        assert_eq!(NoiseGenerator::Philox4x32_10.rounds(), 10);
        assert_eq!(NoiseGenerator::default(), NoiseGenerator::Philox4x32_10);
    }

    /// 2^-24: the 24-bit uniforms' spacing.
    const U24: f32 = 1.0 / (1u32 << 24) as f32;

    /// ln(x) for x in [2^-24, 1], the plain form of [`neg2_ln_draw`] (and the CUDA kernel's
    /// before both folded the scalings in): the same series on x itself.
    fn ln_unit(x: f32) -> f32 {
        const LN2_HI: f32 = f32::from_bits(0x3f31_7180);
        const LN2_LO: f32 = 9.058_001_5e-6;
        let bits = x.to_bits();
        let e = (bits.wrapping_sub(0x3f35_04f3) as i32) >> 23;
        let m = f32::from_bits(bits.wrapping_sub((e as u32) << 23));
        let s = (m - 1.0) / (m + 1.0);
        let s2 = s * s;
        let p = s2 * (1.0 / 3.0 + s2 * (1.0 / 5.0 + s2 * (1.0 / 7.0 + s2 * (1.0 / 9.0))));
        let ef = e as f32;
        ef * LN2_HI + (2.0 * s + (2.0 * s * p + ef * LN2_LO))
    }

    #[test]
    fn ln_and_sincos_match_f64_on_every_input() {
        // Every 24-bit input Box-Muller can draw, against f64 libm. -2 ln: error <= 8e-7
        // absolute plus 2 f32 ulps of the result, and the plain form's bits exactly; sin/cos:
        // <= 2.5e-7 absolute (a few ulps of 1), and theta's one multiply the bits of the plain
        // (k 2^-22) (pi/2).
        let (mut worst_ln, mut worst_sc) = (0f64, 0f64);
        for k in 0..(1u32 << 24) {
            let u = (k + 1) as f32 * U24;
            let got = neg2_ln_draw(k + 1);
            assert_eq!(got.to_bits(), (-2.0 * ln_unit(u)).to_bits(), "k {k}");
            let want = -2.0 * (u as f64).ln();
            let err = (got as f64 - want).abs() - 2.0 * f32::EPSILON as f64 * want.abs();
            worst_ln = worst_ln.max(err);
            let a = std::f64::consts::TAU * k as f64 / (1u64 << 24) as f64;
            let (s, c) = sincos_turn24(k);
            worst_sc = worst_sc
                .max((s as f64 - a.sin()).abs())
                .max((c as f64 - a.cos()).abs());
            let qk = (k + (1 << 21)) >> 22;
            let r = (k as i32 - (qk << 22) as i32) as f32;
            let plain = r * (1.0 / (1u32 << 22) as f32) * std::f32::consts::FRAC_PI_2;
            let folded = r * (std::f32::consts::FRAC_PI_2 / (1u32 << 22) as f32);
            assert_eq!(plain.to_bits(), folded.to_bits(), "k {k}");
        }
        assert!(worst_ln < 8e-7, "-2 ln error {worst_ln}");
        assert!(worst_sc < 2.5e-7, "sin/cos error {worst_sc}");
    }

    #[test]
    fn vector_path_gives_the_scalar_bits() {
        // `fill` sends aligned groups of 64 elements through the dispatched SIMD path; every
        // offset and length must reproduce the block-by-block scalar values exactly.
        for generator in GENERATORS {
            vector_path_gives_the_scalar_bits_with(generator);
        }
    }

    const GENERATORS: [NoiseGenerator; 2] =
        [NoiseGenerator::Philox4x32_10, NoiseGenerator::Philox4x32_7];

    fn vector_path_gives_the_scalar_bits_with(generator: NoiseGenerator) {
        let s = NoiseStream::new(0x1234_5678_9abc_def0, 3).with_generator(generator);
        let step = (7u64 << 32) + 11;
        for (start, len) in [
            (0u64, 64usize),
            (3, 200),
            (64, 128),
            (61, 7),
            (70, 10),
            (32, 32),
            (1 << 33, 500),
        ] {
            let mut fast = vec![0f32; len];
            s.fill(step, start, &mut fast);
            let mut slow = vec![0f32; len];
            s.fill_scalar(step, start, &mut slow);
            assert_eq!(
                fast.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                slow.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                "{generator:?} start {start} len {len}"
            );
        }
        // And the portable lane code equals the dispatched one (whichever ISA this CPU has).
        let mut a = vec![0f32; 256];
        let mut b = vec![0f32; 256];
        match generator {
            NoiseGenerator::Philox4x32_10 => {
                normals_groups::<10>(s.key, s.counter_hi(step), 80, &mut a, Ahead::NONE)
            }
            NoiseGenerator::Philox4x32_7 => {
                normals_groups::<7>(s.key, s.counter_hi(step), 80, &mut a, Ahead::NONE)
            }
        }
        let ahead = Ahead {
            bufs: &[&a],
            offset: 0,
        };
        s.groups(s.counter_hi(step), 80, &mut b, ahead);
        assert_eq!(a, b, "{generator:?}");
    }

    #[test]
    fn normals_have_gaussian_moments() {
        // 400k draws: mean within 5 s.e. (1/sqrt(n)), variance within 5 s.e. (sqrt(2/n)),
        // kurtosis within 5 s.e. (sqrt(24/n)) of 3, and P(|x| > 2) within 5 s.e. of 0.0455.
        for generator in GENERATORS {
            normals_have_gaussian_moments_with(generator);
        }
        // The two generators draw different bits from the same (seed, stream, step).
        let (mut a, mut b) = (vec![0f32; 64], vec![0f32; 64]);
        NoiseStream::new(123, 0).fill(5, 0, &mut a);
        NoiseStream::new(123, 0)
            .with_generator(NoiseGenerator::Philox4x32_7)
            .fill(5, 0, &mut b);
        assert!(a.iter().zip(&b).all(|(x, y)| x != y));
    }

    fn normals_have_gaussian_moments_with(generator: NoiseGenerator) {
        let s = NoiseStream::new(123, 0).with_generator(generator);
        let n = 400_000usize;
        let mut x = vec![0f32; n];
        s.fill(5, 0, &mut x);
        let nf = n as f64;
        let mean = x.iter().map(|v| *v as f64).sum::<f64>() / nf;
        let var = x.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / nf;
        let kurt = x.iter().map(|v| (*v as f64 - mean).powi(4)).sum::<f64>() / nf / (var * var);
        let tail = x.iter().filter(|v| v.abs() > 2.0).count() as f64 / nf;
        assert!(mean.abs() < 5.0 / nf.sqrt(), "mean {mean}");
        assert!((var - 1.0).abs() < 5.0 * (2.0 / nf).sqrt(), "var {var}");
        assert!(
            (kurt - 3.0).abs() < 5.0 * (24.0 / nf).sqrt(),
            "kurtosis {kurt}"
        );
        let p = 0.045_500_263_9;
        assert!(
            (tail - p).abs() < 5.0 * (p * (1.0 - p) / nf).sqrt(),
            "tail {tail}"
        );
    }

    #[test]
    fn fill_is_partition_invariant_and_streams_differ() {
        let s = NoiseStream::new(9, 1);
        let mut whole = vec![0f32; 37];
        s.fill(3, 5, &mut whole);
        let mut parts = vec![0f32; 37];
        let (a, b) = parts.split_at_mut(11);
        s.fill(3, 5, a);
        s.fill(3, 16, b);
        assert_eq!(whole, parts);
        let mut other = vec![0f32; 37];
        NoiseStream::new(9, 2).fill(3, 5, &mut other);
        assert_ne!(whole, other);
        NoiseStream::new(9, 1).fill(4, 5, &mut other);
        assert_ne!(whole, other);
        // Neighbouring counters and keys give uncorrelated noise: consecutive steps, streams and
        // seeds, each a sample correlation over 100k pairs within 5 s.e.
        for generator in GENERATORS {
            let n = 100_000;
            let at = |seed: u64, stream: u32, step: u64| {
                let mut x = vec![0f32; n];
                NoiseStream::new(seed, stream)
                    .with_generator(generator)
                    .fill(step, 0, &mut x);
                x
            };
            let x = at(9, 1, 10);
            for (what, y) in [
                ("step", at(9, 1, 11)),
                ("stream", at(9, 2, 10)),
                ("seed", at(10, 1, 10)),
            ] {
                let c: f64 = x
                    .iter()
                    .zip(&y)
                    .map(|(a, b)| (*a as f64) * (*b as f64))
                    .sum::<f64>()
                    / n as f64;
                assert!(
                    c.abs() < 5.0 / (n as f64).sqrt(),
                    "{generator:?} {what}: correlation {c}"
                );
            }
        }
    }

    #[test]
    fn one_counter_bit_flips_every_output_bit_half_the_time() {
        // Avalanche: the noise uses consecutive counters (blocks, steps), so flipping the low bit
        // of the block word or of the step word must flip each of the 128 output bits with
        // probability 1/2. Over 20k random counters each rate is within 5 s.e. (sqrt(1/4n)) of
        // 1/2, at 7 rounds as at 10 (it fails at 3 and at 4 rounds).
        let n = 20_000u32;
        for rounds in [7, 10] {
            for word in [0, 2] {
                let mut flips = [0u32; 128];
                for i in 0..n {
                    let c = philox4x32_10([i, 0x51ed_270b, i.wrapping_mul(0x9E37_79B9), 5], [1, 2]);
                    let mut d = c;
                    d[word] ^= 1;
                    let (a, b) = (philox4x32(c, [3, 4], rounds), philox4x32(d, [3, 4], rounds));
                    for (bit, f) in flips.iter_mut().enumerate() {
                        *f += ((a[bit / 32] ^ b[bit / 32]) >> (bit % 32)) & 1;
                    }
                }
                let tol = 5.0 * (0.25 / n as f64).sqrt();
                for (bit, f) in flips.iter().enumerate() {
                    let rate = *f as f64 / n as f64;
                    assert!(
                        (rate - 0.5).abs() < tol,
                        "rounds {rounds}, word {word}, output bit {bit}: flip rate {rate}"
                    );
                }
            }
        }
    }
}
