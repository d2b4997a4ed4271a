//! POD-DeepONet: a DeepONet whose trunk is a proper orthogonal decomposition (POD) basis of
//! the training outputs.
//!
//! The basis is computed per output field (v and w each get their own modes) from the
//! **training split only**: the outputs are centred by their mean over the training
//! samples and the leading left singular vectors of the centred snapshot matrix are kept,
//! either as many as reach an energy fraction (`Σ_{i<r} σ_i² / Σ σ_i² ≥ energy`) or a fixed
//! count. The modes come from the method of snapshots (Gram matrix `Y Yᵀ`, faer's
//! self-adjoint eigensolver), followed by one modified Gram–Schmidt pass in f64 and a sign
//! convention (the largest-magnitude entry of each mode is positive). Every faer call runs
//! with `Par::Seq`, so the basis is bit-identical whatever the rayon thread count.
//!
//! The model then predicts `y_k = mean_k + √P · Φ_k c_k(u)`, where `Φ_k` is the orthonormal
//! `[P, r_k]` basis of output k (`P = nt·nx`), and `c_k` the block of the branch MLP's
//! output for that field. The factor √P makes the effective modes unit-RMS, as in the
//! lu-group reference scripts, so the branch's coefficients have the size of the fields.
//! With DeepXDE's `PODDeepONet(pod_basis=√P·Φ_k, ...)` the output is the same minus the mean.
//!
//! The mean and the basis are stored in the `VarBuilder` (names `pod.mean`, `pod.basis{k}`),
//! so they travel with the checkpoint; the forward pass detaches them, so an optimiser never
//! changes them (candle's AdamW skips variables without a gradient, weight decay included).

use crate::config::ModelConfig;
use crate::deeponet::{bare_activation, Activation, Fnn};
use crate::error::{ModelError, Result};
use crate::operator::{NeuralOperator, ParamCount};
use candle_core::{DType, Module, Tensor};
use candle_nn::init::Init;
use candle_nn::VarBuilder;
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::evd::{self_adjoint_evd, self_adjoint_evd_scratch, ComputeEigenvectors};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use no_layers::ops::dense::{dense, DenseActivation, DenseLayout};
use serde::{Deserialize, Serialize};

/// How many POD modes to keep per output field.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PodCriterion {
    /// The fewest modes whose energy fraction `Σ σ_i² / Σ σ²` reaches this value (in (0, 1]).
    Energy(f64),
    /// A fixed number of modes (fewer if the training outputs have lower rank).
    Count(usize),
}

impl Default for PodCriterion {
    fn default() -> Self {
        PodCriterion::Count(64)
    }
}

/// The POD basis of one output field.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldBasis {
    /// Mean of the training outputs, `P` values.
    pub mean: Vec<f64>,
    /// Orthonormal modes, row-major `[P, r]` (column i is mode i).
    pub modes: Vec<f64>,
    /// Number of modes kept.
    pub rank: usize,
    /// All singular values of the centred training outputs, nonincreasing.
    pub singular_values: Vec<f64>,
    /// Energy fraction captured by the kept modes.
    pub energy: f64,
}

/// POD bases of every output field, computed from the training outputs.
#[derive(Debug, Clone, PartialEq)]
pub struct PodBasis {
    /// Grid points per field, `P = nt · nx`.
    pub n_points: usize,
    /// One basis per output channel.
    pub fields: Vec<FieldBasis>,
}

/// Relative threshold below which eigenvalues of the Gram matrix count as zero.
const RANK_TOL: f64 = 1e-12;

impl PodBasis {
    /// Computes the bases from the **training** outputs `[N, C_out, nt, nx]` (any float dtype).
    pub fn fit(train_outputs: &Tensor, criterion: PodCriterion) -> Result<Self> {
        let dims = train_outputs.dims().to_vec();
        if dims.len() != 4 || dims[0] < 2 {
            return Err(ModelError::Shape {
                context: "POD training outputs".into(),
                got: dims,
                expected: "[N, C_out, nt, nx] with N ≥ 2".into(),
            });
        }
        match criterion {
            PodCriterion::Energy(e) if !(e > 0.0 && e <= 1.0) => {
                return Err(ModelError::InvalidConfig {
                    model: "pod_don",
                    reason: format!("energy criterion {e} must lie in (0, 1]"),
                })
            }
            PodCriterion::Count(0) => {
                return Err(ModelError::InvalidConfig {
                    model: "pod_don",
                    reason: "mode count must be positive".into(),
                })
            }
            _ => {}
        }
        let (n, c, p) = (dims[0], dims[1], dims[2] * dims[3]);
        let data = train_outputs
            .to_dtype(DType::F64)?
            .reshape((n, c, p))?
            .to_device(&candle_core::Device::Cpu)?
            .to_vec3::<f64>()?;
        let fields = (0..c)
            .map(|k| {
                let snapshots = Mat::from_fn(n, p, |i, j| data[i][k][j]);
                field_basis(snapshots, criterion)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            n_points: p,
            fields,
        })
    }

