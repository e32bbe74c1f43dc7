//! The shards' results combined across ranks (issue 26). Each rank computes its shards of the
//! minibatch loss (64); every rank then holds every shard's loss terms and network gradients,
//! in shard order, and adds them in that order: the same float sums as one process computing
//! all shards, so an R-rank run equals the one-process run with the same `train.shards` bit for
//! bit, whatever R. Particle gradients never leave their rank (a point's particles are moved
//! only by its own gradient).

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use crate::collective::{Collective, all_gather_f64, bytes_f32, f32_bytes};
use crate::error::TrainError;

/// One shard's share of the loss: its loss terms, whether its particle gradient is finite (so
/// every rank stops together when one rank's is not), and its gradient store.
pub(crate) struct ShardShare {
    pub loss: f64,
    pub diffusion_sum: f64,
    pub nll_sum: f64,
    pub finite_z: bool,
    pub grads: GradStore,
}

/// Every shard's shares, summed in shard order.
pub(crate) struct Combined {
    pub loss: f64,
    pub diffusion_sum: f64,
    pub nll_sum: f64,
    /// Whether every shard's particle gradient was finite.
    pub finite_z: bool,
    /// The gradients of the networks' variables (`vars`), summed.
    pub grads: GradStore,
}

/// A shard's share as plain values: 4 numbers and, per variable, its gradient (None when the
/// shard's loss did not reach it).
struct Flat {
    head: [f64; 4],
    grads: Vec<Option<Vec<f32>>>,
}

fn flatten(share: &ShardShare, vars: &[Var]) -> Result<Flat, TrainError> {
    let grads = vars
        .iter()
        .map(|v| {
            share
                .grads
                .get(v.as_tensor())
                .map(|g| g.flatten_all()?.to_vec1::<f32>())
                .transpose()
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Flat {
        head: [
            share.loss,
            share.diffusion_sum,
            share.nll_sum,
            f64::from(u8::from(share.finite_z)),
        ],
        grads,
    })
}

/// Bytes of one share: the 4 numbers, a presence byte per variable, then every variable's
/// gradient (zeros where absent), so all shares have the same length.
fn encode(f: &Flat, vars: &[Var], out: &mut Vec<u8>) {
    f.head.iter().for_each(|v| out.extend(v.to_le_bytes()));
    f.grads.iter().for_each(|g| out.push(u8::from(g.is_some())));
    for (g, v) in f.grads.iter().zip(vars) {
        match g {
            Some(g) => out.extend(f32_bytes(g)),
            None => out.extend(std::iter::repeat_n(0u8, 4 * v.elem_count())),
        }
    }
}

fn record_len(vars: &[Var]) -> usize {
    32 + vars.len() + 4 * vars.iter().map(|v| v.elem_count()).sum::<usize>()
}

fn decode(bytes: &[u8], vars: &[Var]) -> Flat {
    let f64_at = |i: usize| f64::from_le_bytes(bytes[8 * i..8 * i + 8].try_into().expect("8"));
    let head = [f64_at(0), f64_at(1), f64_at(2), f64_at(3)];
    let mut at = 32 + vars.len();
    let grads = vars
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let n = v.elem_count();
            let g = bytes_f32(&bytes[at..at + 4 * n]);
            at += 4 * n;
            (bytes[32 + i] == 1).then_some(g)
        })
        .collect();
    Flat { head, grads }
}

/// Every shard's share, in shard order: this rank's `local` ones (its shards, in order) and the
/// other ranks', through `comm`.
fn gather(
    comm: &dyn Collective,
    vars: &[Var],
    local: &[ShardShare],
) -> Result<Vec<Flat>, TrainError> {
    let mine = local
        .iter()
        .map(|s| flatten(s, vars))
        .collect::<Result<Vec<_>, _>>()?;
    let mut bytes = Vec::with_capacity(mine.len() * record_len(vars));
    mine.iter().for_each(|f| encode(f, vars, &mut bytes));
    let len = record_len(vars);
    let all = comm.all_gather(&bytes).map_err(collective)?;
    let mut out = Vec::new();
    for (rank, b) in all.iter().enumerate() {
        if b.len() % len != 0 {
            return Err(TrainError::Invalid(format!(
                "rank {rank} sent {} bytes of shard results, not a multiple of {len}: the ranks \
                 do not train the same networks",
                b.len()
            )));
        }
        out.extend(b.chunks_exact(len).map(|c| decode(c, vars)));
    }
    Ok(out)
}

