//! The 1D SBDF2 stepper used by [`crate::Solver1d`]: the same scheme as
//! [`crate::imex`]'s (`(3I − 2dt·DΔ) vⁿ⁺¹ = 4vⁿ − vⁿ⁻¹ + 2dt(2Nⁿ − Nⁿ⁻¹)`, one IMEX-Euler
//! start step), reorganised for speed.
//!
//! Why a separate stepper: on the default grid (397 nodes) a step is a few hundred
//! nanoseconds, so it is bound by the dependent chain of the tridiagonal solve and by
//! memory passes, not by arithmetic. Here
//! - the whole state (v, w, the SBDF2 history, the forcing) lives in the
//!   segment-interleaved layout of [`Partitioned`], so the tridiagonal sweeps run
//!   [`LANES`] segments at once in SIMD lanes, and every other operation is pointwise
//!   (layout-agnostic); only output samples are un-permuted;
//! - the pointwise reaction stage is fused into the forward sweep (one pass computes the
//!   reaction, the w update, the history and the forward elimination), and the final
//!   boundary fix-up `v = x + d·hb` of each solve is deferred into the next step's pass;
//! - that pass also sums v and w per lane, which is the non-finite check (an error names the
//!   step that produced the value, as in [`crate::imex`]).
//!
//! The numbers agree with the generic stepper to rounding (tests below).

use crate::error::{Result, SolverError};
use crate::imex::Forcing;
#[cfg(target_arch = "x86_64")]
use crate::lanes::{Avx2x4, Avx2x8};
use crate::lanes::{Lanes, Vector};
use crate::params::FhnParams;
use crate::partition::{Carry, Partitioned, LANES};

const P: usize = LANES;

/// Advances (v, w) on a line with SBDF2; the state starts at rest.
pub(crate) struct Sbdf2Line {
    p: FhnParams,
    dt: f64,
    coefficients: Coefficients,
    euler: Partitioned<P>,
    bdf2: Partitioned<P>,
    /// v in lane form: the true vⁿ is `x + d·hb` (bdf2's `hb`).
    x: Vec<f64>,
    d: Carry<P>,
    w: Vec<f64>,
    /// History of v: `−vⁿ⁻¹ − 2dt·N(uⁿ⁻¹)`.
    hv: Vec<f64>,
    /// History of w, divided by 3: `(−wⁿ⁻¹ − 2dt·M(uⁿ⁻¹))/3`.
    hw: Vec<f64>,
    /// The applied current at the step's time, and whether it is all zeros.
    cur: Vec<f64>,
    cur_zero: bool,
    steps_taken: usize,
    /// The time reached by the last step.
    time: f64,
}

/// The per-step constants of the fused pass, from (params, dt).
#[derive(Clone, Copy)]
struct Coefficients {
    /// `−(v + 2dt·b·v(v−β)(δ−v)) = v·(k1 + v·(k2 + v·k3))`.
    k1: f64,
    k2: f64,
    k3: f64,
    /// `2dt·c`.
    c2: f64,
    /// `2dt`.
    dt2: f64,
    /// The w history: `(−w − 2dt·e(v − γw))/3 = cw·w + cv·v`.
    cw: f64,
    cv: f64,
}

impl Coefficients {
    fn new(p: &FhnParams, dt: f64) -> Self {
        let dt2 = 2.0 * dt;
        Self {
            k1: -(1.0 - dt2 * p.b * p.beta * p.delta),
            k2: -(dt2 * p.b * (p.beta + p.delta)),
            k3: dt2 * p.b,
            c2: dt2 * p.c,
            dt2,
            cw: (dt2 * p.e * p.gamma - 1.0) / 3.0,
            cv: -dt2 * p.e / 3.0,
        }
    }
}

impl Sbdf2Line {
    /// Factors both operators for `n` nodes of spacing `h`.
    pub(crate) fn new(p: FhnParams, dt: f64, n: usize, h: f64) -> Self {
        let k = dt * p.d / (h * h);
        let euler = Partitioned::neumann(n, 1.0, k);
        let bdf2 = Partitioned::neumann(n, 3.0, 2.0 * k);
        let z = || vec![0.0; bdf2.padded_len()];
        Self {
            p,
            dt,
            coefficients: Coefficients::new(&p, dt),
            x: z(),
            d: [0.0; P],
            w: z(),
            hv: z(),
            hw: z(),
            cur: z(),
            cur_zero: true,
            steps_taken: 0,
            time: 0.0,
            euler,
            bdf2,
        }
    }

