//! A model that appends absolute coordinates must score visibly worse on translation
//! equivariance than the same model without them.

use candle_core::{DType, Device};
use ndarray::Array4;
use no_eval::study::Predictor;
use no_eval::translation::{curve, ShiftAxis};
use no_layers::init::SeededVarMap;
use no_models::data::Normalizers;
use no_models::fno::FnoConfig;
use no_models::ModelConfig;

fn space_error(positional: bool) -> f64 {
    let cfg = FnoConfig {
        n_modes: vec![8, 8],
        hidden_channels: 8,
        n_layers: 2,
        positional_embedding: positional,
        ..FnoConfig::default()
    };
    let vars = SeededVarMap::new(11);
    let model = no_models::build(
        &ModelConfig::Fno(cfg),
        vars.var_builder(DType::F32, &Device::Cpu),
    )
    .unwrap();
    let norm = Normalizers::identity(1, 2);
    let pred = Predictor {
        model: model.as_ref(),
        norm: &norm,
        device: &Device::Cpu,
        batch: 4,
    };
    // Box pulses (4 nodes wide, 3 steps long) at several centres, well inside a 24 × 32 grid.
    let inputs = Array4::from_shape_fn((3, 1, 24, 32), |(b, _, t, x)| {
        let c = 10 + 3 * b;
        if (2..5).contains(&t) && (c..c + 4).contains(&x) {
            1.0
        } else {
            0.0
        }
    });
    let c = curve(
        |x| pred.predict(x),
        inputs.view(),
        ShiftAxis::Space,
        &[4],
        1.0 / 31.0,
    )
    .unwrap();
    c.at(4).unwrap().channels[0].mean
}

#[test]
fn appending_coordinates_breaks_space_equivariance_visibly() {
    let without = space_error(false);
    let with = space_error(true);
    // Without coordinates FNO commutes with shifts that do not wrap (up to float rounding);
    // with them, the output depends on where the pulse is.
    assert!(
        without < 1e-4,
        "FNO without positional embedding: E = {without}"
    );
    assert!(
        with > 100.0 * without.max(1e-6),
        "with embedding E = {with}, without {without}"
    );
}
