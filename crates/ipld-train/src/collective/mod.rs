//! Collective communication between data-parallel ranks (issue 26): the five operations the
//! sharded trainer needs, behind one small trait, with a single-process implementation (every
//! operation is the identity), MPI (`mpi` feature) and NCCL (`nccl` feature). IPLD's particles
//! are touched only by their own point's gradient, so a rank owns the particles of a slice of
//! the data and only the networks' gradients cross ranks.
//!
//! The library never starts MPI (it can be initialised once per process): the binary does, and
//! hands a communicator in.

#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "nccl")]
mod nccl;

use std::sync::Arc;

#[cfg(feature = "mpi")]
pub use self::mpi::MpiCollective;
#[cfg(feature = "nccl")]
pub use self::nccl::NcclCollective;

/// A collective operation failed (a transport error, or buffers that disagree between ranks).
#[derive(Debug, thiserror::Error)]
#[error("collective {op} on rank {rank} of {size}: {reason}")]
pub struct CollectiveError {
    /// The operation.
    pub op: &'static str,
    /// This rank.
    pub rank: usize,
    /// Ranks in all.
    pub size: usize,
    /// What went wrong.
    pub reason: String,
}

/// The operations data-parallel training needs. Every rank must call the same operations in
/// the same order (they block until all ranks arrive).
pub trait Collective: Send + Sync {
    /// This process's rank, 0-based.
    fn rank(&self) -> usize;
    /// Ranks in all.
    fn size(&self) -> usize;
    /// What carries the messages (for the banner and records).
    fn transport(&self) -> &'static str;
    /// Sums `buf` over the ranks in place, adding the ranks' buffers in rank order
    /// (`((b_0 + b_1) + b_2) + ...`), so the result does not depend on message timing or on
    /// the transport's reduction tree: an [`all_gather`](Self::all_gather) and an ordered sum
    /// (a gradient buffer of a few million floats costs R times its size to gather, small next
    /// to a step).
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<(), CollectiveError> {
        let all = self.all_gather(&f32_bytes(buf))?;
        let lens: Vec<usize> = all.iter().map(|b| b.len() / 4).collect();
        if let Some(reason) = unequal_lengths(&lens) {
            return Err(CollectiveError {
                op: "all_reduce_sum",
                rank: self.rank(),
                size: self.size(),
                reason,
            });
        }
        sum_in_rank_order(buf, &bytes_f32(&all.concat()));
        Ok(())
    }
    /// Replaces `bytes` on every rank by rank `root`'s (lengths may differ before the call).
    fn broadcast(&self, bytes: &mut Vec<u8>, root: usize) -> Result<(), CollectiveError>;
    /// Every rank's `bytes`, in rank order (lengths may differ between ranks).
    fn all_gather(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CollectiveError>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<(), CollectiveError>;
}

/// One process: rank 0 of 1.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn transport(&self) -> &'static str {
        "single process"
    }
    fn all_reduce_sum(&self, _buf: &mut [f32]) -> Result<(), CollectiveError> {
        Ok(())
    }
    fn broadcast(&self, _bytes: &mut Vec<u8>, root: usize) -> Result<(), CollectiveError> {
        match root {
            0 => Ok(()),
            _ => Err(CollectiveError {
                op: "broadcast",
                rank: 0,
                size: 1,
                reason: format!("root {root} does not exist"),
            }),
        }
    }
    fn all_gather(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CollectiveError> {
        Ok(vec![bytes.to_vec()])
    }
    fn barrier(&self) -> Result<(), CollectiveError> {
        Ok(())
    }
}

/// Why the ranks' buffers cannot be added: their lengths `lens` differ (None when they agree).
fn unequal_lengths(lens: &[usize]) -> Option<String> {
    lens.windows(2)
        .any(|w| w[0] != w[1])
        .then(|| format!("the ranks' buffers differ in length: {lens:?}"))
}

