//! Spectral convolution (the Fourier layer of FNO/TFNO), 1D and 2D, channels-first.
//!
//! `y = F⁻¹( W · truncate(F x) ) + b`: a truncated real Fourier transform of the input
//! `[B, C_in, d1, (d2)]`, a per-mode complex channel mixing with learned weights, the
//! inverse transform onto the output grid, and a per-channel bias. The semantics are
//! neuraloperator 2.x's `SpectralConv` (see [`crate::layers::spectral::fourier`] for the mode convention),
//! so its trained weights import one-to-one (`docs/layers-spectral.md` lists the keys).
//!
//! The transform is a product with cached cos/sin bases (works on every backend and is
//! differentiated by candle); on the CPU the last axis can instead go through
//! `realfft` in a custom op with an exact adjoint ([`SpectralTransform::Fft`]). The
//! mixing is one batched real GEMM per call: `[Zr | Zi] · [[Wr, Wi], [−Wi, Wr]]` over all
//! kept modes. Tucker-factorized weights ([`crate::layers::spectral::tucker`]) either contract the input
//! through core and factors or rebuild the dense weight first ([`TuckerImplementation`]).
//!
//! The same weights apply at any input resolution (modes the grid cannot resolve are
//! skipped); [`SpectralConv::forward_with_output_shape`] evaluates the output on another
//! grid.

use crate::error::{LayerError, Result};
use crate::layers::constant_cache::{all_constant, ConstantCache};
use crate::layers::spectral::fourier::{
    centred_kept, dft_basis, idft_basis, irfft_basis, mul_basis_left, mul_basis_right, rfft_basis,
    rfft_basis_transposed, rfft_kept,
};
use crate::layers::spectral::tucker::{TuckerRank, TuckerWeight};
use crate::ops::complex_block::complex_block;
use crate::ops::complex_mode_product::complex_mode_product;
use crate::ops::fft;
use crate::ops::mode_mix::{mode_mix, MAX_DIRECT_BATCH};
use crate::ops::spectral_transform::{grid_to_spectrum, spectrum_to_grid};
use candle_core::{Module, Tensor, D};
use candle_nn::{init::Init, VarBuilder};
use serde::{Deserialize, Serialize};

const LAYER: &str = "SpectralConv";

/// Factorization of the spectral weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Factorization {
    /// Tucker: a core and one factor per axis (TFNO).
    Tucker,
}

/// How a factorized weight meets the input (neuraloperator's `implementation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TuckerImplementation {
    /// Contract the spectrum through the factors and the core, never forming `W`.
    #[default]
    Factorized,
    /// Rebuild the dense weight from the factors, then mix as a dense layer.
    Reconstructed,
}

/// How the last spatial axis is transformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpectralTransform {
    /// Products with cached DFT bases: every backend, candle autograd.
    #[default]
    Matmul,
    /// `realfft` in a CPU custom op with its adjoint as backward (see [`crate::ops::fft`]);
    /// on other devices the op's composite form, a product with the same DFT basis.
    Fft,
}

/// Configuration of a [`SpectralConv`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpectralConvConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Total modes per spatial axis (1 or 2 entries): centred on 0 on every axis but
    /// the last, which keeps `n_modes/2 + 1` non-negative frequencies.
    pub n_modes: Vec<usize>,
    /// Whether to add a per-channel bias (shape `[out, 1, (1)]`).
    pub bias: bool,
    /// `None` for a dense weight.
    pub factorization: Option<Factorization>,
    /// Tucker rank (ignored for dense weights).
    pub rank: TuckerRank,
    /// Tucker contraction (ignored for dense weights).
    pub implementation: TuckerImplementation,
    /// Standard deviation of the complex weight init and of the bias; `None` is
    /// neuraloperator's "auto", `sqrt(2 / (in + out))`.
    pub init_std: Option<f64>,
    /// Transform of the last axis.
    pub transform: SpectralTransform,
}

impl Default for SpectralConvConfig {
    fn default() -> Self {
        Self {
            in_channels: 1,
            out_channels: 1,
            n_modes: vec![16, 16],
            bias: true,
            factorization: None,
            rank: TuckerRank::default(),
            implementation: TuckerImplementation::default(),
            init_std: None,
            transform: SpectralTransform::default(),
        }
    }
}

