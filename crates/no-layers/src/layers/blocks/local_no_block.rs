//! One LocalNO block (Liu-Schiaffini et al., ICML 2024), as neuraloperator's
//! `LocalNOBlocks` computes block `i` (post-activation):
//!
//! ```text
//! x' = SpectralConv_i(x) + FD_i(x) + DISCO_i(x) + local_no_skip_i(x)
//! x' = gelu(x')                                 (if a channel MLP follows, or not last)
//! x' = ChannelMLP_i(x') + channel_mlp_skip_i(x) (only with use_channel_mlp)
//! x' = gelu(x')                                 (only with the MLP, not last)
//! ```
//!
//! Variables are created under the blocks' prefix with neuraloperator's names:
//! `convs.{i}`, `differential.{i}`, `local_convs.{i}`, `local_no_skips.{i}`,
//! `channel_mlp.{i}`, `channel_mlp_skips.{i}`.
//!
//! How it is computed: `FD_i`, `DISCO_i` and a linear `local_no_skip_i` are all "same"
//! convolutions of `x` (3×3, 3×3 and 1×1 at the defaults), so when both kernels mix all
//! channels their stencils are added and applied as **one** zero-padded convolution; one
//! more pass adds the spectral output, the finite difference's periodic wrap-around on the
//! border, DISCO's bias and the GELU ([`crate::ops::periodic_border::periodic_border_sum_of`],
//! fused on the CPU, its composite form elsewhere). The same function as three
//! convolutions and four additions, at about a third of their cost.

use crate::error::Result;
use crate::layers::activation::gelu;
use crate::layers::blocks::fno_block::FnoBlockConfig;
use crate::layers::constant_cache::{all_constant, ConstantCache};
use crate::layers::local::conv::{conv2d_same, conv2d_same_sum, PaddingMode};
use crate::layers::local::disco::{Disco, DiscoConfig};
use crate::layers::local::finite_difference::{FiniteDifference, FiniteDifferenceConfig};
use crate::layers::mlp::ChannelMlp;
use crate::layers::params::ParamCount;
use crate::layers::skip::{Skip, SkipKind};
use crate::layers::spectral::conv::SpectralConv;
use crate::ops::channel_affine::add_channel_bias;
use crate::ops::fno_block_tail::{fno_block_tail, BlockTailWeights};
use crate::ops::periodic_border::periodic_border_sum_of;
use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

/// Configuration of the LocalNO blocks of one model (every block has the same).
#[derive(Debug, Clone, PartialEq)]
pub struct LocalNoBlockConfig {
    /// The FNO part: width, modes, number of blocks, spectral transform, the skip around
    /// the kernels (`local_no_skip`) and the channel MLP (no factorization).
    pub fno: FnoBlockConfig,
    /// The finite-difference kernel of every block (`None`: no `differential` kernels).
    pub differential: Option<FiniteDifferenceConfig>,
    /// The DISCO kernel of every block (`None`: no `local_convs`).
    pub disco: Option<DiscoConfig>,
}

/// Block `index` of a LocalNO.
#[derive(Debug, Clone)]
pub struct LocalNoBlock {
    conv: SpectralConv,
    diff: Option<FiniteDifference>,
    disco: Option<Disco>,
    skip: Skip,
    mlp: Option<(ChannelMlp, Skip)>,
    /// The weights of the point-wise part when it has the fused op's form.
    tail: Option<BlockTailWeights>,
    last: bool,
    /// For constant weights (an inference twin), the merged local kernels last built:
    /// keyed by the grid, `(finite-difference kernel, DISCO stencil with the skip)`.
    local_kernels: ConstantCache<(usize, usize), (Tensor, Tensor)>,
}

impl LocalNoBlock {
    /// Builds block `index` of `cfg.fno.n_layers` with its variables under `vb`, the
    /// blocks' prefix (`local_no_blocks` in neuraloperator).
    pub fn new(cfg: &LocalNoBlockConfig, vb: VarBuilder, index: usize) -> Result<Self> {
        let f = &cfg.fno;
        let conv = SpectralConv::new(&f.spectral_config(), vb.pp("convs").pp(index))?;
        let diff = cfg
            .differential
            .as_ref()
            .map(|c| FiniteDifference::new(c, vb.pp("differential").pp(index)))
            .transpose()?;
        let disco = cfg
            .disco
            .as_ref()
            .map(|c| Disco::new(c, vb.pp("local_convs").pp(index)))
            .transpose()?;
        let skip = Skip::new(&f.skip_config(f.skip), vb.pp("local_no_skips").pp(index))?;
        let mlp = f.channel_mlp(&vb, index)?;
        let tail = mlp
            .as_ref()
            .and_then(|(m, gate)| super::tail_weights(&skip, m, gate));
        Ok(Self {
            conv,
            diff,
            disco,
            skip,
            mlp,
            tail,
            last: index + 1 >= f.n_layers,
            local_kernels: ConstantCache::default(),
        })
    }

