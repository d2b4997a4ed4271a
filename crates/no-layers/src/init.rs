//! Seeded, reproducible parameter initialisation.
//!
//! candle's CPU random generator cannot be seeded (`Device::Cpu.set_seed` fails), so
//! `candle_nn::VarMap` gives different weights on every run. [`SeededVarMap`] is a
//! drop-in [`SimpleBackend`] for [`VarBuilder`]: every layer keeps the candle idiom
//! `vb.get_with_hints(shape, name, init)`, and the values come from a ChaCha8 stream
//! seeded by the model seed *and the variable's full name*. The weights therefore do
//! not depend on the order in which layers are built, on the thread count, or on the
//! device: they are drawn in f64 on the CPU and then moved.
//!
//! ```
//! use candle_core::{DType, Device};
//! use no_layers::init::SeededVarMap;
//!
//! let a = SeededVarMap::new(7);
//! let b = SeededVarMap::new(7);
//! let wa = a.var_builder(DType::F32, &Device::Cpu)
//!     .get_with_hints((3, 4), "w", candle_nn::init::DEFAULT_KAIMING_UNIFORM)?;
//! let wb = b.var_builder(DType::F32, &Device::Cpu)
//!     .get_with_hints((3, 4), "w", candle_nn::init::DEFAULT_KAIMING_UNIFORM)?;
//! assert_eq!(wa.to_vec2::<f32>()?, wb.to_vec2::<f32>()?);
//! # Ok::<(), candle_core::Error>(())
//! ```

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::init::{Init, NormalOrUniform};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// A [`VarMap`] whose new variables are drawn from a seeded generator.
///
/// Cloning shares the underlying variables (like [`VarMap`]).
#[derive(Clone)]
pub struct SeededVarMap {
    varmap: VarMap,
    seed: u64,
}

impl SeededVarMap {
    /// An empty map whose variables will be initialised from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            varmap: VarMap::new(),
            seed,
        }
    }

    /// Wraps an existing map (for instance one about to be filled from a checkpoint).
    pub fn from_varmap(varmap: VarMap, seed: u64) -> Self {
        Self { varmap, seed }
    }

    /// The seed new variables are drawn from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The variables created so far (for optimisers and checkpoints).
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// A [`VarBuilder`] that creates missing variables with seeded values.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }
}

impl SimpleBackend for SeededVarMap {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let mut vars = self
            .varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("variable map lock poisoned".into()))?;
        if let Some(var) = vars.get(name) {
            if var.shape() != &shape {
                candle_core::bail!(
                    "variable `{name}` exists with shape {:?}, but shape {:?} was requested",
                    var.shape(),
                    shape
                );
            }
            return Ok(var.as_tensor().clone());
        }
        let mut rng = rng_for(self.seed, name);
        let value = init_tensor(init, &shape, &mut rng)?
            .to_dtype(dtype)?
            .to_device(dev)?;
        let var = Var::from_tensor(&value)?;
        let tensor = var.as_tensor().clone();
        vars.insert(name.to_string(), var);
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("`{name}`: a SeededVarMap needs a shape to create a variable; use `get`")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .map(|vars| vars.contains_key(name))
            .unwrap_or(false)
    }
}

/// The generator for one named stream: ChaCha8 seeded by `seed` mixed with a stable
/// (FNV-1a) hash of `name`. Use it wherever reproducible randomness is needed.
pub fn rng_for(seed: u64, name: &str) -> ChaCha8Rng {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    ChaCha8Rng::seed_from_u64(seed ^ hash.rotate_left(17))
}

/// Draws an f64 CPU tensor of `shape` following `init` (PyTorch's fan rules for Kaiming).
pub fn init_tensor(init: Init, shape: &Shape, rng: &mut impl Rng) -> Result<Tensor> {
    let n = shape.elem_count();
    let values: Vec<f64> = match init {
        Init::Const(c) => vec![c; n],
        Init::Randn { mean, stdev } => normal_values(n, mean, stdev, rng),
        Init::Uniform { lo, up } => uniform_values(n, lo, up, rng),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(shape).max(1) as f64).sqrt();
            match dist {
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    uniform_values(n, -bound, bound, rng)
                }
                NormalOrUniform::Normal => normal_values(n, 0.0, std, rng),
            }
        }
    };
    Tensor::from_vec(values, shape.clone(), &Device::Cpu)
}

