//! The valid inputs the cases start from, made once per run: a tiny protocol, its dataset
//! (written by `generate_dataset`), a tiny FNO configuration, a checkpoint trained on the
//! dataset for one epoch (by `train`), and a valid input array.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::files;
use super::harness::{example, run_program};

/// Output grid of the tiny protocol (nt = nx).
pub const GRID: usize = 8;

/// Paths of the shared valid inputs.
pub struct Fixtures {
    /// The tiny protocol JSON.
    pub protocol: PathBuf,
    /// The tiny protocol as JSON, for cases that edit it.
    pub protocol_json: serde_json::Value,
    /// The dataset directory (train/val/test.safetensors, protocol.json).
    pub data: PathBuf,
    /// A tiny FNO `ModelConfig` JSON.
    pub model_config: PathBuf,
    /// A checkpoint trained for one epoch (`last.safetensors`).
    pub checkpoint: PathBuf,
    /// A valid `[2, 1, GRID, GRID]` f32 input.
    pub input: PathBuf,
}

/// The tiny protocol: 8×8 output grid, coarse fine grid, 4/2/2 samples.
pub fn tiny_protocol() -> serde_json::Value {
    let mut p = fhn_solver::Protocol::quick();
    p.name = "tiny".into();
    p.output.nt = GRID;
    p.output.nx = GRID;
    p.resolution = fhn_solver::Resolution::Auto {
        max_dx: 1.0 / 32.0,
        max_dt: 0.5,
    };
    p.train.n_samples = 4;
    p.validation.n_samples = 2;
    p.test.n_samples = 2;
    serde_json::to_value(&p).expect("a protocol serialises")
}

/// The tiny FNO configuration.
pub fn tiny_fno() -> serde_json::Value {
    serde_json::json!({
        "model": "fno",
        "n_modes": [2, 2],
        "in_channels": 1,
        "out_channels": 2,
        "hidden_channels": 4,
        "n_layers": 1
    })
}

fn must_succeed(what: &str, bin: &str, args: &[String], dir: &Path, secs: u64) {
    let f = run_program(&example(bin), args, dir, Duration::from_secs(secs), None);
    assert!(
        f.code == Some(0),
        "fixture `{what}` failed ({:?}/{:?}): {}",
        f.code,
        f.signal,
        f.stderr
    );
}

impl Fixtures {
    /// Makes every fixture under `root`.
    pub fn make(root: &Path) -> Self {
        let dir = root.join("fixtures");
        std::fs::create_dir_all(&dir).expect("fixture dir");
        let protocol_json = tiny_protocol();
        let protocol = dir.join("tiny-protocol.json");
        std::fs::write(&protocol, protocol_json.to_string()).expect("protocol fixture");
        let model_config = dir.join("tiny-fno.json");
        std::fs::write(&model_config, tiny_fno().to_string()).expect("model fixture");
        let data = dir.join("data");
        let s = |p: &Path| p.to_string_lossy().into_owned();
        must_succeed(
            "dataset",
            "generate_dataset",
            &[
                "--protocol".into(),
                s(&protocol),
                "--out".into(),
                s(&data),
                "--no-progress".into(),
            ],
            &dir,
            120,
        );
        let run = dir.join("run");
        must_succeed(
            "checkpoint",
            "train",
            &[
                "--model".into(),
                "fno".into(),
                "--data".into(),
                s(&data),
                "--out".into(),
                s(&run),
                "--config".into(),
                s(&model_config),
                "--epochs".into(),
                "1".into(),
                "--batch-size".into(),
                "2".into(),
                "--quiet".into(),
            ],
            &dir,
            180,
        );
        let input = dir.join("input.npy");
        files::write_npy_f32(&input, &[2, 1, GRID, GRID], files::smooth);
        Self {
            protocol,
            protocol_json,
            data,
            model_config,
            checkpoint: run.join("last.safetensors"),
            input,
        }
    }
}
