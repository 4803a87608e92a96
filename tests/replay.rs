//! Tests of the rule-testing example host (`examples/replay`) over the recorded fixtures in
//! `examples/traces/`: every recording replays to its expected decisions, the output has the
//! documented shape, a changed expectation fails with a diff, bad input is reported with its
//! place, and the fixtures are exactly what `examples/gen-traces` writes.
//!
//! The examples are run as programs (built by `cargo build --example`, in this test's profile),
//! as a user runs them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The repository root.
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
/// A run of an example must end within this; it only guards against a hang (the replay of every
/// fixture takes well under a second of real time).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// Poll interval while waiting for a run to end.
const POLL: Duration = Duration::from_millis(20);
/// Exit status of the replay when the decisions differ from `--expect`.
const EXIT_MISMATCH: i32 = 1;
/// Exit status of the replay on an error.
const EXIT_ERROR: i32 = 2;
/// The span that every fixture sends after its trace was decided (see `examples/gen-traces`).
const LATE_SPAN_NAME: &[u8] = b"audit log";

/// Builds the examples once (a no-op when `cargo test` already built them) and returns the path
/// of one of them.
fn example(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        // This test runs from target/<profile>/deps; the examples go to target/<profile>/examples.
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let mut build = Command::new(cargo);
        build.current_dir(REPO).args([
            "build",
            "--quiet",
            "-p",
            "tracekeeper",
            "--example",
            "replay",
            "--example",
            "gen-traces",
        ]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().unwrap();
        assert!(status.success(), "building the examples failed: {status}");
        profile_dir.join("examples")
    });
    let path = dir.join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// What a finished run printed.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs an example to completion (bounded by [`RUN_TIMEOUT`]).
fn run(name: &str, args: &[&Path]) -> Run {
    let out = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (out.path().join("stdout"), out.path().join("stderr"));
    let mut child = Command::new(example(name))
        .args(args)
        .current_dir(REPO)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{name} {args:?} did not finish within {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(POLL);
    };
    Run {
        status,
        stdout: std::fs::read_to_string(out_path).unwrap(),
        stderr: std::fs::read_to_string(err_path).unwrap(),
    }
}

/// One fixture: `NAME.yaml` (config), `NAME.expected.jsonl`, and the recordings `NAME.otlp.*`.
struct Fixture {
    name: String,
    config: PathBuf,
    expected: PathBuf,
    recordings: Vec<PathBuf>,
}

fn traces_dir() -> PathBuf {
    Path::new(REPO).join("examples/traces")
}

fn fixtures() -> Vec<Fixture> {
    let dir = traces_dir();
    let files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut fixtures: Vec<Fixture> = files
        .iter()
        .filter_map(|f| f.strip_suffix(".yaml"))
        .map(|name| {
            let prefix = format!("{name}.otlp.");
            let mut recordings: Vec<PathBuf> = files
                .iter()
                .filter(|f| f.starts_with(&prefix))
                .map(|f| dir.join(f))
                .collect();
            recordings.sort();
            let expected = dir.join(format!("{name}.expected.jsonl"));
            assert!(!recordings.is_empty(), "fixture {name} has no recording");
            assert!(
                expected.exists(),
                "fixture {name} has no expected decisions"
            );
            Fixture {
                name: name.to_string(),
                config: dir.join(format!("{name}.yaml")),
                expected,
                recordings,
            }
        })
        .collect();
    fixtures.sort_by(|a, b| a.name.cmp(&b.name));
    fixtures
}

impl Fixture {
    /// The recording with this extension (`jsonl`, `binpb`).
    fn recording(&self, ext: &str) -> &Path {
        self.recordings
            .iter()
            .find(|r| r.extension().is_some_and(|e| e == ext))
            .unwrap_or_else(|| panic!("fixture {} has no .{ext} recording", self.name))
    }
}

fn fixture(name: &str) -> Fixture {
    fixtures()
        .into_iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no fixture {name}"))
}

fn replay(config: &Path, recording: &Path, extra: &[&Path]) -> Run {
    let mut args: Vec<&Path> = vec![Path::new("--config"), config];
    args.extend_from_slice(extra);
    args.push(recording);
    run("replay", &args)
}

fn nonempty_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.trim().is_empty()).collect()
}

/// The number in `text` right before `suffix` (e.g. "7 late spans" → 7).
fn number_before(text: &str, suffix: &str) -> usize {
    let at = text
        .find(suffix)
        .unwrap_or_else(|| panic!("{suffix:?} not in {text:?}"));
    let digits: String = text[..at]
        .trim_end()
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.chars().rev().collect::<String>().parse().unwrap()
}