    /// Its parameters: spectral convolution, local kernels, skip, channel MLP and its skip.
    pub fn param_count(&self) -> ParamCount {
        self.conv.param_count()
            + self
                .diff
                .as_ref()
                .map_or(ParamCount::ZERO, |d| d.param_count())
            + self
                .disco
                .as_ref()
                .map_or(ParamCount::ZERO, |d| d.param_count())
            + self.skip.param_count()
            + self
                .mlp
                .as_ref()
                .map_or(ParamCount::ZERO, |(m, g)| m.param_count() + g.param_count())
    }
}

impl Module for LocalNoBlock {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let last = self.last;
        let spectral = self.conv.forward(x)?;
        let activation = self.mlp.is_some() || !last;
        // With the local kernels merged, a linear skip rides in the centre of their stencil
        // (when no fused tail takes the skip), and then the bias and the activation come
        // with the border term in the same pass.
        let (mut y, skip_and_activation_done) = match (&self.diff, &self.disco) {
            (Some(fd), Some(disco)) if mergeable(fd, disco, x) => {
                let skip = match (&self.tail, self.skip.kind()) {
                    (None, SkipKind::Linear) => self.skip.weight(),
                    _ => None,
                };
                let act = skip.is_some() && activation;
                let (n_h, n_w) = (x.dim(2)?, x.dim(3)?);
                let kernels = self.local_kernels(fd, disco, skip, (n_h, n_w))?;
                let y = merged_block_sum(fd, disco, &kernels, x, &spectral, act)?;
                (y, skip.is_some())
            }
            (diff, disco) => {
                let mut y = spectral;
                if let Some(d) = diff {
                    y = (y + d.forward(x)?)?;
                }
                if let Some(d) = disco {
                    y = (y + d.forward(x)?)?;
                }
                (y, false)
            }
        };
        if let Some(tail) = &self.tail {
            // Skip, activations, channel MLP and gate in one op (fused on the CPU); with a
            // channel MLP the inner activation is on even in the last block.
            return fno_block_tail(x, &y, tail, true, !last);
        }
        if !skip_and_activation_done {
            y = (y + self.skip.forward(x)?)?;
            if activation {
                y = gelu(&y)?;
            }
        }
        if let Some((mlp, gate)) = &self.mlp {
            y = (mlp.forward(&y)? + gate.forward(x)?)?;
            if !last {
                y = gelu(&y)?;
            }
        }
        Ok(y)
    }
}

/// Whether a block's finite-difference and DISCO kernels can run as one convolution
/// ([`merged_block_sum`]): both mix all channels and the input is a 2-D grid.
impl LocalNoBlock {
    /// The finite-difference kernel and the DISCO stencil (with a linear skip in its
    /// centre) for an `n_h × n_w` grid: kept between calls for constant weights, where they
    /// are a dozen small tensor ops per block and call otherwise.
    fn local_kernels(
        &self,
        fd: &FiniteDifference,
        disco: &Disco,
        skip: Option<&Tensor>,
        grid: (usize, usize),
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let build = || merged_kernels(fd, disco, skip, grid);
        let mut sources = vec![fd.weight(), disco.weight()];
        sources.extend(skip);
        if !all_constant(&sources) {
            return build();
        }
        self.local_kernels.get_or_build(grid, &sources, build)
    }
}

/// [`LocalNoBlock::local_kernels`] built: `(FD kernel for the width, DISCO stencil [+ the
/// skip weight at its centre])`.
fn merged_kernels(
    fd: &FiniteDifference,
    disco: &Disco,
    skip: Option<&Tensor>,
    (n_h, n_w): (usize, usize),
) -> candle_core::Result<(Tensor, Tensor)> {
    let mut stencil = disco.stencil(n_h, n_w)?;
    if let Some(w) = skip {
        let (o, c, kh, kw) = stencil.dims4()?;
        let centre = w
            .reshape((o, c, 1, 1))?
            .pad_with_zeros(2, kh / 2, kh / 2)?
            .pad_with_zeros(3, kw / 2, kw / 2)?;
        stencil = (stencil + centre)?;
    }
    Ok((fd.kernel_for_width(n_w)?, stencil))
}

fn mergeable(fd: &FiniteDifference, disco: &Disco, x: &Tensor) -> bool {
    fd.config().groups == 1 && fd.config().n_dim == 2 && disco.config().groups == 1 && x.rank() == 4
}

