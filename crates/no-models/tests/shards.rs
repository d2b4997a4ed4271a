//! Sharded dataset splits: the shards of `generate_dataset --shard i/n`, written here
//! through `fhn_solver::Dataset::save`, load equal to the whole file and train to the same
//! bits; missing, duplicate, mixed or stray files are errors saying what was found.

use candle_core::{DType, Device, Tensor};
use fhn_solver::{Dataset, Protocol, Shard, Split};
use ndarray::Array3;
use no_layers::init::SeededVarMap;
use no_models::fno::FnoConfig;
use no_models::train::{TrainConfig, Trainer};
use no_models::{build, ModelConfig, TensorDataset};
use std::path::Path;

type R<T> = no_models::Result<T>;

const N: usize = 9;

fn protocol() -> Protocol {
    let mut p = Protocol::quick();
    (p.output.nt, p.output.nx) = (8, 8);
    p
}

/// Samples `range` of a deterministic dataset (sample-dependent smooth fields).
fn samples(range: std::ops::Range<usize>, protocol: &Protocol) -> Dataset {
    let n = range.len();
    let field = |k: f32| {
        Array3::from_shape_fn((n, 8, 8), |(s, t, x)| {
            let s = (s + range.start) as f32;
            (k * s + 0.3 * t as f32 - 0.2 * x as f32).sin()
        })
    };
    let params = |k: f32| range.clone().map(|s| k * s as f32).collect::<Vec<_>>();
    Dataset {
        input: field(0.7),
        v: field(1.3),
        w: field(0.4),
        x0: params(0.1),
        t0: params(0.2),
        amplitude: params(0.3),
        protocol: protocol.clone(),
        split: Split::Train,
        first_index: range.start,
        shard: Shard::WHOLE,
        n_total: n,
    }
}

/// Writes `d`, with the shard metadata its file name (`SPLIT.shard-I-of-N`) implies (a
/// shard of the `N`-sample train split).
fn save(d: &Dataset, path: &Path) {
    let mut d = d.clone();
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if let Some(rest) = name.split(".shard-").nth(1) {
        let rest = rest.trim_end_matches(".safetensors");
        let (i, n) = rest.split_once("-of-").expect("shard name");
        d.shard = Shard::new(i.parse().expect("I"), n.parse().expect("N")).expect("shard");
        d.n_total = N;
    }
    d.save(path).expect("write dataset file");
}

/// `train` of 9 samples as shards 0..3 (3 samples each), plus a whole `val`.
fn sharded_dir(dir: &Path) {
    let p = protocol();
    for i in 0..3 {
        save(
            &samples(3 * i..3 * i + 3, &p),
            &dir.join(format!("train.shard-{i}-of-3.safetensors")),
        );
    }
    save(&samples(0..2, &p), &dir.join("val.safetensors"));
}

fn bits(t: &Tensor) -> R<Vec<u32>> {
    Ok(t.flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .map(|x| x.to_bits())
        .collect())
}

fn one_epoch(train: &TensorDataset, val: &TensorDataset) -> R<Vec<(String, Vec<u32>)>> {
    let cfg = ModelConfig::Fno(FnoConfig {
        n_modes: vec![4, 4],
        hidden_channels: 4,
        n_layers: 1,
        ..FnoConfig::default()
    });
    let vars = SeededVarMap::new(3);
    let model = build(&cfg, vars.var_builder(DType::F32, &Device::Cpu))?;
    let tcfg = TrainConfig {
        epochs: 1,
        batch_size: 4,
        ..TrainConfig::default()
    };
    let mut t = Trainer::new(model, vars, tcfg, &Device::Cpu)?;
    t.fit(train, val, None)?;
    t.checkpoint()?
        .weights
        .iter()
        .map(|(k, v)| Ok((k.clone(), bits(v)?)))
        .collect()
}

