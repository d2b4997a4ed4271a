//! DeepONet with an MLP branch (DON), and the DeepONet model both DON and DON-CNN build.

use super::bare_activation;
use super::don_cnn::{CnnBranch, DeepOnetCnnConfig};
use super::{
    check_basis_split, check_grid, combine_with_trunk_blocks, combine_with_trunk_panels,
    grid_coordinates, shape_error, Activation, Fnn,
};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::operator::{NeuralOperator, ParamCount};
use candle_core::{DType, Module, Tensor};
use candle_nn::init::Init;
use candle_nn::VarBuilder;
use no_layers::ops::basis_product::PanelBasis;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// Configuration of DeepONet (MLP branch and trunk).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeepOnetConfig {
    /// Input channels (the applied current: 1).
    pub in_channels: usize,
    /// Output channels (v and w: 2).
    pub out_channels: usize,
    /// Training grid `[nt, nx]`; the branch input size is `in_channels · nt · nx`.
    pub grid: [usize; 2],
    /// Hidden widths of the branch MLP.
    pub branch_hidden: Vec<usize>,
    /// Hidden widths of the trunk MLP (its input is `(t, x)`).
    pub trunk_hidden: Vec<usize>,
    /// Total number of basis functions, split evenly over the outputs.
    pub n_basis: usize,
    /// Activation of the branch's hidden layers.
    #[serde(with = "bare_activation")]
    pub branch_activation: Activation,
    /// Activation of the trunk's layers (its last layer included, as in DeepXDE).
    #[serde(with = "bare_activation")]
    pub trunk_activation: Activation,
    /// Whether each output has its own scalar bias.
    pub bias: bool,
}

impl Default for DeepOnetConfig {
    /// DeepXDE-sized default: branch `[10000, 256, 256, 256]`, trunk `[2, 256, 256, 256]`,
    /// 256 basis functions (128 per output), tanh.
    fn default() -> Self {
        Self {
            in_channels: 1,
            out_channels: 2,
            grid: [100, 100],
            branch_hidden: vec![256, 256],
            trunk_hidden: vec![256, 256],
            n_basis: 256,
            branch_activation: Activation::Tanh,
            trunk_activation: Activation::Tanh,
            bias: true,
        }
    }
}

impl DeepOnetConfig {
    fn validate(&self) -> Result<()> {
        check_grid("don", self.in_channels, self.grid)?;
        check_basis_split("don", self.n_basis, self.out_channels)?;
        if self.branch_hidden.contains(&0) || self.trunk_hidden.contains(&0) {
            return Err(ModelError::InvalidConfig {
                model: "don",
                reason: "hidden widths must be positive".into(),
            });
        }
        Ok(())
    }
}

/// The branch of a DeepONet: an MLP on the flattened input or a CNN encoder.
#[derive(Debug, Clone)]
enum Branch {
    Mlp(Fnn),
    Cnn(CnnBranch),
}

impl Branch {
    fn forward(&self, u: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Branch::Mlp(f) => f.forward(&u.flatten_from(1)?),
            Branch::Cnn(c) => c.forward(u),
        }
    }

    fn param_count(&self) -> usize {
        match self {
            Branch::Mlp(f) => f.param_count(),
            Branch::Cnn(c) => c.param_count(),
        }
    }
}

/// A DeepONet (DON or DON-CNN, by its branch).
#[derive(Debug, Clone)]
pub struct DeepOnet {
    config: ModelConfig,
    in_channels: usize,
    out_channels: usize,
    grid: [usize; 2],
    branch: Branch,
    trunk: Fnn,
    bias: Option<Tensor>,
    coords: Tensor,
    trunk_cache: TrunkCache,
}

/// Trunk outputs already computed, one per query grid, each with a copy of the trunk
/// weights it came from: the trunk does not depend on the input, and on the default
/// configuration it is nearly all of an inference (10,000 grid points through the trunk
/// against one branch row per sample).
///
/// An entry is reused only when both its query points and every trunk weight are bitwise
/// equal to the ones it was computed from, so cached values always equal a fresh trunk
/// pass. The weight check is needed because a model's weights may change under it: the
/// trainable model's variables are updated in place by the optimiser, and an
/// [`crate::inference_twin`] holds detached *views* of those same variables, so it sees
/// those updates too. The check copies the trunk's parameters (about 130,000 values for
/// the default DON, well under a millisecond) instead of recomputing the trunk (a
/// 10,000-point pass through three 256-wide layers). Each model (and so each twin, which
/// is a new model built over the variables) has its own cache and starts empty; a clone
/// starts empty too.
#[derive(Debug, Default)]
struct TrunkCache(Mutex<Vec<CachedTrunk>>);