#[test]
fn every_recording_replays_to_its_expected_decisions() {
    let fixtures = fixtures();
    let names: Vec<&str> = fixtures.iter().map(|f| f.name.as_str()).collect();
    for required in ["checkout", "first-trace", "sixty-seconds", "stuck-queue"] {
        assert!(
            names.contains(&required),
            "fixture {required} missing: {names:?}"
        );
    }
    for f in &fixtures {
        let expected = nonempty_lines(&std::fs::read_to_string(&f.expected).unwrap()).len();
        for recording in &f.recordings {
            let r = replay(&f.config, recording, &[Path::new("--expect"), &f.expected]);
            assert!(
                r.status.success(),
                "{} does not replay to {}: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                recording.display(),
                f.expected.display(),
                r.status,
                r.stdout,
                r.stderr
            );
            assert!(
                r.stderr
                    .contains(&format!("ok: {expected} decisions match")),
                "{}",
                r.stderr
            );
            // The spans sent after their trace's decision are late: counted, never a new trace.
            let bytes = std::fs::read(recording).unwrap();
            let late = bytes
                .windows(LATE_SPAN_NAME.len())
                .filter(|w| *w == LATE_SPAN_NAME)
                .count();
            assert_eq!(number_before(&r.stderr, "late spans"), late, "{}", r.stderr);
        }
    }
}

#[test]
fn the_sixty_second_recording_is_replayed_with_a_thirty_second_decision_wait() {
    let f = fixture("sixty-seconds");
    let config = std::fs::read_to_string(&f.config).unwrap();
    assert!(config.contains("decision_wait: 30s"), "{config}");
    let r = replay(&f.config, &f.recordings[0], &[]);
    assert!(r.status.success(), "{}", r.stderr);
    // "replayed N spans in M requests, S s of recorded time": at least the 60 s of traffic.
    let before = r
        .stderr
        .split(" s of recorded time")
        .next()
        .filter(|b| b.len() < r.stderr.len())
        .unwrap_or_else(|| panic!("no recorded time in {}", r.stderr));
    let seconds: f64 = before.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(seconds >= 60.0, "{}", r.stderr);
}

#[test]
fn the_output_is_one_documented_json_line_per_trace() {
    let f = fixture("checkout");
    let r = replay(&f.config, f.recording("jsonl"), &[]);
    assert!(r.status.success(), "{}", r.stderr);
    let lines = nonempty_lines(&r.stdout);
    let mut previous = String::new();
    for line in &lines {
        // The documented keys, in the documented order.
        let keys = ["trace_id", "decision", "policy", "completeness", "missing"];
        let positions: Vec<usize> = keys
            .iter()
            .map(|k| line.find(&format!("\"{k}\":")).unwrap())
            .collect();
        assert!(positions.is_sorted(), "key order in {line}");
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v.as_object().unwrap().len(), keys.len(), "{line}");
        let id = v["trace_id"].as_str().unwrap();
        assert!(
            id.len() == 32 && id.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
            "{line}"
        );
        assert!(*id > *previous, "not sorted by trace id: {line}");
        previous = id.to_string();
        let decision = v["decision"].as_str().unwrap();
        assert!(
            ["sampled", "not_sampled", "dropped"].contains(&decision),
            "{line}"
        );
        let missing: Vec<&str> = v["missing"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_str().unwrap())
            .collect();
        assert!(missing.is_sorted(), "{line}");
        let completeness = v["completeness"].as_str().unwrap();
        assert_eq!(completeness == "incomplete", !missing.is_empty(), "{line}");
    }
    // Exactly the expected lines: the documented format is the --expect format.
    let expected = std::fs::read_to_string(&f.expected).unwrap();
    assert_eq!(lines, nonempty_lines(&expected));
}

#[test]
fn protobuf_and_json_recordings_decide_alike() {
    let f = fixture("checkout");
    let outputs: Vec<String> = f
        .recordings
        .iter()
        .map(|rec| {
            let r = replay(&f.config, rec, &[]);
            assert!(r.status.success(), "{}: {}", rec.display(), r.stderr);
            r.stdout
        })
        .collect();
    assert!(
        outputs.len() >= 2,
        "checkout needs a JSON and a protobuf recording"
    );
    assert!(outputs.iter().all(|o| *o == outputs[0]));
}

