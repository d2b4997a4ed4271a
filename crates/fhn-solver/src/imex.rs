//! IMEX time stepping: diffusion implicit, reaction (cubic, coupling, recovery, current)
//! explicit.
//!
//! With `u = (v, w)`, `L u = (D·Δv, 0)` and `N(u, t) = (b·v(v−β)(δ−v) − c·w + I, e(v − γw))`:
//! - **SBDF1** (IMEX Euler): `(I − dt·L) u¹ = u⁰ + dt·N(u⁰)`; order 1.
//! - **SBDF2**: `(3I − 2dt·L) uⁿ⁺¹ = 4uⁿ − uⁿ⁻¹ + 2dt·(2N(uⁿ) − N(uⁿ⁻¹))`, started with one
//!   SBDF1 step (a local O(dt²) error, so the global order stays 2); order 2.
//! - **ARS(2,2,2)** (Ascher–Ruuth–Spiteri 1997): a two-stage, L-stable, stiffly accurate
//!   IMEX Runge–Kutta scheme with γ = 1 − 1/√2, δ = 1 − 1/(2γ); order 2.
//!
//! `w` has no implicit part, so its update is explicit in every scheme; only `v` needs the
//! factored solve, which is built once per (grid, dt) by `Stepper::new`.

use serde::{Deserialize, Serialize};

use crate::error::{Result, SolverError};
use crate::implicit::{Domain, FactoredSolve, Scratch};
use crate::params::FhnParams;
use crate::stimulus::Pulse;

/// The time-stepping scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    /// IMEX Euler (first order).
    Sbdf1,
    /// Second-order semi-implicit BDF (the default).
    #[default]
    Sbdf2,
    /// The ARS(2,2,2) IMEX Runge–Kutta scheme (second order, two implicit stages).
    Ars222,
}

impl Scheme {
    /// The scheme's formal order of accuracy in time.
    pub fn order(&self) -> usize {
        match self {
            Scheme::Sbdf1 => 1,
            Scheme::Sbdf2 | Scheme::Ars222 => 2,
        }
    }

    /// All schemes.
    pub const ALL: [Scheme; 3] = [Scheme::Sbdf1, Scheme::Sbdf2, Scheme::Ars222];
}

impl std::str::FromStr for Scheme {
    type Err = SolverError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "sbdf1" | "imex-euler" => Ok(Scheme::Sbdf1),
            "sbdf2" => Ok(Scheme::Sbdf2),
            "ars222" | "ars(2,2,2)" => Ok(Scheme::Ars222),
            _ => Err(SolverError::invalid(
                "scheme",
                s,
                "one of sbdf1, sbdf2, ars222",
            )),
        }
    }
}

/// A stimulus laid out on the fine nodes: each pulse's spatial profile, precomputed.
pub(crate) struct Forcing {
    terms: Vec<(Pulse, Vec<f64>)>,
    dt: f64,
}

impl Forcing {
    /// Precomputes the spatial profiles (time factors are step means over `dt`).
    /// `profile(k, i)` is pulse `k`'s spatial factor at node `i`.
    pub(crate) fn new(
        pulses: &[Pulse],
        n: usize,
        dt: f64,
        profile: impl Fn(usize, usize) -> f64,
    ) -> Self {
        let terms = pulses
            .iter()
            .enumerate()
            .map(|(k, p)| (*p, (0..n).map(|i| profile(k, i)).collect()))
            .collect();
        Self { terms, dt }
    }

    /// `out = I(t, ·)` on the fine nodes. `zero` says whether `out` is already all zeros
    /// (most steps have no current: then nothing is written).
    #[inline(always)]
    pub(crate) fn fill(&self, t: f64, out: &mut [f64], zero: &mut bool) {
        let active = self
            .terms
            .iter()
            .any(|(p, _)| p.step_time_factor(t, self.dt) != 0.0);
        if !active && *zero {
            return;
        }
        out.fill(0.0);
        *zero = !active;
        for (pulse, prof) in &self.terms {
            let a = pulse.step_time_factor(t, self.dt);
            if a != 0.0 {
                for (o, p) in out.iter_mut().zip(prof) {
                    *o += a * p;
                }
            }
        }
    }
}

/// The ARS(2,2,2) coefficients γ and δ.
fn ars_coefficients() -> (f64, f64) {
    let g = 1.0 - std::f64::consts::FRAC_1_SQRT_2;
    (g, 1.0 - 1.0 / (2.0 * g))
}