    /// The number of modes kept per output field.
    pub fn ranks(&self) -> Vec<usize> {
        self.fields.iter().map(|f| f.rank).collect()
    }
}

/// Method of snapshots for one field: `snapshots` is `[N, P]`.
fn field_basis(mut y: Mat<f64>, criterion: PodCriterion) -> Result<FieldBasis> {
    let (n, p) = (y.nrows(), y.ncols());
    let mean: Vec<f64> = (0..p)
        .map(|j| (0..n).map(|i| y[(i, j)]).sum::<f64>() / n as f64)
        .collect();
    for j in 0..p {
        for i in 0..n {
            y[(i, j)] -= mean[j];
        }
    }
    let mut gram = Mat::<f64>::zeros(n, n);
    matmul(
        gram.as_mut(),
        Accum::Replace,
        y.as_ref(),
        y.transpose(),
        1.0,
        Par::Seq,
    );
    let mut eigvals = faer::diag::Diag::<f64>::zeros(n);
    let mut eigvecs = Mat::<f64>::zeros(n, n);
    let mut buf = MemBuffer::new(self_adjoint_evd_scratch::<f64>(
        n,
        ComputeEigenvectors::Yes,
        Par::Seq,
        Default::default(),
    ));
    self_adjoint_evd(
        gram.as_ref(),
        eigvals.as_mut(),
        Some(eigvecs.as_mut()),
        Par::Seq,
        MemStack::new(&mut buf),
        Default::default(),
    )
    .map_err(|e| ModelError::InvalidConfig {
        model: "pod_don",
        reason: format!("the eigensolver did not converge on the Gram matrix: {e:?}"),
    })?;
    // faer sorts eigenvalues nondecreasing: walk them backwards.
    let lambdas: Vec<f64> = (0..n).rev().map(|i| eigvals[i].max(0.0)).collect();
    let total: f64 = lambdas.iter().sum();
    let numerical_rank = lambdas
        .iter()
        .filter(|&&l| l > RANK_TOL * lambdas[0])
        .count();
    if total <= 0.0 || numerical_rank == 0 {
        return Err(ModelError::InvalidConfig {
            model: "pod_don",
            reason: "the training outputs of a field are all equal: no POD mode to keep".into(),
        });
    }
    let rank = match criterion {
        PodCriterion::Count(r) => r.min(numerical_rank),
        PodCriterion::Energy(e) => {
            let mut acc = 0.0;
            let mut r = 0;
            while r < numerical_rank && acc < e * total {
                acc += lambdas[r];
                r += 1;
            }
            r
        }
    };
    // Modes φ_i = Yᵀ w_i / σ_i, then one MGS pass and a sign convention.
    let w = Mat::from_fn(n, rank, |i, j| eigvecs[(i, n - 1 - j)]);
    let mut phi = Mat::<f64>::zeros(p, rank);
    matmul(
        phi.as_mut(),
        Accum::Replace,
        y.transpose(),
        w.as_ref(),
        1.0,
        Par::Seq,
    );
    for j in 0..rank {
        for q in 0..j {
            let dot: f64 = (0..p).map(|i| phi[(i, q)] * phi[(i, j)]).sum();
            for i in 0..p {
                phi[(i, j)] -= dot * phi[(i, q)];
            }
        }
        let norm = (0..p)
            .map(|i| phi[(i, j)] * phi[(i, j)])
            .sum::<f64>()
            .sqrt();
        let largest = (0..p).fold(0.0f64, |m, i| {
            if phi[(i, j)].abs() > m.abs() {
                phi[(i, j)]
            } else {
                m
            }
        });
        let scale = largest.signum() / norm;
        for i in 0..p {
            phi[(i, j)] *= scale;
        }
    }
    let energy = lambdas[..rank].iter().sum::<f64>() / total;
    let mut modes = Vec::with_capacity(p * rank);
    for i in 0..p {
        for j in 0..rank {
            modes.push(phi[(i, j)]);
        }
    }
    Ok(FieldBasis {
        mean,
        modes,
        rank,
        singular_values: lambdas.iter().map(|l| l.sqrt()).collect(),
        energy,
    })
}

