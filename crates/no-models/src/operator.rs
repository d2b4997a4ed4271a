//! The one interface every architecture implements.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// How many parameters a model has (defined with the layers, which each report theirs).
pub use no_layers::layers::params::ParamCount;

/// A neural operator mapping the applied current to the fields it drives.
///
/// Inputs and outputs are channels-first space–time fields `[B, C, nt, nx]`; in the study
/// `C_in = 1` (the current I) and `C_out = 2` (v and w).
///
/// The trait is open: a model defined in another crate implements it (its name, its
/// configuration as JSON, and how to rebuild itself over other variables) and then trains
/// with [`crate::Trainer`], saves and loads through [`crate::Checkpoint`] with a
/// [`crate::Registry`] that knows its name, and is evaluated by `no-eval` like the seven
/// built-in architectures (`examples/custom_model.rs` does it end to end).
pub trait NeuralOperator: Send + Sync {
    /// Runs the operator; `train` switches batch-norm statistics and dropout.
    fn forward_t(&self, input: &Tensor, train: bool) -> Result<Tensor>;

    /// Inference forward (`train = false`). On the CPU it runs on a thread of rayon's pool
    /// ([`no_layers::threads::on_worker_for`]), so that its parallel ops fork there instead
    /// of each waking the pool from the caller's thread.
    fn forward(&self, input: &Tensor) -> Result<Tensor> {
        no_layers::threads::on_worker_for(input.device(), || self.forward_t(input, false))
    }

    /// Inference: the forward pass (`train = false`) with the result detached from the
    /// gradient graph. A model may reuse work that does not depend on the input between
    /// calls for as long as the weights it came from are bitwise unchanged (DeepONet
    /// evaluates its trunk on the training grid once), so the values equal `forward`'s;
    /// prefer this outside training. Gradients never flow through it. Like
    /// [`Self::forward`], on the CPU it runs on a thread of rayon's pool.
    fn predict(&self, input: &Tensor) -> Result<Tensor> {
        Ok(
            no_layers::threads::on_worker_for(input.device(), || self.forward_t(input, false))?
                .detach(),
        )
    }

    /// The architecture's registered name (`"fno"`, `"cno"`, … or a user model's own); the
    /// `"model"` tag of [`Self::config_json`].
    fn architecture(&self) -> &str;

    /// The configuration the model was built from, as JSON tagged with
    /// `"model": architecture()`: what a checkpoint stores and a [`crate::Registry`] builder
    /// reads back. For the built-in architectures it is the [`crate::ModelConfig`] JSON.
    fn config_json(&self) -> serde_json::Value;

    /// The same architecture and configuration built over the variables of `vb` (the
    /// inference twin over detached weights, a copy on another device).
    fn rebuild(&self, vb: VarBuilder) -> crate::Result<Box<dyn NeuralOperator>>;

    /// The parameter count.
    fn param_count(&self) -> ParamCount;

    /// Whether the same weights accept inputs on grids other than the training grid.
    fn accepts_other_resolutions(&self) -> bool;
}
