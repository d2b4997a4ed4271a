//! The FitzHugh–Nagumo kinetics and diffusion.
//!
//! ∂v/∂t = D ∂²v/∂x² + b·v(v−β)(δ−v) − c·w + I(t,x),   ∂w/∂t = e·(v − γ·w),
//! with zero-flux boundaries and the rest state v = w = 0 at t = 0.

use serde::{Deserialize, Serialize};

use crate::error::{check_finite, check_non_negative, check_positive, Result, SolverError};

/// Parameters of the FitzHugh–Nagumo model. [`Default`] gives the benchmark's values
/// (b = 5, c = 1, β = 0.1, δ = 1, γ = 0.25, e = 0.1, D = 1e-3).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FhnParams {
    /// Strength of the cubic reaction.
    pub b: f64,
    /// Coupling of the recovery variable into v.
    pub c: f64,
    /// Excitation threshold β (0 < β < δ).
    pub beta: f64,
    /// Excited state δ.
    pub delta: f64,
    /// Recovery decay γ.
    pub gamma: f64,
    /// Recovery rate e (the time-scale separation).
    pub e: f64,
    /// Diffusion coefficient D.
    pub d: f64,
}

impl Default for FhnParams {
    fn default() -> Self {
        Self {
            b: 5.0,
            c: 1.0,
            beta: 0.1,
            delta: 1.0,
            gamma: 0.25,
            e: 0.1,
            d: 1e-3,
        }
    }
}

impl FhnParams {
    /// Checks every field: all finite, b, D, e, δ > 0, c, γ ≥ 0, 0 < β < δ.
    pub fn validate(&self) -> Result<()> {
        check_positive("params.b", self.b)?;
        check_non_negative("params.c", self.c)?;
        check_finite("params.beta", self.beta)?;
        check_positive("params.delta", self.delta)?;
        check_non_negative("params.gamma", self.gamma)?;
        check_positive("params.e", self.e)?;
        check_positive("params.d", self.d)?;
        if !(self.beta > 0.0 && self.beta < self.delta) {
            return Err(SolverError::invalid(
                "params.beta",
                self.beta,
                "0 < beta < delta",
            ));
        }
        Ok(())
    }

    /// The cubic reaction b·v(v−β)(δ−v).
    #[inline(always)]
    pub fn cubic(&self, v: f64) -> f64 {
        self.b * v * (v - self.beta) * (self.delta - v)
    }

    /// The travelling-wave speed of the cubic (without recovery): √(bD/2)·(δ − 2β).
    pub fn front_speed(&self) -> f64 {
        (self.b * self.d / 2.0).sqrt() * (self.delta - 2.0 * self.beta)
    }
}