/// Configuration of POD-DeepONet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PodDeepOnetConfig {
    /// Input channels (the applied current: 1).
    pub in_channels: usize,
    /// Output channels (v and w: 2).
    pub out_channels: usize,
    /// Training grid `[nt, nx]`.
    pub grid: [usize; 2],
    /// Hidden widths of the branch MLP (its output has one coefficient per mode).
    pub branch_hidden: Vec<usize>,
    /// Activation of the branch's hidden layers (its last layer is linear).
    #[serde(with = "bare_activation")]
    pub branch_activation: Activation,
    /// How many modes to keep when the basis is computed.
    pub criterion: PodCriterion,
    /// Modes kept per output field: empty until a basis is computed, then recorded so that
    /// a checkpoint rebuilds the model.
    pub modes: Vec<usize>,
}

impl Default for PodDeepOnetConfig {
    /// Branch `[10000, 256, 256, r]`, tanh, 64 modes per field.
    fn default() -> Self {
        Self {
            in_channels: 1,
            out_channels: 2,
            grid: [100, 100],
            branch_hidden: vec![256, 256],
            branch_activation: Activation::Tanh,
            criterion: PodCriterion::default(),
            modes: Vec::new(),
        }
    }
}

/// A POD-DeepONet.
#[derive(Debug, Clone)]
pub struct PodDeepOnet {
    config: PodDeepOnetConfig,
    branch: Fnn,
    /// `[K, P]`, detached in the forward pass.
    mean: Tensor,
    /// One `[P, r_k]` orthonormal basis per output, detached in the forward pass.
    bases: Vec<Tensor>,
}

impl PodDeepOnet {
    /// Builds the model around a basis computed with [`PodBasis::fit`] on the training
    /// outputs; the basis and mean are written into `vb` (as `pod.mean`, `pod.basis{k}`) so
    /// that they are saved with the weights. The returned config records the mode counts.
    pub fn from_basis(cfg: &PodDeepOnetConfig, basis: &PodBasis, vb: VarBuilder) -> Result<Self> {
        let p = cfg.grid[0] * cfg.grid[1];
        if basis.fields.len() != cfg.out_channels || basis.n_points != p {
            return Err(ModelError::InvalidConfig {
                model: "pod_don",
                reason: format!(
                    "basis has {} fields of {} points; the config expects {} of {p}",
                    basis.fields.len(),
                    basis.n_points,
                    cfg.out_channels
                ),
            });
        }
        let mut cfg = cfg.clone();
        cfg.modes = basis.ranks();
        let (dtype, dev) = (vb.dtype(), vb.device().clone());
        let store = |name: &str, values: Vec<f64>, shape: (usize, usize)| -> Result<()> {
            let target = vb.pp("pod").get_with_hints(shape, name, Init::Const(0.0))?;
            let value = Tensor::from_vec(values, shape, &dev)?.to_dtype(dtype)?;
            target.slice_set(&value, 0, 0)?;
            Ok(())
        };
        let mean: Vec<f64> = basis
            .fields
            .iter()
            .flat_map(|f| f.mean.iter().copied())
            .collect();
        store("mean", mean, (cfg.out_channels, p))?;
        for (k, f) in basis.fields.iter().enumerate() {
            store(&format!("basis{k}"), f.modes.clone(), (p, f.rank))?;
        }
        Self::new(&cfg, vb)
    }

