//! Learning-rate schedules, stepped once per epoch (as neuraloperator's trainer does).

use serde::{Deserialize, Serialize};

/// How the learning rate evolves with the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// The base rate throughout.
    #[default]
    Constant,
    /// PyTorch's `StepLR`: multiply by `gamma` every `step_size` epochs.
    Step {
        /// Epochs between decays (at least 1).
        step_size: usize,
        /// Decay factor.
        gamma: f64,
    },
    /// PyTorch's `CosineAnnealingLR` (closed form), held at `eta_min` after `t_max` epochs.
    Cosine {
        /// Epochs of the half period.
        t_max: usize,
        /// Final rate.
        eta_min: f64,
    },
}

impl Schedule {
    /// The learning rate of `epoch` (0-based) for base rate `base`.
    pub fn lr(&self, base: f64, epoch: usize) -> f64 {
        match *self {
            Schedule::Constant => base,
            Schedule::Step { step_size, gamma } => {
                base * gamma.powi((epoch / step_size.max(1)).min(i32::MAX as usize) as i32)
            }
            Schedule::Cosine { t_max, eta_min } => {
                let t = epoch.min(t_max) as f64 / t_max.max(1) as f64;
                eta_min + (base - eta_min) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_lr_halves_every_step_size_epochs() {
        let s = Schedule::Step {
            step_size: 2,
            gamma: 0.5,
        };
        let lrs: Vec<f64> = (0..5).map(|e| s.lr(1.0, e)).collect();
        assert_eq!(lrs, vec![1.0, 1.0, 0.5, 0.5, 0.25]);
    }

    #[test]
    fn cosine_goes_from_base_to_eta_min() {
        let s = Schedule::Cosine {
            t_max: 10,
            eta_min: 0.1,
        };
        assert!((s.lr(1.0, 0) - 1.0).abs() < 1e-12);
        assert!((s.lr(1.0, 5) - 0.55).abs() < 1e-12);
        assert!((s.lr(1.0, 10) - 0.1).abs() < 1e-12);
        assert!((s.lr(1.0, 30) - 0.1).abs() < 1e-12);
        assert_eq!(Schedule::Constant.lr(0.3, 99), 0.3);
    }

    #[test]
    fn serde_uses_a_kind_tag() {
        let s: Schedule =
            serde_json::from_str(r#"{"kind":"step","step_size":100,"gamma":0.5}"#).unwrap();
        assert_eq!(
            s,
            Schedule::Step {
                step_size: 100,
                gamma: 0.5
            }
        );
    }
}
