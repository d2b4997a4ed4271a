//! Range checks of every training setting, and parsing of `TrainConfig` JSON that turns
//! serde's unknown-field message into one naming the closest valid field.

use super::error::TrainError;
use super::optim::AdamWParams;
use super::schedule::Schedule;
use super::trainer::TrainConfig;
use crate::error::Result;

/// Most epochs a run may ask for (a guard against typos such as an extra digit group).
pub const MAX_EPOCHS: usize = 10_000_000;
/// Largest mini-batch accepted (2^24 samples; a batch is capped by the set's size anyway).
pub const MAX_BATCH_SIZE: usize = 1 << 24;

fn bad(field: &'static str, value: impl std::fmt::Display, expected: &str) -> TrainError {
    TrainError::Setting {
        field,
        value: value.to_string(),
        expected: expected.to_string(),
    }
}

fn check(ok: bool, err: impl FnOnce() -> TrainError) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(err().into())
    }
}

impl TrainConfig {
    /// Checks every setting against its valid range; the error names the field, the
    /// value and the range.
    pub fn validate(&self) -> Result<()> {
        check((1..=MAX_EPOCHS).contains(&self.epochs), || {
            bad("epochs", self.epochs, &format!("1 to {MAX_EPOCHS}"))
        })?;
        check((1..=MAX_BATCH_SIZE).contains(&self.batch_size), || {
            bad(
                "batch_size",
                self.batch_size,
                &format!("1 to {MAX_BATCH_SIZE}"),
            )
        })?;
        if let Some(p) = self.early_stopping_patience {
            check(p >= 1, || {
                bad("early_stopping_patience", p, "at least 1 epoch (or null)")
            })?;
        }
        self.optimizer.validate()?;
        self.schedule.validate()
    }
}

impl AdamWParams {
    /// Checks the hyper-parameters: `lr` finite > 0, betas in [0, 1), `eps` finite > 0,
    /// `weight_decay` finite ≥ 0 with `lr × weight_decay` < 1.
    pub fn validate(&self) -> Result<()> {
        check(self.lr.is_finite() && self.lr > 0.0, || {
            bad("optimizer.lr", self.lr, "a finite number > 0")
        })?;
        for (field, beta) in [
            ("optimizer.beta1", self.beta1),
            ("optimizer.beta2", self.beta2),
        ] {
            check((0.0..1.0).contains(&beta), || {
                bad(field, beta, "a number in [0, 1)")
            })?;
        }
        check(self.eps.is_finite() && self.eps > 0.0, || {
            bad("optimizer.eps", self.eps, "a finite number > 0")
        })?;
        check(
            self.weight_decay.is_finite() && self.weight_decay >= 0.0,
            || {
                bad(
                    "optimizer.weight_decay",
                    self.weight_decay,
                    "a finite number ≥ 0",
                )
            },
        )?;
        check(self.lr * self.weight_decay < 1.0, || {
            bad(
                "optimizer.weight_decay",
                self.weight_decay,
                &format!(
                    "lr × weight_decay < 1 (with lr {} the decay would flip the weights' sign)",
                    self.lr
                ),
            )
        })
    }
}

impl Schedule {
    /// Checks the schedule's parameters: `step_size` ≥ 1 and `gamma` finite > 0 for
    /// `step`; `t_max` ≥ 1 and `eta_min` finite ≥ 0 for `cosine`.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Schedule::Constant => Ok(()),
            Schedule::Step { step_size, gamma } => {
                check(step_size >= 1, || {
                    bad("schedule.step_size", step_size, "at least 1 epoch")
                })?;
                check(gamma.is_finite() && gamma > 0.0, || {
                    bad("schedule.gamma", gamma, "a finite number > 0")
                })
            }
            Schedule::Cosine { t_max, eta_min } => {
                check(t_max >= 1, || {
                    bad("schedule.t_max", t_max, "at least 1 epoch")
                })?;
                check(eta_min.is_finite() && eta_min >= 0.0, || {
                    bad("schedule.eta_min", eta_min, "a finite number ≥ 0")
                })
            }
        }
    }
}

/// Parses and validates a `TrainConfig` JSON text; an unknown field or variant is an error
/// naming the closest valid one.
pub fn parse_train_config(text: &str) -> Result<TrainConfig> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(explain_serde_error)?;
    train_config_from_value(value)
}

