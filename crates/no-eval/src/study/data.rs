//! The study's data: the three splits as arrays, the samples and shifts the evaluation
//! uses, and the solver's own equivariance curves (the ground truth).

use candle_core::{DType, Device, Tensor};
use fhn_solver::{simulate_1d, InputSampling, OutputGrid, Protocol, Split};
use ndarray::{s, Array2, Array4, ArrayView4, Axis};
use no_models::data::TensorDataset;

use super::{ModelSpec, StudyConfig};
use crate::error::{EvalError, Result};
use crate::report::plots::SampleMaps;
use crate::report::FixedShifts;
use crate::translation::{point_from_outputs, CurvePoint, EquivarianceCurve, ShiftAxis};

/// A solver dataset as model arrays: inputs `[N, 1, nt, nx]`, outputs `[N, 2, nt, nx]`.
pub(super) fn to_arrays(d: &fhn_solver::dataset::Dataset) -> Result<(Array4<f32>, Array4<f32>)> {
    let inputs = d.input.clone().insert_axis(Axis(1));
    let outputs = ndarray::concatenate(
        Axis(1),
        &[
            d.v.view().insert_axis(Axis(1)),
            d.w.view().insert_axis(Axis(1)),
        ],
    )
    .map_err(|e| EvalError::invalid("dataset fields", e, "v and w of equal shape"))?;
    Ok((inputs, outputs))
}

pub(super) fn to_tensor(a: ArrayView4<f32>, device: &Device) -> Result<Tensor> {
    let shape = a.shape().to_vec();
    let data: Vec<f32> = a.iter().copied().collect();
    Ok(Tensor::from_vec(data, shape, device)?)
}

pub(super) fn from_tensor(t: &Tensor) -> Result<Array4<f32>> {
    let dims = t.dims().to_vec();
    if dims.len() != 4 {
        return Err(EvalError::shape("model output", &dims, "[B, C, nt, nx]"));
    }
    let data = t
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Array4::from_shape_vec((dims[0], dims[1], dims[2], dims[3]), data)
        .map_err(|e| EvalError::invalid("model output", e, "a contiguous tensor"))
}

pub(super) fn to_no_dataset(inputs: &Array4<f32>, outputs: &Array4<f32>) -> Result<TensorDataset> {
    Ok(TensorDataset::new(
        to_tensor(inputs.view(), &Device::Cpu)?,
        to_tensor(outputs.view(), &Device::Cpu)?,
    )?)
}

pub(super) fn steps_of(shifts: &[f64], h: f64, fixed: f64) -> Vec<isize> {
    let mut k: Vec<isize> = shifts
        .iter()
        .chain(std::iter::once(&fixed))
        .map(|s| (s / h).round() as isize)
        .collect();
    k.sort_unstable();
    k.dedup();
    k
}

/// The solver's own E(s) curve: every shifted input is solved as the translated stimulus.
pub(super) fn solver_curve(
    p: &Protocol,
    idx: &[usize],
    base: ArrayView4<f32>,
    axis: ShiftAxis,
    steps: &[isize],
) -> Result<EquivarianceCurve> {
    let (dt, dx) = (p.output.dt(), p.output.dx());
    let cfg = p.solver_config();
    let points = steps
        .iter()
        .map(|&k| {
            let (st, sx) = match axis {
                ShiftAxis::Time => (k as f64 * dt, 0.0),
                ShiftAxis::Space => (0.0, k as f64 * dx),
            };
            let mut shifted = Array4::<f32>::zeros(base.raw_dim());
            for (b, &i) in idx.iter().enumerate() {
                let stim = p
                    .stimulus(&p.sample_params(Split::Validation, i))
                    .translated(st, sx);
                let sol = simulate_1d(&cfg, &stim, &p.output)?;
                shifted
                    .slice_mut(s![b, 0, .., ..])
                    .assign(&sol.v.mapv(|v| v as f32));
                shifted
                    .slice_mut(s![b, 1, .., ..])
                    .assign(&sol.w.mapv(|v| v as f32));
            }
            let h = if axis == ShiftAxis::Time { dt } else { dx };
            point_from_outputs(base, shifted.view(), axis.shift(k), k, k as f64 * h)
        })
        .collect::<Result<Vec<CurvePoint>>>()?;
    Ok(EquivarianceCurve { axis, points })
}