/// One cached trunk output ([`Fnn::forward_blocks`] on `coords`).
#[derive(Debug)]
struct CachedTrunk {
    /// The query points, as their values' bits.
    coords: Vec<u64>,
    /// The trunk weights, as their values' bits.
    weights: Vec<Vec<u64>>,
    /// The trunk output (`[K, q, N]` blocks), detached and stored in column panels for
    /// the product with the branch ([`PanelBasis`]).
    panels: PanelBasis,
}

/// Most query grids kept at once (the training grid and one other; each entry holds
/// `n_basis × N` values, 10 MB for the default DON on 100 × 100).
const TRUNK_CACHE_GRIDS: usize = 2;

/// The bits of every value of `t` (f32 and f64 without conversion, others through f64).
fn value_bits(t: &Tensor) -> candle_core::Result<Vec<u64>> {
    let flat = t.flatten_all()?;
    Ok(match flat.dtype() {
        DType::F32 => flat
            .to_vec1::<f32>()?
            .into_iter()
            .map(|v| u64::from(v.to_bits()))
            .collect(),
        DType::F64 => flat
            .to_vec1::<f64>()?
            .into_iter()
            .map(f64::to_bits)
            .collect(),
        _ => flat
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?
            .into_iter()
            .map(f64::to_bits)
            .collect(),
    })
}

impl Clone for TrunkCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl TrunkCache {
    /// The trunk on `coords` as [`Fnn::forward_blocks`] for `k` outputs, detached: the
    /// cached value when one was computed from bitwise the same points and trunk weights,
    /// else a fresh pass, which is then cached (replacing the oldest entry when
    /// [`TRUNK_CACHE_GRIDS`] are held).
    fn get(&self, trunk: &Fnn, coords: &Tensor, k: usize) -> candle_core::Result<PanelBasis> {
        let weights = trunk
            .parameters()
            .iter()
            .map(|p| value_bits(p))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let points = value_bits(coords)?;
        let lock = || {
            self.0
                .lock()
                .map_err(|_| candle_core::Error::Msg("DeepONet trunk cache: lock poisoned".into()))
        };
        {
            let mut slots = lock()?;
            // Entries from other weights are stale whatever their grid.
            slots.retain(|e| e.weights == weights);
            if let Some(entry) = slots.iter().find(|e| e.coords == points) {
                if entry.panels.dims().0 == k {
                    return Ok(entry.panels.clone());
                }
            }
        }
        // The trunk pass runs with the lock released: its parallel work may run on a pool
        // thread that meanwhile takes up another call of this model (`no_layers::threads`),
        // which would otherwise wait on the lock that thread holds itself.
        let panels = PanelBasis::new(&trunk.forward_blocks(coords, k)?)?;
        let mut slots = lock()?;
        slots.retain(|e| e.coords != points && e.weights == weights);
        if slots.len() >= TRUNK_CACHE_GRIDS {
            slots.remove(0);
        }
        slots.push(CachedTrunk {
            coords: points,
            weights,
            panels: panels.clone(),
        });
        Ok(panels)
    }
}

impl DeepOnet {
    /// Builds a DeepONet with an MLP branch (weights under `branch.*`, `trunk.*`, `bias`).
    pub fn new(cfg: &DeepOnetConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let m = cfg.in_channels * cfg.grid[0] * cfg.grid[1];
        let branch_sizes = [&[m][..], &cfg.branch_hidden, &[cfg.n_basis]].concat();
        let branch = Fnn::new(
            &branch_sizes,
            cfg.branch_activation,
            false,
            false,
            vb.pp("branch"),
        )?;
        Self::assemble(
            ModelConfig::Don(cfg.clone()),
            (cfg.in_channels, cfg.out_channels, cfg.grid),
            Branch::Mlp(branch),
            (
                &cfg.trunk_hidden,
                cfg.trunk_activation,
                cfg.n_basis,
                cfg.bias,
            ),
            vb,
        )
    }

    /// Builds a DeepONet with a CNN branch.
    pub fn new_cnn(cfg: &DeepOnetCnnConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let branch = CnnBranch::new(cfg, vb.pp("branch"))?;
        Self::assemble(
            ModelConfig::DonCnn(cfg.clone()),
            (cfg.in_channels, cfg.out_channels, cfg.grid),
            Branch::Cnn(branch),
            (
                &cfg.trunk_hidden,
                cfg.trunk_activation,
                cfg.n_basis,
                cfg.bias,
            ),
            vb,
        )
    }

