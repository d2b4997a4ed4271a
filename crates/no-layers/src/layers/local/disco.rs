//! DISCO (discrete–continuous) local integral kernel on equidistant 2-D grids, as used
//! by LocalNO (Liu-Schiaffini et al., ICML 2024; torch-harmonics' filter basis).
//!
//! The operator is a local integral `(Kf)(p) = Σ_k w_k ∫ ψ̂_k(p − q) f(q) dq` over a disk
//! of *physical* radius `r`, with `ψ_k` torch-harmonics 0.8's `PiecewiseLinearFilterBasis`
//! (hat functions in radius times hat functions in angle, see [`basis_value`]) and each
//! `ψ̂_k` normalised to unit integral under the grid's quadrature. On a grid with
//! spacings `h_H = L_H/N_H`, `h_W = L_W/N_W` the disk covers `⌊r/h⌋` pixels on each side;
//! the basis is evaluated at the pixel offsets, normalised so that `Σ_q ψ̂_k(q)·h_H·h_W = 1`,
//! contracted with the weights into a `[O, C/g, P_H, P_W]` stencil, and applied as a
//! "same" convolution of `h_H·h_W·f` (plus a bias).
//!
//! # Relation to neuraloperator's `EquidistantDiscreteContinuousConv2d`
//! - At the shape it was built for (`default_in_shape`), with the default radius
//!   `max(L/N)`, this is exactly the anchor's operator (same 3×3 stencil, same weights
//!   layout, same normalisation, zero padding), so LocalNO weights import unchanged.
//! - The anchor precomputes its stencil once, for `default_in_shape`, and applies the
//!   same pixel stencil at every resolution, so its physical radius shrinks as the grid
//!   is refined. Here the stencil is rebuilt for the input's grid with the same physical
//!   radius: the layer is one operator at every resolution (it differs from the anchor
//!   when the resolution differs from the default, by design).
//! - The anchor samples its local grid with `linspace(−r, r, ⌊2rN/L⌋+1)`, which only
//!   lands on pixel centres when `2rN/L` is an even integer (true for the default radius);
//!   here the offsets are always whole pixels.
//! - Weight slots: the anchor allocates `(k0−1)·k1 + 1` weights per channel pair, but the
//!   piecewise-linear basis has `(k0/2)·k1 + k0%2` functions (5 slots for 4 functions at the
//!   default `[2, 4]`). The layer keeps the anchor's weight shape so that checkpoints
//!   import, and the extra slots multiply a zero filter exactly as in the anchor: they
//!   never affect the output and always receive a zero gradient.
//! - `padding`: the anchor's `periodic` flag is ignored by its equidistant forward, which
//!   always zero-pads; [`PaddingMode::Zeros`] is therefore the default. `Periodic` is
//!   offered for translation-equivariant models.
//! - Only stride 1 (output grid = input grid), as LocalNO uses it.
//!
//! Parameters: `weight` `[out, in/groups, (k0−1)·k1+1]` initialised `N(0, 1/(in/groups))`
//! and, with `bias`, `bias` `[out]` initialised to zero (neuraloperator's init).
//! The kernel axes: `x` runs along the last (W) axis and `y` along the H axis, and the
//! kernel is evaluated at `p − q` (a true convolution), as the anchor's
//! `permute(0,2,1).flip(-1,-2)` of its local filter does.

use crate::error::{LayerError, Result};
use crate::layers::local::conv::{conv2d_same, PaddingMode};
use candle_core::{Module, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};
use std::f64::consts::PI;

/// Configuration of a [`Disco`] kernel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// `[k0, k1]`: hat functions in radius (`k0`) and angle (`k1`); `k1 = 1` is isotropic.
    pub kernel_shape: [usize; 2],
    /// Physical extent `[L_H, L_W]` of the grid (neuraloperator: `[2, 2]`, the square `[−1,1]²`).
    pub domain_length: [f64; 2],
    /// The training grid `[N_H, N_W]`; sets the default radius.
    pub default_in_shape: [usize; 2],
    /// Physical cutoff radius; `None` → `max(L_H/N_H, L_W/N_W)` at `default_in_shape`
    /// (one pixel, a 3×3 stencil, as neuraloperator).
    pub radius_cutoff: Option<f64>,
    /// Channel groups.
    pub groups: usize,
    /// Learn a per-output-channel bias.
    pub bias: bool,
    /// Boundary treatment (the anchor always zero-pads).
    pub padding: PaddingMode,
    /// How the basis is evaluated (see [`BasisEvaluation`]).
    pub evaluation: BasisEvaluation,
}

