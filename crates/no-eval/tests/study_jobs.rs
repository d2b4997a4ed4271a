//! The study as jobs: slices merged equal a one-process run, a merge refuses parts of
//! another study and names missing jobs, and an interrupted job resumes to the same result.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use candle_core::Device;
use fhn_solver::dataset::Shard;
use no_eval::error::EvalError;
use no_eval::report::{Row, StudyResults, FIGURES};
use no_eval::study::jobs::{read_record, record_path, study_digest};
use no_eval::study::{merge, merge_partial, model_dir, run, run_jobs, JobOptions, StudyConfig};

/// Two models × two seeds of the tiny study.
fn two_by_two() -> StudyConfig {
    let mut cfg = common::tiny();
    cfg.models.truncate(2);
    cfg.seeds = 2;
    cfg
}

/// Every figure of a row but the timings (train time, latency, throughput).
fn accuracy(r: &Row) -> Vec<(String, Option<f64>)> {
    FIGURES
        .iter()
        .filter(|f| !["train_wall_s", "latency_p50_b1_ms", "throughput_b32"].contains(f))
        .map(|f| (f.to_string(), r.figure(f)))
        .collect()
}

fn assert_same_accuracy(a: &StudyResults, b: &StudyResults) {
    let (ra, rb) = (a.rows(), b.rows());
    assert_eq!(ra.len(), rb.len());
    for (x, y) in ra.iter().zip(&rb) {
        assert_eq!((&x.label, x.seed), (&y.label, y.seed));
        assert_eq!(accuracy(x), accuracy(y), "{} seed {}", x.label, x.seed);
    }
    for (x, y) in a.models.iter().zip(&b.models) {
        let losses = |m: &no_eval::report::ModelResult| -> Vec<(f64, Option<f64>)> {
            m.epochs
                .iter()
                .map(|e| (e.train_loss, e.val_error))
                .collect()
        };
        assert_eq!(losses(x), losses(y), "{} seed {}", x.label, x.seed);
        assert_eq!(x.time_curve, y.time_curve);
        assert_eq!(x.space_curve, y.space_curve);
        assert_eq!(x.test_by_onset, y.test_by_onset);
    }
    assert_eq!(a.solver_time_curve, b.solver_time_curve);
}

fn shard_opts(i: usize, n: usize) -> JobOptions {
    JobOptions {
        shard: Some(Shard::new(i, n).unwrap()),
        measure_latency: true,
        name: "tiny".into(),
        ..JobOptions::default()
    }
}

