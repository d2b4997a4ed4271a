//! Dataset generation and files: determinism whatever the thread count, sharding,
//! round trips, and clear errors on truncated, foreign and mis-shaped files.

use fhn_solver::{
    generate, simulate_1d, Dataset, InputSampling, OutputGrid, Protocol, Shard, SolverError, Split,
};

/// The quick protocol's laws with a handful of samples (fast tests).
fn tiny() -> Protocol {
    let mut p = Protocol::quick();
    p.name = "tiny".into();
    p.train.n_samples = 5;
    p.validation.n_samples = 2;
    p.test.n_samples = 4;
    p
}

fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("pool")
        .install(f)
}

#[test]
fn generation_is_bit_identical_whatever_the_thread_count() {
    let p = tiny();
    let one = in_pool(1, || generate(&p, Split::Test, None, false)).unwrap();
    let two = in_pool(2, || generate(&p, Split::Test, None, false)).unwrap();
    let three = in_pool(3, || generate(&p, Split::Test, None, false)).unwrap();
    assert_eq!(one, two);
    assert_eq!(one, three);
}

#[test]
fn cell_average_protocols_write_cell_averaged_inputs() {
    let mut p = tiny();
    p.output = OutputGrid::with_size(30, 20);
    p.input_sampling = InputSampling::CellAverage;
    let data = generate(&p, Split::Test, None, false).unwrap();
    for i in 0..4 {
        let stim = p.stimulus(&p.sample_params(Split::Test, i));
        let expected = stim
            .on_output_grid_sampled(&p.output, InputSampling::CellAverage)
            .mapv(|v| v as f32);
        assert_eq!(
            data.input.index_axis(ndarray::Axis(0), i),
            expected,
            "sample {i}"
        );
    }
}

#[test]
fn samples_are_the_solver_solution_of_their_stimulus() {
    let p = tiny();
    let data = generate(&p, Split::Train, None, false).unwrap();
    assert_eq!(data.v.dim(), (5, 100, 100));
    for i in [0, 3] {
        let s = p.sample_params(Split::Train, i);
        assert_eq!(
            (data.x0[i], data.t0[i], data.amplitude[i]),
            (s.x0 as f32, s.t0 as f32, s.amplitude as f32)
        );
        let sol = simulate_1d(&p.solver_config(), &p.stimulus(&s), &p.output).unwrap();
        assert_eq!(
            data.v.index_axis(ndarray::Axis(0), i),
            sol.v.mapv(|x| x as f32)
        );
        assert_eq!(
            data.input.index_axis(ndarray::Axis(0), i),
            sol.input.mapv(|x| x as f32)
        );
    }
    // Training onsets are fixed at 1; test onsets are drawn.
    assert!(data.t0.iter().all(|&t| t == 1.0));
    let test = generate(&p, Split::Test, None, false).unwrap();
    assert!(test.t0.iter().any(|&t| t > 1.5));
}

#[test]
fn shards_concatenate_to_the_whole_split() {
    let p = tiny();
    let whole = generate(&p, Split::Train, None, false).unwrap();
    let parts: Vec<Dataset> = (0..3)
        .map(|i| generate(&p, Split::Train, Some(Shard::new(i, 3).unwrap()), false).unwrap())
        .collect();
    assert_eq!(parts.iter().map(Dataset::len).sum::<usize>(), 5);
    assert_eq!(Dataset::concat(&parts).unwrap(), whole);
    assert!(Dataset::concat(&[parts[1].clone(), parts[0].clone()]).is_err());
    assert!("3/3".parse::<Shard>().is_err());
    assert!("1-3".parse::<Shard>().is_err());
    assert_eq!("1/3".parse::<Shard>().unwrap(), Shard::new(1, 3).unwrap());
}