#[test]
fn three_shards_load_and_train_as_the_whole_file() -> R<()> {
    let sharded = tempfile::tempdir().expect("temp dir");
    sharded_dir(sharded.path());
    let whole = tempfile::tempdir().expect("temp dir");
    save(
        &samples(0..N, &protocol()),
        &whole.path().join("train.safetensors"),
    );
    save(
        &samples(0..2, &protocol()),
        &whole.path().join("val.safetensors"),
    );
    // A stray file beside a valid split is ignored, never preferred.
    save(
        &samples(0..1, &protocol()),
        &whole.path().join("train-small.safetensors"),
    );

    let a = TensorDataset::load_splits(sharded.path())?;
    let b = TensorDataset::load_splits(whole.path())?;
    assert_eq!(a.train.len(), N);
    assert_eq!(bits(a.train.inputs())?, bits(b.train.inputs())?);
    assert_eq!(bits(a.train.outputs())?, bits(b.train.outputs())?);
    assert!(a.test.is_none());
    assert_eq!(one_epoch(&a.train, &a.val)?, one_epoch(&b.train, &b.val)?);
    Ok(())
}

fn load_err(dir: &Path) -> String {
    match TensorDataset::load_splits(dir) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("expected an error loading {}", dir.display()),
    }
}

#[test]
fn missing_mixed_and_stray_shards_are_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    sharded_dir(dir.path());
    let shard1 = dir.path().join("train.shard-1-of-3.safetensors");
    std::fs::remove_file(&shard1).expect("remove shard");
    let err = load_err(dir.path());
    assert!(
        err.contains("missing train.shard-1-of-3.safetensors: found only train.shard-0-of-3.safetensors, train.shard-2-of-3.safetensors"),
        "{err}"
    );

    // A shard of another generation (4 shards).
    save(
        &samples(3..6, &protocol()),
        &dir.path().join("train.shard-1-of-4.safetensors"),
    );
    let err = load_err(dir.path());
    assert!(err.contains("mixed shard counts"), "{err}");
    std::fs::remove_file(dir.path().join("train.shard-1-of-4.safetensors")).expect("rm");

    // Shard 1 holding the wrong samples: not contiguous.
    save(&samples(4..7, &protocol()), &shard1);
    let err = load_err(dir.path());
    assert!(err.contains("`first_index` is 4, expected 3"), "{err}");

    // Shards of another protocol.
    let mut other = protocol();
    other.seed += 1;
    save(&samples(3..6, &other), &shard1);
    let err = load_err(dir.path());
    assert!(err.contains("metadata `protocol` differs"), "{err}");
    save(&samples(3..6, &protocol()), &shard1);

    // A whole file beside the shards.
    let whole = dir.path().join("train.safetensors");
    save(&samples(0..N, &protocol()), &whole);
    let err = load_err(dir.path());
    assert!(
        err.contains("a whole train file beside shard files"),
        "{err}"
    );
    std::fs::remove_file(&whole).expect("rm");
    assert!(TensorDataset::load_splits(dir.path()).is_ok());

    // Only a file that follows neither pattern.
    let stray = tempfile::tempdir().expect("temp dir");
    save(
        &samples(0..3, &protocol()),
        &stray.path().join("train-small.safetensors"),
    );
    save(
        &samples(0..2, &protocol()),
        &stray.path().join("val.safetensors"),
    );
    let err = load_err(stray.path());
    assert!(
        err.contains("found train-small.safetensors but expected train.safetensors or train.shard-I-of-N.safetensors"),
        "{err}"
    );
}

#[test]
fn checksums_are_verified() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("x.safetensors");
    let t = Tensor::ones((2, 3, 4), DType::F32, &Device::Cpu).expect("tensor");
    let bytes: Vec<u8> = [1f32; 24].iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut sums = std::collections::HashMap::new();
    let good = no_models::checksum::metadata_value(["input", "v", "w"].map(|n| (n, &bytes[..])));
    sums.insert(
        no_models::checksum::METADATA_KEY.to_string(),
        good.replace("\"input\":\"", "\"input\":\"0"),
    );
    let data: Vec<(&str, &Tensor)> = vec![("input", &t), ("v", &t), ("w", &t)];
    safetensors::serialize_to_file(data, Some(sums), &path).expect("write");
    let err = TensorDataset::from_fhn_file(&path).unwrap_err().to_string();
    assert!(err.contains("tensor `input` fails its checksum"), "{err}");
}