/// Advances (v, w) on a [`Domain`] with a fixed scheme and dt.
pub(crate) struct Stepper<'a> {
    p: FhnParams,
    scheme: Scheme,
    dt: f64,
    domain: &'a dyn Domain,
    /// SBDF1 / SBDF2 / ARS solves, built once.
    euler: Option<Box<dyn FactoredSolve>>,
    bdf2: Option<Box<dyn FactoredSolve>>,
    ars: Option<Box<dyn FactoredSolve>>,
    scratch: Scratch,
    /// Current state.
    pub v: Vec<f64>,
    /// Current state.
    pub w: Vec<f64>,
    /// Work buffers: previous state and reaction (SBDF2), stage values (ARS).
    rhs: Vec<f64>,
    cur: Vec<f64>,
    a: Vec<f64>,
    b: Vec<f64>,
    c: Vec<f64>,
    d: Vec<f64>,
    steps_taken: usize,
    /// Whether `cur` holds only zeros.
    cur_zero: bool,
}

impl<'a> Stepper<'a> {
    /// Factors the implicit operators the scheme needs; the state starts at rest.
    pub(crate) fn new(p: FhnParams, scheme: Scheme, dt: f64, domain: &'a dyn Domain) -> Self {
        let n = domain.len();
        let kd = dt * p.d;
        let (euler, bdf2, ars) = match scheme {
            Scheme::Sbdf1 => (Some(domain.factor(1.0, kd)), None, None),
            Scheme::Sbdf2 => (
                Some(domain.factor(1.0, kd)),
                Some(domain.factor(3.0, 2.0 * kd)),
                None,
            ),
            Scheme::Ars222 => (
                None,
                None,
                Some(domain.factor(1.0, ars_coefficients().0 * kd)),
            ),
        };
        let z = || vec![0.0; n];
        Self {
            p,
            scheme,
            dt,
            domain,
            euler,
            bdf2,
            ars,
            scratch: Scratch::default(),
            v: z(),
            w: z(),
            rhs: z(),
            cur: z(),
            a: z(),
            b: z(),
            c: z(),
            d: z(),
            steps_taken: 0,
            cur_zero: true,
        }
    }