/// How the filter basis is evaluated on the pixel offsets.
///
/// The anchor evaluates the basis in float32 on its one-pixel-radius 3×3 stencil. At the
/// stencil's edge pixels (`r = r_cutoff`) the hat functions are exactly 0 in exact
/// arithmetic, but float32 leaves residues of ~1e-7, and the per-basis normalisation
/// (divide by `Σψ·q + 1e-9`) amplifies them: at 100×100 two of the four basis functions,
/// which vanish identically in exact arithmetic, come out as stencils with entries up to
/// 0.023 (after the quadrature weight), and the values change with the resolution
/// (measured with neuraloperator 2.0 / torch-harmonics 0.8; see docs/layers-local.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BasisEvaluation {
    /// Exact (f64) evaluation at the pixel offsets, at every resolution.
    #[default]
    Exact,
    /// At `default_in_shape`, reproduce the anchor's float32 evaluation step by step
    /// (its `linspace` local grid, float32 rounding, normalisation), so that imported
    /// neuraloperator weights give the anchor's outputs; at any other resolution, exact.
    AnchorF32,
}

impl Default for DiscoConfig {
    fn default() -> Self {
        Self {
            in_channels: 32,
            out_channels: 32,
            kernel_shape: [2, 4],
            domain_length: [2.0, 2.0],
            default_in_shape: [100, 100],
            radius_cutoff: None,
            groups: 1,
            bias: true,
            padding: PaddingMode::Zeros,
            evaluation: BasisEvaluation::Exact,
        }
    }
}

impl DiscoConfig {
    /// The physical radius actually used.
    pub fn radius(&self) -> f64 {
        self.radius_cutoff.unwrap_or_else(|| {
            (self.domain_length[0] / self.default_in_shape[0] as f64)
                .max(self.domain_length[1] / self.default_in_shape[1] as f64)
        })
    }

    /// Weight slots per channel pair (the anchor's `(k0−1)·k1 + 1`).
    pub fn weight_slots(&self) -> usize {
        (self.kernel_shape[0] - 1) * self.kernel_shape[1] + 1
    }

    /// Basis functions of the piecewise-linear basis, `(k0/2)·k1 + k0%2`.
    pub fn basis_functions(&self) -> usize {
        (self.kernel_shape[0] / 2) * self.kernel_shape[1] + self.kernel_shape[0] % 2
    }

    fn validate(&self) -> Result<()> {
        let bad = |reason: String| {
            Err(LayerError::InvalidConfig {
                layer: "Disco",
                reason,
            })
        };
        if self.kernel_shape[0] == 0 || self.kernel_shape[1] == 0 {
            return bad(format!(
                "kernel_shape entries must be positive, got {:?}",
                self.kernel_shape
            ));
        }
        if self.groups == 0
            || self.in_channels == 0
            || self.out_channels == 0
            || !self.in_channels.is_multiple_of(self.groups)
            || !self.out_channels.is_multiple_of(self.groups)
        {
            return bad(format!(
                "groups ({}) must divide in ({}) and out ({}) channels",
                self.groups, self.in_channels, self.out_channels
            ));
        }
        if self
            .domain_length
            .iter()
            .any(|l| !(l.is_finite() && *l > 0.0))
            || self.default_in_shape.contains(&0)
        {
            return bad(format!(
                "domain_length {:?} and default_in_shape {:?} must be positive",
                self.domain_length, self.default_in_shape
            ));
        }
        let r = self.radius();
        if !(r.is_finite() && r > 0.0) {
            return bad(format!(
                "radius_cutoff must be positive and finite, got {r}"
            ));
        }
        if self.evaluation == BasisEvaluation::AnchorF32 {
            let (ph, pw) = anchor_stencil_size(self);
            if ph != pw || ph % 2 == 0 {
                return bad(format!(
                    "anchor_f32 evaluation needs an odd square anchor stencil, got {ph}×{pw}"
                ));
            }
        }
        Ok(())
    }
}

