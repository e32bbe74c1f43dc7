//! CPU dispatch shared by the vectorised kernels: which vector unit this CPU has (each hot loop
//! is compiled once per ISA and picked at run time, so one binary runs everywhere and every path
//! gives the same bits) and software prefetch.

/// The widest vector unit this CPU has, for the kernels compiled once per ISA (the noise in `rng.rs`,
/// the row kernels in `kernel.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// AVX-512 F/VL/DQ/BW.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX2.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// Whatever the build's baseline is.
    Portable,
}

impl Isa {
    /// Runtime detection (std caches it, so this is a few loads).
    #[inline]
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512vl") && has!("avx512dq") && has!("avx512bw") {
                return Self::Avx512;
            }
            if has!("avx2") {
                return Self::Avx2;
            }
        }
        Self::Portable
    }
}

/// Asks the CPU to bring `buf` into cache without waiting for it.
#[inline(always)]
pub(crate) fn prefetch(buf: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in buf.chunks(16) {
        // SAFETY: a prefetch of a valid address has no architectural effect.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = buf;
}