/// Sets `buf` to the sum of the ranks' buffers `all` (`buf.len()` values per rank, in rank
/// order), added in rank order: `((b_0 + b_1) + b_2) + ...`.
fn sum_in_rank_order(buf: &mut [f32], all: &[f32]) {
    if buf.is_empty() {
        return;
    }
    let mut parts = all.chunks_exact(buf.len());
    if let Some(first) = parts.next() {
        buf.copy_from_slice(first);
    }
    for part in parts {
        buf.iter_mut().zip(part).for_each(|(b, p)| *b += p);
    }
}

/// The single-process collective, shared.
pub fn single_process() -> Arc<dyn Collective> {
    Arc::new(SingleProcess)
}

/// `values` as little-endian bytes, the form f32 buffers cross ranks in.
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The f32 values of little-endian `bytes` (a trailing partial value is dropped).
pub fn bytes_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect()
}

/// Every rank's `values`, in rank order, through [`Collective::all_gather`].
pub fn all_gather_f64(
    c: &dyn Collective,
    values: &[f64],
) -> Result<Vec<Vec<f64>>, CollectiveError> {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Ok(c.all_gather(&bytes)?
        .iter()
        .map(|b| {
            b.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect()
        })
        .collect())
}

/// Whether `flag` is set on any rank.
pub fn any(c: &dyn Collective, flag: bool) -> Result<bool, CollectiveError> {
    if c.size() == 1 {
        return Ok(flag);
    }
    let mut v = [f32::from(u8::from(flag))];
    c.all_reduce_sum(&mut v)?;
    Ok(v[0] > 0.0)
}

/// `Ok` on every rank when every rank's `local` is `Ok`; otherwise every rank gets an error
/// naming the failing ranks and their messages, so no rank waits forever in a later collective
/// for one that gave up.
pub fn agree<T>(c: &dyn Collective, local: Result<T, String>) -> Result<T, String> {
    if c.size() == 1 {
        return local;
    }
    let mine = match &local {
        Ok(_) => Vec::new(),
        Err(e) => format!("rank {}: {e}", c.rank()).into_bytes(),
    };
    let all = c.all_gather(&mine).map_err(|e| e.to_string())?;
    let failed: Vec<String> = all
        .iter()
        .filter(|b| !b.is_empty())
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    match (local, failed.is_empty()) {
        (Ok(v), true) => Ok(v),
        (Err(e), _) if failed.len() == 1 => Err(e),
        _ => Err(failed.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_process_is_rank_0_of_1_and_leaves_buffers_alone() {
        let c = SingleProcess;
        assert_eq!((c.rank(), c.size()), (0, 1));
        let mut v = vec![1.5f32, -2.0];
        c.all_reduce_sum(&mut v).unwrap();
        assert_eq!(v, [1.5, -2.0]);
        let mut b = b"abc".to_vec();
        c.broadcast(&mut b, 0).unwrap();
        assert_eq!(b, b"abc");
        assert!(c.broadcast(&mut b, 1).is_err());
        assert_eq!(c.all_gather(b"xy").unwrap(), vec![b"xy".to_vec()]);
        assert_eq!(
            all_gather_f64(&c, &[0.1, -3.0]).unwrap(),
            vec![vec![0.1, -3.0]]
        );
        assert!(any(&c, true).unwrap() && !any(&c, false).unwrap());
        assert_eq!(agree(&c, Err::<(), _>("bad".into())), Err("bad".into()));
        c.barrier().unwrap();
    }

    #[test]
    fn ranks_are_added_in_rank_order() {
        let mut buf = [0f32; 2];
        sum_in_rank_order(&mut buf, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(buf, [9.0, 12.0]);
        // f32 addition is not associative: (1e8 + 1) - 1e8 = 0, 1e8 + (1 - 1e8) = 8.
        let mut one = [0f32];
        sum_in_rank_order(&mut one, &[1e8, 1.0, -1e8]);
        assert_eq!(one, [0.0]);
    }
}
