//! FNO, TFNO and LocalNO: parameter counts against neuraloperator 2.0, shapes, and the
//! shift (in)equivariance the translation study relies on.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use no_layers::init::SeededVarMap;
use no_models::fno::FnoConfig;
use no_models::local_no::LocalNoConfig;
use no_models::{build, ModelConfig, NeuralOperator, ParamCount};

type R<T> = no_models::Result<T>;

/// Counts the variables actually created, complex tensors (`[..., 2]` real pairs) once
/// for numel, as PyTorch's `sum(p.numel())` does.
fn count_vars(vars: &VarMap) -> ParamCount {
    let data = vars.data().lock().expect("lock");
    let mut c = ParamCount { numel: 0, real: 0 };
    for (name, v) in data.iter() {
        let n = v.elem_count();
        let complex = name.ends_with("weight.tensor")
            || name.ends_with("weight.core")
            || name.contains("weight.factors.");
        c.real += n;
        c.numel += if complex { n / 2 } else { n };
    }
    c
}

fn built(cfg: &ModelConfig) -> R<(Box<dyn NeuralOperator>, SeededVarMap)> {
    let vars = SeededVarMap::new(0);
    let model = build(cfg, vars.var_builder(DType::F32, &Device::Cpu))?;
    Ok((model, vars))
}

/// Figures printed by neuraloperator 2.0 (`sum(p.numel())` and with complex counted twice)
/// for `n_modes=(16,16), hidden_channels=32, in_channels=1, out_channels=2, n_layers=4`.
#[test]
fn parameter_counts_match_neuraloperator() -> R<()> {
    let cases = [
        (ModelConfig::Fno(FnoConfig::default()), 603_042, 1_192_866),
        (ModelConfig::Tfno(FnoConfig::default()), 76_902, 140_586),
        (
            ModelConfig::LocalNo(LocalNoConfig::default()),
            656_098,
            1_245_922,
        ),
    ];
    for (cfg, numel, real) in cases {
        let (model, vars) = built(&cfg)?;
        let expected = ParamCount { numel, real };
        assert_eq!(
            model.param_count(),
            expected,
            "{} reported count",
            cfg.name()
        );
        assert_eq!(
            count_vars(vars.varmap()),
            expected,
            "{} variables created",
            cfg.name()
        );
    }
    Ok(())
}

fn tiny_fno(embedding: bool) -> FnoConfig {
    FnoConfig {
        n_modes: vec![6, 6],
        hidden_channels: 8,
        n_layers: 2,
        positional_embedding: embedding,
        ..FnoConfig::default()
    }
}

fn input(shape: (usize, usize, usize, usize), seed: u64) -> R<Tensor> {
    let z = Tensor::zeros(shape, DType::F32, &Device::Cpu)?;
    Ok(no_layers::gradcheck::random_like(&z, seed)?)
}

/// Circular shift by `s` along `dim`.
fn roll(x: &Tensor, dim: usize, s: usize) -> R<Tensor> {
    let n = x.dim(dim)?;
    let s = s % n;
    Ok(Tensor::cat(
        &[x.narrow(dim, n - s, s)?, x.narrow(dim, 0, n - s)?],
        dim,
    )?)
}

fn rel_diff(a: &Tensor, b: &Tensor) -> R<f32> {
    let num = (a - b)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
    let den = b.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
    Ok(num / den)
}

/// Without the grid embedding every FNO component is translation-equivariant on the
/// periodic grid, so shifting the input shifts the output; the absolute coordinates of
/// the embedding break this, and the same check must see it.
#[test]
fn fno_commutes_with_circular_shifts_only_without_embedding() -> R<()> {
    let x = input((2, 1, 20, 24), 1)?;
    for (embedding, commutes) in [(false, true), (true, false)] {
        let (model, _vars) = built(&ModelConfig::Fno(tiny_fno(embedding)))?;
        let mut worst = 0f32;
        for (dim, s) in [(2, 3), (3, 5), (3, 11)] {
            let a = model.forward(&roll(&x, dim, s)?)?;
            let b = roll(&model.forward(&x)?, dim, s)?;
            worst = worst.max(rel_diff(&a, &b)?);
        }
        if commutes {
            assert!(
                worst < 1e-5,
                "without embedding: relative difference {worst}"
            );
        } else {
            assert!(
                worst > 1e-2,
                "with embedding: relative difference only {worst}"
            );
        }
    }
    Ok(())
}

