//! Fused ops: each a candle `CustomOp` with a hand-written CPU forward and backward, beside
//! the composite candle formula it replaces, which is its specification and the path taken
//! on every other device.
//!
//! # One dispatch point
//!
//! Every op chooses between its fused CPU kernel and its composite form by calling
//! [`fused_cpu`] with its tensors (plus any condition of its own, such as a supported
//! kernel size). The composite form is made of candle tensor ops only, so it runs on every
//! back end with candle's own gradients; it is also what the fused kernel is tested against.
//! [`composite_only`] forces the composite path on the CPU for the current thread, which is
//! how the tests run a GPU's path without a GPU; the environment variable
//! `NO_LAYERS_COMPOSITE=1` forces it for a whole process.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use no_layers::ops::{composite_only, fused_cpu};
//!
//! let x = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu)?;
//! assert!(fused_cpu(&[&x]) || std::env::var("NO_LAYERS_COMPOSITE").is_ok());
//! {
//!     let _guard = composite_only();
//!     assert!(!fused_cpu(&[&x]));
//! }
//! # Ok::<(), candle_core::Error>(())
//! ```

use candle_core::{DType, Tensor};
use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::OnceLock;

pub mod anchored_gelu;
pub mod basis_product;
pub(crate) mod candle_fixes;
pub mod causal_conv;
pub mod channel_affine;
pub mod channel_mlp;
pub(crate) mod cno_activation;
pub mod complex_block;
pub mod complex_mode_product;
pub mod conv2d;
pub mod conv2d_bias_act;
pub mod dense;
pub mod feature_bias;
pub mod fft;
pub mod fno_block_tail;
pub mod gelu;
pub mod leaky_relu;
pub mod mode_mix;
pub mod mse;
pub mod periodic_border;
pub mod relu;
pub mod spectral_transform;
pub mod tanh;

thread_local! {
    /// How many [`CompositeOnly`] guards are alive on this thread.
    static COMPOSITE_GUARDS: Cell<usize> = const { Cell::new(0) };
}

/// Whether `NO_LAYERS_COMPOSITE` asks for the composite path in this process (read once).
fn composite_by_environment() -> bool {
    static FROM_ENV: OnceLock<bool> = OnceLock::new();
    *FROM_ENV.get_or_init(|| {
        std::env::var("NO_LAYERS_COMPOSITE").is_ok_and(|v| !v.is_empty() && v != "0")
    })
}

/// Whether the composite path is forced here (a live [`composite_only`] guard on this
/// thread, or `NO_LAYERS_COMPOSITE` set).
pub fn composite_forced() -> bool {
    composite_guarded_here() || composite_by_environment()
}

/// Whether a [`composite_only`] guard is alive on this thread (the environment variable
/// aside): what [`crate::threads::on_worker`] carries over to the pool thread it runs on.
pub fn composite_guarded_here() -> bool {
    COMPOSITE_GUARDS.with(|g| g.get() > 0)
}

/// The one dispatch decision: whether an op given `tensors` runs its fused CPU kernel.
/// True when every tensor is on the CPU, all share one dtype that is `f32` or `f64`, and
/// the composite path is not forced; otherwise the op runs its composite candle form.
pub fn fused_cpu(tensors: &[&Tensor]) -> bool {
    let Some(first) = tensors.first() else {
        return false;
    };
    let dtype = first.dtype();
    matches!(dtype, DType::F32 | DType::F64)
        && tensors
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == dtype)
        && !composite_forced()
}

/// Forces every op called on this thread onto its composite path while the guard lives
/// (guards nest). Used by tests to run, on the CPU, exactly the path a GPU takes.
#[must_use = "the composite path is forced only while the guard lives"]
pub fn composite_only() -> CompositeOnly {
    COMPOSITE_GUARDS.with(|g| g.set(g.get() + 1));
    CompositeOnly {
        _this_thread: PhantomData,
    }
}

/// The guard [`composite_only`] returns; dropping it restores the fused path.
#[derive(Debug)]
pub struct CompositeOnly {
    /// Not `Send`: the guard counts for the thread that made it.
    _this_thread: PhantomData<*const ()>,
}

impl Drop for CompositeOnly {
    fn drop(&mut self) {
        COMPOSITE_GUARDS.with(|g| g.set(g.get().saturating_sub(1)));
    }
}
