//! [`Collective`] over NCCL, one rank per GPU (`nccl` feature): the ranks are started by
//! `mpirun`/`srun`, rank 0 creates the NCCL id and broadcasts it over MPI (the nccl-tests
//! pattern), and every operation runs on candle's own CUDA stream through candle's cudarc (a
//! second cudarc with other linking features would not build). The trait's buffers live on the
//! host, so each operation copies them to the GPU and back. All-reduce is the trait's own (an
//! all-gather and a sum in rank order), so its bits do not depend on NCCL's ring.
//!
//! cudarc opens `libnccl.so`; Debian's `libnccl2` and the PyPI wheel ship only `libnccl.so.2`:
//! install `libnccl-dev`, or link `libnccl.so` to it (docs/distributed.md).

use std::sync::Arc;
use std::thread::ThreadId;

use candle_core::cuda_backend::cudarc::driver::CudaStream;
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};

use super::{Collective, CollectiveError};

/// An NCCL communicator on one GPU's stream, used only from the thread that built it.
pub struct NcclCollective {
    comm: Comm,
    stream: Arc<CudaStream>,
    thread: ThreadId,
}

// SAFETY: the communicator and stream handles are used only from the thread that created them
// (every method checks), so they are never touched by two threads.
unsafe impl Send for NcclCollective {}
// SAFETY: as above.
unsafe impl Sync for NcclCollective {}

impl NcclCollective {
    /// This process's rank of `bootstrap` (normally MPI's world) on `device`; collective over
    /// `bootstrap`.
    pub fn new(
        device: &candle_core::CudaDevice,
        bootstrap: &dyn Collective,
    ) -> Result<Self, CollectiveError> {
        let (rank, size) = (bootstrap.rank(), bootstrap.size());
        let fail = |reason: String| CollectiveError {
            op: "nccl init",
            rank,
            size,
            reason,
        };
        let mut id = match rank {
            0 => Id::new()
                .map_err(|e| fail(format!("{e:?}")))?
                .internal()
                .iter()
                .map(|&c| c as u8)
                .collect(),
            _ => Vec::new(),
        };
        bootstrap.broadcast(&mut id, 0)?;
        let mut internal = [0 as std::ffi::c_char; 128];
        if id.len() != internal.len() {
            return Err(fail(format!("rank 0 sent an id of {} bytes", id.len())));
        }
        for (i, b) in internal.iter_mut().zip(&id) {
            *i = *b as std::ffi::c_char;
        }
        let stream = device.cuda_stream();
        let comm = Comm::from_rank(stream.clone(), rank, size, Id::uninit(internal))
            .map_err(|e| fail(format!("{e:?}")))?;
        Ok(Self {
            comm,
            stream,
            thread: std::thread::current().id(),
        })
    }

    fn error(&self, op: &'static str, reason: impl std::fmt::Debug) -> CollectiveError {
        CollectiveError {
            op,
            rank: self.rank(),
            size: self.size(),
            reason: format!("{reason:?}"),
        }
    }

    fn on_own_thread(&self, op: &'static str) -> Result<(), CollectiveError> {
        match std::thread::current().id() == self.thread {
            true => Ok(()),
            false => Err(self.error(op, "called from a thread other than NCCL's")),
        }
    }

    /// Every rank's `bytes`, all of length `len` (`bytes.len() <= len`, padded with zeros).
    fn gather_padded(&self, bytes: &[u8], len: usize) -> Result<Vec<u8>, CollectiveError> {
        let mut padded = bytes.to_vec();
        padded.resize(len, 0);
        let send = self
            .stream
            .clone_htod(&padded)
            .map_err(|x| self.error("all_gather", x))?;
        let mut recv = self
            .stream
            .alloc_zeros::<u8>(len * self.size())
            .map_err(|x| self.error("all_gather", x))?;
        self.comm
            .all_gather(&send, &mut recv)
            .map_err(|x| self.error("all_gather", x))?;
        self.stream
            .clone_dtoh(&recv)
            .map_err(|x| self.error("all_gather", x))
    }