/// Combines the shards' shares of all ranks: loss terms and the gradients of the networks'
/// variables (`vars`, asked for only when there are other ranks) summed in shard order. A
/// variable's sum starts from the first shard that reached it, as candle's `GradStore::extend`
/// does, so one process adds its shards' stores directly, with the same bits and no copies.
pub(crate) fn combine(
    comm: &dyn Collective,
    vars: impl FnOnce() -> Vec<Var>,
    local: Vec<ShardShare>,
) -> Result<Combined, TrainError> {
    if comm.size() == 1 {
        return Ok(Combined {
            loss: local.iter().map(|s| s.loss).sum(),
            diffusion_sum: local.iter().map(|s| s.diffusion_sum).sum(),
            nll_sum: local.iter().map(|s| s.nll_sum).sum(),
            finite_z: local.iter().all(|s| s.finite_z),
            grads: super::loss::add_grads(local.into_iter().map(|s| s.grads))?,
        });
    }
    let vars = vars();
    let vars = vars.as_slice();
    let all = gather(comm, vars, &local)?;
    let loss = all.iter().map(|f| f.head[0]).sum();
    let diffusion_sum = all.iter().map(|f| f.head[1]).sum();
    let nll_sum = all.iter().map(|f| f.head[2]).sum();
    let finite_z = all.iter().all(|f| f.head[3] == 1.0);
    let mut grads = GradStore::default();
    for (i, v) in vars.iter().enumerate() {
        let mut sum: Option<Vec<f32>> = None;
        for f in &all {
            if let Some(g) = &f.grads[i] {
                match &mut sum {
                    None => sum = Some(g.clone()),
                    Some(s) => s.iter_mut().zip(g).for_each(|(a, b)| *a += b),
                }
            }
        }
        if let Some(s) = sum {
            let t = Tensor::from_vec(s, v.shape(), v.device())?;
            grads.insert(v.as_tensor(), t);
        }
    }
    Ok(Combined {
        loss,
        diffusion_sum,
        nll_sum,
        finite_z,
        grads,
    })
}

/// Per-shard sums (in shard order on this rank) of all ranks, added in shard order.
pub(crate) fn sum_shards(
    comm: &dyn Collective,
    local: &[(f64, f64)],
) -> Result<(f64, f64), TrainError> {
    let flat: Vec<f64> = local.iter().flat_map(|&(a, b)| [a, b]).collect();
    let all = all_gather_f64(comm, &flat).map_err(collective)?;
    let pairs: Vec<(f64, f64)> = all
        .iter()
        .flat_map(|r| r.chunks_exact(2).map(|c| (c[0], c[1])))
        .collect();
    Ok((
        pairs.iter().map(|p| p.0).sum(),
        pairs.iter().map(|p| p.1).sum(),
    ))
}

/// A collective failure as a training error.
pub(crate) fn collective(e: crate::collective::CollectiveError) -> TrainError {
    TrainError::Invalid(e.to_string())
}

/// Every rank takes rank 0's values of `vars` (the initial weights are drawn from the seed on
/// every rank; this makes them one state whatever the platform).
pub(crate) fn broadcast_vars(comm: &dyn Collective, vars: &[Var]) -> Result<(), TrainError> {
    if comm.size() == 1 {
        return Ok(());
    }
    let mut bytes = Vec::new();
    for v in vars {
        bytes.extend(f32_bytes(&v.as_tensor().flatten_all()?.to_vec1::<f32>()?));
    }
    comm.broadcast(&mut bytes, 0).map_err(collective)?;
    let mut at = 0;
    for v in vars {
        let n = v.elem_count();
        if bytes.len() < at + 4 * n {
            return Err(TrainError::Invalid(
                "rank 0's networks are smaller than this rank's: the ranks' configs differ".into(),
            ));
        }
        let x = bytes_f32(&bytes[at..at + 4 * n]);
        v.set(&Tensor::from_vec(x, v.shape(), v.device())?)?;
        at += 4 * n;
    }
    Ok(())
}
