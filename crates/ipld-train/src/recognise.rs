//! `eval.classifier`: how recognisable an image run's samples are, by a classifier trained on the
//! run's labelled image file (all of it, not only the `data.max_points` the run trains on), with
//! [`ipld_eval::Classifier`]'s fixed defaults so every run of a dataset is scored alike.

use ipld_data::Dataset;
use ipld_eval::{Classifier, ClassifierConfig, Recognisability};

use crate::data::load_images;
use crate::error::RunError;
use crate::eval::Samples;
use crate::trainer::Trainer;

/// Confidence at which a sample counts as recognised.
pub const CONFIDENCE: f64 = 0.9;

/// [`Recognisability`] of `samples` (in the data's units).
pub fn recognisability(trainer: &Trainer, samples: &Samples) -> Result<Recognisability, RunError> {
    let cfg = trainer.config();
    let Some(src) = cfg.data.images.as_ref() else {
        return Err(RunError::invalid(
            std::path::Path::new("eval.classifier"),
            "needs image data ([data.images])",
        ));
    };
    let set = load_images(src, 0)?;
    let Some(labels) = set.labels() else {
        return Err(RunError::invalid(
            src.path(),
            "eval.classifier needs labelled images, and this file has no labels",
        ));
    };
    let classes = labels.iter().copied().max().map_or(0, |m| m as usize + 1);
    let idx: Vec<usize> = (0..set.len()).collect();
    let mut images = Vec::with_capacity(set.len() * set.dim());
    set.gather_into(&idx, &mut images)?;
    let c = Classifier::train(
        &images,
        labels,
        set.dim(),
        classes,
        &ClassifierConfig::default(),
    )
    .map_err(|source| RunError::Eval {
        path: src.path().to_path_buf(),
        source,
    })?;
    c.report(&samples.data, CONFIDENCE)
        .map_err(|source| RunError::Eval {
            path: "generated samples".into(),
            source,
        })
}
