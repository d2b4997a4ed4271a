//! Interrupted writes: a program runs under `ulimit -f` (RLIMIT_FSIZE) so that its output
//! write dies midway (SIGXFSZ or a write error); the previous output at that path must be
//! byte-identical afterwards, and the program must not report success.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::files;
use super::harness::{example, run_program, Case, Ctx};

/// File-size limit of the interrupted runs, in `ulimit -f` blocks (512 or 1024 bytes,
/// depending on the shell): far below every output these cases write.
const FSIZE_BLOCKS: u64 = 48;

type Verdict = Result<(), (&'static str, String)>;

fn snapshot(paths: &[PathBuf]) -> Vec<Vec<u8>> {
    paths
        .iter()
        .map(|p| std::fs::read(p).expect("previous output"))
        .collect()
}

/// Runs `bin args` under the file-size limit; the run must fail (it cannot write its
/// output) without panicking.
fn interrupted(bin: &str, args: &[String], dir: &Path) -> Verdict {
    let f = run_program(
        &example(bin),
        args,
        dir,
        Duration::from_secs(120),
        Some(FSIZE_BLOCKS),
    );
    if f.timed_out {
        return Err(("hang", "killed after the time limit".into()));
    }
    if f.code == Some(101) || f.stderr.contains("panicked at") {
        return Err(("panic", f.stderr.lines().last().unwrap_or("").to_string()));
    }
    if f.code == Some(0) {
        return Err((
            "silent-wrong",
            "reported success although its output could not be written".into(),
        ));
    }
    Ok(())
}

fn unchanged(paths: &[PathBuf], before: &[Vec<u8>]) -> Verdict {
    for (p, b) in paths.iter().zip(before) {
        let now = std::fs::read(p).unwrap_or_default();
        if &now != b {
            return Err((
                "silent-wrong",
                format!(
                    "{} was damaged by the interrupted write ({} bytes, was {})",
                    p.display(),
                    now.len(),
                    b.len()
                ),
            ));
        }
    }
    Ok(())
}

fn infer(c: &Ctx) -> Verdict {
    let x = c.path("x.npy");
    files::write_npy_f32(&x, &[64, 1, 32, 32], files::smooth);
    let y = c.path("y.npy");
    files::write_npy_f32(&y, &[1, 2, 8, 8], |i| i as f32);
    let before = snapshot(std::slice::from_ref(&y));
    let args: Vec<String> = [
        "--checkpoint",
        "{ckpt}",
        "--input",
        "{tmp}/x.npy",
        "--out",
        "{tmp}/y.npy",
    ]
    .iter()
    .map(|a| c.expand(a))
    .collect();
    interrupted("infer", &args, &c.dir)?;
    unchanged(&[y], &before)
}

fn fhn_solve(c: &Ctx) -> Verdict {
    let out = c.path("out");
    std::fs::create_dir_all(&out).expect("dir");
    let paths: Vec<PathBuf> = ["input", "v", "w"]
        .iter()
        .map(|n| out.join(format!("{n}.npy")))
        .collect();
    for (k, p) in paths.iter().enumerate() {
        files::write_npy_f64(p, &[3, 4], |i| (i + k) as f64);
    }
    let before = snapshot(&paths);
    let args = vec!["--out".to_string(), out.to_string_lossy().into_owned()];
    interrupted("fhn_solve", &args, &c.dir)?;
    unchanged(&paths, &before)
}

const DATASET_FILES: [&str; 4] = [
    "protocol.json",
    "train.safetensors",
    "val.safetensors",
    "test.safetensors",
];

/// The directory must be untouched, or complete: every split loads and was made with the
/// protocol that `protocol.json` holds.
fn complete_or_untouched(dir: &Path, before: &[Vec<u8>]) -> Verdict {
    let paths: Vec<PathBuf> = DATASET_FILES.iter().map(|f| dir.join(f)).collect();
    if unchanged(&paths, before).is_ok() {
        return Ok(());
    }
    let protocol = fhn_solver::Protocol::from_json_file(&paths[0])
        .map_err(|e| ("silent-wrong", format!("protocol.json is damaged: {e}")))?;
    for p in &paths[1..] {
        let d = fhn_solver::Dataset::load(p)
            .map_err(|e| ("silent-wrong", format!("{} is damaged: {e}", p.display())))?;
        if d.protocol != protocol {
            return Err((
                "silent-wrong",
                format!("{} and protocol.json describe different data", p.display()),
            ));
        }
    }
    Ok(())
}

fn generate_dataset(c: &Ctx) -> Verdict {
    let d = c.path("d");
    std::fs::create_dir_all(&d).expect("dir");
    for f in DATASET_FILES {
        std::fs::copy(c.fx.data.join(f), d.join(f)).expect("copy");
    }
    let paths: Vec<PathBuf> = DATASET_FILES.iter().map(|f| d.join(f)).collect();
    let before = snapshot(&paths);
    super::cases_solver::write_protocol(c, &|p| {
        p["output"]["nt"] = 32.into();
        p["output"]["nx"] = 32.into();
        p["train"]["n_samples"] = 16.into();
        p["seed"] = 7.into();
    });
    let args: Vec<String> = [
        "--protocol",
        "{tmp}/p.json",
        "--out",
        "{tmp}/d",
        "--no-progress",
    ]
    .iter()
    .map(|a| c.expand(a))
    .collect();
    interrupted("generate_dataset", &args, &c.dir)?;
    complete_or_untouched(&d, &before)
}

/// The three interrupted-write scenarios.
pub fn all() -> Vec<Case> {
    vec![
        Case::custom(
            "atomic",
            "atomic/infer-output-survives-interrupted-write",
            Box::new(infer),
        )
        .timeout_s(150),
        Case::custom(
            "atomic",
            "atomic/fhn_solve-arrays-survive-interrupted-write",
            Box::new(fhn_solve),
        )
        .timeout_s(150),
        Case::custom(
            "atomic",
            "atomic/generate_dataset-dir-complete-or-untouched",
            Box::new(generate_dataset),
        )
        .timeout_s(150),
    ]
}