impl SpectralConvConfig {
    /// The complex weight shape `[in, out, m_1, …, m_last/2 + 1]` (as in neuraloperator).
    pub fn weight_shape(&self) -> Vec<usize> {
        let mut s = vec![self.in_channels, self.out_channels];
        s.extend_from_slice(&self.n_modes);
        if let Some(last) = s.last_mut() {
            *last = *last / 2 + 1;
        }
        s
    }

    /// The init standard deviation actually used.
    pub fn resolved_init_std(&self) -> f64 {
        self.init_std
            .unwrap_or_else(|| (2.0 / (self.in_channels + self.out_channels) as f64).sqrt())
    }

    fn validate(&self) -> Result<()> {
        let bad = |reason: String| {
            Err(LayerError::InvalidConfig {
                layer: LAYER,
                reason,
            })
        };
        if self.in_channels == 0 || self.out_channels == 0 {
            return bad(format!(
                "channels must be > 0, got in {} out {}",
                self.in_channels, self.out_channels
            ));
        }
        if !(1..=2).contains(&self.n_modes.len()) || self.n_modes.contains(&0) {
            return bad(format!(
                "n_modes must have 1 or 2 entries, all > 0, got {:?}",
                self.n_modes
            ));
        }
        if let Some(std) = self.init_std {
            if !(std.is_finite() && std >= 0.0) {
                return bad(format!("init_std must be finite and >= 0, got {std}"));
            }
        }
        Ok(())
    }
}

/// The learned spectral weight.
#[derive(Debug, Clone)]
pub enum SpectralWeight {
    /// `weight.tensor`: `[in, out, m_1, …, q, 2]` (re, im).
    Dense(Tensor),
    /// `weight.core` and `weight.factors.factor_k`.
    Tucker(TuckerWeight),
}

/// A spectral convolution layer (see the module docs).
#[derive(Debug, Clone)]
pub struct SpectralConv {
    cfg: SpectralConvConfig,
    weight: SpectralWeight,
    bias: Option<Tensor>,
    /// For weights that are constants (an inference twin: no variable, no graph), the
    /// per-mode real blocks `[M, 2C, 2O]` last built, keyed by the kept modes.
    block_cache: ConstantCache<KeptKey, Tensor>,
}

/// The kept modes as a cache key: the centred axis's (lowest frequency, count, offset) and
/// the last axis's bin count.
type KeptKey = (Option<(i64, usize, usize)>, usize);

/// Which modes of the weight a given grid uses.
#[derive(Debug, Clone, Copy)]
struct Kept {
    /// Centred axis (2D only): lowest frequency, count, offset into the weight.
    centred: Option<(i64, usize, usize)>,
    /// Last axis: number of bins `0..q`.
    q: usize,
}

impl Kept {
    fn modes(&self) -> usize {
        self.centred.map_or(1, |c| c.1) * self.q
    }
}

