//! The table machinery: a case, how it runs, and how its outcome is judged.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::files;
use super::fixtures::Fixtures;

/// Default per-case limit; training cases get more.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Virtual-memory cap of every child (KiB for `ulimit -v`): a program that tries to allocate
/// what a bad header or flag claims fails there instead of swapping the machine.
pub const CHILD_MEMORY_KIB: u64 = 6 * 1024 * 1024;

/// What a case needs when it runs: its own temp dir and the shared fixtures.
pub struct Ctx {
    /// The case's private directory (`{tmp}` in arguments).
    pub dir: PathBuf,
    /// Dataset, checkpoint and input made once for all cases.
    pub fx: &'static Fixtures,
}

impl Ctx {
    /// A path inside the case directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Replaces the placeholders `{tmp}`, `{data}`, `{ckpt}`, `{input}`, `{proto}`,
    /// `{model_cfg}`.
    pub fn expand(&self, s: &str) -> String {
        s.replace("{tmp}", &self.dir.to_string_lossy())
            .replace("{data}", &self.fx.data.to_string_lossy())
            .replace("{ckpt}", &self.fx.checkpoint.to_string_lossy())
            .replace("{input}", &self.fx.input.to_string_lossy())
            .replace("{proto}", &self.fx.protocol.to_string_lossy())
            .replace("{model_cfg}", &self.fx.model_config.to_string_lossy())
    }
}