/// `min(|a − b|, 2π − |a − b|)`, torch-harmonics' `_circle_dist`.
fn circle_dist(a: f64, b: f64) -> f64 {
    let d = (a - b).abs();
    d.min((2.0 * PI - d).abs())
}

/// Value of basis function `k` of torch-harmonics 0.8's `PiecewiseLinearFilterBasis`
/// with shape `[nr, nphi]` and cutoff `r_cutoff` at the offset `(x, y)`
/// (`r = √(x²+y²)`, `φ = atan2(y, x) + π`). Indices at or beyond the number of basis
/// functions give 0 (the anchor's unused weight slot).
pub fn basis_value(kernel_shape: [usize; 2], r_cutoff: f64, k: usize, x: f64, y: f64) -> f64 {
    let [nr, nphi] = kernel_shape;
    if k >= (nr / 2) * nphi + nr % 2 {
        return 0.0;
    }
    // +0.0 turns a −0.0 into +0.0 so that atan2 matches torch on the axes.
    let (x, y) = (x + 0.0, y + 0.0);
    let r = x.hypot(y);
    let phi = y.atan2(x) + PI;
    let dr = 2.0 * r_cutoff / (nr as f64 + 1.0);
    // Hat values below 1e-10 are round-off of an exact zero on a support boundary (the
    // outer ring reaches 0 exactly at r_cutoff, where pixels sit); snapping them keeps
    // vanishing basis functions at exactly zero instead of letting the normalisation
    // amplify the residue (the anchor's float32 quirk, see BasisEvaluation).
    let snap = |v: f64| if v < 1e-10 { 0.0 } else { v };
    let hat_r = |rr: f64, ir: f64| {
        if (rr - ir).abs() <= dr && rr <= r_cutoff {
            snap(1.0 - (rr - ir).abs() / dr)
        } else {
            0.0
        }
    };
    if nphi == 1 {
        let ir = if nr % 2 == 1 {
            k as f64 * dr
        } else {
            (k as f64 + 0.5) * dr
        };
        return hat_r(r, ir);
    }
    let dphi = 2.0 * PI / nphi as f64;
    let hat_phi = |p: f64, ip: f64| {
        let d = circle_dist(p, ip);
        if d <= dphi {
            snap(1.0 - d / dphi)
        } else {
            0.0
        }
    };
    if nr % 2 == 1 {
        if k == 0 {
            return hat_r(r, 0.0);
        }
        let ir = ((k - 1) / nphi + 1) as f64 * dr;
        let iphi = ((k - 1) % nphi) as f64 * dphi - PI;
        hat_r(r, ir) * hat_phi(phi, iphi)
    } else {
        // Even nr: the innermost ring straddles the centre, so the point is also seen
        // from the opposite direction at radius −r.
        let ir = ((k / nphi) as f64 + 0.5) * dr;
        let iphi = (k % nphi) as f64 * dphi - PI;
        let phin = if phi >= 0.0 { phi - PI } else { phi + PI };
        hat_r(r, ir) * hat_phi(phi, iphi) + hat_r(-r, ir) * hat_phi(phin, iphi)
    }
}

