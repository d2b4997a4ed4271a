//! The rule of `train --resume`: a resumed run continues its stored configuration exactly.
//!
//! Settings not given keep their stored values. A setting given with another value than
//! the stored one (architecture, learning rate, batch size, seed, schedule, loss, ...) is a
//! [`TrainError::ResumeConflict`] naming both values. The allowed changes are `epochs`
//! (to train longer, or to stop earlier than planned but not before the epochs already
//! done), reported in [`Resumed::notes`], and `progress` (display only).

use super::error::TrainError;
use super::trainer::{TrainConfig, Trainer};
use crate::error::Result;

/// What a resume asks for beyond the checkpoint: each `Some` must agree with the stored
/// run, except `epochs` and `progress`.
#[derive(Debug, Clone, Default)]
pub struct ResumeRequest {
    /// The architecture named on the command line (`--model`).
    pub model: Option<String>,
    /// A whole training configuration (`--train-config`); compared field by field.
    pub train_config: Option<TrainConfig>,
    /// Total epochs (`--epochs`): may differ from the stored value (reported).
    pub epochs: Option<usize>,
    /// Mini-batch size (`--batch-size`).
    pub batch_size: Option<usize>,
    /// Base learning rate (`--lr`).
    pub lr: Option<f64>,
    /// Seed (`--seed`).
    pub seed: Option<u64>,
    /// Show a progress bar (display only, never a conflict).
    pub progress: Option<bool>,
}

/// A trainer ready to continue, and what the resume changed.
pub struct Resumed {
    /// The trainer, at the checkpoint's state with the stored configuration.
    pub trainer: Trainer,
    /// Allowed changes made (e.g. "epochs: 2 -> 4 (training extended)").
    pub notes: Vec<String>,
}

fn conflict(setting: &str, stored: impl ToString, requested: impl ToString) -> TrainError {
    TrainError::ResumeConflict {
        setting: setting.to_string(),
        stored: stored.to_string(),
        requested: requested.to_string(),
    }
}

/// The configuration a resumed run uses: `stored` with the allowed changes of `request`
/// applied; `architecture` is the checkpoint's model, `completed` its finished epochs.
/// Returns it with notes on the changes made.
pub fn resolve(
    stored: &TrainConfig,
    architecture: &str,
    completed: usize,
    request: &ResumeRequest,
) -> Result<(TrainConfig, Vec<String>)> {
    if let Some(m) = request.model.as_deref().filter(|m| *m != architecture) {
        return Err(conflict("--model", format!("model {architecture}"), m).into());
    }
    let mut cfg = stored.clone();
    let mut epochs = request.epochs;
    if let Some(given) = &request.train_config {
        compare_configs(stored, given)?;
        epochs = epochs.or(Some(given.epochs));
        cfg.progress = given.progress;
    }
    for (setting, stored_value, requested) in [
        (
            "--batch-size",
            stored.batch_size.to_string(),
            request.batch_size.map(|b| b.to_string()),
        ),
        (
            "--lr",
            stored.optimizer.lr.to_string(),
            request.lr.map(|l| l.to_string()),
        ),
        (
            "--seed",
            stored.seed.to_string(),
            request.seed.map(|s| s.to_string()),
        ),
    ] {
        if let Some(r) = requested.filter(|r| *r != stored_value) {
            return Err(conflict(setting, stored_value, r).into());
        }
    }
    if let Some(p) = request.progress {
        cfg.progress = p;
    }
    let mut notes = Vec::new();
    if let Some(e) = epochs.filter(|e| *e != stored.epochs) {
        if e < completed {
            return Err(TrainError::Setting {
                field: "epochs",
                value: e.to_string(),
                expected: format!(
                    "at least the {completed} epochs the checkpoint has already completed"
                ),
            }
            .into());
        }
        let how = if e > stored.epochs {
            "training extended"
        } else {
            "stopping earlier than planned"
        };
        notes.push(format!("epochs: {} -> {e} ({how})", stored.epochs));
        cfg.epochs = e;
    }
    cfg.validate()?;
    Ok((cfg, notes))
}

/// Every field of `given` must equal `stored`'s, except `epochs` and `progress`.
fn compare_configs(stored: &TrainConfig, given: &TrainConfig) -> Result<()> {
    let (a, b) = (serde_json::to_value(stored)?, serde_json::to_value(given)?);
    let mut diffs = Vec::new();
    differences("", &a, &b, &mut diffs);
    let first = diffs
        .into_iter()
        .find(|(path, _, _)| path != "epochs" && path != "progress");
    match first {
        Some((path, s, g)) => Err(conflict(&format!("train config `{path}`"), s, g).into()),
        None => Ok(()),
    }
}

/// The paths (dotted) where two JSON values differ, with both values.
fn differences(
    path: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
    out: &mut Vec<(String, String, String)>,
) {
    use serde_json::Value::Object;
    match (a, b) {
        (Object(x), Object(y)) if x.get("kind") == y.get("kind") => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let sub = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                let null = serde_json::Value::Null;
                differences(
                    &sub,
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                    out,
                );
            }
        }
        _ if a != b => out.push((path.to_string(), a.to_string(), b.to_string())),
        _ => {}
    }
}