impl SpectralConv {
    /// Builds the layer, creating `weight.tensor` (dense) or `weight.core` and
    /// `weight.factors.factor_k` (Tucker), and `bias`, under `vb`.
    pub fn new(cfg: &SpectralConvConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let std = cfg.resolved_init_std();
        let shape = cfg.weight_shape();
        let weight = match cfg.factorization {
            None => {
                let mut s = shape.clone();
                s.push(2);
                // Complex normal with std `std`: each part has std/√2 (torch's cfloat normal_).
                let init = Init::Randn {
                    mean: 0.0,
                    stdev: std / 2f64.sqrt(),
                };
                SpectralWeight::Dense(vb.pp("weight").get_with_hints(s, "tensor", init)?)
            }
            Some(Factorization::Tucker) => {
                SpectralWeight::Tucker(TuckerWeight::new(&shape, &cfg.rank, std, vb.pp("weight"))?)
            }
        };
        let bias = if cfg.bias {
            let mut s = vec![cfg.out_channels];
            s.extend(std::iter::repeat_n(1, cfg.n_modes.len()));
            Some(vb.get_with_hints(
                s,
                "bias",
                Init::Randn {
                    mean: 0.0,
                    stdev: std,
                },
            )?)
        } else {
            None
        };
        Ok(Self {
            cfg: cfg.clone(),
            weight,
            bias,
            block_cache: ConstantCache::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SpectralConvConfig {
        &self.cfg
    }

    /// Its parameters: the complex weight (dense, or Tucker core and factors) counts once
    /// per complex entry in `numel` and twice in `real`; the bias is real.
    pub fn param_count(&self) -> crate::layers::params::ParamCount {
        use crate::layers::params::ParamCount;
        let weight = match &self.weight {
            SpectralWeight::Dense(w) => ParamCount::of_complex(w),
            SpectralWeight::Tucker(t) => std::iter::once(t.core())
                .chain(t.factors())
                .map(ParamCount::of_complex)
                .sum(),
        };
        weight + ParamCount::of_reals([self.bias.as_ref()])
    }

    /// The spectral weight.
    pub fn weight(&self) -> &SpectralWeight {
        &self.weight
    }

    /// The bias `[out, 1, (1)]`, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The dense complex weight `[in, out, m_1, …, q, 2]` (rebuilt for Tucker).
    pub fn dense_weight(&self) -> Result<Tensor> {
        match &self.weight {
            SpectralWeight::Dense(w) => Ok(w.clone()),
            SpectralWeight::Tucker(t) => t.to_dense(),
        }
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        let d = self.cfg.n_modes.len();
        let dims = x.dims();
        if dims.len() != d + 2 || dims[1] != self.cfg.in_channels || dims[2..].contains(&0) {
            return Err(LayerError::Shape {
                layer: LAYER,
                got: dims.to_vec(),
                expected: format!(
                    "[batch, {}, {}] (non-empty grid)",
                    self.cfg.in_channels,
                    if d == 1 { "d1" } else { "d1, d2" }
                ),
            });
        }
        Ok(())
    }

    fn kept(&self, grid: &[usize]) -> Kept {
        let m = &self.cfg.n_modes;
        let last = m.len() - 1;
        let centred = (m.len() == 2).then(|| {
            let (lo, count) = centred_kept(m[0], grid[0]);
            (lo, count, (lo + (m[0] / 2) as i64) as usize)
        });
        Kept {
            centred,
            q: rfft_kept(m[last], grid[last]),
        }
    }

    /// Evaluates the layer with the output on a grid of `output_shape` (same number of
    /// axes as the input grid); `None` keeps the input grid.
    ///
    /// Frequencies the output grid cannot represent are dropped. (neuraloperator 2.0
    /// agrees with this on the last axis; on a centred axis its `irfftn(s=…)` zero-pads
    /// the spectrum at the end, which misplaces negative frequencies, so only the last
    /// axis may change size for parity with it.)
    pub fn forward_with_output_shape(
        &self,
        x: &Tensor,
        output_shape: Option<&[usize]>,
    ) -> Result<Tensor> {
        self.check_input(x)?;
        let grid = x.dims()[2..].to_vec();
        let out_grid = match output_shape {
            Some(s) if s.len() == grid.len() && !s.contains(&0) => s.to_vec(),
            Some(s) => {
                return Err(LayerError::InvalidConfig {
                    layer: LAYER,
                    reason: format!(
                        "output_shape {s:?} must have {} non-zero entries",
                        grid.len()
                    ),
                })
            }
            None => grid.clone(),
        };
        let kept = self.kept(&grid);
        let z = self.forward_transform(x, &grid, &kept)?;
        let y = self.add_bias_at_dc(&self.mix(&z, &kept)?, &kept)?;
        self.inverse_transform(&y, &out_grid, &kept)
    }

    /// Adds the bias to the real part of the (0, 0) mode of the mixed spectrum
    /// `[M, B, 2O]`: the inverse transform maps that bin to a constant with weight exactly
    /// 1 (DC of both axes), so this equals adding the bias on the grid, without a pass
    /// over the full-resolution output.
    fn add_bias_at_dc(&self, y: &Tensor, kept: &Kept) -> Result<Tensor> {
        let Some(b) = &self.bias else {
            return Ok(y.clone());
        };
        let (m, _, o2) = y.dims3()?;
        let o = o2 / 2;
        let dc = kept.centred.map_or(0, |(lo, _, _)| (-lo) as usize * kept.q);
        let b = b.reshape((1, 1, o))?;
        let row = Tensor::cat(&[&b, &b.zeros_like()?], 2)?;
        Ok(y.broadcast_add(&row.pad_with_zeros(0, dc, m - dc - 1)?)?)
    }

    /// Last axis `[rows, n] → [rows, 2q]`.
    fn last_axis_forward(&self, x: &Tensor, q: usize) -> Result<Tensor> {
        let n = x.dim(D::Minus1)?;
        Ok(match self.cfg.transform {
            SpectralTransform::Matmul => {
                mul_basis_right(x, &rfft_basis(n, q, x.dtype(), x.device())?)?
            }
            SpectralTransform::Fft => fft::truncated_rfft(x, q)?,
        })
    }

    /// Last axis `[rows, 2q] → [rows, n_out]`.
    fn last_axis_inverse(&self, y: &Tensor, n_out: usize) -> Result<Tensor> {
        let q = y.dim(D::Minus1)? / 2;
        Ok(match self.cfg.transform {
            SpectralTransform::Matmul => {
                mul_basis_right(y, &irfft_basis(n_out, q, y.dtype(), y.device())?)?
            }
            SpectralTransform::Fft => fft::truncated_irfft(y, n_out)?,
        })
    }

    /// Whether the transforms run as the fused CPU ops of [`crate::ops::spectral_transform`]
    /// (the basis-product transform on the CPU in f32 or f64; the composite form
    /// otherwise, which computes the same values).
    fn fused(&self, x: &Tensor) -> bool {
        self.cfg.transform == SpectralTransform::Matmul && crate::ops::fused_cpu(&[x])
    }

    /// `x [B, C, grid…]` → spectrum laid out `[M, B, 2C]` = `[Re | Im]` per mode.
    fn forward_transform(&self, x: &Tensor, grid: &[usize], kept: &Kept) -> Result<Tensor> {
        if self.fused(x) {
            let n_last = grid[grid.len() - 1];
            // The basis with contiguous columns: the op's product then runs as dot
            // products along the grid rows.
            let rx = rfft_basis_transposed(n_last, kept.q, x.dtype(), x.device())?.t()?;
            let dt = match kept.centred {
                Some((lo, count, _)) => dft_basis(grid[0], lo, count, x.dtype(), x.device())?,
                // One dimension: the identity on a trivial first axis.
                None => Tensor::new(&[[1f32], [0.0]], x.device())?.to_dtype(x.dtype())?,
            };
            return Ok(grid_to_spectrum(x, &rx, &dt)?);
        }
        self.composite_forward_transform(x, grid, kept)
    }

    /// [`Self::forward_transform`] from candle ops (every backend).
    fn composite_forward_transform(
        &self,
        x: &Tensor,
        grid: &[usize],
        kept: &Kept,
    ) -> Result<Tensor> {
        let (b, c) = (x.dim(0)?, x.dim(1)?);
        let n_last = grid[grid.len() - 1];
        let rows = x.elem_count() / n_last;
        let q = kept.q;
        let a = self.last_axis_forward(&x.contiguous()?.reshape((rows, n_last))?, q)?;
        let (zr, zi) = match kept.centred {
            None => {
                let a = a.reshape((b, c, 2 * q))?;
                (a.narrow(2, 0, q)?, a.narrow(2, q, q)?)
            }
            Some((lo, count, _)) => {
                let a = a.reshape((b * c, grid[0], 2 * q))?;
                let p = mul_basis_left(&dft_basis(grid[0], lo, count, x.dtype(), x.device())?, &a)?;
                let block =
                    |r: usize, col: usize| p.narrow(1, r * count, count)?.narrow(2, col * q, q);
                let zr = (block(0, 0)? + block(1, 1)?)?;
                let zi = (block(0, 1)? - block(1, 0)?)?;
                (
                    zr.reshape((b, c, count * q))?,
                    zi.reshape((b, c, count * q))?,
                )
            }
        };
        Ok(Tensor::cat(&[zr, zi], 1)?
            .permute((2, 0, 1))?
            .contiguous()?)
    }

    /// The weight's tensors (the dense weight, or the Tucker core and factors).
    fn weight_tensors(&self) -> Vec<&Tensor> {
        match &self.weight {
            SpectralWeight::Dense(w) => vec![w],
            SpectralWeight::Tucker(t) => std::iter::once(t.core()).chain(t.factors()).collect(),
        }
    }

    /// Whether the weight is a constant on the CPU (no variable, no graph behind it, as in
    /// an inference twin): then its per-mode blocks (for Tucker, those of the rebuilt dense
    /// weight) are kept between calls. Even a dense weight's blocks are worth keeping: their
    /// gather reads the weight with a stride of one mode (up to a tenth of a batch-1 LocalNO
    /// forward in `perf`), while the check that guards the copy reads it once in order.
    fn constant_weight(&self) -> bool {
        all_constant(&self.weight_tensors())
    }

    /// The per-mode blocks for `kept` from the cache when they were built from the same
    /// modes and weight values, else built and cached.
    fn cached_blocks(&self, kept: &Kept) -> Result<Tensor> {
        let build = || -> candle_core::Result<Tensor> {
            let dense = match &self.weight {
                SpectralWeight::Dense(w) => self.slice_dense(w, kept)?,
                SpectralWeight::Tucker(t) => self.slice_tucker(t, kept)?.to_dense()?,
            };
            dense_blocks(&dense).map_err(candle_core::Error::wrap)
        };
        Ok(self
            .block_cache
            .get_or_build((kept.centred, kept.q), &self.weight_tensors(), build)?)
    }

    /// `[M, B, 2C]` → `[M, B, 2O]` with the (sliced) complex weight.
    fn mix(&self, z: &Tensor, kept: &Kept) -> Result<Tensor> {
        if self.constant_weight() {
            if z.dim(1)? <= MAX_DIRECT_BATCH {
                if let Some(w) = self.stored_weight(kept)? {
                    // A sample or two and every mode kept: the stored weight read once in
                    // order, in parallel over output channels, with the block product's
                    // values and no cache to check (the check alone read twice the
                    // weight on one core).
                    return Ok(mode_mix(z, &w)?);
                }
            }
            // Inference on constant weights: the per-mode blocks (for Tucker, of the
            // rebuilt dense weight: the same linear map as the factorized contraction) are
            // built once per mode set and weight values, not on every call.
            return Ok(z.matmul(&self.cached_blocks(kept)?)?);
        }
        match (&self.weight, self.cfg.implementation) {
            (SpectralWeight::Dense(w), _) => mix_dense(z, &self.slice_dense(w, kept)?),
            (SpectralWeight::Tucker(t), TuckerImplementation::Reconstructed) => {
                mix_dense(z, &self.slice_tucker(t, kept)?.to_dense()?)
            }
            (SpectralWeight::Tucker(t), TuckerImplementation::Factorized) => {
                mix_tucker_factorized(z, &self.slice_tucker(t, kept)?, kept.modes())
            }
        }
    }

    /// A dense weight's kept modes as `[C, O, M, 2]` when they are the stored weight's
    /// memory as it lies (every mode kept; a narrowed slice would be gathered on every
    /// call, which the cache avoids).
    fn stored_weight(&self, kept: &Kept) -> Result<Option<Tensor>> {
        let SpectralWeight::Dense(w) = &self.weight else {
            return Ok(None);
        };
        let slice = self.slice_dense(w, kept)?;
        if !slice.is_contiguous() {
            return Ok(None);
        }
        let (c, o) = (slice.dim(0)?, slice.dim(1)?);
        let m = slice.elem_count() / (2 * c * o).max(1);
        Ok(Some(slice.reshape((c, o, m, 2))?))
    }

    fn slice_dense(&self, w: &Tensor, kept: &Kept) -> Result<Tensor> {
        let d = self.cfg.n_modes.len();
        let mut w = w.narrow(d + 1, 0, kept.q)?;
        if let Some((_, count, offset)) = kept.centred {
            w = w.narrow(2, offset, count)?;
        }
        Ok(w)
    }

    fn slice_tucker(&self, t: &TuckerWeight, kept: &Kept) -> Result<TuckerWeight> {
        let d = self.cfg.n_modes.len();
        let mut factors = t.factors().to_vec();
        factors[d + 1] = factors[d + 1].narrow(0, 0, kept.q)?;
        if let Some((_, count, offset)) = kept.centred {
            factors[2] = factors[2].narrow(0, offset, count)?;
        }
        TuckerWeight::from_parts(t.core().clone(), factors)
    }

    /// `[M, B, 2O]` → output `[B, O, out_grid…]` (without bias).
    fn inverse_transform(&self, y: &Tensor, out_grid: &[usize], kept: &Kept) -> Result<Tensor> {
        if self.fused(y) {
            let n_last = out_grid[out_grid.len() - 1];
            let rxi = irfft_basis(n_last, kept.q, y.dtype(), y.device())?;
            let et = match kept.centred {
                Some((lo, count, _)) => idft_basis(out_grid[0], lo, count, y.dtype(), y.device())?,
                None => Tensor::new(&[[1f32, 0.0]], y.device())?.to_dtype(y.dtype())?,
            };
            return Ok(spectrum_to_grid(y, &et, &rxi, out_grid.len() == 2)?);
        }
        self.composite_inverse_transform(y, out_grid, kept)
    }

    /// [`Self::inverse_transform`] from candle ops (every backend).
    fn composite_inverse_transform(
        &self,
        y: &Tensor,
        out_grid: &[usize],
        kept: &Kept,
    ) -> Result<Tensor> {
        let (m, b, o2) = y.dims3()?;
        let o = o2 / 2;
        let q = kept.q;
        let y = y.permute((1, 2, 0))?; // [B, 2O, M]
        let (yr, yi) = (y.narrow(1, 0, o)?, y.narrow(1, o, o)?);
        let n_last = out_grid[out_grid.len() - 1];
        let spec = match kept.centred {
            None => Tensor::cat(&[yr, yi], 2)?.reshape((b * o, 2 * q))?,
            Some((lo, count, _)) => {
                let yr = yr.reshape((b * o, count, q))?;
                let yi = yi.reshape((b * o, count, q))?;
                let block = Tensor::cat(
                    &[
                        Tensor::cat(&[&yr, &yi], 2)?,
                        Tensor::cat(&[&yi.neg()?, &yr], 2)?,
                    ],
                    1,
                )?;
                let u = mul_basis_left(
                    &idft_basis(out_grid[0], lo, count, y.dtype(), y.device())?,
                    &block,
                )?;
                u.reshape((b * o * out_grid[0], 2 * q))?
            }
        };
        debug_assert_eq!(m, kept.modes());
        let mut shape = vec![b, o];
        shape.extend_from_slice(out_grid);
        Ok(self.last_axis_inverse(&spec, n_last)?.reshape(shape)?)
    }
}

impl Module for SpectralConv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Ok(self.forward_with_output_shape(x, None)?)
    }
}

/// The real embedding `[[Re, Im], [−Im, Re]]` (`[2R, 2S]`) of a complex Tucker factor
/// stored `[R, S, 2]`: `[Xr | Xi] · block = [Re(XF) | Im(XF)]`. One gather (the
/// one-mode case of [`complex_block`]), not three concatenations.
fn factor_block(f: &Tensor) -> Result<Tensor> {
    let (r, s, _) = f.dims3()?;
    Ok(complex_block(&f.unsqueeze(2)?)?.reshape((2 * r, 2 * s))?)
}

/// Dense mixing: `w [C, O, modes…, 2]` → per-mode blocks `[M, 2C, 2O]`, one batched GEMM.
fn mix_dense(z: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(z.matmul(&dense_blocks(w)?)?)
}

/// The per-mode real blocks `[M, 2C, 2O]` of a dense weight `[C, O, modes…, 2]`.
fn dense_blocks(w: &Tensor) -> Result<Tensor> {
    let (c, o) = (w.dim(0)?, w.dim(1)?);
    let m = w.elem_count() / (2 * c * o);
    let w = w.contiguous()?.reshape((c, o, m, 2))?;
    Ok(complex_block(&w)?)
}

/// Factorized Tucker mixing, never forming the `[C, O, M]` weight:
/// `Z·F_in` (shared over modes) → per-mode `· H_m` with `H = G ×_modes F_modes`
/// (`[M, r_in, r_out]`) → `· F_outᵀ` (shared over modes).
fn mix_tucker_factorized(z: &Tensor, t: &TuckerWeight, m: usize) -> Result<Tensor> {
    let (_, b, c2) = z.dims3()?;
    let (r_in, r_out) = (t.rank()[0], t.rank()[1]);
    // Core × spatial factors: [r_in, r_out, modes…] → per-mode blocks [M, 2r_in, 2r_out]
    // (one node per mode product, then one gather).
    let mut h = t.core().clone();
    for k in 2..t.factors().len() {
        h = complex_mode_product(&h, &t.factors()[k], k)?;
    }
    let h_blocks = complex_block(&h.reshape((r_in, r_out, m, 2))?)?;
    let f_in = factor_block(&t.factors()[0])?;
    let f_out_t = factor_block(&t.factors()[1].transpose(0, 1)?)?;
    let z1 = z
        .reshape((m * b, c2))?
        .matmul(&f_in)?
        .reshape((m, b, 2 * r_in))?;
    let z2 = z1.matmul(&h_blocks)?;
    let out = z2.reshape((m * b, 2 * r_out))?.matmul(&f_out_t)?;
    let o2 = out.dim(1)?;
    Ok(out.reshape((m, b, o2))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::map::single_threaded;
    use crate::gradcheck::random_like;
    use crate::init::SeededVarMap;
    use candle_core::Device;
    use candle_core::{DType, Var};

    fn layer(n_modes: &[usize]) -> Result<SpectralConv> {
        let vars = SeededVarMap::new(3);
        let cfg = SpectralConvConfig {
            in_channels: 3,
            out_channels: 2,
            n_modes: n_modes.to_vec(),
            ..Default::default()
        };
        SpectralConv::new(&cfg, vars.var_builder(DType::F64, &Device::Cpu))
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
        Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?)
    }

    /// A layer over constant views of its weights (as an inference twin builds it), dense or
    /// Tucker, keeps its per-mode blocks between calls; across grids that keep different
    /// modes and after an in-place update of the shared variables, it computes what the
    /// layer over the variables computes.
    #[test]
    fn constant_weights_cache_their_blocks_per_mode_set() -> Result<()> {
        for factorization in [None, Some(Factorization::Tucker)] {
            let vars = SeededVarMap::new(5);
            let cfg = SpectralConvConfig {
                in_channels: 3,
                out_channels: 2,
                n_modes: vec![6, 6],
                factorization,
                ..Default::default()
            };
            let trained = SpectralConv::new(&cfg, vars.var_builder(DType::F64, &Device::Cpu))?;
            let constants: std::collections::HashMap<String, Tensor> = vars
                .varmap()
                .data()
                .lock()
                .map_err(|_| LayerError::Shape {
                    layer: "test",
                    got: vec![],
                    expected: "an unpoisoned variable map".into(),
                })?
                .iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
                .collect();
            let twin = SpectralConv::new(
                &cfg,
                VarBuilder::from_tensors(constants, DType::F64, &Device::Cpu),
            )?;
            assert!(twin.constant_weight() && !trained.constant_weight());
            // 12×12 keeps all 6×4 modes, 4×5 only some: the cache must be rebuilt, twice.
            for (seed, grid) in [[12, 12], [4, 5], [12, 12]].into_iter().enumerate() {
                let x = random_like(
                    &Tensor::zeros((2, 3, grid[0], grid[1]), DType::F64, &Device::Cpu)?,
                    seed as u64,
                )?;
                let (a, b) = (trained.forward(&x)?, twin.forward(&x)?);
                let d = max_diff(&a, &b)?;
                assert!(d < 1e-12, "{factorization:?} {grid:?}: {d}");
                // Two samples (`mode_mix` where every mode is kept, else the cached blocks)
                // have the bits they have among five (the cached blocks).
                let x5 = random_like(
                    &Tensor::zeros((5, 3, grid[0], grid[1]), DType::F64, &Device::Cpu)?,
                    seed as u64 + 20,
                )?;
                let five = twin.forward(&x5)?;
                let two = twin.forward(&x5.narrow(0, 0, 2)?)?;
                assert_eq!(max_diff(&five.narrow(0, 0, 2)?, &two)?, 0.0);
                if factorization.is_none() && grid == [12, 12] {
                    // Two samples and every mode kept: the twin mixes the stored weight
                    // directly (`mode_mix`), with the block product's bits; five samples
                    // take the cached blocks, which give the same bits too.
                    assert!(twin.stored_weight(&twin.kept(&grid))?.is_some());
                    assert_eq!(d, 0.0);
                    let x5 =
                        random_like(&Tensor::zeros((5, 3, 12, 12), DType::F64, &Device::Cpu)?, 7)?;
                    let five = twin.forward(&x5)?;
                    let two = twin.forward(&x5.narrow(0, 0, 2)?)?;
                    assert_eq!(max_diff(&five.narrow(0, 0, 2)?, &two)?, 0.0);
                }
            }
            let cached = twin.block_cache.is_filled();
            assert!(cached, "{factorization:?}: the twin keeps its blocks");
            // An in-place update of the shared variables (the trainer's AdamW step) is seen.
            for var in vars.varmap().all_vars() {
                var.set(&(var.as_tensor() * 0.5)?)?;
            }
            let x = random_like(&Tensor::zeros((2, 3, 12, 12), DType::F64, &Device::Cpu)?, 9)?;
            let d = max_diff(&trained.forward(&x)?, &twin.forward(&x)?)?;
            assert!(d < 1e-12, "{factorization:?} after an update: {d}");
        }
        Ok(())
    }

    /// The fused CPU transforms and the composite ones (what other devices run) give the
    /// same spectra, grids and input gradients: 1-D and 2-D, odd and even sizes, grids
    /// smaller than the modes, and output grids finer and coarser than the input.
    #[test]
    fn fused_transforms_equal_the_composite_ones_with_their_gradients() -> Result<()> {
        let cases: [(&[usize], &[usize], &[usize]); 6] = [
            (&[6], &[11], &[11]),
            (&[6], &[10], &[17]),
            (&[8, 6], &[12, 10], &[12, 10]),
            (&[7, 5], &[9, 11], &[9, 14]),
            (&[8, 8], &[5, 6], &[5, 6]),
            (&[6, 6], &[12, 12], &[8, 7]),
        ];
        for (seed, (modes, grid, out)) in cases.into_iter().enumerate() {
            let conv = layer(modes)?;
            let kept = conv.kept(grid);
            // 20 planes: two full groups of the fused ops' eight planes and a part group.
            let mut shape = vec![4, 5];
            shape.extend_from_slice(grid);
            let x = Var::from_tensor(&random_like(
                &Tensor::zeros(shape, DType::F64, &Device::Cpu)?,
                seed as u64,
            )?)?;
            assert!(conv.fused(x.as_tensor()));
            let z = conv.forward_transform(x.as_tensor(), grid, &kept)?;
            let z_ref = conv.composite_forward_transform(x.as_tensor(), grid, &kept)?;
            assert_eq!(z.dims(), z_ref.dims());
            assert!(max_diff(&z, &z_ref)? < 1e-14, "{modes:?} {grid:?}");
            let y = conv.inverse_transform(&z, out, &kept)?;
            let y_ref = conv.composite_inverse_transform(&z, out, &kept)?;
            assert_eq!(y.dims(), y_ref.dims());
            assert!(max_diff(&y, &y_ref)? < 1e-13, "{modes:?} {out:?}");
            // Input gradients of a weighted sum of the round trip, both ways.
            let w = random_like(&y, 100 + seed as u64)?;
            let g = (y * &w)?.sum_all()?.backward()?;
            let g_ref = (y_ref * &w)?.sum_all()?.backward()?;
            let (gx, gx_ref) = match (g.get(&x), g_ref.get(&x)) {
                (Some(a), Some(b)) => (a.clone(), b.clone()),
                _ => panic!("no input gradient"),
            };
            assert!(
                max_diff(&gx, &gx_ref)? < 1e-13,
                "{modes:?} {grid:?} {out:?}"
            );
        }
        Ok(())
    }

    #[test]
    fn fused_transforms_do_not_depend_on_the_thread_count() -> Result<()> {
        let conv = layer(&[16, 16])?;
        let grid = [20, 24];
        let kept = conv.kept(&grid);
        let x = random_like(&Tensor::zeros((3, 3, 20, 24), DType::F32, &Device::Cpu)?, 9)?;
        let run = || -> Result<(Vec<f32>, Vec<f32>)> {
            let z = conv.forward_transform(&x, &grid, &kept)?;
            let y = conv.inverse_transform(&z, &grid, &kept)?;
            Ok((z.flatten_all()?.to_vec1()?, y.flatten_all()?.to_vec1()?))
        };
        assert_eq!(single_threaded(run)?, run()?);
        Ok(())
    }

    /// The count is the variables the layer created: all of them in `real`, and in
    /// `numel` the complex ones once (dense `O·C·Πmodes`, Tucker core and factors).
    #[test]
    fn param_count_is_the_variables_it_created() -> Result<()> {
        for (n_modes, tucker, bias) in [
            (vec![6, 5], false, true),
            (vec![7], false, false),
            (vec![6, 4], true, true),
            (vec![8, 8], true, false),
        ] {
            let vars = SeededVarMap::new(4);
            let cfg = SpectralConvConfig {
                in_channels: 3,
                out_channels: 5,
                n_modes,
                bias,
                factorization: tucker.then_some(Factorization::Tucker),
                rank: TuckerRank::Fraction(0.5),
                ..Default::default()
            };
            let conv = SpectralConv::new(
                &cfg,
                vars.var_builder(DType::F32, &candle_core::Device::Cpu),
            )?;
            let n = crate::layers::params::var_map_entries(vars.varmap());
            let count = conv.param_count();
            assert_eq!(count.real, n);
            let bias = if bias { 5 } else { 0 };
            let complex = match conv.weight() {
                SpectralWeight::Dense(_) => cfg.weight_shape().iter().product::<usize>(),
                SpectralWeight::Tucker(t) => {
                    t.rank().iter().product::<usize>()
                        + t.shape()
                            .iter()
                            .zip(t.rank())
                            .map(|(s, r)| s * r)
                            .sum::<usize>()
                }
            };
            assert_eq!(count.numel, complex + bias);
            assert_eq!(count.real, 2 * complex + bias);
        }
        Ok(())
    }
}