    /// The interleaved layout (to lay out a [`Forcing`] for [`Self::step`]).
    pub(crate) fn layout(&self) -> &Partitioned<P> {
        &self.bdf2
    }

    /// Takes one step from time `t`; `forcing` must be laid out interleaved (length
    /// `layout().padded_len()`, zero on padding). An error if the state reached by the
    /// previous step is not finite (checked in this step's pass; call
    /// [`Self::check_finite`] after the last step).
    ///
    /// On x86-64 CPUs with AVX2 and FMA (detected at run time) the passes run in vector
    /// registers with fused multiply–adds (differing from the portable path by rounding).
    pub(crate) fn step(&mut self, t: f64, forcing: &Forcing) -> Result<()> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above), the only
            // requirement of `step_avx2`'s target features.
            return unsafe { self.step_avx2(t, forcing) };
        }
        self.step_with::<Lanes<4>, Lanes<P>>(t, forcing, false)
    }

    /// The portable step (no FMA); for tests comparing both paths.
    #[cfg(test)]
    pub(crate) fn step_portable(&mut self, t: f64, forcing: &Forcing) -> Result<()> {
        self.step_with::<Lanes<4>, Lanes<P>>(t, forcing, false)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn step_avx2(&mut self, t: f64, forcing: &Forcing) -> Result<()> {
        self.step_with::<Avx2x4, Avx2x8>(t, forcing, true)
    }

    /// One step with vector types `H` (the fused pass, run once per group of `H::WIDTH`
    /// lanes: fewer live registers) and `V` (all [`LANES`] lanes: the backward sweep is
    /// latency-bound, so it advances every segment at once); `fma`: whether the first
    /// step's solve may use FMA.
    #[inline(always)]
    fn step_with<H: Vector, V: Vector>(
        &mut self,
        t: f64,
        forcing: &Forcing,
        fma: bool,
    ) -> Result<()> {
        forcing.fill(t, &mut self.cur, &mut self.cur_zero);
        if self.steps_taken == 0 {
            self.first_step(fma);
        } else {
            let (mut sv, mut sw) = ([0.0; P], [0.0; P]);
            for lane in (0..P).step_by(H::WIDTH) {
                if self.cur_zero {
                    self.fused_pass::<H, false>(lane, &mut sv, &mut sw);
                } else {
                    self.fused_pass::<H, true>(lane, &mut sv, &mut sw);
                }
            }
            // The pass read the state of the previous step: an error names that one.
            self.check_sums(sv, sw)?;
            let c = if fma {
                self.bdf2.forward_carry::<true>(&self.x)
            } else {
                self.bdf2.forward_carry::<false>(&self.x)
            };
            self.backward::<V>(c);
            self.d = if fma {
                self.bdf2.backward_carry::<true>(&self.x)
            } else {
                self.bdf2.backward_carry::<false>(&self.x)
            };
        }
        self.steps_taken += 1;
        self.time = t + self.dt;
        if self.steps_taken == 1 {
            self.check_finite()?;
        }
        Ok(())
    }

    /// IMEX Euler from rest (or any state with `d = 0`), recording the SBDF2 history.
    fn first_step(&mut self, fma: bool) {
        let (p, dt) = (self.p, self.dt);
        let dt2 = 2.0 * dt;
        let n = self.x.len();
        let (x, w, cur) = (&mut self.x[..n], &mut self.w[..n], &self.cur[..n]);
        let (hv, hw) = (&mut self.hv[..n], &mut self.hw[..n]);
        for i in 0..n {
            let (vi, wi) = (x[i], w[i]);
            let nv = p.cubic(vi) - p.c * wi + cur[i];
            let nw = p.e * (vi - p.gamma * wi);
            hv[i] = -vi - dt2 * nv;
            hw[i] = (-wi - dt2 * nw) / 3.0;
            x[i] = vi + dt * nv;
            w[i] = wi + dt * nw;
        }
        if fma {
            self.euler.solve_interleaved(&mut self.x);
        } else {
            self.euler.solve_interleaved_portable(&mut self.x);
        }
        self.d = [0.0; P];
    }

    /// One pass over the rows for lanes `lane..lane + V::WIDTH`: the true vⁿ (deferred
    /// fix-up), the reaction, wⁿ⁺¹, the new histories, and the forward elimination of the
    /// SBDF2 solve, written over `x`. Stores those lanes' sums of vⁿ and wⁿ in `sv`, `sw`.
    ///
    /// With `H` the v history and `S = v + 2dt·C(v)` (C the cubic):
    /// `H' = −S + 2dt·c·w − 2dt·I` and the right-hand side `4v + 4dt·N + H = 2v + H − 2H'`;
    /// with `K` the w history over 3, `K' = (−w − 2dt·M)/3` and `w' = (2/3)w + K − 2K'`.
    /// That is 9 multiplies or multiply–adds per vector (the FMA ports are the limit) and
    /// 8 additions.
    #[inline(always)]
    fn fused_pass<V: Vector, const CUR: bool>(
        &mut self,
        lane: usize,
        sv: &mut [f64; P],
        sw: &mut [f64; P],
    ) {
        let k = self.coefficients;
        let coef = self.bdf2.coefficients();
        let (lower, hb) = (coef.lower, coef.hb);
        let d = V::load(&self.d[lane..]);
        let zero = V::splat(0.0);
        let (mut z, mut sum_v, mut sum_w) = (zero, zero, zero);
        let (k1, k2, k3) = (V::splat(k.k1), V::splat(k.k2), V::splat(k.k3));
        let (c2, dt2, cw, cv) = (
            V::splat(k.c2),
            V::splat(k.dt2),
            V::splat(k.cw),
            V::splat(k.cv),
        );
        let two_thirds = V::splat(2.0 / 3.0);
        // Local slices (distinct borrows: no aliasing) and strided rows of P from `lane`.
        let rows = self
            .x
            .chunks_exact_mut(P)
            .zip(self.w.chunks_exact_mut(P))
            .zip(self.hv.chunks_exact_mut(P).zip(self.hw.chunks_exact_mut(P)))
            .zip(hb.chunks_exact(P).zip(lower.chunks_exact(P)))
            .zip(self.cur.chunks_exact(P));
        for ((((x, w), (hv, hw)), (hb, lower)), cur) in rows {
            let (x, w, hv, hw) = (
                &mut x[lane..],
                &mut w[lane..],
                &mut hv[lane..],
                &mut hw[lane..],
            );
            let (hb, lower, cur) = (&hb[lane..], &lower[lane..], &cur[lane..]);
            let v = d.madd(V::load(hb), V::load(x));
            let wn = V::load(w);
            sum_v = sum_v + v;
            sum_w = sum_w + wn;
            let minus_s = v * v.madd(v.madd(k3, k2), k1);
            let mut h = c2.madd(wn, minus_s);
            if CUR {
                h = dt2.nmadd(V::load(cur), h);
            }
            let rhs = (v + v + V::load(hv)) - (h + h);
            h.store(hv);
            let u = cv.madd(v, cw * wn);
            (two_thirds.madd(wn, V::load(hw)) - (u + u)).store(w);
            u.store(hw);
            z = V::load(lower).nmadd(z, rhs);
            z.store(x);
        }
        sum_v.store(&mut sv[lane..]);
        sum_w.store(&mut sw[lane..]);
    }

    /// The backward sweep of the SBDF2 solve on the corrected forward values (carry `c`).
    #[inline(always)]
    fn backward<V: Vector>(&mut self, c: Carry<P>) {
        let coef = self.bdf2.coefficients();
        let (inv, bwd, hz) = (coef.inv, coef.bwd, coef.hz);
        let c = V::load(&c);
        let mut x = V::splat(0.0);
        let rows = self
            .x
            .chunks_exact_mut(P)
            .zip(hz.chunks_exact(P))
            .zip(inv.chunks_exact(P).zip(bwd.chunks_exact(P)))
            .rev();
        for ((xr, hz), (inv, bwd)) in rows {
            let zt = c.madd(V::load(hz), V::load(xr) * V::load(inv));
            x = V::load(bwd).nmadd(x, zt);
            x.store(xr);
        }
    }

    fn check_sums(&self, sv: [f64; P], sw: [f64; P]) -> Result<()> {
        let (step, time) = (self.steps_taken, self.time);
        if !sv.iter().sum::<f64>().is_finite() {
            return Err(SolverError::NonFinite {
                field: "v",
                step,
                time,
            });
        }
        if !sw.iter().sum::<f64>().is_finite() {
            return Err(SolverError::NonFinite {
                field: "w",
                step,
                time,
            });
        }
        Ok(())
    }

    /// An error if the current state (after the last step) is not finite.
    pub(crate) fn check_finite(&self) -> Result<()> {
        let (mut sv, mut sw) = (Lanes::<P>::splat(0.0), Lanes::<P>::splat(0.0));
        let d = Lanes(self.d);
        let hb = self.bdf2.coefficients().hb;
        let rows = self
            .x
            .chunks_exact(P)
            .zip(self.w.chunks_exact(P))
            .zip(hb.chunks_exact(P));
        for ((x, w), hb) in rows {
            sv = sv + d.madd::<false>(Lanes::load(hb), Lanes::load(x));
            sw = sw + Lanes::load(w);
        }
        self.check_sums(sv.0, sw.0)
    }

    /// Where nodes `0, r, 2r, …` (`count` of them) live: (interleaved slot, segment).
    pub(crate) fn sample_points(&self, r: usize, count: usize) -> Vec<(usize, usize)> {
        let layout = &self.bdf2;
        (0..count)
            .map(|j| (layout.index(j * r), (j * r) / layout.rows()))
            .collect()
    }

    /// The true (v, w) at the sample points.
    pub(crate) fn sample(&self, points: &[(usize, usize)], v: &mut [f64], w: &mut [f64]) {
        let hb = self.bdf2.coefficients().hb;
        for ((&(k, s), v), w) in points.iter().zip(v).zip(w) {
            *v = self.x[k] + self.d[s] * hb[k];
            *w = self.w[k];
        }
    }

    /// The true (v, w) at node `i`.
    #[cfg(test)]
    pub(crate) fn at(&self, i: usize) -> (f64, f64) {
        let layout = &self.bdf2;
        let k = layout.index(i);
        let s = i / layout.rows();
        (
            self.x[k] + self.d[s] * layout.coefficients().hb[k],
            self.w[k],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imex::{Scheme, Stepper};
    use crate::implicit::Line;
    use crate::stimulus::{BoxPulse, GaussianPulse, Pulse};

    /// Runs `steps` steps of both steppers on `n` nodes; returns max |Δv|, max |Δw| and the
    /// largest |v|.
    fn compare(
        n: usize,
        dt: f64,
        steps: usize,
        pulses: &[Pulse],
        portable: bool,
    ) -> (f64, f64, f64) {
        let p = FhnParams::default();
        let h = 1.0 / (n - 1) as f64;
        let x: Vec<f64> = (0..n).map(|i| i as f64 * h).collect();
        let natural = Forcing::new(pulses, n, dt, |k, i| {
            pulses[k].node_space_factor(x[i], h, 1.0)
        });
        let line = Line { n, h };
        let mut generic = Stepper::new(p, Scheme::Sbdf2, dt, &line);
        let mut fast = Sbdf2Line::new(p, dt, n, h);
        let layout = fast.layout().clone();
        let inter = Forcing::new(pulses, layout.padded_len(), dt, |k, slot| {
            let i = layout.node(slot);
            if i < n {
                pulses[k].node_space_factor(x[i], h, 1.0)
            } else {
                0.0
            }
        });
        for s in 0..steps {
            let t = s as f64 * dt;
            generic.step(t, &natural).unwrap();
            if portable {
                fast.step_portable(t, &inter).unwrap();
            } else {
                fast.step(t, &inter).unwrap();
            }
        }
        fast.check_finite().unwrap();
        let (mut dv, mut dw, mut vmax) = (0.0f64, 0.0f64, 0.0f64);
        for i in 0..n {
            let (v, w) = fast.at(i);
            dv = dv.max((v - generic.v[i]).abs());
            dw = dw.max((w - generic.w[i]).abs());
            vmax = vmax.max(v.abs());
        }
        (dv, dw, vmax)
    }

    fn pulses() -> Vec<Pulse> {
        vec![
            BoxPulse {
                x0: 0.3,
                width: 0.1,
                t0: 0.0,
                duration: 1.0,
                amplitude: 1.5,
            }
            .into(),
            GaussianPulse {
                x0: 0.8,
                sigma_x: 0.05,
                t0: 2.0,
                sigma_t: 0.5,
                amplitude: 1.0,
            }
            .into(),
        ]
    }

    #[test]
    fn matches_the_generic_stepper_on_many_sizes() {
        // Below one row of lanes, below two, odd, and the default grid.
        for n in [3, 5, 7, 8, 9, 13, 16, 17, 31, 64, 101, 397] {
            for portable in [false, true] {
                let (dv, dw, vmax) = compare(n, 0.04, 150, &pulses(), portable);
                assert!(vmax > 0.5, "n={n}: the pulse should excite ({vmax})");
                assert!(
                    dv < 1e-11 && dw < 1e-11,
                    "n={n} portable={portable}: {dv} {dw}"
                );
            }
        }
    }

    #[test]
    fn simd_and_portable_steppers_agree() {
        let (n, dt) = (397, 0.0404);
        let p = FhnParams::default();
        let h = 1.0 / (n - 1) as f64;
        let pulses = pulses();
        let mut a = Sbdf2Line::new(p, dt, n, h);
        let mut b = Sbdf2Line::new(p, dt, n, h);
        let layout = a.layout().clone();
        let forcing = Forcing::new(&pulses, layout.padded_len(), dt, |k, slot| {
            let i = layout.node(slot);
            if i < n {
                pulses[k].node_space_factor(i as f64 * h, h, 1.0)
            } else {
                0.0
            }
        });
        for s in 0..300 {
            a.step(s as f64 * dt, &forcing).unwrap();
            b.step_portable(s as f64 * dt, &forcing).unwrap();
        }
        let diff = (0..n)
            .map(|i| {
                let ((va, wa), (vb, wb)) = (a.at(i), b.at(i));
                (va - vb).abs().max((wa - wb).abs())
            })
            .fold(0.0, f64::max);
        assert!(
            a.at(n / 3).0.abs() > 1e-3,
            "the pulse should have an effect"
        );
        assert!(diff < 1e-13, "{diff}");
    }

    #[test]
    fn non_finite_state_names_the_step() {
        // A huge step through the cubic overflows within a few steps.
        let (n, dt) = (11, 5.0);
        let p = FhnParams::default();
        let pulse: Pulse = BoxPulse {
            x0: 0.5,
            width: 0.5,
            t0: 0.0,
            duration: 40.0,
            amplitude: 5.0,
        }
        .into();
        let mut fast = Sbdf2Line::new(p, dt, n, 0.1);
        let layout = fast.layout().clone();
        let forcing = Forcing::new(&[pulse], layout.padded_len(), dt, |_, slot| {
            if layout.node(slot) < n {
                1.0
            } else {
                0.0
            }
        });
        let mut result = Ok(());
        for s in 0..50 {
            // Only `step`: its pass detects what the previous step produced.
            result = fast.step(s as f64 * dt, &forcing);
            if result.is_err() {
                break;
            }
        }
        // The same step and time as the generic stepper reports.
        let line = Line { n, h: 0.1 };
        let natural = Forcing::new(&[pulse], n, dt, |_, _| 1.0);
        let mut generic = Stepper::new(p, Scheme::Sbdf2, dt, &line);
        let mut expected = Ok(());
        for s in 0..50 {
            expected = generic.step(s as f64 * dt, &natural);
            if expected.is_err() {
                break;
            }
        }
        match (result, expected) {
            (
                Err(SolverError::NonFinite { step, time, field }),
                Err(SolverError::NonFinite {
                    step: s2,
                    time: t2,
                    field: f2,
                }),
            ) => assert_eq!((step, time, field), (s2, t2, f2)),
            other => panic!("expected two non-finite errors, got {other:?}"),
        }
    }
}
