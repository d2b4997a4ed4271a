//! AdamW with PyTorch's update rule and an exportable state.
//!
//! `candle_nn::AdamW` keeps its moment estimates private, so a run resumed from a
//! checkpoint could not continue exactly. This one stores the first and second moments
//! per variable name ([`AdamWState`]), which checkpoints save and restore. Variables are
//! visited in name order, so updates do not depend on hash-map order. Complex weights
//! stored as separate real numbers get PyTorch's per-component behaviour (neuraloperator
//! ships its own AdamW for this reason; PyTorch's treats a complex number as one).

use super::fused_adamw::{fused, AdamWUpdate};
use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Hyper-parameters of AdamW.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWParams {
    /// Base learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator guard.
    pub eps: f64,
    /// Decoupled weight decay (neuraloperator's configs use 1e-4).
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-4,
        }
    }
}

/// The scalar part of the optimiser state (stored as checkpoint metadata).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWMeta {
    /// Steps taken.
    pub step: u64,
    /// Hyper-parameters (the learning rate is the current one).
    pub params: AdamWParams,
}

/// The full optimiser state: step count, hyper-parameters and moments by variable name.
#[derive(Debug, Clone)]
pub struct AdamWState {
    /// Steps taken.
    pub step: u64,
    /// Hyper-parameters.
    pub params: AdamWParams,
    /// First moments.
    pub m: BTreeMap<String, Tensor>,
    /// Second moments.
    pub v: BTreeMap<String, Tensor>,
}

impl AdamWState {
    /// The scalar part.
    pub fn meta(&self) -> AdamWMeta {
        AdamWMeta {
            step: self.step,
            params: self.params,
        }
    }

    /// Reassembles a state read from a checkpoint.
    pub fn from_parts(
        meta: AdamWMeta,
        m: BTreeMap<String, Tensor>,
        v: BTreeMap<String, Tensor>,
    ) -> Self {
        Self {
            step: meta.step,
            params: meta.params,
            m,
            v,
        }
    }
}

/// AdamW over the variables of a [`VarMap`].
pub struct AdamW {
    vars: Vec<(String, Var)>,
    state: AdamWState,
}

impl AdamW {
    /// A fresh optimiser (zero moments) over all variables of `vars`.
    pub fn new(vars: &VarMap, params: AdamWParams) -> Result<Self> {
        let vars = sorted_vars(vars)?;
        let mut m = BTreeMap::new();
        let mut v = BTreeMap::new();
        for (name, var) in &vars {
            m.insert(name.clone(), var.zeros_like()?);
            v.insert(name.clone(), var.zeros_like()?);
        }
        Ok(Self {
            vars,
            state: AdamWState {
                step: 0,
                params,
                m,
                v,
            },
        })
    }

    /// An optimiser continuing from `state`; every variable must have moments of its shape.
    pub fn with_state(vars: &VarMap, state: AdamWState) -> Result<Self> {
        let vars = sorted_vars(vars)?;
        let mut st = state;
        for (name, var) in &vars {
            for (which, map) in [("m", &mut st.m), ("v", &mut st.v)] {
                let t = map.get(name).ok_or_else(|| {
                    candle_core::Error::Msg(format!(
                        "optimizer state has no `{which}` for `{name}`"
                    ))
                })?;
                if t.dims() != var.dims() {
                    candle_core::bail!(
                        "optimizer `{which}` of `{name}` has shape {:?}, the variable {:?}",
                        t.dims(),
                        var.dims()
                    );
                }
                // A copy even when dtype and device already match: the moments are
                // updated in place, and `state` may still be held by the caller.
                let moved = t
                    .to_dtype(var.dtype())?
                    .to_device(var.device())?
                    .contiguous()?
                    .copy()?;
                map.insert(name.clone(), moved);
            }
        }
        Ok(Self { vars, state: st })
    }

    /// The current learning rate.
    pub fn lr(&self) -> f64 {
        self.state.params.lr
    }

    /// Sets the learning rate (schedules call this once per epoch).
    pub fn set_lr(&mut self, lr: f64) {
        self.state.params.lr = lr;
    }

    /// A deep copy of the state, for checkpoints. The moments are updated in place by later
    /// steps, so the copy owns its own storage (a plain `clone` of the tensors would not).
    pub fn snapshot(&self) -> Result<AdamWState> {
        let copy = |map: &BTreeMap<String, Tensor>| -> Result<BTreeMap<String, Tensor>> {
            map.iter()
                .map(|(k, t)| Ok((k.clone(), t.copy()?)))
                .collect()
        };
        Ok(AdamWState {
            step: self.state.step,
            params: self.state.params,
            m: copy(&self.state.m)?,
            v: copy(&self.state.v)?,
        })
    }