/// The models' inputs of every split as one sampling of the current writes them.
pub(super) struct Inputs {
    pub(super) sampling: InputSampling,
    pub(super) train: Array4<f32>,
    pub(super) val: Array4<f32>,
    /// The validation split as the trainer reads it (these inputs, the true outputs).
    pub(super) val_ds: TensorDataset,
    pub(super) test: Array4<f32>,
    /// The inputs of the equivariance samples ([`Data::eq_idx`]).
    pub(super) eq: Array4<f32>,
    /// The finer-grid test set with these inputs.
    pub(super) fine: Option<crate::resolution::FineSet>,
}

/// The data of a run, in the shapes the evaluation needs.
pub(super) struct Data {
    /// The protocol's inputs first, then one set per other sampling a model asks for.
    pub(super) inputs: Vec<Inputs>,
    pub(super) train_out: Array4<f32>,
    pub(super) val_out: Array4<f32>,
    pub(super) test_out: Array4<f32>,
    pub(super) test_meta: fhn_solver::dataset::Dataset,
    /// Validation samples used for E(s).
    pub(super) eq_idx: Vec<usize>,
    pub(super) time_steps: Vec<isize>,
    pub(super) space_steps: Vec<isize>,
    pub(super) map_indices: Vec<usize>,
}

impl Data {
    /// The inputs of the protocol's own sampling (what the report's maps show).
    pub(super) fn protocol_inputs(&self) -> &Inputs {
        &self.inputs[0]
    }

    /// The inputs `spec` reads.
    pub(super) fn inputs_of(&self, spec: &ModelSpec, protocol: &Protocol) -> Result<&Inputs> {
        let sampling = spec.sampling(protocol);
        self.inputs
            .iter()
            .find(|i| i.sampling == sampling)
            .ok_or_else(|| {
                EvalError::invalid(
                    "input sampling",
                    format!("{sampling:?}"),
                    "a sampling prepared for one of the study's models",
                )
            })
    }
}

/// Test samples to draw: supra-threshold ones at the earliest, middle and latest onsets.
pub(super) fn pick_maps(test: &fhn_solver::dataset::Dataset, n: usize) -> Vec<usize> {
    let mut excited: Vec<usize> = (0..test.len())
        .filter(|&i| test.v.slice(s![i, .., ..]).iter().any(|&v| v > 0.5))
        .collect();
    if excited.is_empty() {
        excited = (0..test.len()).collect();
    }
    excited.sort_by(|&a, &b| test.t0[a].total_cmp(&test.t0[b]));
    if n == 0 || excited.is_empty() {
        return Vec::new();
    }
    let m = excited.len();
    let mut picks: Vec<usize> = (0..n)
        .map(|k| excited[if n == 1 { 0 } else { k * (m - 1) / (n - 1) }])
        .collect();
    picks.dedup();
    picks
}

pub(super) fn prepare_data(cfg: &StudyConfig, progress: bool) -> Result<Data> {
    let p = &cfg.protocol;
    let train = fhn_solver::dataset::generate(p, Split::Train, None, progress)?;
    let val = fhn_solver::dataset::generate(p, Split::Validation, None, progress)?;
    let test = fhn_solver::dataset::generate(p, Split::Test, None, progress)?;
    let (train_in, train_out) = to_arrays(&train)?;
    let (val_in, val_out) = to_arrays(&val)?;
    let (test_in, test_out) = to_arrays(&test)?;
    let (lo, hi) = cfg.eval.equivariance_x0_range;
    let mut eq_idx: Vec<usize> = (0..val.len())
        .filter(|&i| (lo..=hi).contains(&f64::from(val.x0[i])))
        .collect();
    if eq_idx.is_empty() {
        eq_idx = (0..val.len()).collect();
    }
    eq_idx.truncate(cfg.eval.equivariance_samples.max(1));
    let fine = match cfg.eval.fine_grid {
        Some(grid) if cfg.eval.fine_samples > 0 => Some(crate::resolution::solve_fine(
            p,
            Split::Test,
            cfg.eval.fine_samples.min(test.len()),
            grid,
        )?),
        _ => None,
    };
    let own = Inputs {
        sampling: p.input_sampling,
        eq: val_in.select(Axis(0), &eq_idx),
        val_ds: to_no_dataset(&val_in, &val_out)?,
        train: train_in,
        val: val_in,
        test: test_in,
        fine,
    };
    let mut inputs = vec![own];
    for spec in &cfg.models {
        let sampling = spec.sampling(p);
        if inputs.iter().all(|i| i.sampling != sampling) {
            let other = resampled(p, sampling, &inputs[0], &val_out, &eq_idx)?;
            inputs.push(other);
        }
    }
    let time_steps = steps_of(
        &cfg.eval.time_shifts,
        p.output.dt(),
        cfg.eval.fixed_time_shift,
    );
    let space_steps = steps_of(
        &cfg.eval.space_shifts,
        p.output.dx(),
        cfg.eval.fixed_space_shift,
    );
    let map_indices = pick_maps(&test, cfg.eval.map_samples);
    Ok(Data {
        inputs,
        train_out,
        val_out,
        test_out,
        test_meta: test,
        eq_idx,
        time_steps,
        space_steps,
        map_indices,
    })
}