#[test]
fn local_no_with_periodic_kernels_commutes_with_shifts() -> R<()> {
    let cfg = LocalNoConfig {
        n_modes: vec![6, 6],
        hidden_channels: 4,
        n_layers: 2,
        default_in_shape: [16, 16],
        positional_embedding: false,
        disco_padding: no_layers::layers::local::conv::PaddingMode::Periodic,
        ..LocalNoConfig::default()
    };
    let (model, _vars) = built(&ModelConfig::LocalNo(cfg))?;
    let x = input((1, 1, 16, 16), 2)?;
    let a = model.forward(&roll(&x, 3, 5)?)?;
    let b = roll(&model.forward(&x)?, 3, 5)?;
    let d = rel_diff(&a, &b)?;
    assert!(d < 1e-5, "relative difference {d}");
    Ok(())
}

#[test]
fn forward_shapes_and_other_resolutions() -> R<()> {
    let cfgs = [
        ModelConfig::Fno(tiny_fno(true)),
        ModelConfig::Tfno(tiny_fno(true)),
        ModelConfig::LocalNo(LocalNoConfig {
            n_modes: vec![6, 6],
            hidden_channels: 4,
            n_layers: 2,
            default_in_shape: [16, 16],
            ..LocalNoConfig::default()
        }),
    ];
    for cfg in cfgs {
        let (model, _vars) = built(&cfg)?;
        assert!(model.accepts_other_resolutions());
        assert_eq!(no_models::ModelConfig::from_model(model.as_ref())?, cfg);
        for (nt, nx) in [(16, 16), (20, 12)] {
            let y = model.forward(&input((3, 1, nt, nx), 3)?)?;
            assert_eq!(y.dims(), &[3, 2, nt, nx], "{}", cfg.name());
            assert!(y.abs()?.max_all()?.to_scalar::<f32>()?.is_finite());
        }
    }
    Ok(())
}

#[test]
fn same_seed_same_model_different_seed_different_model() -> R<()> {
    let cfg = ModelConfig::Fno(tiny_fno(true));
    let x = input((1, 1, 12, 12), 4)?;
    let run = |seed| -> R<Vec<f32>> {
        let vars = SeededVarMap::new(seed);
        let m = build(&cfg, vars.var_builder(DType::F32, &Device::Cpu))?;
        Ok(m.forward(&x)?.flatten_all()?.to_vec1::<f32>()?)
    };
    assert_eq!(run(5)?, run(5)?);
    assert_ne!(run(5)?, run(6)?);
    Ok(())
}

#[test]
fn invalid_configs_are_errors_not_panics() {
    let bad = [
        ModelConfig::Fno(FnoConfig {
            n_layers: 0,
            ..FnoConfig::default()
        }),
        ModelConfig::Fno(FnoConfig {
            n_modes: vec![],
            ..FnoConfig::default()
        }),
        ModelConfig::Tfno(FnoConfig {
            hidden_channels: 0,
            ..FnoConfig::default()
        }),
        ModelConfig::LocalNo(LocalNoConfig {
            n_modes: vec![8],
            ..LocalNoConfig::default()
        }),
    ];
    for cfg in bad {
        assert!(built(&cfg).is_err(), "{cfg:?} should be rejected");
    }
}

#[test]
fn config_json_uses_neuraloperator_names() -> R<()> {
    let cfg: ModelConfig = serde_json::from_str(
        r#"{"model": "tfno", "n_modes": [8, 8], "hidden_channels": 16, "positional_embedding": false}"#,
    )?;
    let ModelConfig::Tfno(c) = &cfg else {
        panic!("expected tfno, got {cfg:?}");
    };
    assert_eq!(
        (c.hidden_channels, c.n_layers, c.positional_embedding),
        (16, 4, false)
    );
    let back: ModelConfig = serde_json::from_str(&serde_json::to_string(&cfg)?)?;
    assert_eq!(back, cfg);
    Ok(())
}