    /// Computes the gradients of `loss` and takes one step.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        let grads = loss.backward()?;
        self.step(&grads)
    }

    /// One AdamW step (PyTorch's `torch.optim.AdamW`, bias-corrected). Variables without a
    /// gradient are left untouched, as PyTorch skips parameters whose `grad` is `None`.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.state.step += 1;
        let p = self.state.params;
        let t = self.state.step as i32;
        let bc1 = 1.0 - p.beta1.powi(t);
        let bc2 = 1.0 - p.beta2.powi(t);
        let step_size = p.lr / bc1;
        let sqrt_bc2 = bc2.sqrt();
        for (name, var) in &self.vars {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            // candle's gradients can carry the backward graph (and through it every
            // activation of the step); moments built from them without detaching would chain
            // those graphs across steps and grow memory without bound.
            let g = g.detach();
            let (m, v) = match (self.state.m.get(name), self.state.v.get(name)) {
                (Some(m), Some(v)) => (m, v),
                _ => candle_core::bail!("optimizer has no moments for `{name}`"),
            };
            let update = AdamWUpdate {
                beta1: p.beta1,
                beta2: p.beta2,
                shrink: 1.0 - p.lr * p.weight_decay,
                step_size,
                sqrt_bc2,
                eps: p.eps,
            };
            if fused(&[var.as_tensor(), &g, m, v]) {
                update.apply(var.as_tensor(), &g, m, v)?;
                continue;
            }
            let (m_new, v_new) = tensor_op_step(var, &g, m, v, &update)?;
            self.state.m.insert(name.clone(), m_new);
            self.state.v.insert(name.clone(), v_new);
        }
        Ok(())
    }
}

/// The same update written with candle's tensor ops (any device and dtype): sets `var` and
/// returns the new moments.
fn tensor_op_step(
    var: &Var,
    g: &Tensor,
    m: &Tensor,
    v: &Tensor,
    u: &AdamWUpdate,
) -> Result<(Tensor, Tensor)> {
    let m_new = ((m * u.beta1)? + (g * (1.0 - u.beta1))?)?;
    let v_new = ((v * u.beta2)? + (g.sqr()? * (1.0 - u.beta2))?)?;
    let denom = ((v_new.sqrt()? / u.sqrt_bc2)? + u.eps)?;
    let decayed = (var.as_tensor() * u.shrink)?;
    let update = ((&m_new / denom)? * u.step_size)?;
    var.set(&(decayed - update)?)?;
    Ok((m_new, v_new))
}