/// The normalised filter `[slots, P_H·P_W]` for a grid of shape `[n_h, n_w]`, quadrature
/// weight included (`q·ψ̂_k`), and the stencil size `(P_H, P_W)`.
pub fn local_filter(cfg: &DiscoConfig, n_h: usize, n_w: usize) -> (Vec<f64>, usize, usize) {
    let r = cfg.radius();
    let (hh, hw) = (
        cfg.domain_length[0] / n_h as f64,
        cfg.domain_length[1] / n_w as f64,
    );
    // Pixels within the radius; the tiny relative slack keeps a pixel that lies exactly
    // on the cutoff (the default radius is one pixel) despite rounding.
    let (mh, mw) = (
        (r / hh * (1.0 + 1e-12)).floor() as usize,
        (r / hw * (1.0 + 1e-12)).floor() as usize,
    );
    let (ph, pw) = (2 * mh + 1, 2 * mw + 1);
    let q = cfg.domain_length[0] * cfg.domain_length[1] / (n_h * n_w) as f64;
    let slots = cfg.weight_slots();
    let mut psi = vec![0.0; slots * ph * pw];
    for k in 0..cfg.basis_functions() {
        let row = &mut psi[k * ph * pw..(k + 1) * ph * pw];
        for a in 0..ph {
            for b in 0..pw {
                // Kernel evaluated at p − q for the input offset q − p = (a − mh, b − mw).
                let x = -((b as f64) - mw as f64) * hw;
                let y = -((a as f64) - mh as f64) * hh;
                row[a * pw + b] = basis_value(cfg.kernel_shape, r, k, x, y);
            }
        }
        // torch-harmonics' discrete normalisation (eps 1e-9), then the quadrature weight
        // the anchor multiplies into the input.
        let norm: f64 = row.iter().map(|v| v * q).sum::<f64>() + 1e-9;
        row.iter_mut().for_each(|v| *v = *v / norm * q);
    }
    (psi, ph, pw)
}

/// The anchor's local stencil size `⌊2·r·N/L⌋ + 1` per axis (Python double arithmetic).
fn anchor_stencil_size(cfg: &DiscoConfig) -> (usize, usize) {
    let r = cfg.radius();
    let p = |i: usize| {
        (2.0 * r * cfg.default_in_shape[i] as f64 / cfg.domain_length[i]).floor() as usize + 1
    };
    (p(0), p(1))
}

/// torch's float32 `linspace(start, end, steps)` (CPU kernel: from the start for the
/// first half, from the end for the second).
fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (steps - i - 1) as f32
            }
        })
        .collect()
}

/// One basis function evaluated the way torch-harmonics 0.8 does it on float32 tensors:
/// every tensor op rounds to f32 and Python scalars are cast to f32 first.
fn basis_value_torch_f32(kernel_shape: [usize; 2], r_cutoff: f64, k: usize, x: f32, y: f32) -> f32 {
    let [nr, nphi] = kernel_shape;
    let pi = PI as f32;
    let rc = r_cutoff as f32;
    let dr = (2.0 * r_cutoff / (nr as f64 + 1.0)) as f32;
    let r = (x * x + y * y).sqrt();
    let phi = y.atan2(x) + pi;
    let hat_r = |rr: f32, ir: f32| {
        let d = (rr - ir).abs();
        (d <= dr && rr <= rc, 1.0 - d / dr)
    };
    if nphi == 1 {
        let ir = if nr % 2 == 1 {
            k as f32 * dr
        } else {
            (k as f32 + 0.5) * dr
        };
        let (ok, v) = hat_r(r, ir);
        return if ok { v } else { 0.0 };
    }
    let dphi = (2.0 * PI / nphi as f64) as f32;
    let two_pi = (2.0 * PI) as f32;
    let circle = |a: f32, b: f32| {
        let d = (a - b).abs();
        d.min((two_pi - d).abs())
    };
    if nr % 2 == 1 {
        // Python floor division and modulo of (k − 1).
        let km1 = k as i64 - 1;
        let ir = (km1.div_euclid(nphi as i64) + 1) as f32 * dr;
        let iphi = km1.rem_euclid(nphi as i64) as f32 * dphi - pi;
        let (ok_r, v_r) = hat_r(r, ir);
        let dp = circle(phi, iphi);
        if !(ok_r && (k == 0 || dp <= dphi)) {
            return 0.0;
        }
        if k > 0 {
            v_r * (1.0 - dp / dphi)
        } else {
            v_r
        }
    } else {
        let ir = ((k / nphi) as f32 + 0.5) * dr;
        let iphi = (k % nphi) as f32 * dphi - pi;
        let rn = -r;
        let phin = if phi + pi >= pi { phi - pi } else { phi + pi };
        let (ok_r, v_r) = hat_r(r, ir);
        let (ok_rn, v_rn) = hat_r(rn, ir);
        let (dp, dpn) = (circle(phi, iphi), circle(phin, iphi));
        let (ok_p, ok_pn) = (dp <= dphi, dpn <= dphi);
        if !((ok_r && ok_p) || (ok_rn && ok_pn)) {
            return 0.0;
        }
        let b = |c: bool| if c { 1.0f32 } else { 0.0 };
        let mut v = b(ok_r) * v_r;
        v *= b(ok_p) * (1.0 - dp / dphi);
        let mut vn = b(ok_rn) * v_rn;
        vn *= b(ok_pn) * (1.0 - dpn / dphi);
        v + vn
    }
}

