//! The particle cloud {z^{m,n}} (Section 3.2): N latent particles for each training point m, plus
//! the per-particle optimiser state of the adaptive Langevin update (momentum M and second moment
//! V of eq. 66) and how often each point's particles have been in a minibatch. Rows are
//! addressed by *global* data index: a cloud holds the contiguous range `start..start + rows`,
//! so a distributed run can shard the cloud by index range and the update code never changes.

use crate::{NoiseStream, ParticleError};

/// Noise-stream id used to draw the initial particles.
pub const INIT_STREAM: u32 = 0x1417;

/// Mutable views of z, the momentum and the second moment.
pub(crate) type Buffers<'a> = (&'a mut [f32], &'a mut [f32], &'a mut [f32]);

/// Particles z of shape [rows, n, dim] (row-major) and their optimiser moments.
#[derive(Debug, Clone, PartialEq)]
pub struct ParticleCloud {
    start: usize,
    rows: usize,
    n: usize,
    dim: usize,
    z: Vec<f32>,
    momentum: Vec<f32>,
    second_moment: Vec<f32>,
    /// Per row: the minibatches its point has been in (Adam's bias correction reads it).
    visits: Vec<u32>,
}

/// A zeroed buffer whose pages are already backed by memory. The OS maps a zeroed allocation
/// lazily, so otherwise the first write to each 4 KiB page faults: a lazy-noise step's cost would
/// depend on how many never-visited rows its minibatch hits, and a cloud too big for the machine
/// would fail mid-run instead of when it is made.
fn committed_zeros(len: usize) -> Vec<f32> {
    let mut v = vec![0f32; len];
    advise_huge_pages(&mut v);
    for x in v.iter_mut().step_by(1024) {
        *x = std::hint::black_box(0.0);
    }
    v
}

