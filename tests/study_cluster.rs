//! The benchmark as cluster jobs, through the real program: the Slurm array script run with
//! a fake `SLURM_ARRAY_TASK_ID` for each task, then `--merge`, gives the results of a
//! one-process run; and a run stopped by SIGTERM resumes to the same results.
//!
//! The programs are the example binaries beside this test (`cargo test` builds them), or
//! those in `$BAD_INPUT_EXAMPLES` (CI points it at the release build).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use fhn_solver::{OutputGrid, Protocol, Resolution};
use no_eval::latency::LatencyConfig;
use no_eval::report::Variant;
use no_eval::study::{budget, EvalConfig, ModelSpec, StudyConfig};
use no_models::deeponet::DeepOnetConfig;
use no_models::fno::FnoConfig;
use no_models::ModelConfig;

/// The directory of the example binaries.
fn examples_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BAD_INPUT_EXAMPLES") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/examples
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .join("examples")
}

fn benchmark() -> PathBuf {
    let p = examples_dir().join("benchmark");
    assert!(
        p.exists(),
        "{} is missing: build the examples first (cargo build --examples)",
        p.display()
    );
    p
}

/// Two models × two seeds on a 16 × 16 grid, a few epochs each.
fn tiny_study(epochs: usize) -> StudyConfig {
    let mut protocol = Protocol::quick();
    protocol.output = OutputGrid::with_size(16, 16);
    protocol.resolution = Resolution::Auto {
        max_dx: 1.0 / 60.0,
        max_dt: 0.1,
    };
    protocol.train.n_samples = 8;
    protocol.validation.n_samples = 4;
    protocol.test.n_samples = 4;
    let fno = FnoConfig {
        n_modes: vec![4, 4],
        hidden_channels: 4,
        n_layers: 1,
        ..FnoConfig::default()
    };
    let don = DeepOnetConfig {
        grid: [16, 16],
        branch_hidden: vec![8],
        trunk_hidden: vec![8],
        n_basis: 6,
        ..DeepOnetConfig::default()
    };
    let spec = |label: &str, config: ModelConfig| ModelSpec {
        label: label.into(),
        variant: Variant::Paper,
        config,
        train: budget(epochs, 4, 1e-3, 1),
        seeds: None,
        input_sampling: None,
    };
    StudyConfig {
        protocol,
        models: vec![
            spec("fno", ModelConfig::Fno(fno)),
            spec("don", ModelConfig::Don(don)),
        ],
        eval: EvalConfig {
            equivariance_samples: 2,
            time_shifts: vec![0.0, 4.0],
            space_shifts: vec![0.0, 0.1],
            fixed_time_shift: 4.0,
            fixed_space_shift: 0.1,
            latency: LatencyConfig {
                batch_sizes: vec![1],
                warmup: 0,
                repeats: 1,
            },
            map_samples: 1,
            fine_grid: None,
            fine_samples: 0,
            eval_batch: 4,
            ..EvalConfig::quick()
        },
        augment_max_delay: 5.0,
        seed: 3,
        seeds: 2,
    }
}

fn write_study(dir: &Path, cfg: &StudyConfig) -> PathBuf {
    let p = dir.join("study-in.json");
    std::fs::write(&p, serde_json::to_string_pretty(cfg).unwrap()).unwrap();
    p
}

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `results.csv` without the timing columns (training time, latency, throughput).
fn accuracy_table(dir: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(dir.join("results.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let keep: Vec<usize> = header
        .iter()
        .enumerate()
        .filter(|(_, h)| !["train_wall_s", "latency_p50_b1_ms", "throughput_b32"].contains(h))
        .map(|(i, _)| i)
        .collect();
    lines
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            keep.iter().map(|&i| cells[i].to_string()).collect()
        })
        .collect()
}

fn one_process_run(study: &Path, out: &Path) {
    ok(
        Command::new(benchmark())
            .args(["--quiet", "--workers", "1", "--protocol"])
            .arg(study)
            .arg("--out")
            .arg(out)
            .output()
            .unwrap(),
        "the one-process run",
    );
}