/// The anchor's (neuraloperator `EquidistantDiscreteContinuousConv2d`) local filter at
/// `default_in_shape`, reproduced in float32, in the layout of [`local_filter`]
/// (quadrature weight included).
pub fn anchor_local_filter_f32(cfg: &DiscoConfig) -> candle_core::Result<(Vec<f64>, usize, usize)> {
    let (p, pw) = anchor_stencil_size(cfg);
    if p != pw {
        candle_core::bail!("anchor_f32 DISCO filter needs a square stencil, got {p}×{pw}");
    }
    let r = cfg.radius();
    let rc = r as f32;
    let coords = linspace_f32(-rc, rc, p);
    let q = cfg.domain_length[0] * cfg.domain_length[1]
        / cfg.default_in_shape[0] as f64
        / cfg.default_in_shape[1] as f64;
    let q32 = q as f32;
    let slots = cfg.weight_slots();
    let mut out = vec![0.0f64; slots * p * p];
    for k in 0..cfg.basis_functions() {
        // lfm[i][j]: basis at (x_i, y_j) of the anchor's ij-meshgrid.
        let lfm: Vec<f32> = (0..p * p)
            .map(|ij| basis_value_torch_f32(cfg.kernel_shape, r, k, coords[ij / p], coords[ij % p]))
            .collect();
        let norm = lfm.iter().fold(0.0f32, |acc, v| acc + v * q32) + 1e-9f32;
        for a in 0..p {
            for b in 0..p {
                // kernel = lfm.permute(0,2,1).flip(-1,-2): K[a][b] = lfm[p−1−b][p−1−a].
                let v = lfm[(p - 1 - b) * p + (p - 1 - a)] / norm;
                out[k * p * p + a * p + b] = f64::from(v) * q;
            }
        }
    }
    Ok((out, p, p))
}

/// The DISCO kernel (see the module docs).
#[derive(Debug, Clone)]
pub struct Disco {
    weight: Tensor,
    bias: Option<Tensor>,
    cfg: DiscoConfig,
}