/// `act(spectral + FD(x) + DISCO(x) [+ W_skip·x])` with one convolution: the kernels
/// are all "same" convolutions of `x` (the linear skip, weight `[C, C, 1]`, a 1×1 one), so
/// their stencils add. With the finite difference periodic and DISCO zero-padded (the
/// defaults), the summed stencil runs zero-padded and one pass adds the spectral output,
/// the finite difference's periodic wrap-around on the border, DISCO's bias and the GELU
/// ([`periodic_border_sum_of`], which picks its fused CPU kernel or its composite form,
/// and adds the spectral output in its pass when no gradient is recorded);
/// otherwise [`conv2d_same_sum`] and separate additions. Half the convolution work of
/// running the kernels one after the other, no separate skip product and three full-size
/// passes less; the same function up to rounding.
fn merged_block_sum(
    fd: &FiniteDifference,
    disco: &Disco,
    (fd_kernel, stencil): &(Tensor, Tensor),
    x: &Tensor,
    spectral: &Tensor,
    activation: bool,
) -> candle_core::Result<Tensor> {
    let one_pass = fd.config().padding == PaddingMode::Periodic
        && disco.config().padding == PaddingMode::Zeros
        && fd_kernel.dims() == stencil.dims();
    if one_pass {
        let main = conv2d_same(x, &(fd_kernel + stencil)?, PaddingMode::Zeros, 1)?;
        return periodic_border_sum_of(spectral, &main, x, fd_kernel, disco.bias(), activation);
    }
    let local = conv2d_same_sum(
        x,
        (fd_kernel, fd.config().padding),
        (stencil, disco.config().padding),
    )?;
    let mut y = (spectral + local)?;
    if let Some(bias) = disco.bias() {
        y = add_channel_bias(&y, bias)?;
    }
    if activation {
        y = gelu(&y)?;
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::SeededVarMap;
    use crate::layers::params::var_map_entries;
    use candle_core::{DType, Device};

    fn cfg(use_channel_mlp: bool, diff: bool, disco: bool) -> LocalNoBlockConfig {
        let c = 4;
        LocalNoBlockConfig {
            fno: FnoBlockConfig {
                channels: c,
                n_modes: vec![6, 4],
                n_layers: 2,
                use_channel_mlp,
                ..Default::default()
            },
            differential: diff.then(|| FiniteDifferenceConfig::local_no(c, 12, true)),
            disco: disco.then(|| DiscoConfig {
                in_channels: c,
                out_channels: c,
                default_in_shape: [12, 10],
                ..Default::default()
            }),
        }
    }

    #[test]
    fn param_count_is_the_variables_it_created() -> Result<()> {
        for (mlp, diff, disco) in [
            (false, true, true),
            (true, true, true),
            (false, false, true),
        ] {
            let vars = SeededVarMap::new(1);
            let block = LocalNoBlock::new(
                &cfg(mlp, diff, disco),
                vars.var_builder(DType::F32, &Device::Cpu),
                0,
            )?;
            let count = block.param_count();
            assert_eq!(count.real, var_map_entries(vars.varmap()));
            // The complex spectral weight `[4, 4, 6, 4/2 + 1]` counts twice in `real`.
            assert_eq!(count.real - count.numel, 4 * 4 * 6 * 3);
        }
        Ok(())
    }

    /// The block with its fused ops equals the same block with the composite path forced
    /// (what a GPU runs), with and without a channel MLP, first and last block.
    #[test]
    fn fused_and_composite_blocks_agree() -> Result<()> {
        let x = crate::gradcheck::random_like(
            &Tensor::zeros((2, 4, 12, 10), DType::F64, &Device::Cpu)?,
            3,
        )?;
        for mlp in [false, true] {
            let vars = SeededVarMap::new(5);
            let vb = vars.var_builder(DType::F64, &Device::Cpu);
            for index in [0, 1] {
                let block =
                    LocalNoBlock::new(&cfg(mlp, true, true), vb.pp("local_no_blocks"), index)?;
                let fused = block.forward(&x)?;
                let _g = crate::ops::composite_only();
                let composite = block.forward(&x)?;
                let diff = (fused - composite)?
                    .abs()?
                    .flatten_all()?
                    .max(0)?
                    .to_scalar::<f64>()?;
                assert!(diff < 1e-11, "mlp {mlp} block {index}: {diff}");
            }
        }
        Ok(())
    }

    /// A block over constant views of its weights (as an inference twin builds it) keeps
    /// its merged local kernels and adds the spectral part in the border pass: the same
    /// bits as the block over the variables, also after an in-place update of them.
    #[test]
    fn a_constant_block_keeps_its_kernels_and_equals_the_variable_block() -> Result<()> {
        let vars = SeededVarMap::new(8);
        let config = cfg(false, true, true);
        let trained = LocalNoBlock::new(&config, vars.var_builder(DType::F32, &Device::Cpu), 0)?;
        let views: std::collections::HashMap<String, Tensor> = vars
            .varmap()
            .data()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect();
        let twin = LocalNoBlock::new(
            &config,
            VarBuilder::from_tensors(views, DType::F32, &Device::Cpu),
            0,
        )?;
        let x = crate::gradcheck::random_like(
            &Tensor::zeros((1, 4, 12, 10), DType::F64, &Device::Cpu)?,
            4,
        )?
        .to_dtype(DType::F32)?;
        let bits = |t: &Tensor| -> Result<Vec<u32>> {
            Ok(t.flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .map(|v| v.to_bits())
                .collect())
        };
        assert!(!trained.local_kernels.is_filled());
        assert_eq!(bits(&twin.forward(&x)?)?, bits(&trained.forward(&x)?)?);
        assert!(twin.local_kernels.is_filled() && !trained.local_kernels.is_filled());
        for var in vars.varmap().all_vars() {
            var.set(&(var.as_tensor() * 0.5)?)?;
        }
        assert_eq!(bits(&twin.forward(&x)?)?, bits(&trained.forward(&x)?)?);
        Ok(())
    }
}
