//! Spectral convolution: gradients, a direct O(n²) DFT reference, shift equivariance,
//! resolution behaviour, Tucker consistency and the FFT path.

use candle_core::{DType, Device, Module, Result, Tensor, Var, D};
use no_layers::gradcheck::{check_gradients, random_like, GradCheckConfig};
use no_layers::init::SeededVarMap;
use no_layers::layers::spectral::conv::{
    Factorization, SpectralConv, SpectralConvConfig, SpectralTransform, SpectralWeight,
    TuckerImplementation,
};
use no_layers::layers::spectral::tucker::{TuckerRank, TuckerWeight};
use std::f64::consts::PI;

fn cfg(in_c: usize, out_c: usize, n_modes: &[usize]) -> SpectralConvConfig {
    SpectralConvConfig {
        in_channels: in_c,
        out_channels: out_c,
        n_modes: n_modes.to_vec(),
        ..Default::default()
    }
}

fn tucker(c: SpectralConvConfig, implementation: TuckerImplementation) -> SpectralConvConfig {
    SpectralConvConfig {
        factorization: Some(Factorization::Tucker),
        rank: TuckerRank::Fraction(0.5),
        implementation,
        ..c
    }
}

fn build(c: &SpectralConvConfig, seed: u64) -> Result<(SpectralConv, SeededVarMap)> {
    let vars = SeededVarMap::new(seed);
    let layer = SpectralConv::new(c, vars.var_builder(DType::F64, &Device::Cpu))?;
    Ok((layer, vars))
}