#[test]
fn a_changed_expectation_fails_with_a_diff() {
    let f = fixture("checkout");
    let original = std::fs::read_to_string(&f.expected).unwrap();
    let lines = nonempty_lines(&original);
    // Change the first sampled decision, forget the first not-sampled one, add an unknown trace.
    let changed_at = lines
        .iter()
        .position(|l| l.contains("\"sampled\""))
        .unwrap();
    let dropped_at = lines
        .iter()
        .position(|l| l.contains("\"not_sampled\""))
        .unwrap();
    let changed = lines[changed_at].replace("\"sampled\"", "\"not_sampled\"");
    let unknown = r#"{"trace_id":"ffffffffffffffffffffffffffffffff","decision":"sampled","policy":"errors","completeness":"complete","missing":[]}"#;
    let mut edited: Vec<&str> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        match i {
            _ if i == changed_at => edited.push(&changed),
            _ if i == dropped_at => {}
            _ => edited.push(line),
        }
    }
    edited.push(unknown);
    let dir = tempfile::tempdir().unwrap();
    let expect = dir.path().join("changed.expected.jsonl");
    std::fs::write(&expect, edited.join("\n") + "\n").unwrap();

    let r = replay(
        &f.config,
        &f.recordings[0],
        &[Path::new("--expect"), &expect],
    );
    assert_eq!(
        r.status.code(),
        Some(EXIT_MISMATCH),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    let out = &r.stdout;
    assert!(out.contains("--- expected"), "{out}");
    assert!(
        out.contains(&format!("- {changed}\n+ {}\n", lines[changed_at])),
        "{out}"
    );
    assert!(out.contains(&format!("+ {}\n", lines[dropped_at])), "{out}");
    assert!(out.contains(&format!("- {unknown}\n")), "{out}");
    let minus = out.lines().filter(|l| l.starts_with("- ")).count();
    let plus = out.lines().filter(|l| l.starts_with("+ ")).count();
    assert_eq!((minus, plus), (2, 2), "only the three differences: {out}");
    assert!(
        out.contains("1 decided differently, 1 expected but not seen, 1 not expected"),
        "{out}"
    );
}

#[test]
fn the_table_lists_every_trace_and_the_counts() {
    let f = fixture("checkout");
    let r = replay(
        &f.config,
        &f.recordings[0],
        &[Path::new("--format"), Path::new("table")],
    );
    assert!(r.status.success(), "{}", r.stderr);
    let expected = nonempty_lines(&std::fs::read_to_string(&f.expected).unwrap()).len();
    let lines = nonempty_lines(&r.stdout);
    assert!(lines[0].starts_with("TRACE_ID"), "{}", r.stdout);
    let is_row = |l: &&&str| {
        l.get(..32)
            .is_some_and(|id| id.chars().all(|c| c.is_ascii_hexdigit()))
    };
    assert_eq!(
        lines.iter().filter(is_row).count(),
        expected,
        "one row per trace"
    );
    assert!(
        r.stdout.contains(&format!("\n{expected} traces: ")),
        "{}",
        r.stdout
    );
}

#[test]
fn bad_input_is_an_error_that_names_the_file_and_line() {
    let f = fixture("checkout");
    let good = std::fs::read_to_string(f.recording("jsonl")).unwrap();
    let first = good.lines().next().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, format!("{first}\n{{\"resourceSpans\": [\n")).unwrap();
    let r = replay(&f.config, &bad, &[]);
    assert_eq!(r.status.code(), Some(EXIT_ERROR), "{}", r.stderr);
    assert!(r.stderr.contains("bad.jsonl:2"), "{}", r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);

    let missing = dir.path().join("nowhere.jsonl");
    let r = replay(&f.config, &missing, &[]);
    assert_eq!(r.status.code(), Some(EXIT_ERROR), "{}", r.stderr);
    assert!(r.stderr.contains("nowhere.jsonl"), "{}", r.stderr);
}

#[test]
fn the_fixtures_are_what_the_generator_writes() {
    let dir = tempfile::tempdir().unwrap();
    let r = run("gen-traces", &[dir.path()]);
    assert!(r.status.success(), "{}", r.stderr);
    let names = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    let generated = names(dir.path());
    assert_eq!(
        generated,
        names(&traces_dir()),
        "run `cargo run --example gen-traces`"
    );
    for name in &generated {
        let fresh = std::fs::read(dir.path().join(name)).unwrap();
        let committed = std::fs::read(traces_dir().join(name)).unwrap();
        assert!(
            fresh == committed,
            "examples/traces/{name} differs from what gen-traces writes; regenerate it with \
             `cargo run --example gen-traces`"
        );
    }
}
