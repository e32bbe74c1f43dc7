//! CPU dispatch shared by the vectorised kernels: which vector unit this CPU has (each hot loop
//! is compiled once per ISA and picked at run time, so one binary runs everywhere and every path
//! gives the same bits), the choice of path (`IPLD_ISA` or [`set_isa`], so every path can be
//! measured and tested side by side on one machine), and software prefetch.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::error::ParticleError;

/// A vector instruction set the kernels are compiled for (the noise in `rng.rs`, the row
/// kernels in `kernel.rs`). Every path gives the same bits; only the speed differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// AVX-512 F/VL/DQ/BW.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX2.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// Whatever the build's baseline is (SSE2 on x86-64, NEON on aarch64), left to the
    /// compiler's auto-vectoriser.
    Portable,
}

/// The environment variable that forces an instruction set: `avx512`, `avx2` or `portable`.
pub const ISA_ENV: &str = "IPLD_ISA";

/// 0 = no override; otherwise 1 + the index in [`Isa::ALL`].
static OVERRIDE: AtomicU8 = AtomicU8::new(0);
static FROM_ENV: OnceLock<Option<Isa>> = OnceLock::new();

impl Isa {
    /// Every instruction set this build knows, widest first.
    pub const ALL: &'static [Isa] = &[
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2,
        Isa::Portable,
    ];

    /// Its name, as `IPLD_ISA` spells it.
    pub fn name(self) -> &'static str {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => "avx512",
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }

    /// Whether this CPU can run it.
    pub fn supported(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                use std::arch::is_x86_feature_detected as has;
                has!("avx512f") && has!("avx512vl") && has!("avx512dq") && has!("avx512bw")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            Isa::Portable => true,
        }
    }

    /// The instruction sets this CPU can run, widest first (what a side-by-side test or
    /// benchmark loops over).
    pub fn available() -> Vec<Isa> {
        Self::ALL
            .iter()
            .copied()
            .filter(|i| i.supported())
            .collect()
    }

    /// The widest one this CPU has (std caches the detection, so this is a few loads).
    pub fn detect() -> Self {
        Self::available()[0]
    }

    /// Parses a name; unknown names and ones this CPU cannot run are errors naming the choices.
    pub fn parse(name: &str) -> Result<Self, ParticleError> {
        let names: Vec<&str> = Self::ALL.iter().map(|i| i.name()).collect();
        let isa = Self::ALL
            .iter()
            .copied()
            .find(|i| i.name() == name.trim().to_ascii_lowercase())
            .ok_or_else(|| {
                ParticleError::param(
                    ISA_ENV,
                    format!("`{name}` is not one of {}", names.join(", ")),
                )
            })?;
        if !isa.supported() {
            let have: Vec<&str> = Self::available().iter().map(|i| i.name()).collect();
            return Err(ParticleError::param(
                ISA_ENV,
                format!("this CPU cannot run `{name}`; it has {}", have.join(", ")),
            ));
        }
        Ok(isa)
    }

    /// `IPLD_ISA` parsed (None when unset or empty); programs call this at start-up to refuse a
    /// bad value with its error, since [`active_isa`] cannot.
    pub fn from_env() -> Result<Option<Self>, ParticleError> {
        match std::env::var(ISA_ENV) {
            Ok(v) if !v.trim().is_empty() => Self::parse(&v).map(Some),
            _ => Ok(None),
        }
    }
}

/// The instruction set the kernels use: the one [`set_isa`] chose, else `IPLD_ISA` (read once;
/// an invalid value is ignored here, see [`Isa::from_env`]), else the widest this CPU has.
#[inline]
pub fn active_isa() -> Isa {
    match OVERRIDE.load(Ordering::Relaxed) {
        0 => FROM_ENV
            .get_or_init(|| Isa::from_env().ok().flatten())
            .unwrap_or_else(Isa::detect),
        i => Isa::ALL[i as usize - 1],
    }
}

/// Forces `isa` for every kernel of this process from now on (None: back to `IPLD_ISA` or
/// detection). For side-by-side tests and benchmarks: the paths give the same bits, so a
/// change while other threads compute alters their speed, never their results.
pub fn set_isa(isa: Option<Isa>) -> Result<(), ParticleError> {
    let code = match isa {
        None => 0,
        Some(i) => {
            let i = Isa::parse(i.name())?;
            1 + Isa::ALL.iter().position(|&x| x == i).expect("listed") as u8
        }
    };
    OVERRIDE.store(code, Ordering::Relaxed);
    Ok(())
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