    /// Takes one step from time `t`; an error if the new state is not finite.
    ///
    /// On x86-64 CPUs with AVX2 and FMA (detected at run time) the same code is compiled for
    /// 4-wide vectors; the node loops never fuse multiply–adds, so both paths give the same
    /// numbers.
    pub(crate) fn step(&mut self, t: f64, forcing: &Forcing) -> Result<()> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above), the only
            // requirement of `step_avx2`'s target features.
            return unsafe { self.step_avx2(t, forcing) };
        }
        self.step_portable(t, forcing)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn step_avx2(&mut self, t: f64, forcing: &Forcing) -> Result<()> {
        self.step_portable(t, forcing)
    }

    #[inline(always)]
    fn step_portable(&mut self, t: f64, forcing: &Forcing) -> Result<()> {
        match (self.scheme, self.steps_taken) {
            (Scheme::Sbdf1, _) => self.sbdf1(t, forcing),
            (Scheme::Sbdf2, 0) => {
                // The history terms −u⁰ − 2dt·N(u⁰) for the first SBDF2 step.
                forcing.fill(t, &mut self.cur, &mut self.cur_zero);
                let (p, dt2) = (self.p, 2.0 * self.dt);
                let n = self.v.len();
                let (v, w, cur) = (&self.v[..n], &self.w[..n], &self.cur[..n]);
                let (hv, hw) = (&mut self.a[..n], &mut self.b[..n]);
                for i in 0..n {
                    hv[i] = -v[i] - dt2 * (p.cubic(v[i]) - p.c * w[i] + cur[i]);
                    hw[i] = -w[i] - dt2 * (p.e * (v[i] - p.gamma * w[i]));
                }
                self.sbdf1(t, forcing)
            }
            (Scheme::Sbdf2, _) => self.sbdf2(t, forcing),
            (Scheme::Ars222, _) => self.ars222(t, forcing),
        }?;
        self.steps_taken += 1;
        self.check_finite(t + self.dt)
    }

    #[inline(always)]
    fn sbdf1(&mut self, t: f64, forcing: &Forcing) -> Result<()> {
        forcing.fill(t, &mut self.cur, &mut self.cur_zero);
        let (p, dt) = (self.p, self.dt);
        let n = self.v.len();
        let (v, w, cur, rhs) = (
            &self.v[..n],
            &mut self.w[..n],
            &self.cur[..n],
            &mut self.rhs[..n],
        );
        for i in 0..n {
            let (vi, wi) = (v[i], w[i]);
            rhs[i] = vi + dt * (p.cubic(vi) - p.c * wi + cur[i]);
            w[i] = wi + dt * p.e * (vi - p.gamma * wi);
        }
        let solve = self.euler.as_ref().ok_or_else(|| missing("sbdf1"))?;
        solve.solve(&mut self.rhs, &mut self.scratch);
        std::mem::swap(&mut self.v, &mut self.rhs);
        Ok(())
    }

    /// SBDF2 with `a, b` = the history terms `−uⁿ⁻¹ − 2dt·N(uⁿ⁻¹)` of v and w (one array
    /// per field instead of two: fewer memory streams in the loop).
    #[inline(always)]
    fn sbdf2(&mut self, t: f64, forcing: &Forcing) -> Result<()> {
        forcing.fill(t, &mut self.cur, &mut self.cur_zero);
        let (p, dt2) = (self.p, 2.0 * self.dt);
        let n = self.v.len();
        let (v, w, cur) = (&self.v[..n], &mut self.w[..n], &self.cur[..n]);
        let (hv, hw, rhs) = (&mut self.a[..n], &mut self.b[..n], &mut self.rhs[..n]);
        for i in 0..n {
            let (vi, wi) = (v[i], w[i]);
            let nv = p.cubic(vi) - p.c * wi + cur[i];
            let nw = p.e * (vi - p.gamma * wi);
            rhs[i] = 4.0 * vi + 2.0 * dt2 * nv + hv[i];
            w[i] = (4.0 * wi + 2.0 * dt2 * nw + hw[i]) * (1.0 / 3.0);
            hv[i] = -vi - dt2 * nv;
            hw[i] = -wi - dt2 * nw;
        }
        let solve = self.bdf2.as_ref().ok_or_else(|| missing("sbdf2"))?;
        solve.solve(&mut self.rhs, &mut self.scratch);
        std::mem::swap(&mut self.v, &mut self.rhs);
        Ok(())
    }

    /// ARS(2,2,2) with `a, b` = stage-2 (v, w), `c, d` = stage-1 reactions.
    #[inline(always)]
    fn ars222(&mut self, t: f64, forcing: &Forcing) -> Result<()> {
        let (g, delta) = ars_coefficients();
        let (p, dt) = (self.p, self.dt);
        let n = self.v.len();
        // Stage 1: explicit reaction at uⁿ; stage 2 solve.
        forcing.fill(t, &mut self.cur, &mut self.cur_zero);
        {
            let (v, w, cur) = (&self.v[..n], &self.w[..n], &self.cur[..n]);
            let (v2, w2, nv1, nw1) = (
                &mut self.a[..n],
                &mut self.b[..n],
                &mut self.c[..n],
                &mut self.d[..n],
            );
            for i in 0..n {
                nv1[i] = p.cubic(v[i]) - p.c * w[i] + cur[i];
                nw1[i] = p.e * (v[i] - p.gamma * w[i]);
                v2[i] = v[i] + g * dt * nv1[i];
                w2[i] = w[i] + g * dt * nw1[i];
            }
        }
        let solve = self.ars.as_ref().ok_or_else(|| missing("ars222"))?;
        solve.solve(&mut self.a, &mut self.scratch);
        // Stage 3: implicit diffusion of stage 2 (applied directly), reactions of both stages.
        self.domain.laplacian(&self.a, &mut self.rhs);
        forcing.fill(t + g * dt, &mut self.cur, &mut self.cur_zero);
        {
            let (v, w, cur, rhs) = (
                &self.v[..n],
                &mut self.w[..n],
                &self.cur[..n],
                &mut self.rhs[..n],
            );
            let (v2, w2, nv1, nw1) = (&self.a[..n], &self.b[..n], &self.c[..n], &self.d[..n]);
            for i in 0..n {
                let nv2 = p.cubic(v2[i]) - p.c * w2[i] + cur[i];
                let nw2 = p.e * (v2[i] - p.gamma * w2[i]);
                rhs[i] =
                    v[i] + dt * ((1.0 - g) * p.d * rhs[i] + delta * nv1[i] + (1.0 - delta) * nv2);
                w[i] += dt * (delta * nw1[i] + (1.0 - delta) * nw2);
            }
        }
        solve.solve(&mut self.rhs, &mut self.scratch);
        std::mem::swap(&mut self.v, &mut self.rhs);
        Ok(())
    }

    #[inline(always)]
    fn check_finite(&self, time: f64) -> Result<()> {
        let step = self.steps_taken;
        if !lanes_sum(&self.v).is_finite() {
            return Err(SolverError::NonFinite {
                field: "v",
                step,
                time,
            });
        }
        if !lanes_sum(&self.w).is_finite() {
            return Err(SolverError::NonFinite {
                field: "w",
                step,
                time,
            });
        }
        Ok(())
    }
}

fn missing(which: &str) -> SolverError {
    SolverError::invalid("scheme", which, "a stepper built for this scheme")
}

#[inline(always)]
/// A sum in 8 independent lanes (vectorises; NaN or ∞ anywhere makes it non-finite).
fn lanes_sum(x: &[f64]) -> f64 {
    let mut acc = [0.0f64; 8];
    let chunks = x.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().sum();
    for c in chunks {
        for k in 0..8 {
            acc[k] += c[k];
        }
    }
    acc.iter().sum::<f64>() + tail
}