/// PyTorch's default init of `nn.Linear`/`nn.ConvNd` weights: kaiming-uniform with
/// a = √5, i.e. U(±1/√fan_in).
pub fn torch_default_weight(fan_in: usize) -> Init {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    Init::Uniform {
        lo: -bound,
        up: bound,
    }
}

/// PyTorch's default init of `nn.Linear`/`nn.ConvNd` biases: U(±1/√fan_in).
pub fn torch_default_bias(fan_in: usize) -> Init {
    torch_default_weight(fan_in)
}

fn normal_values(n: usize, mean: f64, stdev: f64, rng: &mut impl Rng) -> Vec<f64> {
    (0..n)
        .map(|_| mean + stdev * rng.sample::<f64, _>(StandardNormal))
        .collect()
}

fn uniform_values(n: usize, lo: f64, up: f64, rng: &mut impl Rng) -> Vec<f64> {
    (0..n)
        .map(|_| lo + (up - lo) * rng.random::<f64>())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_values_different_seed_different_values() -> Result<()> {
        let draw = |seed: u64, name: &str| -> Result<Vec<f32>> {
            SeededVarMap::new(seed)
                .var_builder(DType::F32, &Device::Cpu)
                .get_with_hints(
                    16,
                    name,
                    Init::Randn {
                        mean: 0.0,
                        stdev: 1.0,
                    },
                )?
                .to_vec1::<f32>()
        };
        assert_eq!(draw(1, "a")?, draw(1, "a")?);
        assert_ne!(draw(1, "a")?, draw(2, "a")?);
        assert_ne!(draw(1, "a")?, draw(1, "b")?);
        Ok(())
    }

    #[test]
    fn values_do_not_depend_on_creation_order() -> Result<()> {
        let init = Init::Uniform { lo: -1.0, up: 1.0 };
        let m1 = SeededVarMap::new(3);
        let vb1 = m1.var_builder(DType::F64, &Device::Cpu);
        let x1 = vb1.get_with_hints(5, "x", init)?;
        let _y1 = vb1.get_with_hints(5, "y", init)?;
        let m2 = SeededVarMap::new(3);
        let vb2 = m2.var_builder(DType::F64, &Device::Cpu);
        let _y2 = vb2.get_with_hints(5, "y", init)?;
        let x2 = vb2.get_with_hints(5, "x", init)?;
        assert_eq!(x1.to_vec1::<f64>()?, x2.to_vec1::<f64>()?);
        Ok(())
    }

    #[test]
    fn existing_variable_is_reused_and_shape_checked() -> Result<()> {
        let m = SeededVarMap::new(0);
        let vb = m.var_builder(DType::F32, &Device::Cpu);
        let a = vb.get_with_hints((2, 2), "w", Init::Const(3.0))?;
        let b = vb.get_with_hints((2, 2), "w", Init::Const(0.0))?;
        assert_eq!(a.to_vec2::<f32>()?, b.to_vec2::<f32>()?);
        assert!(vb.get_with_hints((3, 2), "w", Init::Const(0.0)).is_err());
        assert_eq!(m.varmap().all_vars().len(), 1);
        Ok(())
    }

    #[test]
    fn kaiming_uniform_respects_its_bound() -> Result<()> {
        let t = init_tensor(
            candle_nn::init::DEFAULT_KAIMING_UNIFORM,
            &Shape::from((64, 16, 3, 3)),
            &mut rng_for(0, "k"),
        )?;
        let bound = 3f64.sqrt() * 2f64.sqrt() / (16.0f64 * 9.0).sqrt();
        let max = t.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(
            max <= bound && max > 0.9 * bound,
            "max {max}, bound {bound}"
        );
        Ok(())
    }
}
