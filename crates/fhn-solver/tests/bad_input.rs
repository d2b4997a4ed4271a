//! Bad input gives clear errors, quickly and without allocating: huge sizes, absurd step
//! counts, pulses outside the domain, unknown protocol fields, corrupt dataset files,
//! failed writes.

use std::time::Instant;

use fhn_solver::{
    generate, generate_into_dir, simulate_1d, BoxPulse, Dataset, DirOptions, FineGrid, Law,
    OutputGrid, Protocol, Resolution, SolverConfig, SolverError, Split, Stimulus,
};

/// The quick protocol's laws with a handful of samples (fast tests).
fn tiny() -> Protocol {
    let mut p = Protocol::quick();
    p.name = "tiny".into();
    p.train.n_samples = 3;
    p.validation.n_samples = 2;
    p.test.n_samples = 2;
    p
}

#[test]
fn huge_output_grid_is_a_memory_error() {
    let start = Instant::now();
    let out = OutputGrid::with_size(100, 99_000_000_000);
    let err = FineGrid::new(&out, &Resolution::default()).unwrap_err();
    assert!(matches!(err, SolverError::TooLarge { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with("the output grid 100 × 99000000000"),
        "{text}"
    );
    assert!(text.contains("GiB"), "{text}");
    // A product that overflows usize is refused too, not wrapped.
    let wrapping = OutputGrid::with_size(1 << 62, 100);
    assert!(matches!(
        FineGrid::new(&wrapping, &Resolution::default()),
        Err(SolverError::TooLarge { .. })
    ));
    assert!(start.elapsed().as_secs_f64() < 1.0);
}

#[test]
fn tiny_spacing_and_huge_step_counts_are_refused_quickly() {
    let start = Instant::now();
    let out = OutputGrid::default();
    let tiny_dx = Resolution::Auto {
        max_dx: 1e-300,
        max_dt: 0.04,
    };
    let err = FineGrid::new(&out, &tiny_dx).unwrap_err();
    assert!(matches!(err, SolverError::TooLarge { .. }), "{err}");
    let tiny_dt = Resolution::Auto {
        max_dx: 0.01,
        max_dt: 1e-300,
    };
    let err = FineGrid::new(&out, &tiny_dt).unwrap_err();
    assert!(err.to_string().contains("resolution.max_dt"), "{err}");
    let explicit = Resolution::Explicit { nx: 397, dt: 1e-9 };
    let err = FineGrid::new(&out, &explicit).unwrap_err();
    assert!(err.to_string().contains("resolution.dt"), "{err}");
    let huge_nx = Resolution::Explicit {
        nx: 99_000_000_000,
        dt: 40.0 / 990.0,
    };
    assert!(matches!(
        FineGrid::new(&out, &huge_nx),
        Err(SolverError::TooLarge { .. })
    ));
    assert!(start.elapsed().as_secs_f64() < 1.0);
}

#[test]
fn huge_sample_counts_are_refused() {
    let mut p = tiny();
    p.train.n_samples = 1_000_000_000_000_000;
    let err = p.validate().unwrap_err();
    assert!(err.to_string().contains("train.n_samples"), "{err}");
    p.train.n_samples = 0;
    assert!(p.validate().is_err());
    // Within the RNG's range but not in memory: refused before generating anything.
    p.train.n_samples = 1 << 40;
    let err = generate(&p, Split::Train, None, false).unwrap_err();
    assert!(matches!(err, SolverError::TooLarge { .. }), "{err}");
}

#[test]
fn pulses_outside_the_domain_or_window_are_refused() {
    let config = SolverConfig::default();
    let out = OutputGrid::default();
    for (x0, t0) in [(1.5, 1.0), (-0.1, 1.0), (0.5, 40.0), (0.5, -2.0)] {
        let stim = Stimulus::single(BoxPulse::benchmark(x0, t0, 1.0));
        let err = simulate_1d(&config, &stim, &out).unwrap_err();
        assert!(
            matches!(err, SolverError::InvalidParameter { .. }),
            "x0 {x0}, t0 {t0}: {err}"
        );
    }
    let mut p = tiny();
    p.test.x0 = Law::Uniform {
        low: 0.5,
        high: 1.5,
    };
    let err = p.validate().unwrap_err();
    assert!(err.to_string().contains("test.x0"), "{err}");
    let mut p = tiny();
    p.test.t0 = Law::Uniform {
        low: 1.0,
        high: 50.0,
    };
    assert!(p.validate().unwrap_err().to_string().contains("test.t0"));
    let mut p = tiny();
    p.train.t0 = Law::Fixed { value: 40.0 };
    assert!(p.validate().unwrap_err().to_string().contains("train.t0"));
    let mut p = tiny();
    p.train.amplitude = Law::Fixed { value: f64::NAN };
    assert!(p.validate().is_err());
}

#[test]
fn unknown_protocol_fields_suggest_the_right_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("protocol.json");
    let json = tiny()
        .to_json()
        .replacen("\"n_samples\"", "\"n_sample\"", 1);
    std::fs::write(&path, json).unwrap();
    let err = Protocol::from_json_file(&path).unwrap_err().to_string();
    assert!(err.contains("unknown field `n_sample`"), "{err}");
    assert!(err.contains("did you mean `n_samples`?"), "{err}");
    let json = tiny().to_json().replacen("\"max_dx\"", "\"max_dz\"", 1);
    std::fs::write(&path, json).unwrap();
    let err = Protocol::from_json_file(&path).unwrap_err().to_string();
    assert!(err.contains("did you mean `max_dx`?"), "{err}");
}

#[test]
fn a_flipped_byte_in_a_dataset_file_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("val.safetensors");
    let data = generate(&tiny(), Split::Validation, None, false).unwrap();
    data.save(&path).unwrap();
    assert_eq!(Dataset::load(&path).unwrap(), data);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1; // the data of the last tensor in file order
    bytes[last] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let err = Dataset::load(&path).unwrap_err().to_string();
    assert!(err.contains("fails its checksum"), "{err}");
    assert!(err.contains("val.safetensors"), "{err}");
}

