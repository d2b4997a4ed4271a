//! neuraloperator import parity: committed fixtures (made by
//! `tools/parity/make_neuralop_fixtures.py` with neuraloperator 2.0) hold a state_dict,
//! the constructor arguments, a random input and neuraloperator's output. The imported
//! Rust model must reproduce the output within 1e-4 relative. No Python needed.

use candle_core::{Device, Tensor};
use no_models::import::neuralop;
use no_models::ModelConfig;
use std::path::PathBuf;

type R<T> = no_models::Result<T>;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/neuralop")
        .join(name)
}

fn io(name: &str) -> R<(Tensor, Tensor)> {
    let t =
        candle_core::safetensors::load(fixture(&format!("{name}.io.safetensors")), &Device::Cpu)?;
    Ok((t["input"].clone(), t["output"].clone()))
}

fn check(name: &str) -> R<ModelConfig> {
    let loaded = neuralop::import(
        fixture(&format!("{name}.state_dict.safetensors")),
        fixture(&format!("{name}.json")),
        &Device::Cpu,
    )?;
    let (x, expected) = io(name)?;
    let got = loaded.model.forward(&x)?;
    assert_eq!(got.dims(), expected.dims());
    let err = (&got - &expected)?
        .sqr()?
        .sum_all()?
        .sqrt()?
        .to_scalar::<f32>()?;
    let norm = expected.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
    eprintln!("{name}: relative error {:.2e}", err / norm);
    assert!(
        err / norm < 1e-4,
        "{name}: relative error {:.2e}",
        err / norm
    );
    no_models::ModelConfig::from_model(loaded.model.as_ref())
}

#[test]
fn fno_matches_neuraloperator() -> R<()> {
    assert!(matches!(check("fno")?, ModelConfig::Fno(_)));
    Ok(())
}

#[test]
fn tfno_matches_neuraloperator() -> R<()> {
    assert!(matches!(check("tfno")?, ModelConfig::Tfno(_)));
    Ok(())
}

#[test]
fn fno_with_padding_and_linear_lifting_matches_neuraloperator() -> R<()> {
    let ModelConfig::Fno(c) = check("fno_padded")? else {
        panic!("expected FNO");
    };
    assert_eq!(
        (c.positional_embedding, c.domain_padding),
        (false, Some(0.25))
    );
    Ok(())
}

#[test]
fn local_no_matches_neuraloperator() -> R<()> {
    assert!(matches!(check("local_no")?, ModelConfig::LocalNo(_)));
    Ok(())
}

#[test]
fn unsupported_arguments_are_refused() {
    let cases = [
        r#"{"model": "FNO", "n_modes": [4, 4], "in_channels": 1, "out_channels": 1, "hidden_channels": 4, "norm": "group_norm"}"#,
        r#"{"model": "FNO", "n_modes": [4, 4], "in_channels": 1, "out_channels": 1, "hidden_channels": 4, "mystery": 3}"#,
        r#"{"model": "SFNO", "n_modes": [4, 4], "in_channels": 1, "out_channels": 1, "hidden_channels": 4}"#,
        r#"{"model": "FNO", "n_modes": [4, 4], "in_channels": 1, "out_channels": 1, "hidden_channels": 4, "factorization": "CP"}"#,
        r#"{"n_modes": [4, 4]}"#,
    ];
    for c in cases {
        let v: serde_json::Value = serde_json::from_str(c).expect("valid JSON");
        assert!(
            neuralop::config_from_json(&v).is_err(),
            "{c} should be refused"
        );
    }
    // Defaults spelled out are fine.
    let ok: serde_json::Value = serde_json::from_str(
        r#"{"model": "FNO", "n_modes": [4, 4], "in_channels": 1, "out_channels": 1, "hidden_channels": 4, "norm": null, "preactivation": false}"#,
    )
    .expect("valid JSON");
    assert!(neuralop::config_from_json(&ok).is_ok());
}

#[test]
fn wrong_state_dict_for_config_is_a_clear_error() {
    let err = neuralop::import(
        fixture("tfno.state_dict.safetensors"),
        fixture("fno.json"),
        &Device::Cpu,
    )
    .err()
    .expect("a TFNO state_dict does not fit an FNO");
    let msg = err.to_string();
    assert!(msg.contains("tfno.state_dict.safetensors"), "{msg}");
}