    /// Every rank's length.
    fn lengths(&self, len: usize) -> Result<Vec<usize>, CollectiveError> {
        let all = self.gather_padded(&(len as u64).to_le_bytes(), 8)?;
        Ok(all
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")) as usize)
            .collect())
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.comm.rank()
    }
    fn size(&self) -> usize {
        self.comm.world_size()
    }
    fn transport(&self) -> &'static str {
        "NCCL"
    }

    fn broadcast(&self, bytes: &mut Vec<u8>, root: usize) -> Result<(), CollectiveError> {
        self.on_own_thread("broadcast")?;
        if root >= self.size() {
            return Err(self.error("broadcast", format!("root {root} does not exist")));
        }
        let mut len = self
            .stream
            .clone_htod(&[bytes.len() as u64])
            .map_err(|x| self.error("broadcast", x))?;
        self.comm
            .broadcast_in_place(&mut len, root as i32)
            .map_err(|x| self.error("broadcast", x))?;
        let len = self
            .stream
            .clone_dtoh(&len)
            .map_err(|x| self.error("broadcast", x))?[0] as usize;
        bytes.resize(len, 0);
        if len == 0 {
            return Ok(());
        }
        let mut dev = self
            .stream
            .clone_htod(bytes.as_slice())
            .map_err(|x| self.error("broadcast", x))?;
        self.comm
            .broadcast_in_place(&mut dev, root as i32)
            .map_err(|x| self.error("broadcast", x))?;
        *bytes = self
            .stream
            .clone_dtoh(&dev)
            .map_err(|x| self.error("broadcast", x))?;
        Ok(())
    }

    fn all_gather(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CollectiveError> {
        self.on_own_thread("all_gather")?;
        let lens = self.lengths(bytes.len())?;
        let max = lens.iter().copied().max().unwrap_or(0);
        if max == 0 {
            return Ok(vec![Vec::new(); lens.len()]);
        }
        let all = self.gather_padded(bytes, max)?;
        Ok(lens
            .iter()
            .enumerate()
            .map(|(r, &l)| all[r * max..r * max + l].to_vec())
            .collect())
    }

    fn barrier(&self) -> Result<(), CollectiveError> {
        self.on_own_thread("barrier")?;
        let mut one = self
            .stream
            .clone_htod(&[1f32])
            .map_err(|x| self.error("barrier", x))?;
        self.comm
            .all_reduce_in_place(&mut one, &ReduceOp::Sum)
            .map_err(|x| self.error("barrier", x))?;
        self.stream
            .synchronize()
            .map_err(|x| self.error("barrier", x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One GPU is one rank: every operation must give the single-process result. Run with
    /// `cargo test -p ipld-train --features nccl --lib nccl` on a machine with a GPU.
    #[test]
    fn one_gpu_is_one_rank_and_gives_the_single_process_results() {
        // cudarc loads the driver on first use and panics where there is none.
        let device = std::panic::catch_unwind(|| candle_core::CudaDevice::new_with_stream(0));
        let Ok(Ok(device)) = device else {
            eprintln!("SKIPPED: no CUDA device; the NCCL collective was only compiled");
            return;
        };
        let c = NcclCollective::new(&device, &super::super::SingleProcess).unwrap();
        assert_eq!((c.rank(), c.size()), (0, 1));
        let mut v = vec![1.5f32, -2.0, 3.25];
        c.all_reduce_sum(&mut v).unwrap();
        assert_eq!(v, [1.5, -2.0, 3.25]);
        let mut b = b"abc".to_vec();
        c.broadcast(&mut b, 0).unwrap();
        assert_eq!(b, b"abc");
        assert!(c.broadcast(&mut b, 1).is_err());
        assert_eq!(c.all_gather(b"xyz").unwrap(), vec![b"xyz".to_vec()]);
        assert_eq!(c.all_gather(b"").unwrap(), vec![Vec::<u8>::new()]);
        c.barrier().unwrap();
    }
}
