//! [`Collective`] over MPI (rsmpi): `mpirun -np R ipld-train ...` or `srun`. All-reduce is the
//! trait's own (an all-gather and a sum in rank order), so the result is the same bits whatever
//! the MPI library's reduction tree; the safe API has no in-place all-reduce anyway.

use std::thread::ThreadId;

use mpi::datatype::PartitionMut;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::{Collective, CollectiveError};

/// A communicator (normally the world's), used only from the thread that created it.
pub struct MpiCollective {
    comm: SimpleCommunicator,
    thread: ThreadId,
}

// SAFETY: MPI is initialised with `Threading::Funneled` or stronger by the binary, and every
// method checks that it runs on the thread that built the value, so the communicator handle is
// never used from two threads (rayon's workers, which may see the trainer, never call it).
unsafe impl Send for MpiCollective {}
// SAFETY: as above: calls from any other thread return an error before touching MPI.
unsafe impl Sync for MpiCollective {}

impl MpiCollective {
    /// Wraps `comm` (e.g. `universe.world()`); call from the thread that initialised MPI.
    pub fn new(comm: SimpleCommunicator) -> Self {
        Self {
            comm,
            thread: std::thread::current().id(),
        }
    }

    /// Ends every rank of the job with `code` (MPI_Abort): a rank that fails alone must not
    /// leave the others waiting in a collective.
    pub fn abort(&self, code: i32) -> ! {
        self.comm.abort(code)
    }

    fn error(&self, op: &'static str, reason: impl Into<String>) -> CollectiveError {
        CollectiveError {
            op,
            rank: self.rank(),
            size: self.size(),
            reason: reason.into(),
        }
    }

    fn on_own_thread(&self, op: &'static str) -> Result<(), CollectiveError> {
        match std::thread::current().id() == self.thread {
            true => Ok(()),
            false => Err(self.error(op, "called from a thread other than MPI's")),
        }
    }

    /// Every rank's length, in rank order.
    fn lengths(&self, len: usize) -> Result<Vec<usize>, CollectiveError> {
        let mine = u64::try_from(len).map_err(|_| self.error("all_gather", "length overflow"))?;
        let mut all = vec![0u64; self.size()];
        self.comm.all_gather_into(&mine, &mut all[..]);
        Ok(all.into_iter().map(|l| l as usize).collect())
    }
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.comm.rank() as usize
    }
    fn size(&self) -> usize {
        self.comm.size() as usize
    }
    fn transport(&self) -> &'static str {
        "MPI"
    }

    fn broadcast(&self, bytes: &mut Vec<u8>, root: usize) -> Result<(), CollectiveError> {
        self.on_own_thread("broadcast")?;
        if root >= self.size() {
            return Err(self.error("broadcast", format!("root {root} does not exist")));
        }
        let origin = self.comm.process_at_rank(root as i32);
        let mut len = bytes.len() as u64;
        origin.broadcast_into(&mut len);
        bytes.resize(len as usize, 0);
        if len > 0 {
            origin.broadcast_into(&mut bytes[..]);
        }
        Ok(())
    }

    fn all_gather(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CollectiveError> {
        self.on_own_thread("all_gather")?;
        let lens = self.lengths(bytes.len())?;
        let to_count = |l: usize| {
            i32::try_from(l).map_err(|_| self.error("all_gather", "a message over 2 GiB"))
        };
        let counts = lens
            .iter()
            .map(|&l| to_count(l))
            .collect::<Result<Vec<i32>, _>>()?;
        let mut displs = Vec::with_capacity(counts.len());
        let mut at = 0usize;
        for &l in &lens {
            displs.push(to_count(at)?);
            at += l;
        }
        if at == 0 {
            return Ok(vec![Vec::new(); lens.len()]);
        }
        // An empty slice's dangling pointer can equal MPI_IN_PLACE ((void *) 1 in OpenMPI):
        // send an empty slice of a real buffer instead.
        let pad = [0u8; 1];
        let send = if bytes.is_empty() { &pad[..0] } else { bytes };
        let mut all = vec![0u8; at];
        {
            let mut partition = PartitionMut::new(&mut all[..], counts, &displs[..]);
            self.comm.all_gather_varcount_into(send, &mut partition);
        }
        let mut out = Vec::with_capacity(lens.len());
        let mut at = 0;
        for l in lens {
            out.push(all[at..at + l].to_vec());
            at += l;
        }
        Ok(out)
    }

    fn barrier(&self) -> Result<(), CollectiveError> {
        self.on_own_thread("barrier")?;
        self.comm.barrier();
        Ok(())
    }
}