#[test]
fn slurm_array_tasks_then_merge_equal_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let study = write_study(tmp.path(), &tiny_study(2));
    let shared = tmp.path().join("shared");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cluster/slurm_array.sh");
    for task in 1..=3 {
        ok(
            Command::new("bash")
                .arg(&script)
                .env("SLURM_ARRAY_TASK_ID", task.to_string())
                .env("SLURM_ARRAY_TASK_COUNT", "3")
                .env("SLURM_CPUS_PER_TASK", "1")
                .env("STUDY", &study)
                .env("OUT", &shared)
                .env("BENCHMARK", benchmark())
                .env("EXTRA", "--quiet")
                .output()
                .unwrap(),
            &format!("array task {task}"),
        );
    }
    // A task number outside the array is refused.
    let bad = Command::new("bash")
        .arg(&script)
        .env("SLURM_ARRAY_TASK_ID", "4")
        .env("N", "3")
        .env("STUDY", &study)
        .env("BENCHMARK", benchmark())
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    ok(
        Command::new(benchmark())
            .arg("--quiet")
            .arg("--merge")
            .arg(&shared)
            .arg("--out")
            .arg(&shared)
            .output()
            .unwrap(),
        "the merge",
    );
    let whole = tmp.path().join("whole");
    one_process_run(&study, &whole);
    let (merged, one) = (accuracy_table(&shared), accuracy_table(&whole));
    assert_eq!(merged.len(), 4, "2 models × 2 seeds");
    assert_eq!(merged, one);
}

#[cfg(unix)]
#[test]
fn a_run_stopped_by_sigterm_resumes_to_the_same_results() {
    let tmp = tempfile::tempdir().unwrap();
    let study = write_study(tmp.path(), &tiny_study(40));
    let whole = tmp.path().join("whole");
    one_process_run(&study, &whole);

    let cut = tmp.path().join("cut");
    let child = Command::new(benchmark())
        .args(["--quiet", "--workers", "1", "--protocol"])
        .arg(&study)
        .arg("--out")
        .arg(&cut)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Stop it once its first job has checkpointed an epoch.
    let last = no_eval::study::model_dir(&cut, "fno", 3).join("last.safetensors");
    let start = Instant::now();
    while !last.exists() && start.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(last.exists(), "no checkpoint appeared");
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("resume"), "{stderr}");
    assert!(!cut.join("report.md").exists());

    one_process_run(&study, &cut);
    assert_eq!(accuracy_table(&cut), accuracy_table(&whole));
}

/// The latency column of `results.csv`, one cell per row.
fn latency_cells(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(dir.join("results.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = header
        .iter()
        .position(|h| *h == "latency_p50_b1_ms")
        .expect("a latency column");
    lines
        .map(|l| l.split(',').nth(col).unwrap().to_string())
        .collect()
}

#[test]
fn jobs_run_with_deferred_latency_get_it_when_one_process_finishes_the_study() {
    let tmp = tempfile::tempdir().unwrap();
    let study = write_study(tmp.path(), &tiny_study(1));
    let out = tmp.path().join("out");
    for job in 0..4 {
        ok(
            Command::new(benchmark())
                .args(["--quiet", "--defer-latency", "--job", &job.to_string()])
                .arg("--protocol")
                .arg(&study)
                .arg("--out")
                .arg(&out)
                .output()
                .unwrap(),
            &format!("job {job}"),
        );
    }
    // Every job is done: the one-process run only measures the latencies and reports.
    one_process_run(&study, &out);
    let cells = latency_cells(&out);
    assert_eq!(cells.len(), 4, "2 models × 2 seeds");
    for c in cells {
        let ms: f64 = c.parse().unwrap_or(f64::NAN);
        assert!(ms.is_finite() && ms > 0.0, "latency cell {c:?}");
    }
}

/// Workers take their parent's study name: the report of a run with `--workers 2 --name
/// tiny`, every job record, and a report merged again later from those records are all
/// titled `tiny` (not the file stem of the study the workers are given).
#[test]
fn workers_and_a_later_merge_keep_the_runs_name() {
    let tmp = tempfile::tempdir().unwrap();
    let study = write_study(tmp.path(), &tiny_study(1));
    let out = tmp.path().join("out");
    ok(
        Command::new(benchmark())
            .args(["--quiet", "--workers", "2", "--name", "tiny", "--protocol"])
            .arg(&study)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap(),
        "the two-worker run",
    );
    let title = |dir: &Path| {
        let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
        report.lines().next().unwrap_or_default().to_string()
    };
    assert_eq!(title(&out), "# Translation benchmark: `tiny` protocol");
    let mut records = 0;
    for model in std::fs::read_dir(out.join("jobs")).unwrap() {
        for record in std::fs::read_dir(model.unwrap().path()).unwrap() {
            let text = std::fs::read_to_string(record.unwrap().path()).unwrap();
            let json: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(json["protocol_name"], "tiny");
            records += 1;
        }
    }
    assert_eq!(records, 4, "2 models × 2 seeds");
    let merged = tmp.path().join("merged");
    ok(
        Command::new(benchmark())
            .args(["--quiet", "--merge"])
            .arg(&out)
            .arg("--out")
            .arg(&merged)
            .output()
            .unwrap(),
        "the merge",
    );
    assert_eq!(title(&merged), "# Translation benchmark: `tiny` protocol");
}
