//! Training: the relative L2 loss, learning-rate schedules, a checkpointable AdamW and
//! the [`Trainer`] shared by all seven architectures.
//!
//! The optimiser is our own AdamW (PyTorch's update rule) rather than `candle_nn::AdamW`
//! because candle keeps its moment estimates private: resuming from a checkpoint must
//! restore them for a resumed run to equal an uninterrupted one.

pub mod error;
mod fused_adamw;
pub mod loss;
pub mod optim;
pub mod resume;
pub mod schedule;
pub mod trainer;
pub mod validate;

pub use error::TrainError;
pub use loss::{mse_loss, pooled_relative_l2, relative_l2, relative_l2_per_channel, LossKind};
pub use optim::{AdamW, AdamWParams, AdamWState};
pub use resume::{ResumeRequest, Resumed};
pub use schedule::Schedule;
pub use trainer::{EpochRecord, LogFormat, TrainConfig, TrainSummary, Trainer};
pub use validate::{parse_train_config, train_config_from_value};