fn sorted_vars(vars: &VarMap) -> Result<Vec<(String, Var)>> {
    let data = vars
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("variable map lock poisoned".into()))?;
    let mut out: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Two steps on f(x) = Σ x², checked against the update written out by hand.
    #[test]
    fn matches_pytorch_update_rule() -> Result<()> {
        let vm = VarMap::new();
        let x = vm.get(
            2,
            "x",
            candle_nn::Init::Const(1.0),
            DType::F64,
            &Device::Cpu,
        )?;
        let params = AdamWParams {
            lr: 0.1,
            weight_decay: 0.01,
            ..Default::default()
        };
        let mut opt = AdamW::new(&vm, params)?;
        let (mut p, mut m, mut v) = (1.0f64, 0.0f64, 0.0f64);
        for t in 1..=2 {
            opt.backward_step(&x.sqr()?.sum_all()?)?;
            let g = 2.0 * p;
            p *= 1.0 - 0.1 * 0.01;
            m = 0.9 * m + 0.1 * g;
            v = 0.999 * v + 0.001 * g * g;
            let (bc1, bc2) = (1.0 - 0.9f64.powi(t), 1.0 - 0.999f64.powi(t));
            p -= 0.1 / bc1 * m / ((v.sqrt() / bc2.sqrt()) + 1e-8);
        }
        let got = x.to_vec1::<f64>()?;
        assert!((got[0] - p).abs() < 1e-12, "{} vs {p}", got[0]);
        Ok(())
    }

    /// Regression: gradients of a loss built from the variables carry a backward graph;
    /// moments made from them without detaching kept every step's graph alive (memory grew
    /// without bound during training). The stored moments must carry no graph.
    #[test]
    fn moments_hold_no_backward_graph() -> Result<()> {
        let vm = VarMap::new();
        let x = vm.get(
            4,
            "x",
            candle_nn::Init::Const(0.3),
            DType::F32,
            &Device::Cpu,
        )?;
        let mut opt = AdamW::new(&vm, AdamWParams::default())?;
        for _ in 0..3 {
            // The gradient of x·sin(x) depends on x, so it is built from tracked tensors.
            opt.backward_step(&(&x * x.sin()?)?.sum_all()?)?;
        }
        let state = opt.snapshot()?;
        for (name, t) in state.m.iter().chain(state.v.iter()) {
            assert!(!t.track_op(), "moment of {name} keeps a backward graph");
        }
        Ok(())
    }

    #[test]
    fn restored_state_continues_identically() -> Result<()> {
        let run = |split: bool| -> Result<Vec<f32>> {
            let vm = VarMap::new();
            let x = vm.get(
                3,
                "x",
                candle_nn::Init::Const(0.5),
                DType::F32,
                &Device::Cpu,
            )?;
            let mut opt = AdamW::new(&vm, AdamWParams::default())?;
            for i in 0..6 {
                if split && i == 3 {
                    opt = AdamW::with_state(&vm, opt.snapshot()?)?;
                }
                opt.backward_step(&(x.sqr()?.sum_all()? + x.sin()?.sum_all()?)?)?;
            }
            x.to_vec1::<f32>()
        };
        assert_eq!(run(false)?, run(true)?);
        Ok(())
    }

    /// The fused in-place kernel against the same update in candle's tensor ops, over more
    /// elements than one parallel chunk, in both float types, for two successive steps.
    #[test]
    fn fused_update_equals_tensor_ops() -> Result<()> {
        for dtype in [DType::F32, DType::F64] {
            let n = 40_000;
            let wave = |k: f64, a: f64| -> Result<Tensor> {
                let x: Vec<f64> = (0..n).map(|i| a * (k * i as f64).sin()).collect();
                Tensor::from_vec(x, n, &Device::Cpu)?.to_dtype(dtype)
            };
            let (w_fused, w_ops) = (
                Var::from_tensor(&wave(0.37, 1.0)?)?,
                Var::from_tensor(&wave(0.37, 1.0)?)?,
            );
            let (m_fused, v_fused) = (wave(0.11, 0.1)?, wave(0.05, 0.01)?.abs()?);
            let (mut m_ops, mut v_ops) = (m_fused.copy()?, v_fused.copy()?);
            for step in 1..=2 {
                let g = wave(0.013 * step as f64, 2.0)?;
                let u = AdamWUpdate {
                    beta1: 0.9,
                    beta2: 0.999,
                    shrink: 1.0 - 1e-3 * 1e-2,
                    step_size: 1e-3 / (1.0 - 0.9f64.powi(step)),
                    sqrt_bc2: (1.0 - 0.999f64.powi(step)).sqrt(),
                    eps: 1e-8,
                };
                assert!(fused(&[w_fused.as_tensor(), &g, &m_fused, &v_fused]));
                u.apply(w_fused.as_tensor(), &g, &m_fused, &v_fused)?;
                (m_ops, v_ops) = tensor_op_step(&w_ops, &g, &m_ops, &v_ops, &u)?;
            }
            let tol = if dtype == DType::F32 { 1e-6 } else { 1e-14 };
            for (what, a, b) in [
                ("parameter", w_fused.as_tensor(), w_ops.as_tensor()),
                ("first moment", &m_fused, &m_ops),
                ("second moment", &v_fused, &v_ops),
            ] {
                let diff = (a - b)?
                    .abs()?
                    .max(0)?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?;
                let size = b.abs()?.max(0)?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                assert!(
                    diff <= tol * size,
                    "{dtype:?} {what}: max difference {diff} of {size}"
                );
            }
        }
        Ok(())
    }

    /// The moments change in place, so a snapshot must own its storage: steps taken after
    /// it, or by an optimiser restored from it, leave it unchanged.
    #[test]
    fn snapshots_are_not_changed_by_later_steps() -> Result<()> {
        let vm = VarMap::new();
        let x = vm.get(
            5,
            "x",
            candle_nn::Init::Const(0.7),
            DType::F32,
            &Device::Cpu,
        )?;
        let mut opt = AdamW::new(&vm, AdamWParams::default())?;
        opt.backward_step(&x.sqr()?.sum_all()?)?;
        let saved = opt.snapshot()?;
        let before = saved.m["x"].to_vec1::<f32>()?;
        opt.backward_step(&x.sqr()?.sum_all()?)?;
        let mut restored = AdamW::with_state(&vm, saved.clone())?;
        restored.backward_step(&x.sqr()?.sum_all()?)?;
        assert_eq!(saved.m["x"].to_vec1::<f32>()?, before);
        assert_ne!(opt.snapshot()?.m["x"].to_vec1::<f32>()?, before);
        Ok(())
    }
}
