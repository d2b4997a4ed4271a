//! Importing weights trained elsewhere.
//!
//! [`neuralop`]: FNO, TFNO and LocalNO state_dicts from neuraloperator 2.x.

pub mod neuralop;
