//! The latents' checkpoint: the particle cloud (positions, moments, lazy-noise state) or the
//! encoder, and the restore of a cloud's rows from one file or from the per-rank particle files
//! of a sharded run, whatever rank count wrote them (issue 26).

use candle_core::{Device, Tensor};
use ipld_particles::{LazyNoise, ParticleCloud};

use super::latents::Latents;
use crate::checkpoint::{CheckpointReader, CheckpointWriter, Checkpointed};
use crate::error::TrainError;

/// Particles: `<prefix>/z`, `<prefix>/momentum`, `<prefix>/second_moment` ([M, N, d]) and, with
/// lazy noise, `<prefix>/missed_noise_steps` (\[M\]: steps of noise each row still lacks, at most
/// a few epochs' worth, so exact in f32), with the metadata `<prefix>_start`. The encoder:
/// `encoder/...`, `opt_encoder/...`, `opt_encoder_steps`. Both metadata entries are always
/// written (0 for the other kind), as before the refactor.
impl Checkpointed for Latents {
    fn save(&self, prefix: &str, out: &mut CheckpointWriter) -> Result<(), TrainError> {
        match self {
            Self::Particles(p) => {
                let [m, n, d] = p.cloud.shape();
                for (name, buf) in [
                    ("z", p.cloud.z()),
                    ("momentum", p.cloud.momentum()),
                    ("second_moment", p.cloud.second_moment()),
                ] {
                    out.tensor(
                        format!("{prefix}/{name}"),
                        Tensor::from_slice(buf, (m, n, d), &Device::Cpu)?,
                    );
                }
                if let Some(lazy) = &p.lazy {
                    let step = out.step();
                    let missed: Vec<f32> =
                        lazy.synced().iter().map(|&s| (step - s) as f32).collect();
                    out.tensor(
                        format!("{prefix}/missed_noise_steps"),
                        Tensor::from_vec(missed, m, &Device::Cpu)?,
                    );
                }
                out.meta(&format!("{prefix}_start"), p.cloud.start());
                out.meta("opt_encoder_steps", 0);
            }
            Self::Encoder { encoder, .. } => {
                encoder.save("encoder", out)?;
                out.meta(&format!("{prefix}_start"), 0);
            }
        }
        Ok(())
    }

    fn load(&mut self, prefix: &str, ck: &CheckpointReader) -> Result<(), TrainError> {
        match self {
            Self::Particles(p) => {
                let points = p.points;
                self.load_rows(prefix, &[ck], points)
            }
            Self::Encoder { encoder, .. } => encoder.load("encoder", ck),
        }
    }
}

impl Latents {
    /// Restores this cloud's rows (all of them in one process, a rank's slice when sharded)
    /// from `files`, each holding the particles of a contiguous range of points as
    /// [`Checkpointed::save`] wrote them: one file with the whole cloud, or the shard files of a
    /// run with any number of ranks (issue 26: resuming with another rank count re-shards).
    /// Together the files must hold all `points` points.
    pub fn load_rows(
        &mut self,
        prefix: &str,
        files: &[&CheckpointReader],
        points: usize,
    ) -> Result<(), TrainError> {
        let Self::Particles(p) = self else {
            return Ok(());
        };
        let (lo, dz) = (p.cloud.start(), p.cloud.dim());
        let want = lo..lo + p.cloud.rows();
        let mut n = None;
        let mut bufs: [Vec<f32>; 3] = Default::default();
        let mut missed = vec![0f32; want.len()];
        let (mut covered, mut total) = (0, 0);
        let names = ["z", "momentum", "second_moment"];
        for ck in files {
            let z = ck.tensor(&format!("{prefix}/z"), "")?;
            let shape = z.dims().to_vec();
            if shape.len() != 3 || shape[2] != dz || n.is_some_and(|n| n != shape[1]) {
                return Err(ck.problem(format!(
                    "particles have shape {shape:?}, expected [rows, N, {dz}] for this data and config{}",
                    n.map_or(String::new(), |n| format!(" with N = {n} as in the other particle files"))
                )));
            }
            let nn = *n.get_or_insert(shape[1]);
            if bufs[0].is_empty() {
                bufs = std::array::from_fn(|_| vec![0f32; want.len() * nn * dz]);
            }
            let start = ck.meta_u64(&format!("{prefix}_start"))? as usize;
            total += shape[0];
            if start + shape[0] > points {
                return Err(ck.problem(format!(
                    "particles of points {start}..{} but the data have {points} points",
                    start + shape[0]
                )));
            }
            let (a, b) = (start.max(want.start), (start + shape[0]).min(want.end));
            if a >= b {
                continue;
            }
            let w = nn * dz;
            for (name, buf) in names.iter().zip(&mut bufs) {
                let t = ck.tensor(&format!("{prefix}/{name}"), "")?;
                if t.dims() != shape.as_slice() {
                    return Err(ck.problem(format!(
                        "`{prefix}/{name}` has shape {:?}, `{prefix}/z` {shape:?}",
                        t.dims()
                    )));
                }
                let part: Vec<f32> = t.narrow(0, a - start, b - a)?.flatten_all()?.to_vec1()?;
                buf[(a - want.start) * w..(b - want.start) * w].copy_from_slice(&part);
            }
            if p.lazy.is_some() {
                let step = ck.step()?;
                let key = format!("{prefix}/missed_noise_steps");
                let t = ck.tensor(&key, " (particles.lazy_noise is set)")?;
                let all: Vec<f32> = t.flatten_all()?.to_vec1()?;
                if all.len() != shape[0]
                    || all
                        .iter()
                        .any(|&v| !(v >= 0.0 && v.fract() == 0.0 && (v as u64) <= step))
                {
                    return Err(ck.problem(format!(
                        "`{key}` is not one step count in 0..=step per point"
                    )));
                }
                missed[a - want.start..b - want.start].copy_from_slice(&all[a - start..b - start]);
            }
            covered += b - a;
        }
        if total != points {
            return Err(TrainError::Invalid(format!(
                "the checkpoint's particle files hold {total} points' particles but the data \
                 have {points} points"
            )));
        }
        if covered != want.len() {
            return Err(TrainError::Invalid(format!(
                "the checkpoint's particle files hold {covered} of the {} points {}..{} this                  process needs ({} files read)",
                want.len(),
                want.start,
                want.end,
                files.len()
            )));
        }
        let n = n.unwrap_or(p.cloud.particles());
        let [z, momentum, second] = bufs;
        p.cloud = ParticleCloud::from_parts(lo, [want.len(), n, dz], &z, &momentum, &second)?;
        if let Some(lazy) = &mut p.lazy {
            let step = files.first().map(|ck| ck.step()).transpose()?.unwrap_or(0);
            let synced = missed.iter().map(|&v| step - v as u64).collect();
            *lazy = LazyNoise::from_synced(synced, 0, lazy.eps())
                .with_bias_correction(lazy.bias_correction());
        }
        Ok(())
    }
}