#[test]
fn three_slices_merged_equal_a_one_process_run() {
    let cfg = two_by_two();
    let jobs = cfg.jobs();
    assert_eq!(jobs.len(), 4);
    // First seed of every model, then the second.
    let order: Vec<(&str, u64)> = jobs.iter().map(|j| (j.label.as_str(), j.seed)).collect();
    assert_eq!(
        order,
        [("fno", 3), ("don+aug", 3), ("fno", 4), ("don+aug", 4)]
    );

    let whole = tempfile::tempdir().unwrap();
    let one = run(&cfg, "tiny", &Device::Cpu, whole.path(), false).unwrap();
    assert_eq!(one.models.len(), 4);
    // The aggregates are over the two seeds of each model.
    assert_eq!(one.aggregates.len(), 2);
    assert_eq!(one.aggregates[0].seeds, [3, 4]);

    let parts: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    for (i, d) in parts.iter().enumerate() {
        run_jobs(&cfg, &Device::Cpu, d.path(), &shard_opts(i, 3)).unwrap();
    }
    // Slice i holds the jobs i, i + 3, ...: 2, 1 and 1 jobs.
    let digest = study_digest(&cfg).unwrap();
    let held = |d: &Path| {
        jobs.iter()
            .filter(|j| read_record(d, j, &digest).unwrap().is_some())
            .count()
    };
    let counts: Vec<usize> = parts.iter().map(|d| held(d.path())).collect();
    assert_eq!(counts, [2, 1, 1]);

    let dirs: Vec<PathBuf> = parts.iter().map(|d| d.path().to_path_buf()).collect();
    let out = tempfile::tempdir().unwrap();
    let merged = merge(&dirs, out.path(), None, false).unwrap();
    assert_same_accuracy(&merged, &one);
    assert_eq!(merged.protocol_name, "tiny");
    for f in ["report.md", "results.csv", "summary.csv", "results.json"] {
        assert!(out.path().join(f).exists(), "{f}");
    }
    // One CSV row per model and seed, with the seed column.
    let csv = std::fs::read_to_string(out.path().join("results.csv")).unwrap();
    assert!(csv.starts_with("model,variant,seed,replicate,"));
    assert_eq!(csv.lines().count(), 1 + 4);
    let report = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(report.contains("| fno | paper setting | 2 |"), "{report}");
    // The jobs table: every job once, in job order, with this machine's CPU, its epochs
    // and its training time as the model's result has it.
    let cpu = no_eval::host::cpu_description();
    let indices: Vec<usize> = merged.jobs.iter().map(|j| j.index).collect();
    assert_eq!(indices, [0, 1, 2, 3]);
    for j in &merged.jobs {
        assert_eq!(j.cpu.as_deref(), Some(cpu.as_str()));
        let m = merged
            .models
            .iter()
            .find(|m| m.label == j.label && m.seed == j.seed)
            .unwrap();
        assert_eq!(
            (j.epochs, j.train_wall_s),
            (m.epochs.len(), Some(m.train_wall_s))
        );
    }
    assert!(report.contains(&format!("- CPU [1]: {cpu}\n")), "{report}");
    assert!(report.contains("| 2 | fno | 4 | Cpu, "), "{report}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("results.json")).unwrap())
            .unwrap();
    assert_eq!(json["jobs"].as_array().map(Vec::len), Some(4));

    // A merge that misses a slice names the missing job.
    let e = merge(&dirs[..2], out.path(), None, false).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(
            e,
            EvalError::MissingJobs {
                missing: 1,
                total: 4,
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("fno seed 4 (job 2)"), "{msg}");

    // A partial merge reports the jobs it has and lists the missing one as not run yet;
    // the rows it has equal the one-process run's.
    let partial_out = tempfile::tempdir().unwrap();
    let partial = merge_partial(&dirs[..2], partial_out.path(), None, false).unwrap();
    assert_eq!(partial.models.len(), 3);
    assert_eq!(partial.skipped.len(), 1);
    assert_eq!(partial.skipped[0].0, "fno seed 4");
    assert!(
        partial.skipped[0].1.contains("3 of the study's 4 jobs"),
        "{:?}",
        partial.skipped
    );
    let report = std::fs::read_to_string(partial_out.path().join("report.md")).unwrap();
    assert!(
        report.contains("Skipped: **fno seed 4** (not run yet"),
        "{report}"
    );
    for m in &partial.models {
        let same = one
            .models
            .iter()
            .find(|o| o.label == m.label && o.seed == m.seed)
            .unwrap();
        assert_eq!(m.validation, same.validation, "{} seed {}", m.label, m.seed);
        assert_eq!(m.test, same.test, "{} seed {}", m.label, m.seed);
    }
    // Jobs missing for the same reason share one line of the report.
    merge_partial(&dirs[..1], partial_out.path(), None, false).unwrap();
    let report = std::fs::read_to_string(partial_out.path().join("report.md")).unwrap();
    assert!(
        report.contains("Skipped: **don+aug seed 3**, **fno seed 4** (not run yet"),
        "{report}"
    );
    // With no record at all there is nothing to report.
    let empty = tempfile::tempdir().unwrap();
    std::fs::copy(dirs[0].join("study.json"), empty.path().join("study.json")).unwrap();
    let e = merge_partial(&[empty.path().to_path_buf()], out.path(), None, false).unwrap_err();
    assert!(
        matches!(e, EvalError::MissingJobs { missing: 4, .. }),
        "{e}"
    );
}

#[test]
fn merging_parts_of_two_studies_is_refused() {
    let cfg = two_by_two();
    let mut other = cfg.clone();
    other.models[0].train.epochs += 1;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let only_first = JobOptions {
        only: Some(0),
        ..JobOptions::default()
    };
    run_jobs(&cfg, &Device::Cpu, a.path(), &only_first).unwrap();
    run_jobs(&other, &Device::Cpu, b.path(), &only_first).unwrap();
    let out = tempfile::tempdir().unwrap();
    let e = merge(
        &[a.path().to_path_buf(), b.path().to_path_buf()],
        out.path(),
        None,
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("another study") && e.contains("models[0].train.epochs"),
        "{e}"
    );
    // Running another study into a directory that holds one is refused too, unless fresh.
    let e = run_jobs(&other, &Device::Cpu, a.path(), &only_first)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--fresh"), "{e}");
    let fresh = JobOptions {
        fresh: true,
        ..only_first.clone()
    };
    run_jobs(&other, &Device::Cpu, a.path(), &fresh).unwrap();
    // Records without a study.json are refused, and --fresh discards them (none of the
    // other study's records survives to be read as this study's).
    std::fs::remove_file(a.path().join("study.json")).unwrap();
    let e = run_jobs(&cfg, &Device::Cpu, a.path(), &only_first)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no study.json"), "{e}");
    let fresh_cfg = JobOptions {
        fresh: true,
        only: Some(1),
        ..JobOptions::default()
    };
    run_jobs(&cfg, &Device::Cpu, a.path(), &fresh_cfg).unwrap();
    let digest = study_digest(&cfg).unwrap();
    let held: Vec<bool> = cfg
        .jobs()
        .iter()
        .map(|j| read_record(a.path(), j, &digest).unwrap().is_some())
        .collect();
    assert_eq!(held, [false, true, false, false]);
    // A slice count above the number of jobs is refused.
    let e = run_jobs(&cfg, &Device::Cpu, a.path(), &shard_opts(0, 5))
        .unwrap_err()
        .to_string();
    assert!(e.contains("at most 4 slices"), "{e}");
}

#[test]
fn an_interrupted_job_resumes_to_the_uninterrupted_result() {
    let mut cfg = common::tiny();
    cfg.models.truncate(1);
    // Enough epochs that the stop lands mid-training.
    cfg.models[0].train.epochs = 12;
    if let no_models::train::Schedule::Cosine { t_max, .. } = &mut cfg.models[0].train.schedule {
        *t_max = 12;
    }
    let job = cfg.jobs().remove(0);

    let straight = tempfile::tempdir().unwrap();
    run_jobs(&cfg, &Device::Cpu, straight.path(), &JobOptions::default()).unwrap();

    // Stop once the first epoch is checkpointed: a watcher sets the flag a signal would.
    let cut = tempfile::tempdir().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let last = model_dir(cut.path(), &job.label, job.seed).join("last.safetensors");
    let watcher = {
        let (stop, last) = (stop.clone(), last.clone());
        std::thread::spawn(move || {
            while !last.exists() {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            stop.store(true, Ordering::Relaxed);
        })
    };
    let opts = JobOptions {
        stop: Some(stop),
        ..JobOptions::default()
    };
    let e = run_jobs(&cfg, &Device::Cpu, cut.path(), &opts).unwrap_err();
    watcher.join().unwrap();
    let EvalError::Interrupted {
        epochs_completed, ..
    } = e
    else {
        panic!("expected an interruption, got {e}");
    };
    assert!((1..12).contains(&epochs_completed), "{epochs_completed}");
    assert!(!record_path(cut.path(), &job.label, job.seed).exists());

    // Run again: it resumes from the checkpoint and ends where the straight run ended.
    run_jobs(&cfg, &Device::Cpu, cut.path(), &JobOptions::default()).unwrap();
    let digest = study_digest(&cfg).unwrap();
    let a = read_record(straight.path(), &job, &digest)
        .unwrap()
        .unwrap();
    let b = read_record(cut.path(), &job, &digest).unwrap().unwrap();
    assert_eq!(b.resumed_from_epoch, Some(epochs_completed));
    let (ra, rb) = (a.result.unwrap(), b.result.unwrap());
    assert_eq!(ra.epochs.len(), 12);
    let losses = |m: &no_eval::report::ModelResult| -> Vec<(f64, Option<f64>)> {
        m.epochs
            .iter()
            .map(|e| (e.train_loss, e.val_error))
            .collect()
    };
    assert_eq!(losses(&ra), losses(&rb));
    assert_eq!(ra.test, rb.test);
    assert_eq!(ra.validation, rb.validation);
    assert_eq!(ra.time_curve, rb.time_curve);
    let weights = |d: &Path| {
        std::fs::read(model_dir(d, &job.label, job.seed).join("best.safetensors")).unwrap()
    };
    assert_eq!(weights(straight.path()).len(), weights(cut.path()).len());
    // A finished job is not run again.
    let again = run_jobs(&cfg, &Device::Cpu, cut.path(), &JobOptions::default()).unwrap();
    assert_eq!(again[0].1, no_eval::study::JobStatus::AlreadyDone);
}

/// Jobs run without their latency get it later: from the checkpoint where it exists, and
/// where only the records travelled (checkpoints stay out of a repository) from the
/// architecture built afresh, a POD-DeepONet included; nothing but the latency changes.
#[test]
fn deferred_latency_is_measured_with_or_without_the_checkpoint() {
    use no_models::deeponet::pod::PodDeepOnetConfig;
    let mut cfg = common::tiny();
    cfg.models.truncate(1);
    cfg.models.push(no_eval::study::ModelSpec {
        label: "pod_don".into(),
        variant: no_eval::report::Variant::Paper,
        config: no_models::ModelConfig::PodDon(PodDeepOnetConfig {
            grid: [20, 20],
            branch_hidden: vec![12],
            criterion: no_models::deeponet::pod::PodCriterion::Count(4),
            ..PodDeepOnetConfig::default()
        }),
        train: no_eval::study::budget(1, 4, 1e-3, 1),
        seeds: None,
        input_sampling: None,
    });
    let with_checkpoints = tempfile::tempdir().unwrap();
    let deferred = JobOptions {
        measure_latency: false,
        ..JobOptions::default()
    };
    run_jobs(&cfg, &Device::Cpu, with_checkpoints.path(), &deferred).unwrap();
    let digest = study_digest(&cfg).unwrap();
    let records = |dir: &Path| -> Vec<no_eval::study::JobRecord> {
        cfg.jobs()
            .iter()
            .map(|j| read_record(dir, j, &digest).unwrap().unwrap())
            .collect()
    };
    let before = records(with_checkpoints.path());
    for r in &before {
        assert!(r.result.as_ref().unwrap().latency.points.is_empty());
    }
    // The records alone, as committed to a repository.
    let records_only = tempfile::tempdir().unwrap();
    std::fs::copy(
        with_checkpoints.path().join("study.json"),
        records_only.path().join("study.json"),
    )
    .unwrap();
    for j in cfg.jobs() {
        let to = record_path(records_only.path(), &j.label, j.seed);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(record_path(with_checkpoints.path(), &j.label, j.seed), to).unwrap();
    }
    assert!(!model_dir(records_only.path(), "pod_don", cfg.seed).exists());
    for dir in [with_checkpoints.path(), records_only.path()] {
        let measured =
            no_eval::study::measure_pending_latency(&cfg, &Device::Cpu, dir, false).unwrap();
        assert_eq!(measured, 2, "{}", dir.display());
        let after = records(dir);
        for (a, b) in before.iter().zip(&after) {
            let (ra, rb) = (a.result.as_ref().unwrap(), b.result.as_ref().unwrap());
            assert_eq!(rb.latency.points.len(), 2, "{}", b.job.describe());
            assert!(rb.latency.points.iter().all(|p| p.p50_ms > 0.0));
            let mut without_latency = rb.clone();
            without_latency.latency = ra.latency.clone();
            assert_eq!(&without_latency, ra, "{}", b.job.describe());
        }
        // Measured once: a second pass finds nothing to do.
        let again =
            no_eval::study::measure_pending_latency(&cfg, &Device::Cpu, dir, false).unwrap();
        assert_eq!(again, 0);
    }
}

/// A model's own `input_sampling` gives that model the protocol's data with the current
/// written its way: an FNO reading cell averages in a point-valued study scores, bit for
/// bit and on every figure (the finer grid's included), what it scores in a study whose
/// protocol writes cell averages, and not what it scores reading point values.
#[test]
fn a_models_own_input_sampling_is_the_protocols_for_that_model() {
    use fhn_solver::InputSampling;
    let mut point = common::tiny();
    point.models.truncate(1);
    let mut own = point.clone();
    own.models[0].input_sampling = Some(InputSampling::CellAverage);
    let mut cells = point.clone();
    cells.protocol.input_sampling = InputSampling::CellAverage;
    let run_in = |cfg: &StudyConfig| {
        let dir = tempfile::tempdir().unwrap();
        run(cfg, "tiny", &Device::Cpu, dir.path(), false).unwrap()
    };
    let (own_r, cells_r, point_r) = (run_in(&own), run_in(&cells), run_in(&point));
    assert!(own_r.models[0].fine_grid.is_some());
    assert_same_accuracy(&own_r, &cells_r);
    assert_ne!(
        accuracy(&own_r.rows()[0]),
        accuracy(&point_r.rows()[0]),
        "cell averages and point values gave the same figures"
    );
    assert_eq!(
        own_r.rows()[0].variant,
        "paper setting, cell-averaged input"
    );
    assert_eq!(point_r.rows()[0].variant, "paper setting");
    // A study whose models keep the protocol's sampling serialises as before (the digest
    // of every existing study, and so its records, unchanged).
    assert!(!serde_json::to_string(&point)
        .unwrap()
        .contains("input_sampling"));
    assert!(serde_json::to_string(&own)
        .unwrap()
        .contains("\"input_sampling\":\"cell_average\""));
}