fn input(shape: &[usize], seed: u64) -> Result<Tensor> {
    random_like(&Tensor::zeros(shape, DType::F64, &Device::Cpu)?, seed)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
    (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()
}

/// Gradient check over the input and every parameter of the layer.
fn gradcheck_layer(c: &SpectralConvConfig, x_shape: &[usize], out: Option<&[usize]>) -> Result<()> {
    let (layer, vars) = build(c, 11)?;
    let x = Var::from_tensor(&input(x_shape, 3)?)?;
    let mut all = vec![x.clone()];
    all.extend(vars.varmap().all_vars());
    let out = out.map(|o| o.to_vec());
    let xs = x.clone();
    let f = move || -> Result<Tensor> {
        Ok(layer.forward_with_output_shape(xs.as_tensor(), out.as_deref())?)
    };
    let report = check_gradients(
        f,
        &all,
        &GradCheckConfig {
            max_entries_per_var: 24,
            ..Default::default()
        },
    )?;
    assert!(report.passed(), "{c:?}: {report:?}");
    Ok(())
}

#[test]
fn gradients_dense_1d_and_2d() -> Result<()> {
    gradcheck_layer(&cfg(2, 3, &[6]), &[2, 2, 10], None)?;
    gradcheck_layer(&cfg(2, 3, &[4, 6]), &[2, 2, 6, 7], None)?;
    gradcheck_layer(&cfg(2, 2, &[4, 4]), &[1, 2, 6, 8], Some(&[6, 11]))
}

#[test]
fn gradients_tucker_1d_and_2d_both_implementations() -> Result<()> {
    for imp in [
        TuckerImplementation::Factorized,
        TuckerImplementation::Reconstructed,
    ] {
        gradcheck_layer(&tucker(cfg(3, 2, &[6]), imp), &[2, 3, 9], None)?;
        gradcheck_layer(&tucker(cfg(3, 4, &[4, 6]), imp), &[2, 3, 6, 8], None)?;
    }
    Ok(())
}

#[test]
fn gradients_through_the_fft_path() -> Result<()> {
    let fft = |c: SpectralConvConfig| SpectralConvConfig {
        transform: SpectralTransform::Fft,
        ..c
    };
    gradcheck_layer(&fft(cfg(2, 3, &[6])), &[2, 2, 10], None)?;
    gradcheck_layer(&fft(cfg(2, 3, &[4, 6])), &[2, 2, 6, 7], Some(&[6, 9]))
}

/// Complex number helpers for the reference.
#[derive(Clone, Copy, Debug)]
struct C(f64, f64);
impl C {
    fn mul(self, o: C) -> C {
        C(self.0 * o.0 - self.1 * o.1, self.0 * o.1 + self.1 * o.0)
    }
    fn add(self, o: C) -> C {
        C(self.0 + o.0, self.1 + o.1)
    }
    fn cis(t: f64) -> C {
        C(t.cos(), t.sin())
    }
}

/// Direct, loop-based 2D reference of neuraloperator's forward: full DFTs by definition
/// (`rfftn(norm="forward")`), selection of the centred modes, mixing, then an `irfftn`
/// written out as an inverse DFT on axis 0 and a c2r on the last axis.
fn reference_2d(
    x: &Tensor,
    w: &Tensor,
    bias: &Tensor,
    n_modes: [usize; 2],
    out: [usize; 2],
) -> Result<Vec<f64>> {
    let (b, ci, n1, n2) = x.dims4()?;
    let xv = x.flatten_all()?.to_vec1::<f64>()?;
    let wd = w.dims().to_vec(); // [ci, co, m1, q2, 2]
    let co = wd[1];
    let wv = w.flatten_all()?.to_vec1::<f64>()?;
    let bv = bias.flatten_all()?.to_vec1::<f64>()?;
    let (m1, q2w) = (n_modes[0], n_modes[1] / 2 + 1);
    let h2 = n2 / 2 + 1;
    // Kept frequencies on axis 0, and their weight rows.
    let ks: Vec<i64> = (-(m1 as i64 / 2)..(m1 - m1 / 2) as i64)
        .filter(|&k| k >= -(n1 as i64 / 2) && k <= (n1 - n1 / 2 - 1) as i64)
        .collect();
    let q2 = q2w.min(h2);
    let (o1, o2) = (out[0], out[1]);
    let mut y = vec![0.0; b * co * o1 * o2];
    for bi in 0..b {
        // Spectrum of every input channel at the kept modes.
        let mut xs = vec![C(0.0, 0.0); ci * ks.len() * q2];
        for c in 0..ci {
            for (ik, &k1) in ks.iter().enumerate() {
                for k2 in 0..q2 {
                    let mut acc = C(0.0, 0.0);
                    for x1 in 0..n1 {
                        for x2 in 0..n2 {
                            let v = xv[((bi * ci + c) * n1 + x1) * n2 + x2];
                            let t = -2.0
                                * PI
                                * (k1 as f64 * x1 as f64 / n1 as f64
                                    + k2 as f64 * x2 as f64 / n2 as f64);
                            acc = acc.add(C::cis(t).mul(C(v, 0.0)));
                        }
                    }
                    xs[(c * ks.len() + ik) * q2 + k2] =
                        C(acc.0 / (n1 * n2) as f64, acc.1 / (n1 * n2) as f64);
                }
            }
        }
        for o in 0..co {
            // Mixed spectrum on the output: Y[k1, k2].
            let mut ys = vec![C(0.0, 0.0); ks.len() * q2];
            for (ik, &k1) in ks.iter().enumerate() {
                let wrow = (k1 + (m1 / 2) as i64) as usize;
                for k2 in 0..q2 {
                    let mut acc = C(0.0, 0.0);
                    for c in 0..ci {
                        let wi = ((((c * co + o) * m1 + wrow) * q2w) + k2) * 2;
                        acc = acc.add(xs[(c * ks.len() + ik) * q2 + k2].mul(C(wv[wi], wv[wi + 1])));
                    }
                    ys[ik * q2 + k2] = acc;
                }
            }
            // irfftn onto [o1, o2]: frequencies outside the output band are dropped.
            for x1 in 0..o1 {
                for x2 in 0..o2 {
                    let mut v = bv[o];
                    for (ik, &k1) in ks.iter().enumerate() {
                        if k1 < -(o1 as i64 / 2) || k1 > (o1 - o1 / 2 - 1) as i64 {
                            continue;
                        }
                        for k2 in 0..q2.min(o2 / 2 + 1) {
                            let u = ys[ik * q2 + k2]
                                .mul(C::cis(2.0 * PI * k1 as f64 * x1 as f64 / o1 as f64));
                            let self_conj = k2 == 0 || 2 * k2 == o2;
                            let c2 = if self_conj { 1.0 } else { 2.0 };
                            // c2r ignores the imaginary part of the DC and Nyquist bins.
                            let u = if self_conj { C(u.0, 0.0) } else { u };
                            v += c2 * u.mul(C::cis(2.0 * PI * (k2 * x2) as f64 / o2 as f64)).0;
                        }
                    }
                    y[((bi * co + o) * o1 + x1) * o2 + x2] = v;
                }
            }
        }
    }
    Ok(y)
}

fn check_against_reference(n_modes: [usize; 2], grid: [usize; 2], out: [usize; 2]) -> Result<()> {
    let c = cfg(2, 3, &n_modes);
    let (layer, _vars) = build(&c, 5)?;
    let x = input(&[2, 2, grid[0], grid[1]], 9)?;
    let got = layer
        .forward_with_output_shape(&x, Some(&out))?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let bias = layer
        .bias()
        .cloned()
        .ok_or_else(|| candle_core::Error::Msg("bias".into()))?;
    let want = reference_2d(&x, &layer.dense_weight()?, &bias, n_modes, out)?;
    let err = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(
        err < 1e-12,
        "modes {n_modes:?} grid {grid:?} out {out:?}: {err}"
    );
    Ok(())
}

#[test]
fn equals_a_direct_dft_reference() -> Result<()> {
    check_against_reference([6, 6], [12, 10], [12, 10])?;
    // Odd sizes, modes reaching the grid's Nyquist, fewer grid modes than weight modes.
    check_against_reference([6, 4], [7, 9], [7, 9])?;
    check_against_reference([8, 8], [8, 8], [8, 8])?;
    check_against_reference([10, 12], [6, 5], [6, 5])?;
    // Another output grid, larger and smaller.
    check_against_reference([6, 6], [12, 10], [16, 15])?;
    check_against_reference([6, 6], [12, 10], [4, 4])
}

#[test]
fn commutes_with_circular_shifts() -> Result<()> {
    for c in [
        cfg(2, 3, &[6, 6]),
        tucker(cfg(2, 3, &[6, 6]), TuckerImplementation::Factorized),
    ] {
        let (layer, _v) = build(&c, 2)?;
        let x = input(&[2, 2, 12, 10], 4)?;
        let y = layer.forward(&x)?;
        for (s1, s2) in [(1, 0), (0, 3), (5, 7)] {
            let shifted = layer.forward(&x.roll(s1, 2)?.roll(s2, 3)?)?;
            let err = max_abs_diff(&shifted, &y.roll(s1, 2)?.roll(s2, 3)?)?;
            assert!(err < 1e-13, "shift ({s1},{s2}): {err}");
        }
    }
    let (layer, _v) = build(&cfg(2, 2, &[5]), 2)?;
    let x = input(&[3, 2, 11], 4)?;
    let err = max_abs_diff(
        &layer.forward(&x.roll(4, 2)?)?,
        &layer.forward(&x)?.roll(4, 2)?,
    )?;
    assert!(err < 1e-13, "1D shift: {err}");
    Ok(())
}

/// A real field with frequencies |k1| ≤ 3, k2 ≤ 3 sampled on an n1 × n2 grid.
fn band_limited(n1: usize, n2: usize, channels: usize) -> Result<Tensor> {
    let mut v = Vec::with_capacity(channels * n1 * n2);
    for c in 0..channels {
        for i in 0..n1 {
            for j in 0..n2 {
                let (s, t) = (i as f64 / n1 as f64, j as f64 / n2 as f64);
                let c = c as f64;
                v.push(
                    0.3 + (2.0 * PI * (s + 2.0 * t) + c).sin()
                        + 0.5 * (2.0 * PI * (3.0 * s - t) - c).cos()
                        + 0.2 * (2.0 * PI * (-2.0 * s + 3.0 * t)).sin(),
                );
            }
        }
    }
    Tensor::from_vec(v, (1, channels, n1, n2), &Device::Cpu)
}

#[test]
fn band_limited_input_at_double_resolution_gives_the_double_sampling_of_the_output() -> Result<()> {
    for c in [
        cfg(2, 3, &[8, 8]),
        tucker(cfg(2, 3, &[8, 8]), TuckerImplementation::Factorized),
    ] {
        let (layer, _v) = build(&c, 8)?;
        let coarse = layer.forward(&band_limited(16, 12, 2)?)?;
        let fine = layer.forward(&band_limited(32, 24, 2)?)?;
        // The fine output restricted to the coarse grid is the coarse output...
        let sub = fine
            .reshape((1, 3, 16, 2, 12, 2))?
            .narrow(3, 0, 1)?
            .narrow(5, 0, 1)?
            .reshape((1, 3, 16, 12))?;
        assert!(max_abs_diff(&sub, &coarse)? < 1e-12);
        // ...and the coarse input evaluated on the fine grid is the fine output.
        let up = layer.forward_with_output_shape(&band_limited(16, 12, 2)?, Some(&[32, 24]))?;
        assert!(max_abs_diff(&up, &fine)? < 1e-12);
    }
    Ok(())
}

#[test]
fn tucker_forward_equals_dense_forward_with_the_reconstructed_weight() -> Result<()> {
    for (modes, grid) in [
        (vec![6usize], vec![2usize, 3, 12]),
        (vec![6, 4], vec![2, 3, 10, 9]),
        (vec![8, 8], vec![1, 3, 6, 6]),
    ] {
        let t = tucker(cfg(3, 4, &modes), TuckerImplementation::Factorized);
        let (tl, _tv) = build(&t, 21)?;
        let (dense, dv) = build(&cfg(3, 4, &modes), 22)?;
        // Give the dense layer the Tucker layer's rebuilt weight and bias.
        for (name, value) in [
            ("weight.tensor", tl.dense_weight()?),
            (
                "bias",
                tl.bias()
                    .cloned()
                    .ok_or_else(|| candle_core::Error::Msg("bias".into()))?,
            ),
        ] {
            let guard = dv
                .varmap()
                .data()
                .lock()
                .map_err(|_| candle_core::Error::Msg("lock".into()))?;
            guard
                .get(name)
                .ok_or_else(|| candle_core::Error::Msg(name.into()))?
                .set(&value)?;
        }
        let x = input(&grid, 1)?;
        let reconstructed = SpectralConv::new(
            &SpectralConvConfig {
                implementation: TuckerImplementation::Reconstructed,
                ..t.clone()
            },
            _tv.var_builder(DType::F64, &Device::Cpu),
        )?;
        let (a, b, c) = (
            tl.forward(&x)?,
            dense.forward(&x)?,
            reconstructed.forward(&x)?,
        );
        assert!(max_abs_diff(&a, &b)? < 1e-13, "{modes:?}");
        assert!(max_abs_diff(&c, &b)? < 1e-13, "{modes:?}");
        assert!(a.abs()?.max_all()?.to_scalar::<f64>()? > 1e-3);
    }
    Ok(())
}

#[test]
fn fft_path_equals_matmul_path() -> Result<()> {
    for modes in [vec![8usize], vec![6, 8]] {
        let grid: Vec<usize> = if modes.len() == 1 {
            vec![2, 3, 20]
        } else {
            vec![2, 3, 12, 15]
        };
        let (m, vars) = build(&cfg(3, 2, &modes), 4)?;
        let f = SpectralConv::new(
            &SpectralConvConfig {
                transform: SpectralTransform::Fft,
                ..cfg(3, 2, &modes)
            },
            vars.var_builder(DType::F64, &Device::Cpu),
        )?;
        let x = input(&grid, 2)?;
        assert!(max_abs_diff(&m.forward(&x)?, &f.forward(&x)?)? < 1e-13);
        let mut out: Vec<usize> = grid[2..].to_vec();
        *out.last_mut().unwrap_or(&mut 0) += 7;
        let a = m.forward_with_output_shape(&x, Some(&out))?;
        let b = f.forward_with_output_shape(&x, Some(&out))?;
        assert!(max_abs_diff(&a, &b)? < 1e-13);
    }
    Ok(())
}

#[test]
fn parameters_have_neuraloperator_names_and_shapes() -> Result<()> {
    let (_l, vars) = build(&cfg(3, 5, &[6, 4]), 0)?;
    let shapes = |vars: &SeededVarMap| -> Vec<(String, Vec<usize>)> {
        let mut v: Vec<_> = vars
            .varmap()
            .data()
            .lock()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.dims().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    assert_eq!(
        shapes(&vars),
        vec![
            ("bias".into(), vec![5, 1, 1]),
            ("weight.tensor".into(), vec![3, 5, 6, 3, 2])
        ]
    );
    let (l, vars) = build(
        &tucker(cfg(3, 5, &[6, 4]), TuckerImplementation::Factorized),
        0,
    )?;
    // neuraloperator: core (2, 4, 4, 2), factors (3,2), (5,4), (6,4), (3,2) for rank 0.5.
    assert_eq!(
        shapes(&vars),
        vec![
            ("bias".into(), vec![5, 1, 1]),
            ("weight.core".into(), vec![2, 4, 4, 2, 2]),
            ("weight.factors.factor_0".into(), vec![3, 2, 2]),
            ("weight.factors.factor_1".into(), vec![5, 4, 2]),
            ("weight.factors.factor_2".into(), vec![6, 4, 2]),
            ("weight.factors.factor_3".into(), vec![3, 2, 2]),
        ]
    );
    assert!(matches!(l.weight(), SpectralWeight::Tucker(t) if t.rank() == [2, 4, 4, 2]));
    let (_l, vars) = build(&cfg(3, 5, &[6]), 0)?;
    assert_eq!(
        shapes(&vars),
        vec![
            ("bias".into(), vec![5, 1]),
            ("weight.tensor".into(), vec![3, 5, 4, 2])
        ]
    );
    Ok(())
}

#[test]
fn dense_init_has_the_auto_std() -> Result<()> {
    let (l, _v) = build(&cfg(16, 16, &[16, 16]), 1)?;
    let w = l.dense_weight()?;
    // E|w|^2 = 2/(in+out): sum over re and im.
    let ms = w
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .mean_all()?
        .to_scalar::<f64>()?;
    assert!((ms / (2.0 / 32.0) - 1.0).abs() < 0.03, "{ms}");
    Ok(())
}

#[test]
fn wrong_inputs_are_errors() -> Result<()> {
    let (layer, _v) = build(&cfg(2, 3, &[4, 4]), 0)?;
    assert!(layer.forward(&input(&[1, 3, 8, 8], 0)?).is_err());
    assert!(layer.forward(&input(&[1, 2, 8], 0)?).is_err());
    assert!(layer
        .forward_with_output_shape(&input(&[1, 2, 8, 8], 0)?, Some(&[8]))
        .is_err());
    let bad = SpectralConvConfig {
        n_modes: vec![4, 4, 4],
        ..cfg(2, 3, &[4])
    };
    assert!(SpectralConv::new(
        &bad,
        SeededVarMap::new(0).var_builder(DType::F64, &Device::Cpu)
    )
    .is_err());
    let bad_rank = SpectralConvConfig {
        rank: TuckerRank::Explicit(vec![1, 1]),
        ..tucker(cfg(2, 3, &[4]), TuckerImplementation::Factorized)
    };
    assert!(SpectralConv::new(
        &bad_rank,
        SeededVarMap::new(0).var_builder(DType::F64, &Device::Cpu)
    )
    .is_err());
    Ok(())
}

#[test]
fn config_round_trips_through_json() -> Result<()> {
    let c = tucker(cfg(3, 4, &[8, 8]), TuckerImplementation::Reconstructed);
    let s = serde_json::to_string(&c).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let back: SpectralConvConfig =
        serde_json::from_str(&s).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    assert_eq!(back, c);
    let partial: SpectralConvConfig =
        serde_json::from_str(r#"{"in_channels": 2, "out_channels": 2, "n_modes": [4]}"#)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    assert!(partial.bias);
    Ok(())
}

#[test]
fn hosvd_of_a_layer_weight_restores_the_layer() -> Result<()> {
    // Dense weight of exact multilinear rank → HOSVD → Tucker layer with the same output.
    let t = tucker(cfg(3, 4, &[6, 4]), TuckerImplementation::Factorized);
    let (tl, tv) = build(&t, 30)?;
    let dense = tl.dense_weight()?;
    let rank = match tl.weight() {
        SpectralWeight::Tucker(w) => w.rank().to_vec(),
        SpectralWeight::Dense(_) => return Err(candle_core::Error::Msg("expected Tucker".into())),
    };
    let (core, factors) = TuckerWeight::hosvd(&dense, &rank)?;
    let guard = tv
        .varmap()
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("lock".into()))?;
    let set = |name: &str, v: &Tensor| -> Result<()> {
        guard
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(name.into()))?
            .set(v)
    };
    set("weight.core", &core)?;
    for (k, f) in factors.iter().enumerate() {
        set(&format!("weight.factors.factor_{k}"), f)?;
    }
    drop(guard);
    let back = tl.dense_weight()?;
    assert!(max_abs_diff(&back, &dense)? < 1e-12);
    Ok(())
}