    /// Builds the model from a config whose `modes` are set and a `vb` that holds
    /// `pod.mean` and `pod.basis{k}` (safetensors weights, or a map filled by
    /// [`Self::from_basis`]). On a map that lacks them (the checkpoint loader's empty
    /// [`no_layers::init::SeededVarMap`]) they are created as zeros, to be filled next.
    pub fn new(cfg: &PodDeepOnetConfig, vb: VarBuilder) -> Result<Self> {
        if cfg.in_channels == 0
            || cfg.grid[0] == 0
            || cfg.grid[1] == 0
            || cfg.branch_hidden.contains(&0)
        {
            return Err(ModelError::InvalidConfig {
                model: "pod_don",
                reason: format!(
                    "in_channels, grid {:?} and widths must be positive",
                    cfg.grid
                ),
            });
        }
        if cfg.modes.len() != cfg.out_channels || cfg.modes.contains(&0) {
            return Err(ModelError::InvalidConfig {
                model: "pod_don",
                reason: format!(
                    "modes {:?} must give a positive count for each of the {} outputs: compute the \
                     basis from the training outputs (PodBasis::fit, PodDeepOnet::from_basis) first",
                    cfg.modes, cfg.out_channels
                ),
            });
        }
        let pvb = vb.pp("pod");
        let p = cfg.grid[0] * cfg.grid[1];
        // Missing tensors become zero placeholders: the checkpoint loader builds the model
        // on an empty map and then fills every variable, failing on any it lacks.
        let fetch = |name: &str, shape: (usize, usize)| -> Result<Tensor> {
            Ok(pvb.get_with_hints(shape, name, Init::Const(0.0))?)
        };
        let mean = fetch("mean", (cfg.out_channels, p))?;
        let bases = cfg
            .modes
            .iter()
            .enumerate()
            .map(|(k, &r)| fetch(&format!("basis{k}"), (p, r)))
            .collect::<Result<Vec<_>>>()?;
        let m = cfg.in_channels * p;
        let total: usize = cfg.modes.iter().sum();
        let sizes = [&[m][..], &cfg.branch_hidden, &[total]].concat();
        let branch = Fnn::new(&sizes, cfg.branch_activation, false, false, vb.pp("branch"))?;
        Ok(Self {
            config: cfg.clone(),
            branch,
            mean,
            bases,
        })
    }

    /// The branch coefficients `[B, Σ r_k]` (useful to inspect the fitted modes).
    pub fn coefficients(&self, input: &Tensor) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let dims = input.dims();
        if dims.len() != 4
            || dims[1] != c.in_channels
            || dims[2] != c.grid[0]
            || dims[3] != c.grid[1]
        {
            return Err(candle_core::Error::Msg(
                ModelError::Shape {
                    context: "POD-DeepONet input".into(),
                    got: dims.to_vec(),
                    expected: format!("[B, {}, {}, {}]", c.in_channels, c.grid[0], c.grid[1]),
                }
                .to_string(),
            ));
        }
        self.branch.forward(&input.flatten_from(1)?)
    }
}

impl PodDeepOnet {
    fn model_config(&self) -> ModelConfig {
        ModelConfig::PodDon(self.config.clone())
    }
}

impl NeuralOperator for PodDeepOnet {
    fn forward_t(&self, input: &Tensor, _train: bool) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let coef = self.coefficients(input)?;
        let b = coef.dim(0)?;
        let p = c.grid[0] * c.grid[1];
        let scale = (p as f64).sqrt();
        // The √P scale goes on the coefficients `[B, r]` and the mean is added once per
        // field: no full-size pass for either (fields are `[B, P]`, 10,000 values a sample
        // at 100 × 100).
        let coef = (coef * scale)?;
        let mean = self.mean.detach();
        let mut offset = 0;
        let mut fields = Vec::with_capacity(c.out_channels);
        for (k, basis) in self.bases.iter().enumerate() {
            let r = c.modes[k];
            let ck = coef.narrow(1, offset, r)?;
            offset += r;
            // `Φ_k·c_k + mean_k` in one fused product (the basis as a frozen weight, the
            // mean as its bias): a matrix-vector product on every thread at batch 1, and
            // no gradient for the basis in training.
            fields.push(dense(
                &ck,
                &basis.detach(),
                &mean.get(k)?,
                DenseActivation::Identity,
                DenseLayout::Rows,
            )?);
        }
        Tensor::cat(&fields, 1)?.reshape((b, c.out_channels, c.grid[0], c.grid[1]))
    }

    fn architecture(&self) -> &str {
        "pod_don"
    }

    fn config_json(&self) -> serde_json::Value {
        self.model_config().to_json()
    }

    fn rebuild(&self, vb: VarBuilder) -> Result<Box<dyn NeuralOperator>> {
        crate::config::build(&self.model_config(), vb)
    }

    /// Trainable parameters only (the branch); the basis and mean are fixed buffers.
    fn param_count(&self) -> ParamCount {
        let n = self.branch.param_count();
        ParamCount { numel: n, real: n }
    }

    fn accepts_other_resolutions(&self) -> bool {
        false
    }
}

/// Builds POD-DeepONet from a config with recorded `modes` and weights holding the basis.
pub fn build(config: &PodDeepOnetConfig, vb: VarBuilder) -> Result<Box<dyn NeuralOperator>> {
    Ok(Box::new(PodDeepOnet::new(config, vb)?))
}