/// [`parse_train_config`] for an already parsed JSON value (e.g. a checkpoint's record).
pub fn train_config_from_value(value: serde_json::Value) -> Result<TrainConfig> {
    // serde would also fill a struct from a JSON array, by position: refuse that form.
    if !value.is_object() {
        return Err(explain_serde_error(serde::de::Error::custom(format!(
            "a training configuration must be a JSON object of named fields, got {}",
            json_kind(&value)
        ))));
    }
    let cfg: TrainConfig = serde_json::from_value(value).map_err(explain_serde_error)?;
    cfg.validate()?;
    Ok(cfg)
}

/// The JSON type of `value`, for messages.
fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Turns serde's "unknown field `x`, expected one of `a`, `b`" (or "unknown variant")
/// into a [`TrainError::UnknownField`] with the closest valid name; other errors pass.
pub fn explain_serde_error(e: serde_json::Error) -> crate::ModelError {
    let msg = e.to_string();
    let parsed = ["field", "variant"].into_iter().find_map(|what| {
        let rest = msg.strip_prefix(&format!("unknown {what} `"))?;
        let (name, tail) = rest.split_once('`')?;
        Some((what, name.to_string(), backticked(tail)))
    });
    let Some((what, name, valid)) = parsed else {
        return e.into();
    };
    let hint = closest(&name, &valid)
        .map(|c| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default();
    let location = match (e.line(), e.column()) {
        (0, _) => "in the JSON value".to_string(),
        (l, c) => format!("line {l}, column {c}"),
    };
    TrainError::UnknownField {
        what,
        name,
        hint,
        valid: valid
            .iter()
            .map(|v| format!("`{v}`"))
            .collect::<Vec<_>>()
            .join(", "),
        location,
    }
    .into()
}

/// The names between backticks in `text` (serde's list of expected names).
fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The valid name nearest to `name` in edit distance, if it is close enough to be a typo
/// (at most a third of the longer name's length, clamped to 1..=3 edits).
pub fn closest<'a>(name: &str, valid: &'a [String]) -> Option<&'a str> {
    let best = valid
        .iter()
        .map(|v| (edit_distance(name, v), v))
        .min_by_key(|(d, _)| *d)?;
    let limit = (name.chars().count().max(best.1.chars().count()) / 3).clamp(1, 3);
    (best.0 <= limit).then_some(best.1.as_str())
}

/// Levenshtein distance over characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1)
                .min(row[j] + 1)
                .min(diag + usize::from(ca != *cb));
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_suggests_the_closest() {
        let err = parse_train_config(r#"{"epochs": 3, "batch_sise": 4}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `batch_sise`"), "{err}");
        assert!(err.contains("did you mean `batch_size`?"), "{err}");
        let err = parse_train_config(r#"{"optimizer": {"learning_rate": 0.1}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`learning_rate`") && err.contains("`lr`"),
            "{err}"
        );
        let err = parse_train_config(r#"{"schedule": {"kind": "cosin", "t_max": 3}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("did you mean `cosine`?"), "{err}");
        let err = parse_train_config(r#"{"schedule": {"kind": "step", "stepsize": 3}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("did you mean `step_size`?"), "{err}");
    }

    #[test]
    fn settings_out_of_range_name_the_field() {
        let cases = [
            (r#"{"optimizer": {"lr": -1}}"#, "optimizer.lr"),
            (r#"{"optimizer": {"beta2": 1}}"#, "optimizer.beta2"),
            (r#"{"optimizer": {"eps": 0}}"#, "optimizer.eps"),
            (
                r#"{"optimizer": {"weight_decay": -0.1}}"#,
                "optimizer.weight_decay",
            ),
            (r#"{"batch_size": 0}"#, "batch_size"),
            (r#"{"epochs": 0}"#, "epochs"),
            (
                r#"{"early_stopping_patience": 0}"#,
                "early_stopping_patience",
            ),
            (
                r#"{"schedule": {"kind": "step", "step_size": 0, "gamma": 0.5}}"#,
                "schedule.step_size",
            ),
            (
                r#"{"schedule": {"kind": "cosine", "t_max": 4, "eta_min": -1}}"#,
                "schedule.eta_min",
            ),
        ];
        for (json, field) in cases {
            let err = parse_train_config(json).unwrap_err().to_string();
            assert!(err.contains(&format!("`{field}`")), "{json}: {err}");
        }
        let nan = TrainConfig {
            optimizer: AdamWParams {
                lr: f64::NAN,
                ..Default::default()
            },
            ..TrainConfig::default()
        };
        let err = nan.validate().unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid training setting `optimizer.lr` = NaN: expected a finite number > 0"
        );
        assert!(parse_train_config("{}").is_ok());
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "ab"), 2);
        assert_eq!(edit_distance("lr", "lr"), 0);
    }
}