/// Asks Linux to back `v`'s whole 2 MiB-aligned stretches with transparent huge pages, before
/// they are first touched. A minibatch's rows are scattered over the cloud, and with 4 KiB pages
/// a row far from the last one costs a TLB miss and a page walk once the cloud outgrows the TLB's
/// reach (M = 10^6, N = 16, d_z = 2 is 128 MB per buffer). mimalloc (the binaries' allocator)
/// already asks for huge pages; this gives them to library users on the system allocator too,
/// whose THP setting is often `madvise`. Where THP is off the call fails and nothing changes.
pub fn advise_huge_pages(v: &mut [f32]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = v.as_mut_ptr() as usize;
        let (first, end) = (
            start.next_multiple_of(HUGE),
            (start + std::mem::size_of_val(v)) / HUGE * HUGE,
        );
        if end > first {
            // SAFETY: first..end lies inside `v`'s allocation; MADV_HUGEPAGE changes only how
            // the kernel backs those pages, never their contents. The result is ignored on
            // purpose: failing (THP disabled) leaves ordinary pages.
            unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = v;
}

impl ParticleCloud {
    /// Particles z^{m,n} ~ N(0, I) (Algorithm 2, line 1) for global rows `start..start + rows`,
    /// drawn from the counter-based stream so a shard gets the same values as the whole cloud.
    pub fn gaussian(
        start: usize,
        rows: usize,
        n: usize,
        dim: usize,
        seed: u64,
    ) -> Result<Self, ParticleError> {
        let mut cloud = Self::zeros(start, rows, n, dim)?;
        NoiseStream::new(seed, INIT_STREAM).fill(0, (start * n * dim) as u64, &mut cloud.z);
        Ok(cloud)
    }

    /// Multiplies every particle by `factor` (an initial scale other than Algorithm 2's N(0, I)).
    pub fn scale_positions(&mut self, factor: f32) {
        self.z.iter_mut().for_each(|v| *v *= factor);
    }

    /// All-zero particles and moments.
    pub fn zeros(start: usize, rows: usize, n: usize, dim: usize) -> Result<Self, ParticleError> {
        if rows == 0 || n == 0 || dim == 0 {
            return Err(ParticleError::Shape(format!(
                "a particle cloud needs rows, particles and dimension >= 1, got [{rows}, {n}, {dim}]"
            )));
        }
        let len = rows * n * dim;
        Ok(Self {
            start,
            rows,
            n,
            dim,
            z: committed_zeros(len),
            momentum: committed_zeros(len),
            second_moment: committed_zeros(len),
            visits: vec![0; rows],
        })
    }

    /// Rebuilds a cloud from saved buffers (e.g. a checkpoint), checking their lengths; they are
    /// copied into the cloud's own (committed, huge-page) buffers. Visit counts start at 0, and
    /// a row with count 0 counts as never visited (adaptive Langevin gives it G = I whatever its
    /// V): restore them with [`set_visits`](Self::set_visits).
    pub fn from_parts(
        start: usize,
        shape: [usize; 3],
        z: &[f32],
        momentum: &[f32],
        second_moment: &[f32],
    ) -> Result<Self, ParticleError> {
        let [rows, n, dim] = shape;
        let mut cloud = Self::zeros(start, rows, n, dim)?;
        for (name, v) in [
            ("z", &z),
            ("momentum", &momentum),
            ("second moment", &second_moment),
        ] {
            if v.len() != cloud.z.len() {
                return Err(ParticleError::Shape(format!(
                    "particle {name} has {} values, expected {rows} x {n} x {dim} = {}",
                    v.len(),
                    cloud.z.len()
                )));
            }
        }
        cloud.z.copy_from_slice(z);
        cloud.momentum.copy_from_slice(momentum);
        cloud.second_moment.copy_from_slice(second_moment);
        Ok(cloud)
    }

    /// First global row index held.
    pub fn start(&self) -> usize {
        self.start
    }
    /// Number of rows (training points) held.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Particles per training point N.
    pub fn particles(&self) -> usize {
        self.n
    }
    /// Latent dimension d_z.
    pub fn dim(&self) -> usize {
        self.dim
    }
    /// [rows, n, dim].
    pub fn shape(&self) -> [usize; 3] {
        [self.rows, self.n, self.dim]
    }
    /// All particles, row-major [rows, n, dim].
    pub fn z(&self) -> &[f32] {
        &self.z
    }
    /// Momentum M of eq. (66a), same layout as `z`.
    pub fn momentum(&self) -> &[f32] {
        &self.momentum
    }
    /// Second moment V of eq. (66b), same layout as `z`.
    pub fn second_moment(&self) -> &[f32] {
        &self.second_moment
    }

    /// Per row, the number of minibatches its point has been in.
    pub fn visits(&self) -> &[u32] {
        &self.visits
    }

    /// Restores the per-row visit counts (e.g. from a checkpoint).
    pub fn set_visits(&mut self, visits: &[u32]) -> Result<(), ParticleError> {
        if visits.len() != self.rows {
            return Err(ParticleError::Shape(format!(
                "{} visit counts for a cloud of {} rows",
                visits.len(),
                self.rows
            )));
        }
        self.visits.copy_from_slice(visits);
        Ok(())
    }

    /// Local row of global index `m`.
    pub fn local(&self, m: usize) -> Result<usize, ParticleError> {
        if m < self.start || m >= self.start + self.rows {
            return Err(ParticleError::Shape(format!(
                "data index {m} is outside this cloud's rows {}..{}",
                self.start,
                self.start + self.rows
            )));
        }
        Ok(m - self.start)
    }

    /// The N x dim particles of global index `m`.
    pub fn particles_of(&self, m: usize) -> Result<&[f32], ParticleError> {
        let r = self.local(m)?;
        let w = self.n * self.dim;
        Ok(&self.z[r * w..(r + 1) * w])
    }

    /// Appends the particles of global indices `batch` ([|B|, N, dim]) to `out`.
    pub fn gather_into(&self, batch: &[usize], out: &mut Vec<f32>) -> Result<(), ParticleError> {
        out.reserve(batch.len() * self.n * self.dim);
        for &m in batch {
            out.extend_from_slice(self.particles_of(m)?);
        }
        Ok(())
    }

    /// The three buffers z, momentum, second moment, for a pass over all rows at once, and the
    /// visit counts, which a pass reads while it writes the buffers.
    pub(crate) fn buffers_and_visits_mut(&mut self) -> (Buffers<'_>, &mut [u32]) {
        (
            (&mut self.z, &mut self.momentum, &mut self.second_moment),
            &mut self.visits,
        )
    }

    /// Adds one visit to each row of `batch` (global indices), for rules that do not move the
    /// cloud through the shared passes.
    pub(crate) fn count_visits(&mut self, batch: &[usize]) -> Result<(), ParticleError> {
        for &m in batch {
            let r = self.local(m)?;
            self.visits[r] = self.visits[r].saturating_add(1);
        }
        Ok(())
    }

    /// Warm start (Appendix B.3): replicate each point's single particle (and its moments) to
    /// `n` particles. The Langevin noise then separates the copies.
    pub fn replicate(&mut self, n: usize) -> Result<(), ParticleError> {
        if self.n != 1 {
            return Err(ParticleError::Shape(format!(
                "warm start replicates a 1-particle cloud, this one has {} particles",
                self.n
            )));
        }
        if n == 0 {
            return Err(ParticleError::param("n", "must be at least 1"));
        }
        let rep = |v: &[f32]| -> Vec<f32> {
            v.chunks_exact(self.dim)
                .flat_map(|row| std::iter::repeat_n(row, n).flatten().copied())
                .collect()
        };
        self.z = rep(&self.z);
        self.momentum = rep(&self.momentum);
        self.second_moment = rep(&self.second_moment);
        self.n = n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_match_the_whole_cloud() {
        let whole = ParticleCloud::gaussian(0, 10, 3, 2, 7).unwrap();
        let shard = ParticleCloud::gaussian(4, 3, 3, 2, 7).unwrap();
        for m in 4..7 {
            assert_eq!(
                whole.particles_of(m).unwrap(),
                shard.particles_of(m).unwrap()
            );
        }
        assert!(
            shard
                .particles_of(3)
                .unwrap_err()
                .to_string()
                .contains("4..7")
        );
    }

    #[test]
    fn gather_and_replicate() {
        let mut c = ParticleCloud::from_parts(
            10,
            [2, 1, 2],
            &[1.0, 2.0, 3.0, 4.0],
            &[0.1, 0.2, 0.3, 0.4],
            &[0.0; 4],
        )
        .unwrap();
        let mut out = Vec::new();
        c.gather_into(&[11, 10], &mut out).unwrap();
        assert_eq!(out, vec![3.0, 4.0, 1.0, 2.0]);
        c.replicate(3).unwrap();
        assert_eq!(c.shape(), [2, 3, 2]);
        assert_eq!(c.particles_of(11).unwrap(), &[3.0, 4.0, 3.0, 4.0, 3.0, 4.0]);
        assert_eq!(&c.momentum()[..6], &[0.1, 0.2, 0.1, 0.2, 0.1, 0.2]);
        assert!(
            c.replicate(2).is_err(),
            "only a 1-particle cloud is replicated"
        );
        assert!(ParticleCloud::from_parts(0, [2, 1, 2], &[0.0; 3], &[0.0; 4], &[0.0; 4]).is_err());
    }
}