#[test]
fn a_failed_write_keeps_the_previous_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("protocol.json");
    let p = tiny();
    p.to_json_file(&path).unwrap();
    // The target's directory is replaced by a file: the write fails and the original stays.
    let blocked = dir.path().join("blocked");
    std::fs::write(&blocked, b"a file, not a directory").unwrap();
    assert!(Protocol::quick()
        .to_json_file(blocked.join("protocol.json"))
        .is_err());
    assert_eq!(Protocol::from_json_file(&path).unwrap(), p);
    // A shard directory holding another protocol is refused, naming both.
    let err = Protocol::quick()
        .write_or_check_json_file(&path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`tiny`") && err.contains("`quick`"), "{err}");
    p.write_or_check_json_file(&path).unwrap();
    // Nothing but the two files is left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn a_failed_generation_leaves_no_partial_directory() {
    let parent = tempfile::tempdir().unwrap();
    let out = parent.path().join("data");
    let mut p = tiny();
    // The test split diverges (after train and validation were written to the staging area).
    p.test.amplitude = Law::Fixed { value: 1e300 };
    let err = generate_into_dir(&p, &Split::ALL, &out, DirOptions::default()).unwrap_err();
    assert!(matches!(err, SolverError::NonFinite { .. }), "{err}");
    assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
    // A good run produces the whole directory; a second one into it is refused.
    let good = tiny();
    let written = generate_into_dir(&good, &Split::ALL, &out, DirOptions::default()).unwrap();
    assert_eq!(written.len(), 3);
    assert!(written
        .iter()
        .all(|w| w.path.starts_with(&out) && w.path.exists()));
    assert!(out.join("protocol.json").exists());
    assert!(generate_into_dir(&good, &Split::ALL, &out, DirOptions::default()).is_err());
    let replace = DirOptions {
        replace_existing: true,
        ..DirOptions::default()
    };
    generate_into_dir(&good, &Split::ALL, &out, replace).unwrap();
    assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 1);
    // Shards of another protocol into the same directory are refused.
    let shard = DirOptions {
        shard: Some("0/2".parse().unwrap()),
        ..DirOptions::default()
    };
    assert!(generate_into_dir(&Protocol::quick(), &[Split::Train], &out, shard).is_err());
    let written = generate_into_dir(&good, &[Split::Train], &out, shard).unwrap();
    let data = Dataset::load(&written[0].path).unwrap();
    assert_eq!(
        (data.shard.to_string(), data.n_total),
        ("0/2".to_string(), 3)
    );
}