/// The current of `n` samples of `split` on `grid` as `sampling` writes it, `[n, 1, nt, nx]`:
/// the same stimuli as the protocol's datasets (no solve; only the input's sampling differs).
fn sampled_inputs(
    p: &Protocol,
    sampling: InputSampling,
    split: Split,
    n: usize,
    grid: &OutputGrid,
) -> Array4<f32> {
    let q = Protocol {
        input_sampling: sampling,
        ..p.clone()
    };
    let mut out = Array4::<f32>::zeros((n, 1, grid.nt, grid.nx));
    for i in 0..n {
        let current = q.input_on(&q.stimulus(&q.sample_params(split, i)), grid);
        out.slice_mut(s![i, 0, .., ..])
            .assign(&current.mapv(|v| v as f32));
    }
    out
}

/// `own`'s splits with their current written as `sampling` writes it.
fn resampled(
    p: &Protocol,
    sampling: InputSampling,
    own: &Inputs,
    val_out: &Array4<f32>,
    eq_idx: &[usize],
) -> Result<Inputs> {
    let on_grid = |split: Split, like: &Array4<f32>| {
        sampled_inputs(p, sampling, split, like.shape()[0], &p.output)
    };
    let val = on_grid(Split::Validation, &own.val);
    let fine = own.fine.as_ref().map(|set| {
        let grid = OutputGrid {
            nt: set.inputs.shape()[2],
            nx: set.inputs.shape()[3],
            ..p.output
        };
        crate::resolution::FineSet {
            inputs: sampled_inputs(p, sampling, Split::Test, set.inputs.shape()[0], &grid),
            truth: set.truth.clone(),
            spacing: set.spacing,
        }
    });
    Ok(Inputs {
        sampling,
        train: on_grid(Split::Train, &own.train),
        eq: val.select(Axis(0), eq_idx),
        val_ds: to_no_dataset(&val, val_out)?,
        val,
        test: on_grid(Split::Test, &own.test),
        fine,
    })
}

/// The solver's own E(delay) and E(space) curves on the equivariance samples: the ground
/// truth the models' curves are read against.
pub(super) fn solver_curves(
    cfg: &StudyConfig,
    data: &Data,
) -> Result<(EquivarianceCurve, EquivarianceCurve)> {
    let p = &cfg.protocol;
    let eq_idx = &data.eq_idx;
    let eq_base = data.val_out.select(Axis(0), eq_idx);
    let time = solver_curve(p, eq_idx, eq_base.view(), ShiftAxis::Time, &data.time_steps)?;
    let space = solver_curve(
        p,
        eq_idx,
        eq_base.view(),
        ShiftAxis::Space,
        &data.space_steps,
    )?;
    Ok((time, space))
}

/// The fixed shifts of the translated-test columns, rounded to whole grid steps.
pub(super) fn fixed_shifts(cfg: &StudyConfig) -> FixedShifts {
    let (dt, dx) = (cfg.protocol.output.dt(), cfg.protocol.output.dx());
    FixedShifts {
        time_steps: (cfg.eval.fixed_time_shift / dt).round() as isize,
        time: (cfg.eval.fixed_time_shift / dt).round() * dt,
        space_steps: (cfg.eval.fixed_space_shift / dx).round() as isize,
        space: (cfg.eval.fixed_space_shift / dx).round() * dx,
    }
}

/// The drawn test samples with their current, true v and every model's predicted v.
pub(super) fn sample_maps(
    data: &Data,
    predictions: Vec<Vec<(String, Array2<f32>)>>,
) -> Vec<SampleMaps> {
    data.map_indices
        .iter()
        .zip(predictions)
        .map(|(&i, predictions)| SampleMaps {
            index: i,
            t0: f64::from(data.test_meta.t0[i]),
            x0: f64::from(data.test_meta.x0[i]),
            amplitude: f64::from(data.test_meta.amplitude[i]),
            current: data
                .protocol_inputs()
                .test
                .slice(s![i, 0, .., ..])
                .to_owned(),
            truth_v: data.test_out.slice(s![i, 0, .., ..]).to_owned(),
            predictions,
        })
        .collect()
}