/// Prepares a case's files before its command runs.
pub type Setup = Box<dyn Fn(&Ctx) + Send + Sync>;
/// A library call: `Ok` on success, `Err(message)` for an error the library returned.
pub type LibCall = Box<dyn Fn(&Ctx) -> Result<(), String> + Send + Sync>;
/// A case that judges itself (the interrupted writes): `Err(class, detail)` on failure.
pub type CustomCheck = Box<dyn Fn(&Ctx) -> Result<(), (&'static str, String)> + Send + Sync>;

/// How a case is run.
pub enum Action {
    /// An example binary with arguments (placeholders expanded).
    Cli {
        bin: &'static str,
        args: Vec<String>,
        setup: Option<Setup>,
    },
    /// A public library call.
    Lib(LibCall),
    /// A self-judging scenario.
    Custom(CustomCheck),
}

/// The outcome a case demands.
#[derive(Clone, Debug)]
pub enum Expect {
    /// A clean error (exit 1, or 2 for a command-line usage error) whose message contains
    /// each word (case-insensitive; `a|b` accepts either).
    Error(Vec<&'static str>),
    /// Exit 0, and each listed output (placeholders expanded) exists and holds finite numbers.
    Success(Vec<String>),
}

/// One row of the table.
pub struct Case {
    /// Unique name, `program/what`.
    pub name: String,
    /// The class the case belongs to.
    pub class: &'static str,
    /// What runs.
    pub action: Action,
    /// What must happen.
    pub expect: Expect,
    /// Limit after which the case is a hang.
    pub timeout: Duration,
}

impl Case {
    /// A CLI case expecting an error mentioning `mentions`.
    pub fn err<S: AsRef<str>>(
        class: &'static str,
        name: &str,
        bin: &'static str,
        args: &[S],
        mentions: &[&'static str],
    ) -> Self {
        Self::cli(class, name, bin, args, Expect::Error(mentions.to_vec()))
    }

    /// A CLI case expecting success with the given outputs.
    pub fn ok<S: AsRef<str>>(
        class: &'static str,
        name: &str,
        bin: &'static str,
        args: &[S],
        outputs: &[&str],
    ) -> Self {
        let outputs = outputs.iter().map(|s| s.to_string()).collect();
        Self::cli(class, name, bin, args, Expect::Success(outputs))
    }

    fn cli<S: AsRef<str>>(
        class: &'static str,
        name: &str,
        bin: &'static str,
        args: &[S],
        expect: Expect,
    ) -> Self {
        Self {
            name: format!("{bin}/{name}"),
            class,
            action: Action::Cli {
                bin,
                args: args.iter().map(|s| s.as_ref().to_string()).collect(),
                setup: None,
            },
            expect,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// A library case.
    pub fn lib(class: &'static str, name: &str, expect: Expect, call: LibCall) -> Self {
        Self {
            name: format!("lib/{name}"),
            class,
            action: Action::Lib(call),
            expect,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// A self-judging case.
    pub fn custom(class: &'static str, name: &str, check: CustomCheck) -> Self {
        Self {
            name: name.to_string(),
            class,
            action: Action::Custom(check),
            expect: Expect::Success(Vec::new()),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Adds a preparation step (CLI cases).
    pub fn setup(mut self, f: impl Fn(&Ctx) + Send + Sync + 'static) -> Self {
        if let Action::Cli { setup, .. } = &mut self.action {
            *setup = Some(Box::new(f));
        }
        self
    }

    /// Sets the time limit.
    pub fn timeout_s(mut self, secs: u64) -> Self {
        self.timeout = Duration::from_secs(secs);
        self
    }

    /// A one-line description of the expectation, for the listing.
    pub fn describe(&self) -> String {
        match &self.expect {
            Expect::Error(m) => format!("error mentioning {m:?}"),
            Expect::Success(o) if o.is_empty() => "success".into(),
            Expect::Success(o) => format!("success, finite {o:?}"),
        }
    }
}

/// A failed case.
pub struct Failure {
    pub name: String,
    pub class: &'static str,
    pub kind: &'static str,
    pub detail: String,
}

/// The directory of the example binaries: `$BAD_INPUT_EXAMPLES`, else beside the test binary.
pub fn examples_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BAD_INPUT_EXAMPLES") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/bad_inputs-HASH -> target/<profile>/examples
    exe.parent()
        .and_then(Path::parent)
        .map(|p| p.join("examples"))
        .expect("the test binary lies in target/<profile>/deps")
}

/// The path of an example binary; panics (a test-setup failure) with how to build it.
pub fn example(bin: &str) -> PathBuf {
    let path = examples_dir().join(format!("{bin}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "example binary {} is missing: build it with `cargo build --examples` (or `cargo build \
         --release --examples` and set BAD_INPUT_EXAMPLES=target/release/examples)",
        path.display()
    );
    path
}

/// The finished run of a child process.
pub struct Finished {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

/// Runs `bin args` under a memory cap (and an optional file-size cap, KiB-blocks of
/// `ulimit -f`) with a time limit, killing it on time-out.
pub fn run_program(
    bin: &Path,
    args: &[String],
    dir: &Path,
    timeout: Duration,
    fsize_blocks: Option<u64>,
) -> Finished {
    let limits = match fsize_blocks {
        Some(b) => format!("ulimit -v {CHILD_MEMORY_KIB}; ulimit -f {b}; exec \"$0\" \"$@\""),
        None => format!("ulimit -v {CHILD_MEMORY_KIB}; exec \"$0\" \"$@\""),
    };
    let out_path = dir.join(".stdout");
    let err_path = dir.join(".stderr");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(limits)
        .arg(bin)
        .args(args)
        .current_dir(dir)
        .env("RUST_BACKTRACE", "0")
        .env("RAYON_NUM_THREADS", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawning sh");
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for a child") {
            break s;
        }
        if start.elapsed() > timeout {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("reaping a killed child");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    use std::os::unix::process::ExitStatusExt;
    let read =
        |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    Finished {
        code: status.code(),
        signal: status.signal(),
        stdout: read(&out_path),
        stderr: read(&err_path),
        timed_out,
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(3);
    let t = lines[start..].join(" | ");
    t.chars().take(300).collect()
}

/// Judges a finished program against the expectation; `Err((kind, detail))` on failure.
fn judge_program(f: &Finished, expect: &Expect, ctx: &Ctx) -> Result<(), (&'static str, String)> {
    if f.timed_out {
        return Err(("hang", "killed after the time limit".into()));
    }
    if let Some(sig) = f.signal {
        return Err((
            "abort",
            format!("killed by signal {sig}: {}", tail(&f.stderr)),
        ));
    }
    if f.code == Some(101) || f.stderr.contains("panicked at") {
        return Err(("panic", tail(&f.stderr)));
    }
    match expect {
        Expect::Error(mentions) => match f.code {
            Some(0) => Err((
                "silent-wrong",
                format!("exit 0 where an error was expected: {}", tail(&f.stdout)),
            )),
            Some(1) | Some(2) => check_mentions(&f.stderr, mentions),
            other => Err(("abort", format!("exit code {other:?}: {}", tail(&f.stderr)))),
        },
        Expect::Success(outputs) => {
            if f.code != Some(0) {
                return Err(("unexpected-error", tail(&f.stderr)));
            }
            check_outputs(outputs, ctx)
        }
    }
}

fn check_mentions(message: &str, mentions: &[&'static str]) -> Result<(), (&'static str, String)> {
    let lower = message.to_lowercase();
    // `a|b` accepts either word.
    let found = |m: &str| m.split('|').any(|alt| lower.contains(&alt.to_lowercase()));
    let missing: Vec<&str> = mentions.iter().copied().filter(|m| !found(m)).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err((
            "wrong-message",
            format!("missing {missing:?} in: {}", tail(message)),
        ))
    }
}

fn check_outputs(outputs: &[String], ctx: &Ctx) -> Result<(), (&'static str, String)> {
    for out in outputs {
        let path = PathBuf::from(ctx.expand(out));
        files::check_finite_file(&path).map_err(|e| ("silent-wrong", e))?;
    }
    Ok(())
}

fn run_lib(
    call: &LibCall,
    ctx: &Ctx,
    timeout: Duration,
) -> Result<Result<(), String>, (&'static str, String)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let ctx2 = Ctx {
        dir: ctx.dir.clone(),
        fx: ctx.fx,
    };
    // The call is borrowed for the scope; a hung call is reported, and the scope then
    // waits for it (a hang therefore also shows as a slow suite).
    std::thread::scope(|s| {
        s.spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call(&ctx2)));
            let _ = tx.send(r);
        });
        match rx.recv_timeout(timeout) {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(p)) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Err(("panic", msg))
            }
            Err(_) => Err(("hang", "the library call exceeded the time limit".into())),
        }
    })
}

/// Runs one case; `None` if it passed.
pub fn run_case(case: &Case, fx: &'static Fixtures, root: &Path, index: usize) -> Option<Failure> {
    let dir = root.join(format!("case-{index:04}"));
    std::fs::create_dir_all(&dir).expect("case directory");
    let ctx = Ctx { dir, fx };
    let verdict = match &case.action {
        Action::Cli { bin, args, setup } => {
            if let Some(s) = setup {
                s(&ctx);
            }
            let args: Vec<String> = args.iter().map(|a| ctx.expand(a)).collect();
            let f = run_program(&example(bin), &args, &ctx.dir, case.timeout, None);
            judge_program(&f, &case.expect, &ctx)
        }
        Action::Lib(call) => match run_lib(call, &ctx, case.timeout) {
            Err(e) => Err(e),
            Ok(result) => match (&case.expect, result) {
                (Expect::Error(_), Ok(())) => {
                    Err(("silent-wrong", "Ok where an error was expected".into()))
                }
                (Expect::Error(m), Err(msg)) => check_mentions(&msg, m),
                (Expect::Success(_), Err(msg)) => Err(("unexpected-error", msg)),
                (Expect::Success(o), Ok(())) => check_outputs(o, &ctx),
            },
        },
        Action::Custom(check) => check(&ctx),
    };
    let _ = std::fs::remove_dir_all(&ctx.dir);
    verdict.err().map(|(kind, detail)| Failure {
        name: case.name.clone(),
        class: case.class,
        kind,
        detail,
    })
}

/// Runs all cases on `workers` threads; returns the failures in case order.
pub fn run_all(cases: &[Case], fx: &'static Fixtures, root: &Path, workers: usize) -> Vec<Failure> {
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(case) = cases.get(i) else { break };
                let start = Instant::now();
                let failure = run_case(case, fx, root, i);
                let secs = start.elapsed().as_secs_f64();
                let mark = if failure.is_some() { "FAIL" } else { "ok  " };
                eprintln!("[{i:3}] {mark} {:6.1}s {}", secs, case.name);
                if let Some(f) = failure {
                    failures.lock().expect("failure list").push((i, f));
                }
            });
        }
    });
    let mut list = failures.into_inner().expect("failure list");
    list.sort_by_key(|(i, _)| *i);
    list.into_iter().map(|(_, f)| f).collect()
}

/// `base` (flag/value pairs and lone switches) without the flags that `extra` sets, then
/// `extra`: a case overrides a default flag instead of repeating it.
pub fn merge_args(base: &[&str], extra: &[&str]) -> Vec<String> {
    let flag_of = |a: &str| a.split('=').next().unwrap_or(a).to_string();
    let overridden: Vec<String> = extra
        .iter()
        .filter(|a| a.starts_with("--"))
        .map(|a| flag_of(a))
        .collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < base.len() {
        let takes_value = i + 1 < base.len() && !base[i + 1].starts_with("--");
        let width = if takes_value { 2 } else { 1 };
        if !overridden.contains(&flag_of(base[i])) {
            out.extend(base[i..i + width].iter().map(|s| s.to_string()));
        }
        i += width;
    }
    out.extend(extra.iter().map(|s| s.to_string()));
    out
}
