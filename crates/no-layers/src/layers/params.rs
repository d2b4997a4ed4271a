//! Parameter counts: each layer reports its own ([`ParamCount`]), models sum them.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// How many parameters a layer or model has, counted the two ways the literature does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParamCount {
    /// PyTorch's `sum(p.numel() for p in model.parameters())`: each complex weight counts once.
    pub numel: usize,
    /// Real numbers stored: each complex weight counts twice.
    pub real: usize,
}

impl ParamCount {
    /// No parameters.
    pub const ZERO: Self = Self { numel: 0, real: 0 };

    /// `n` real parameters.
    pub fn real(n: usize) -> Self {
        Self { numel: n, real: n }
    }

    /// A real tensor's entries.
    pub fn of_real(t: &Tensor) -> Self {
        Self::real(t.elem_count())
    }

    /// A complex tensor stored as `[..., 2]` real pairs: each pair is one complex weight.
    pub fn of_complex(t: &Tensor) -> Self {
        Self {
            numel: t.elem_count() / 2,
            real: t.elem_count(),
        }
    }

    /// The real tensors' entries, `None`s counting nothing.
    pub fn of_reals<'a>(ts: impl IntoIterator<Item = Option<&'a Tensor>>) -> Self {
        ts.into_iter().flatten().map(Self::of_real).sum()
    }
}

impl std::ops::Add for ParamCount {
    type Output = Self;

    fn add(self, o: Self) -> Self {
        Self {
            numel: self.numel + o.numel,
            real: self.real + o.real,
        }
    }
}

impl std::ops::AddAssign for ParamCount {
    fn add_assign(&mut self, o: Self) {
        *self = *self + o;
    }
}

impl std::ops::Mul<ParamCount> for usize {
    type Output = ParamCount;

    fn mul(self, p: ParamCount) -> ParamCount {
        ParamCount {
            numel: self * p.numel,
            real: self * p.real,
        }
    }
}

impl std::iter::Sum for ParamCount {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::ZERO, |a, b| a + b)
    }
}

/// The number of entries of every variable in `vars` (what a layer built alone over it
/// created): its real-number count.
pub fn var_map_entries(vars: &candle_nn::VarMap) -> usize {
    vars.all_vars().iter().map(|v| v.elem_count()).sum()
}
