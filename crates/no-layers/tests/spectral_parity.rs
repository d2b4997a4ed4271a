//! Parity with neuraloperator 2.0's `SpectralConv` (dense and Tucker, 1D and 2D).
//!
//! The fixtures were written by `tools/parity/make_spectral_fixtures.py`: the layer's
//! `state_dict` (complex tensors as `view_as_real`), an input, and the outputs on the
//! input grid (`y`) and on `output_shape` (`y_out`). Loading the state_dict entries under
//! their own names into our layer must reproduce both outputs to 1e-5 relative.

use candle_core::{DType, Device, Module, Result, Tensor};
use no_layers::init::SeededVarMap;
use no_layers::layers::spectral::conv::{
    Factorization, SpectralConv, SpectralConvConfig, SpectralWeight,
};
use no_layers::layers::spectral::tucker::TuckerRank;
use std::collections::HashMap;
use std::path::PathBuf;

fn err(msg: impl Into<String>) -> candle_core::Error {
    candle_core::Error::Msg(msg.into())
}

struct Fixture {
    tensors: HashMap<String, Tensor>,
    meta: serde_json::Value,
}

fn load(name: &str) -> Result<Fixture> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/spectral_{name}.safetensors"));
    let bytes = std::fs::read(&path).map_err(|e| err(format!("{}: {e}", path.display())))?;
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| err(e.to_string()))?;
    let config = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("config"))
        .ok_or_else(|| err("fixture without config metadata"))?;
    let meta: serde_json::Value = serde_json::from_str(config).map_err(|e| err(e.to_string()))?;
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu)?
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(DType::F64)?)))
        .collect::<Result<HashMap<_, _>>>()?;
    Ok(Fixture { tensors, meta })
}

fn usizes(v: &serde_json::Value) -> Vec<usize> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as usize)
                .collect()
        })
        .unwrap_or_default()
}

fn relative_error(got: &Tensor, want: &Tensor) -> Result<f64> {
    let diff = (got - want)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f64>()?;
    let scale = want.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
    Ok(diff / scale)
}

fn check(name: &str) -> Result<()> {
    let fx = load(name)?;
    let tucker = fx.meta["factorization"] == "tucker";
    let cfg = SpectralConvConfig {
        in_channels: fx.meta["in_channels"]
            .as_u64()
            .ok_or_else(|| err("in_channels"))? as usize,
        out_channels: fx.meta["out_channels"]
            .as_u64()
            .ok_or_else(|| err("out_channels"))? as usize,
        n_modes: usizes(&fx.meta["n_modes"]),
        factorization: tucker.then_some(Factorization::Tucker),
        rank: TuckerRank::Fraction(fx.meta["rank"].as_f64().ok_or_else(|| err("rank"))?),
        ..Default::default()
    };
    let vars = SeededVarMap::new(0);
    let layer = SpectralConv::new(&cfg, vars.var_builder(DType::F64, &Device::Cpu))?;
    if let SpectralWeight::Tucker(t) = layer.weight() {
        // Our fractional-rank rule gives neuraloperator's ranks.
        assert_eq!(
            t.rank(),
            usizes(&fx.meta["neuralop_rank"]).as_slice(),
            "{name}"
        );
    }
    // Every variable is filled from the state_dict entry of the same name.
    {
        let map = vars.varmap().data().lock().map_err(|_| err("lock"))?;
        assert!(!map.is_empty());
        for (key, var) in map.iter() {
            let value = fx
                .tensors
                .get(key)
                .ok_or_else(|| err(format!("{name}: fixture lacks {key}")))?;
            assert_eq!(value.dims(), var.dims(), "{name}: {key}");
            var.set(value)?;
        }
    }
    let x = &fx.tensors["x"];
    let y = layer.forward(x)?;
    let e = relative_error(&y, &fx.tensors["y"])?;
    assert!(e < 1e-5, "{name}: y differs by {e:e} (relative)");
    let out_shape = usizes(&fx.meta["output_shape"]);
    let y_out = layer.forward_with_output_shape(x, Some(&out_shape))?;
    let e = relative_error(&y_out, &fx.tensors["y_out"])?;
    assert!(e < 1e-5, "{name}: y_out differs by {e:e} (relative)");
    Ok(())
}

#[test]
fn dense_1d_matches_neuraloperator() -> Result<()> {
    check("dense_1d")
}

#[test]
fn dense_2d_matches_neuraloperator() -> Result<()> {
    check("dense_2d")
}

#[test]
fn dense_2d_on_a_grid_smaller_than_the_modes_matches_neuraloperator() -> Result<()> {
    check("dense_2d_small_grid")
}

#[test]
fn tucker_1d_matches_neuraloperator() -> Result<()> {
    check("tucker_1d")
}

#[test]
fn tucker_2d_matches_neuraloperator() -> Result<()> {
    check("tucker_2d")
}