impl Disco {
    /// Builds the kernel: `weight` and, with `cfg.bias`, `bias` under `vb`.
    pub fn new(cfg: &DiscoConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let cg = cfg.in_channels / cfg.groups;
        let weight = vb.get_with_hints(
            (cfg.out_channels, cg, cfg.weight_slots()),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: (1.0 / cg as f64).sqrt(),
            },
        )?;
        let bias = if cfg.bias {
            Some(vb.get_with_hints(cfg.out_channels, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            cfg: cfg.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DiscoConfig {
        &self.cfg
    }

    /// The weight `[out, in/groups, weight slots]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The per-output-channel bias, when the layer has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Its parameters: the basis weights (every slot) and the bias.
    pub fn param_count(&self) -> crate::layers::params::ParamCount {
        crate::layers::params::ParamCount::of_reals([Some(&self.weight), self.bias.as_ref()])
    }

    /// The stencil `[O, C/g, P_H, P_W]` applied on an `[n_h, n_w]` grid (quadrature included).
    pub fn stencil(&self, n_h: usize, n_w: usize) -> candle_core::Result<Tensor> {
        let anchor = self.cfg.evaluation == BasisEvaluation::AnchorF32
            && [n_h, n_w] == self.cfg.default_in_shape;
        let (psi, ph, pw) = if anchor {
            anchor_local_filter_f32(&self.cfg)?
        } else {
            local_filter(&self.cfg, n_h, n_w)
        };
        let slots = self.cfg.weight_slots();
        let psi = Tensor::from_vec(psi, (slots, ph * pw), self.weight.device())?
            .to_dtype(self.weight.dtype())?;
        let (o, cg, _) = self.weight.dims3()?;
        self.weight
            .reshape((o * cg, slots))?
            .matmul(&psi)?
            .reshape((o, cg, ph, pw))
    }
}

impl Module for Disco {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let shape_err = || LayerError::Shape {
            layer: "Disco",
            got: x.dims().to_vec(),
            expected: format!("[batch, {}, height, width]", self.cfg.in_channels),
        };
        let (_, c, n_h, n_w) = x.dims4().map_err(|_| shape_err())?;
        if c != self.cfg.in_channels {
            return Err(shape_err().into());
        }
        let y = conv2d_same(
            x,
            &self.stencil(n_h, n_w)?,
            self.cfg.padding,
            self.cfg.groups,
        )?;
        match &self.bias {
            // Its backward is one contiguous per-channel sum (candle's broadcast would
            // reduce the gradient with a strided loop).
            Some(b) => crate::ops::channel_affine::add_channel_bias(&y, b),
            None => Ok(y),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, GradCheckConfig};
    use crate::init::{init_tensor, rng_for, SeededVarMap};
    use candle_core::{DType, Device, Shape, Var};

    fn layer(cfg: &DiscoConfig, seed: u64) -> Result<(Disco, SeededVarMap)> {
        let vars = SeededVarMap::new(seed);
        let d = Disco::new(cfg, vars.var_builder(DType::F64, &Device::Cpu))?;
        Ok((d, vars))
    }

    fn randn(shape: &[usize], seed: u64) -> candle_core::Result<Tensor> {
        init_tensor(
            Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
            &Shape::from(shape),
            &mut rng_for(seed, "disco"),
        )
    }

    fn small(kernel_shape: [usize; 2]) -> DiscoConfig {
        DiscoConfig {
            in_channels: 2,
            out_channels: 3,
            kernel_shape,
            default_in_shape: [8, 8],
            ..Default::default()
        }
    }

    #[test]
    fn default_stencil_is_exactly_two_centre_deltas() {
        // One-pixel radius: corners lie outside, every hat is 0 at r = r_cutoff, so with
        // [2, 4] only the centre remains, seen by basis 0 (angle −π) and basis 2 (angle 0,
        // through the r → −r reflection); basis 1 and 3 vanish, slot 4 is unused.
        let (psi, ph, pw) = local_filter(&small([2, 4]), 8, 8);
        assert_eq!((ph, pw), (3, 3));
        for (k, row) in psi.chunks(9).enumerate() {
            let want: Vec<f64> = (0..9)
                .map(|i| {
                    if (k == 0 || k == 2) && i == 4 {
                        1.0
                    } else {
                        0.0
                    }
                })
                .collect();
            for (g, w) in row.iter().zip(&want) {
                assert!((g - w).abs() < 1e-6, "slot {k}: {row:?}");
            }
        }
    }

    #[test]
    fn normalised_basis_functions_average() -> Result<()> {
        for ks in [[2, 4], [3, 4], [2, 1], [3, 1], [4, 3]] {
            let cfg = DiscoConfig {
                radius_cutoff: Some(0.5),
                ..small(ks)
            };
            let (psi, ph, pw) = local_filter(&cfg, 8, 8);
            assert_eq!((ph, pw), (5, 5), "{ks:?}");
            for k in 0..cfg.weight_slots() {
                let s: f64 = psi[k * ph * pw..(k + 1) * ph * pw].iter().sum();
                // Normalised basis functions sum to 1 (they average the input); unused slots are 0.
                let want = if k < cfg.basis_functions() { 1.0 } else { 0.0 };
                assert!((s - want).abs() < 1e-6, "{ks:?} slot {k}: {s}");
            }
        }
        assert_eq!(small([2, 4]).weight_slots(), 5);
        assert_eq!(small([2, 4]).basis_functions(), 4);
        Ok(())
    }

    #[test]
    fn unused_weight_slot_has_no_effect_and_no_gradient() -> Result<()> {
        let (d, vars) = layer(&small([2, 4]), 1)?;
        let x = randn(&[1, 2, 8, 8], 2)?;
        let y0 = d.forward(&x)?;
        let w = vars
            .varmap()
            .all_vars()
            .into_iter()
            .find(|v| v.dims() == [3, 2, 5])
            .ok_or_else(|| LayerError::InvalidConfig {
                layer: "test",
                reason: "weight".into(),
            })?;
        let mut vals = w.as_tensor().flatten_all()?.to_vec1::<f64>()?;
        for i in (4..vals.len()).step_by(5) {
            vals[i] += 10.0;
        }
        w.set(&Tensor::from_vec(vals, (3, 2, 5), &Device::Cpu)?)?;
        assert_eq!(
            (d.forward(&x)? - &y0)?
                .abs()?
                .max_all()?
                .to_scalar::<f64>()?,
            0.0
        );
        let g = d.forward(&x)?.sum_all()?.backward()?;
        let gw = g
            .get(w.as_tensor())
            .ok_or_else(|| LayerError::InvalidConfig {
                layer: "test",
                reason: "grad".into(),
            })?;
        assert_eq!(
            gw.narrow(2, 4, 1)?.abs()?.max_all()?.to_scalar::<f64>()?,
            0.0
        );
        assert!(gw.narrow(2, 0, 4)?.abs()?.max_all()?.to_scalar::<f64>()? > 0.0);
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        for (ks, padding, groups) in [
            ([2, 4], PaddingMode::Zeros, 1),
            ([3, 2], PaddingMode::Periodic, 2),
        ] {
            let cfg = DiscoConfig {
                in_channels: 2,
                out_channels: 2,
                groups,
                padding,
                radius_cutoff: Some(0.5),
                ..small(ks)
            };
            let (d, vars) = layer(&cfg, 3)?;
            let x = Var::from_tensor(&randn(&[2, 2, 8, 8], 4)?)?;
            let mut all = vec![x.clone()];
            all.extend(vars.varmap().all_vars());
            let xs = x.clone();
            let r = check_gradients(
                move || d.forward(xs.as_tensor()),
                &all,
                &GradCheckConfig::default(),
            )?;
            assert!(r.passed(), "{ks:?}: {r:?}");
        }
        Ok(())
    }

    #[test]
    fn periodic_padding_commutes_with_circular_shifts() -> Result<()> {
        let cfg = DiscoConfig {
            padding: PaddingMode::Periodic,
            radius_cutoff: Some(0.6),
            ..small([3, 3])
        };
        let (d, _v) = layer(&cfg, 5)?;
        let x = randn(&[1, 2, 8, 10], 6)?;
        let lhs = d.forward(&x.roll(3, 2)?.roll(-4, 3)?)?;
        let rhs = d.forward(&x)?.roll(3, 2)?.roll(-4, 3)?;
        assert!((lhs - rhs)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-12);
        Ok(())
    }

    /// `(Kf)(p)` by a fine midpoint rule over the disk, for `f` given as a closure of
    /// (H coordinate, W coordinate).
    fn direct_quadrature(
        cfg: &DiscoConfig,
        w: &[f64],
        f: &dyn Fn(f64, f64) -> f64,
        p: (f64, f64),
    ) -> f64 {
        let r = cfg.radius();
        let m = 400;
        let dz = 2.0 * r / m as f64;
        let mut total = 0.0;
        for (k, wk) in w.iter().enumerate().take(cfg.basis_functions()) {
            let (mut num, mut den) = (0.0, 0.0);
            for i in 0..m {
                for j in 0..m {
                    let (zy, zx) = (-r + (i as f64 + 0.5) * dz, -r + (j as f64 + 0.5) * dz);
                    let psi = basis_value(cfg.kernel_shape, r, k, zx, zy);
                    if psi != 0.0 {
                        num += psi * f(p.0 - zy, p.1 - zx);
                        den += psi;
                    }
                }
            }
            total += wk * num / den;
        }
        total
    }

    #[test]
    fn same_operator_at_two_resolutions_and_matches_direct_quadrature() -> Result<()> {
        // Physical radius 0.25 on the periodic [0,2)² torus: 9×9 pixels at N = 32, 17×17 at 64.
        let cfg = DiscoConfig {
            in_channels: 1,
            out_channels: 1,
            kernel_shape: [2, 4],
            default_in_shape: [32, 32],
            radius_cutoff: Some(0.25),
            bias: false,
            padding: PaddingMode::Periodic,
            ..Default::default()
        };
        let (d, vars) = layer(&cfg, 7)?;
        let w = vars.varmap().all_vars()[0]
            .as_tensor()
            .flatten_all()?
            .to_vec1::<f64>()?;
        let pi = PI;
        let f = |a: f64, b: f64| (pi * a + 0.3).sin() * (2.0 * pi * b).cos() + 0.5 * (pi * b).sin();
        let sample = |n: usize| -> candle_core::Result<Tensor> {
            let h = 2.0 / n as f64;
            let v: Vec<f64> = (0..n * n)
                .map(|i| f((i / n) as f64 * h, (i % n) as f64 * h))
                .collect();
            Tensor::from_vec(v, (1, 1, n, n), &Device::Cpu)
        };
        let y32 = d.forward(&sample(32)?)?.flatten_all()?.to_vec1::<f64>()?;
        let y64 = d.forward(&sample(64)?)?.flatten_all()?.to_vec1::<f64>()?;
        let (mut e32, mut e64, mut scale) = (0.0f64, 0.0f64, 0.0f64);
        for (i, j) in [(0usize, 0usize), (5, 17), (11, 3), (20, 29), (31, 14)] {
            let exact = direct_quadrature(&cfg, &w, &f, (i as f64 / 16.0, j as f64 / 16.0));
            e32 = e32.max((y32[i * 32 + j] - exact).abs());
            e64 = e64.max((y64[2 * i * 64 + 2 * j] - exact).abs());
            scale = scale.max(exact.abs());
        }
        // Both grids approximate the same integral; refining shrinks the error ~4×.
        assert!(scale > 0.3, "{scale}");
        // Measured: e32 ≈ 0.083·scale, e64 ≈ 0.021·scale (ratio 3.9, second order).
        assert!(
            e32 < 0.1 * scale && e64 < 0.025 * scale && e64 < e32 / 3.0,
            "e32 {e32}, e64 {e64}, scale {scale}"
        );
        Ok(())
    }

    #[test]
    fn bad_configs_and_shapes_are_errors() -> Result<()> {
        let vb = || SeededVarMap::new(0).var_builder(DType::F64, &Device::Cpu);
        assert!(Disco::new(
            &DiscoConfig {
                groups: 3,
                ..small([2, 4])
            },
            vb()
        )
        .is_err());
        assert!(Disco::new(
            &DiscoConfig {
                radius_cutoff: Some(-1.0),
                ..small([2, 4])
            },
            vb()
        )
        .is_err());
        assert!(Disco::new(
            &DiscoConfig {
                kernel_shape: [0, 4],
                ..small([2, 4])
            },
            vb()
        )
        .is_err());
        let d = Disco::new(&small([2, 4]), vb())?;
        assert!(d
            .forward(&Tensor::zeros((1, 3, 8, 8), DType::F64, &Device::Cpu)?)
            .is_err());
        assert!(d
            .forward(&Tensor::zeros((1, 2, 8), DType::F64, &Device::Cpu)?)
            .is_err());
        Ok(())
    }

    #[test]
    fn param_count_is_the_variables_it_created() -> Result<()> {
        for (groups, bias, kernel_shape) in [(1, true, [2, 4]), (2, false, [3, 3])] {
            let cfg = DiscoConfig {
                in_channels: 4,
                out_channels: 6,
                groups,
                bias,
                kernel_shape,
                ..Default::default()
            };
            let (d, vars) = layer(&cfg, 1)?;
            let n = crate::layers::params::var_map_entries(vars.varmap());
            assert_eq!(d.param_count(), crate::layers::params::ParamCount::real(n));
        }
        Ok(())
    }
}