    fn assemble(
        config: ModelConfig,
        (in_channels, out_channels, grid): (usize, usize, [usize; 2]),
        branch: Branch,
        (trunk_hidden, trunk_activation, n_basis, bias): (&[usize], Activation, usize, bool),
        vb: VarBuilder,
    ) -> Result<Self> {
        let trunk_sizes = [&[2][..], trunk_hidden, &[n_basis]].concat();
        let trunk = Fnn::new(&trunk_sizes, trunk_activation, true, false, vb.pp("trunk"))?;
        let bias = if bias {
            Some(vb.get_with_hints(out_channels, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        let coords = grid_coordinates(grid[0], grid[1], vb.dtype(), vb.device())?;
        Ok(Self {
            config,
            in_channels,
            out_channels,
            grid,
            branch,
            trunk,
            bias,
            coords,
            trunk_cache: TrunkCache::default(),
        })
    }

    fn check_input(&self, input: &Tensor) -> candle_core::Result<()> {
        let dims = input.dims();
        if dims.len() != 4
            || dims[1] != self.in_channels
            || dims[2] != self.grid[0]
            || dims[3] != self.grid[1]
        {
            return Err(shape_error(
                "DeepONet input",
                dims,
                format!(
                    "[B, {}, {}, {}] (the branch sees a fixed grid; resample other grids first)",
                    self.in_channels, self.grid[0], self.grid[1]
                ),
            ));
        }
        Ok(())
    }

    /// Evaluates the operator at arbitrary query points: `coords` is `[N, 2]` holding
    /// `(t, x)` scaled to `[0, 1]` as in [`grid_coordinates`]; the result is `[B, C_out, N]`.
    ///
    /// When the trunk's weights record no gradients (an [`crate::inference_twin`]), the
    /// trunk's output on `coords` is computed once and reused by later calls on the same
    /// points (two query grids are kept), for as long as the trunk weights stay bitwise
    /// the same: an inference then costs the branch and one product. A trainable model
    /// recomputes the trunk on every call, so gradients reach its weights.
    pub fn forward_at(&self, input: &Tensor, coords: &Tensor) -> candle_core::Result<Tensor> {
        self.check_input(input)?;
        let cd = coords.dims();
        if cd.len() != 2 || cd[1] != 2 {
            return Err(shape_error(
                "DeepONet query points",
                cd,
                "[N, 2] holding (t, x)".into(),
            ));
        }
        let b = self.branch.forward(input)?;
        if self.trunk_is_constant() && !coords.track_op() {
            let panels = self
                .trunk_cache
                .get(&self.trunk, coords, self.out_channels)?;
            return combine_with_trunk_panels(&b, &panels, self.bias.as_ref());
        }
        let blocks = self.trunk.forward_blocks(coords, self.out_channels)?;
        combine_with_trunk_blocks(&b, &blocks, self.bias.as_ref())
    }

    /// Whether no trunk weight records gradients (the model is an
    /// [`crate::inference_twin`], or was built over plain tensors): then the trunk's output
    /// carries no graph and [`Self::forward_at`] reuses it per query grid, as
    /// [`NeuralOperator::predict`] always does.
    fn trunk_is_constant(&self) -> bool {
        self.trunk.parameters().iter().all(|p| !p.track_op())
    }
}

impl NeuralOperator for DeepOnet {
    fn forward_t(&self, input: &Tensor, _train: bool) -> candle_core::Result<Tensor> {
        let out = self.forward_at(input, &self.coords)?;
        let bsz = out.dim(0)?;
        out.reshape((bsz, self.out_channels, self.grid[0], self.grid[1]))
    }

    fn predict(&self, input: &Tensor) -> candle_core::Result<Tensor> {
        self.check_input(input)?;
        let panels = self
            .trunk_cache
            .get(&self.trunk, &self.coords, self.out_channels)?;
        let out =
            combine_with_trunk_panels(&self.branch.forward(input)?, &panels, self.bias.as_ref())?;
        let bsz = out.dim(0)?;
        Ok(out
            .reshape((bsz, self.out_channels, self.grid[0], self.grid[1]))?
            .detach())
    }

    fn architecture(&self) -> &str {
        self.config.name()
    }

    fn config_json(&self) -> serde_json::Value {
        self.config.to_json()
    }

    fn rebuild(&self, vb: VarBuilder) -> Result<Box<dyn NeuralOperator>> {
        crate::config::build(&self.config, vb)
    }

    fn param_count(&self) -> ParamCount {
        let n = self.branch.param_count()
            + self.trunk.param_count()
            + self.bias.as_ref().map_or(0, |b| b.elem_count());
        ParamCount { numel: n, real: n }
    }

    fn accepts_other_resolutions(&self) -> bool {
        false
    }
}