#[test]
fn safetensors_round_trip_and_npy_export() {
    let p = tiny();
    let data = generate(
        &p,
        Split::Validation,
        Some(Shard::new(1, 2).unwrap()),
        false,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("val.safetensors");
    data.save(&path).unwrap();
    let back = Dataset::load(&path).unwrap();
    assert_eq!(back, data);
    assert_eq!(back.first_index, 1);
    // The same content gives the same bytes (the header's keys are sorted on save).
    let again = dir.path().join("again.safetensors");
    for _ in 0..4 {
        data.save(&again).unwrap();
        assert_eq!(
            std::fs::read(&again).unwrap(),
            std::fs::read(&path).unwrap()
        );
    }
    data.save_npy(dir.path().join("npy")).unwrap();
    let v: ndarray::Array3<f32> = ndarray_npy::read_npy(dir.path().join("npy/v.npy")).unwrap();
    assert_eq!(v, data.v);
    let x0: ndarray::Array1<f32> = ndarray_npy::read_npy(dir.path().join("npy/x0.npy")).unwrap();
    assert_eq!(x0.to_vec(), data.x0);
    assert_eq!(
        Protocol::from_json_file(dir.path().join("npy/protocol.json")).unwrap(),
        p
    );
}

#[test]
fn bad_files_fail_clearly() {
    let p = tiny();
    let data = generate(&p, Split::Validation, None, false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    data.save(&good).unwrap();
    let bytes = std::fs::read(&good).unwrap();

    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    let err = Dataset::load(&truncated).unwrap_err();
    assert!(matches!(err, SolverError::Format { .. }), "{err}");

    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"definitely not a safetensors file").unwrap();
    assert!(matches!(
        Dataset::load(&garbage),
        Err(SolverError::Format { .. })
    ));

    // A valid safetensors file that is not ours (no format tag).
    let foreign = dir.path().join("foreign.safetensors");
    let raw = vec![0u8; 16];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![4], &raw).unwrap();
    safetensors::serialize_to_file([("weight", view)], None, &foreign).unwrap();
    let err = Dataset::load(&foreign).unwrap_err();
    assert!(err.to_string().contains("format"), "{err}");

    // Our metadata, but tensors of the wrong shape: a protocol claiming another grid.
    let mut other = data.clone();
    other.protocol.output = OutputGrid::with_size(50, 100);
    let misshaped = dir.path().join("misshaped.safetensors");
    assert!(
        matches!(other.save(&misshaped), Err(SolverError::Shape { .. })),
        "save checks shapes too"
    );
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap();
    meta.insert("protocol".into(), other.protocol.to_json());
    safetensors::serialize_to_file(st.tensors(), Some(meta), &misshaped).unwrap();
    let err = Dataset::load(&misshaped).unwrap_err();
    assert!(matches!(err, SolverError::Shape { .. }), "{err}");

    assert!(matches!(
        Dataset::load(dir.path().join("missing.safetensors")),
        Err(SolverError::Io { .. })
    ));
}

#[test]
fn a_sample_can_be_solved_on_a_finer_output_grid() {
    let p = tiny();
    let grid = OutputGrid::with_size(200, 200);
    let fine = p.solve_sample_on(Split::Test, 2, &grid).unwrap();
    assert_eq!(fine.v.dim(), (200, 200));
    let coarse = p.solve_sample_on(Split::Test, 2, &p.output).unwrap();
    let max = |a: &ndarray::Array2<f64>| a.iter().cloned().fold(f64::MIN, f64::max);
    assert!(
        (max(&fine.v) - max(&coarse.v)).abs() < 0.05,
        "{} vs {}",
        max(&fine.v),
        max(&coarse.v)
    );
    // A 199 × 199 grid contains the 100 × 100 nodes and uses the same fine grid: the samples
    // at the shared nodes are the same numbers.
    let nested = p
        .solve_sample_on(Split::Test, 2, &OutputGrid::with_size(199, 199))
        .unwrap();
    for k in 0..100 {
        for j in 0..100 {
            assert!((nested.v[[2 * k, 2 * j]] - coarse.v[[k, j]]).abs() < 1e-12);
        }
    }
}
