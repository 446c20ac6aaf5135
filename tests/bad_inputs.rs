//! A folder-driven regression corpus of bad inputs for `payrun validate`.
//!
//! Every folder under tests/fixtures/bad/ is one case: a manifest.yaml, the CSV it points to
//! (unless the case is about a missing or inline source) and an expect.json:
//!
//! ```json
//! {"exit": 1,
//!  "errors": [{"rule": "amount.exponent", "line": 3, "column": 9, "field": "transferAmount"}],
//!  "error_count": 1}
//! ```
//!
//! Each listed error must appear in the JSON report with that rule and line (`"line": null`
//! means the diagnostic has no line), and with the column, field, value, `message_contains` and
//! `hint_contains` when they are given. Optional case keys: `error_count`, `rows`,
//! `valid_items`, `invalid_items`, `stage` (for manifest/io failures), `absent_rules`,
//! `max_value_chars`, `max_stdout_bytes`, `max_seconds`, `output_must_not_contain` (JSON run),
//! `human_must_not_contain` (also runs the human format), `plan_must_not_contain` and
//! `plan_must_contain` (also runs `payrun plan` in the human and JSON formats, for what its
//! preview may show of a valid batch), `warnings_contain` (each a part of one of the report's
//! warnings), `generator` (the case folder is copied to a temp dir and the named generator adds
//! what is too big, or cannot be, committed: huge files, FIFOs, symlinks to devices or out of
//! the folder), and `known_bug`: a
//! description of a misbehaviour of payrun that the case documents. Known bugs are not asserted;
//! the harness prints them with what it saw, so they stay visible until fixed.
//!
//! Every run must also finish within 60 s, never panic, print one JSON object on stdout, and
//! give a report whose counts agree with each other. A case that `validate` refuses is also
//! given to `run --sandbox`, which must refuse it the same way with no request sent (the
//! embedded sandbox's counters are the judge).

use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(60);

/// What one run of the binary did.
struct Outcome {
    /// `None` when the process was killed or ended by a signal.
    code: Option<i32>,
    stdout: String,
    stderr: String,
    timed_out: bool,
}

impl Outcome {
    fn panicked(&self) -> bool {
        self.code == Some(101) || self.stderr.contains("panicked")
    }

    fn json(&self) -> Result<Value, String> {
        serde_json::from_str(&self.stdout).map_err(|e| {
            format!(
                "stdout is not one JSON object ({e}): {:?}",
                excerpt(&self.stdout, 300)
            )
        })
    }

    /// Problems every run must be free of, whatever the input.
    fn basic_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.timed_out {
            problems.push(format!(
                "did not finish within {} s (killed)",
                TIMEOUT.as_secs()
            ));
        }
        if self.panicked() {
            problems.push(format!(
                "panicked (exit {:?}): {}",
                self.code,
                excerpt(&self.stderr, 400)
            ));
        }
        problems
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn corpus() -> PathBuf {
    root().join("tests/fixtures/bad")
}

fn excerpt(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

/// Runs the payrun binary from the crate root with a 60 s guard.
fn run_payrun(args: &[&str]) -> Outcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_payrun"))
        .args(args)
        .current_dir(root())
        .env_remove("PAYRUN_SCHEMAS")
        .env_remove("PAYRUN_LOG")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the payrun binary starts");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let err = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        match child.try_wait().expect("waiting for payrun") {
            Some(status) => break status,
            None if start.elapsed() > TIMEOUT => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().expect("reaping payrun");
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    Outcome {
        code: status.code(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        timed_out,
    }
}

/// `payrun validate <manifest> --format <format> --max-errors 1000`.
fn run_validate(manifest: &Path, format: &str) -> Outcome {
    let manifest = manifest.to_string_lossy();
    run_payrun(&[
        "validate",
        &manifest,
        "--format",
        format,
        "--max-errors",
        "1000",
    ])
}

/// The command a human runs to see a case for themselves.
fn reproduce(manifest: &Path, format: &str) -> String {
    let shown = manifest.strip_prefix(root()).unwrap_or(manifest);
    let json = if format == "json" {
        " --format json --max-errors 1000"
    } else {
        ""
    };
    format!(
        "cargo build && target/debug/payrun validate {}{json}",
        shown.display()
    )
}

// ---- the cases -------------------------------------------------------------------------------

struct Case {
    name: String,
    dir: PathBuf,
    expect: Value,
}

impl Case {
    fn known_bug(&self) -> Option<&str> {
        self.expect["known_bug"].as_str()
    }

    fn expected_exit(&self) -> i64 {
        self.expect["exit"]
            .as_i64()
            .unwrap_or_else(|| panic!("{}: expect.json has no numeric `exit`", self.name))
    }

    fn list(&self, key: &str) -> Vec<Value> {
        self.expect[key].as_array().cloned().unwrap_or_default()
    }

    fn strings(&self, key: &str) -> Vec<String> {
        self.list(key)
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect()
    }
}

fn all_cases() -> Vec<Case> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(corpus())
        .expect("tests/fixtures/bad exists")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|dir| {
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(dir.join("expect.json"))
                .unwrap_or_else(|e| panic!("{name}: cannot read expect.json: {e}"));
            let expect = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{name}: expect.json is not JSON: {e}"));
            Case { name, dir, expect }
        })
        .collect()
}

/// Where a case runs: its own folder, or a temp copy completed by its generator.
struct Prepared {
    manifest: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

fn prepare(case: &Case) -> Prepared {
    let Some(generator) = case.expect["generator"].as_str() else {
        return Prepared {
            manifest: case.dir.join("manifest.yaml"),
            _tmp: None,
        };
    };
    let tmp = tempfile::tempdir().expect("a temp dir");
    copy_folder(&case.dir, tmp.path());
    match generator {
        "append-10mib-first-name" => {
            append_row_with_huge_first_name(&tmp.path().join("employees.csv"))
        }
        "add-30000-unused-columns" => add_unused_columns(&tmp.path().join("employees.csv"), 30_000),
        "source-is-a-fifo" => make_fifo(&tmp.path().join("payouts.csv")),
        "manifest-is-a-fifo" => make_fifo(&tmp.path().join("manifest.yaml")),
        "manifest-is-dev-zero" => {
            let m = tmp.path().join("manifest.yaml");
            std::fs::remove_file(&m).expect("remove the case's manifest");
            std::os::unix::fs::symlink("/dev/zero", &m).expect("symlink the manifest to /dev/zero");
        }
        "pad-manifest-to-2mib" => {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(tmp.path().join("manifest.yaml"))
                .expect("the case's manifest");
            let line = format!("# {}\n", "padding ".repeat(15));
            f.write_all(line.repeat((2 << 20) / line.len() + 1).as_bytes())
                .expect("pad the manifest");
        }
        "source-symlink-leading-out" => std::os::unix::fs::symlink(
            root().join("batches/payouts-payonic/payouts.csv"),
            tmp.path().join("payouts.csv"),
        )
        .expect("symlink the source out of the folder"),
        "prepend-10mib-header-cell" => {
            let csv = tmp.path().join("payouts.csv");
            let text = std::fs::read_to_string(&csv).expect("the case's payouts.csv");
            let huge = "x".repeat(10 << 20);
            let out: String = text
                .lines()
                .enumerate()
                .map(|(i, l)| format!("{},{l}\n", if i == 0 { huge.as_str() } else { "" }))
                .collect();
            std::fs::write(&csv, out).expect("write the CSV with a huge header cell");
        }
        "huge-batch-id" => {
            let m = tmp.path().join("manifest.yaml");
            let text = std::fs::read_to_string(&m).expect("the case's manifest");
            let id = format!("batch: {}", "b".repeat(512 << 10));
            std::fs::write(&m, text.replacen("batch: bad-inputs", &id, 1))
                .expect("write the manifest with a huge batch id");
        }
        other => panic!("{}: unknown generator `{other}`", case.name),
    }
    Prepared {
        manifest: tmp.path().join("manifest.yaml"),
        _tmp: Some(tmp),
    }
}

fn copy_folder(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("case folder").flatten() {
        if entry.path().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy a case file");
        }
    }
}

/// Replaces `path` with a FIFO that nobody writes to: opening it for reading would block.
fn make_fifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("a path");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {}",
        path.display()
    );
}

/// Appends one row whose first_name is 10 MiB long (too big to commit).
fn append_row_with_huge_first_name(csv: &Path) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(csv)
        .expect("the case's employees.csv");
    let huge = "x".repeat(10 << 20);
    writeln!(
        f,
        "E09999,{huge},Huge,1 Long Road,London,GB,GB86BARC15102255229565,BARCGB22XXX,10.00,GBP"
    )
    .expect("append the huge row");
}

/// Adds `n` columns (`c0`.., value `x`) to every line of a small CSV: a very wide file.
fn add_unused_columns(csv: &Path, n: usize) {
    let text = std::fs::read_to_string(csv).expect("the case's employees.csv");
    let names: String = (0..n).map(|i| format!(",c{i}")).collect();
    let cells = ",x".repeat(n);
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        out.push_str(line);
        out.push_str(if i == 0 { &names } else { &cells });
        out.push('\n');
    }
    std::fs::write(csv, out).expect("write the wide CSV");
}

// ---- checks ----------------------------------------------------------------------------------

/// Everything that is wrong with how payrun handled `case`; empty when it behaved as expected.
fn problems_with(case: &Case, manifest: &Path) -> Vec<String> {
    let started = Instant::now();
    let run = run_validate(manifest, "json");
    let took = started.elapsed();
    let mut problems = run.basic_problems();
    if let Some(max) = case.expect["max_seconds"].as_f64()
        && took.as_secs_f64() > max
    {
        problems.push(format!("took {:.1} s, limit {max} s", took.as_secs_f64()));
    }
    let want = case.expected_exit();
    if run.code != Some(want as i32) {
        problems.push(format!(
            "exit code {:?}, expected {want}; stderr: {}",
            run.code,
            excerpt(&run.stderr, 300)
        ));
    }
    let report = match run.json() {
        Ok(v) => v,
        Err(e) => {
            problems.push(e);
            return problems;
        }
    };
    if want != 0 {
        problems.extend(nothing_is_sent(manifest, want));
    }
    problems.extend(report_is_consistent(&report, run.code));
    problems.extend(expected_fields_match(case, &report));
    problems.extend(expected_errors_are_present(case, &report));
    problems.extend(absent_rules_are_absent(case, &report));
    problems.extend(values_are_short(case, &report, &run));
    problems.extend(warnings_are_present(case, &report));
    problems.extend(secrets_stay_hidden(
        &case.strings("output_must_not_contain"),
        &run,
        "the JSON run",
    ));
    let human_secrets = case.strings("human_must_not_contain");
    if !human_secrets.is_empty() {
        let human = run_validate(manifest, "human");
        problems.extend(human.basic_problems());
        if human.code != Some(want as i32) {
            problems.push(format!(
                "human format: exit code {:?}, expected {want}",
                human.code
            ));
        }
        problems.extend(secrets_stay_hidden(
            &human_secrets,
            &human,
            "the human-format run",
        ));
    }
    problems.extend(plan_preview(case, manifest));
    problems
}

/// `plan_must_not_contain` / `plan_must_contain`: what `payrun plan` (human and JSON) may and
/// must show of the items, e.g. personal data masked in its preview.
fn plan_preview(case: &Case, manifest: &Path) -> Vec<String> {
    let (hidden, shown) = (
        case.strings("plan_must_not_contain"),
        case.strings("plan_must_contain"),
    );
    let mut problems = Vec::new();
    if hidden.is_empty() && shown.is_empty() {
        return problems;
    }
    let manifest = manifest.to_string_lossy();
    for format in ["human", "json"] {
        let run = run_payrun(&["plan", &manifest, "--format", format]);
        problems.extend(run.basic_problems());
        let what = format!("the {format} plan");
        problems.extend(secrets_stay_hidden(&hidden, &run, &what));
        for s in &shown {
            if !run.stdout.contains(s.as_str()) {
                problems.push(format!(
                    "{what} does not show {s:?}: {}",
                    excerpt(&run.stdout, 300)
                ));
            }
        }
    }
    problems
}

/// A bad input sends nothing: `run --sandbox` refuses it with the exit code `validate` gives,
/// and the embedded sandbox (whose state file records every request it was sent) saw no request.
fn nothing_is_sent(manifest: &Path, want: i64) -> Vec<String> {
    let mut problems = Vec::new();
    let state = tempfile::tempdir().expect("a temp dir");
    let dir = state.path().to_string_lossy().into_owned();
    let run = run_payrun(&[
        "run",
        &manifest.to_string_lossy(),
        "--sandbox",
        "--yes",
        "--state-dir",
        &dir,
        "--time-scale",
        "1000",
    ]);
    problems.extend(
        run.basic_problems()
            .into_iter()
            .map(|p| format!("run --sandbox {p}")),
    );
    if run.code != Some(want as i32) {
        problems.push(format!(
            "run --sandbox: exit code {:?}, expected {want} as validate; stderr: {}",
            run.code,
            excerpt(&run.stderr, 300)
        ));
    }
    for entry in std::fs::read_dir(state.path())
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "sandbox") {
            let counters = run_payrun(&["sandbox", "counters", "--state", &path.to_string_lossy()]);
            let sent: u64 = serde_json::from_str::<Value>(&counters.stdout)
                .ok()
                .and_then(|c| c["requests"].as_object().cloned())
                .map(|r| r.values().filter_map(Value::as_u64).sum())
                .unwrap_or(u64::MAX);
            if sent != 0 {
                problems.push(format!(
                    "run --sandbox sent requests for a bad input: {}",
                    excerpt(&counters.stdout, 300)
                ));
            }
        }
    }
    problems
}

/// A report's numbers agree with each other and with the exit code.
fn report_is_consistent(report: &Value, code: Option<i32>) -> Vec<String> {
    let mut problems = Vec::new();
    let ok = report["ok"].as_bool();
    if ok.is_none() {
        problems.push("the JSON has no boolean `ok`".into());
    }
    if ok == Some(true) && code != Some(0) || ok == Some(false) && code == Some(0) {
        problems.push(format!("`ok` is {ok:?} but the exit code is {code:?}"));
    }
    if report.get("stage").is_some() {
        if report["errors"].as_array().is_none_or(Vec::is_empty) {
            problems.push("a manifest/io failure with no diagnostics".into());
        }
        return problems;
    }
    let n = |k: &str| report[k].as_u64().unwrap_or(u64::MAX);
    if n("valid_items").checked_add(n("invalid_items")) != Some(n("rows")) {
        problems.push(format!(
            "valid_items {} + invalid_items {} != rows {}",
            n("valid_items"),
            n("invalid_items"),
            n("rows")
        ));
    }
    if ok == Some(n("error_count") != 0) {
        problems.push(format!(
            "ok is {ok:?} with error_count {}",
            n("error_count")
        ));
    }
    if ok == Some(true) && n("invalid_items") != 0 {
        problems.push(format!(
            "ok is true but invalid_items is {} (no diagnostic says why)",
            n("invalid_items")
        ));
    }
    let by_rule: u64 = report["errors_by_rule"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    if by_rule != n("error_count") {
        problems.push(format!(
            "errors_by_rule adds up to {by_rule}, error_count is {}",
            n("error_count")
        ));
    }
    problems
}

/// `stage`, `error_count`, `rows`, `valid_items`, `invalid_items` when the case gives them. A
/// manifest/io failure has no `error_count`: there it is the number of diagnostics.
fn expected_fields_match(case: &Case, report: &Value) -> Vec<String> {
    let keys = [
        "stage",
        "error_count",
        "rows",
        "valid_items",
        "invalid_items",
    ];
    keys.into_iter()
        .filter_map(|k| {
            let want = case.expect.get(k)?;
            let got = match (k, report.get(k)) {
                ("error_count", None) => report["errors"].as_array().map(|e| Value::from(e.len())),
                (_, v) => v.cloned(),
            };
            (got.as_ref() != Some(want)).then(|| {
                let shown = got.map_or("absent".into(), |v| v.to_string());
                format!("`{k}` is {shown}, expected {want}")
            })
        })
        .collect()
}

fn expected_errors_are_present(case: &Case, report: &Value) -> Vec<String> {
    let got = report["errors"].as_array().cloned().unwrap_or_default();
    case.list("errors")
        .iter()
        .filter(|want| !got.iter().any(|d| diagnostic_matches(d, want)))
        .map(|want| {
            format!(
                "missing {}\n        got: {}",
                want,
                got.iter().map(summary).collect::<Vec<_>>().join(", ")
            )
        })
        .collect()
}

/// True when diagnostic `d` has everything the expected error `want` lists.
fn diagnostic_matches(d: &Value, want: &Value) -> bool {
    let same = |k: &str| {
        want.get(k)
            .is_none_or(|w| d.get(k).unwrap_or(&Value::Null) == w)
    };
    let contains = |k: &str, in_key: &str| {
        want[k]
            .as_str()
            .is_none_or(|s| d[in_key].as_str().is_some_and(|t| t.contains(s)))
    };
    d["rule"] == want["rule"]
        && same("line")
        && same("column")
        && same("field")
        && same("value")
        && contains("message_contains", "message")
        && contains("hint_contains", "hint")
}

/// `rule@line:column` of a diagnostic, for failure messages.
fn summary(d: &Value) -> String {
    let mut s = d["rule"].as_str().unwrap_or("?").to_string();
    if let Some(l) = d["line"].as_u64() {
        s.push_str(&format!("@{l}"));
    }
    if let Some(c) = d["column"].as_u64() {
        s.push_str(&format!(":{c}"));
    }
    if let Some(f) = d["field"].as_str() {
        s.push_str(&format!(" ({f})"));
    }
    s
}

fn absent_rules_are_absent(case: &Case, report: &Value) -> Vec<String> {
    let got = report["errors"].as_array().cloned().unwrap_or_default();
    case.strings("absent_rules")
        .into_iter()
        .flat_map(|rule| {
            got.iter()
                .filter(|d| d["rule"] == rule.as_str())
                .map(|d| format!("unexpected {}: {}", summary(d), d["message"]))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Huge cells are shortened in every diagnostic, and never end up in stdout whole.
fn values_are_short(case: &Case, report: &Value, run: &Outcome) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(max) = case.expect["max_value_chars"].as_u64() {
        for d in report["errors"].as_array().into_iter().flatten() {
            for key in ["value", "message", "hint", "item"] {
                let n = d[key].as_str().map_or(0, |s| s.chars().count()) as u64;
                if n >= max {
                    problems.push(format!(
                        "{} has a {key} of {n} characters (limit {max})",
                        summary(d)
                    ));
                }
            }
        }
    }
    if let Some(max) = case.expect["max_stdout_bytes"].as_u64()
        && run.stdout.len() as u64 > max
    {
        problems.push(format!(
            "stdout is {} bytes (limit {max})",
            run.stdout.len()
        ));
    }
    problems
}

/// Each `warnings_contain` entry is part of one of the report's warnings.
fn warnings_are_present(case: &Case, report: &Value) -> Vec<String> {
    let got: Vec<&str> = report["warnings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    case.strings("warnings_contain")
        .into_iter()
        .filter(|w| !got.iter().any(|g| g.contains(w.as_str())))
        .map(|w| format!("no warning contains {w:?}; warnings: {got:?}"))
        .collect()
}

fn secrets_stay_hidden(secrets: &[String], run: &Outcome, which: &str) -> Vec<String> {
    secrets
        .iter()
        .filter(|s| run.stdout.contains(s.as_str()) || run.stderr.contains(s.as_str()))
        .map(|s| {
            let line = run
                .stderr
                .lines()
                .chain(run.stdout.lines())
                .find(|l| l.contains(s.as_str()))
                .unwrap_or("");
            format!("{which} prints `{s}`: {:?}", line.trim())
        })
        .collect()
}

#[test]
fn every_bad_input_gets_the_verdict_and_diagnostics_its_expect_json_lists() {
    let cases = all_cases();
    assert!(
        cases.len() >= 30,
        "only {} cases under tests/fixtures/bad",
        cases.len()
    );
    let mut failures = Vec::new();
    let mut known = Vec::new();
    let mut fixed = Vec::new();
    for case in &cases {
        let prepared = prepare(case);
        let problems = problems_with(case, &prepared.manifest);
        let how = if case.expect.get("generator").is_some() {
            format!(
                "(generated: {} after copying {} to a temp dir) {}",
                case.expect["generator"],
                case.dir.strip_prefix(root()).unwrap_or(&case.dir).display(),
                reproduce(&case.dir.join("manifest.yaml"), "json")
            )
        } else if !case.strings("human_must_not_contain").is_empty() {
            reproduce(&prepared.manifest, "human")
        } else {
            reproduce(&prepared.manifest, "json")
        };
        let report = |title: &str| {
            format!(
                "{title} {}\n    reproduce: {how}\n    {}",
                case.name,
                problems.join("\n    ")
            )
        };
        match (case.known_bug(), problems.is_empty()) {
            (None, true) => {}
            (None, false) => failures.push(report("FAIL")),
            (Some(bug), false) => {
                known.push(format!("{}\n    known bug: {bug}", report("KNOWN BUG")))
            }
            (Some(bug), true) => fixed.push(format!(
                "{}: passes now; remove its known_bug ({bug})",
                case.name
            )),
        }
    }
    println!(
        "{} cases, {} failing, {} known bugs, {} known bugs that pass now",
        cases.len(),
        failures.len(),
        known.len(),
        fixed.len()
    );
    for k in known.iter().chain(fixed.iter()) {
        println!("{k}\n");
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad-input cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

// ---- random garbage --------------------------------------------------------------------------

/// SplitMix64: a tiny deterministic generator, so every run sees the same garbage.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a [u8]]) -> &'a [u8] {
        items[self.below(items.len())]
    }
}

/// Pieces CSV parsers and payroll checks care about.
const TOKENS: &[&[u8]] = &[
    b",",
    b",",
    b",",
    b";",
    b"\"",
    b"\"",
    b"\"\"",
    b"\n",
    b"\n",
    b"\r\n",
    b"\r",
    b" ",
    b"\t",
    b"a",
    b"Z",
    b"0",
    b"7",
    b"12.5",
    b"1e3",
    b"-",
    b"+",
    b"=",
    b"@",
    b".",
    b"E01001",
    b"EUR",
    b"GB",
    b"\xc3\xa9",
    b"\xc3",
    b"\xa9",
    b"\xff",
    b"\xfc",
    b"\xef\xbb\xbf",
    b"\0",
    b"${item.x}",
    b"x\"y",
];

/// The header for a manifest that maps `id: employee_id`; with `header_names_are_fields` the id
/// column is called `id` (the manifest without items.columns).
fn header(header_names_are_fields: bool) -> &'static [u8] {
    if header_names_are_fields {
        b"id,first_name,last_name,street,city,country,iban,bic,net_pay,currency\n"
    } else {
        b"employee_id,first_name,last_name,street,city,country,iban,bic,net_pay,currency\n"
    }
}
const GOOD_ROW: [&str; 10] = [
    "E01001",
    "Paul",
    "Richter",
    "72 Baker Street",
    "London",
    "GB",
    "GB86BARC15102255229565",
    "BARCGB22XXX",
    "3628.61",
    "GBP",
];

/// Cell values that payroll checks care about, to drop into otherwise good rows.
const CELLS: &[&[u8]] = &[
    b"",
    b" ",
    b"1,000.50",
    b"\"1,000.50\"",
    b"1e3",
    b"-5",
    b"+5",
    b"0.001 USD",
    b"12.345",
    b"10,5",
    b"1500.5",
    b"0",
    b".5",
    b"999999999999999999999999999",
    b"JPY",
    b"KWD",
    b"usd",
    b"EUR0",
    b"XAU",
    b"840",
    b"=1+1",
    b"@SUM(A1)",
    b"+cmd|' /C calc'!A0",
    b"\t1",
    b"E01001",
    b"M\xfcller",
    b"Jo\xc3",
    b"\xa9x",
    b"\xef\xbb\xbf",
    b"\"a\nb\"",
    b"\"a,b\"",
    b"\"x",
    b"31/01/1980",
    b"xx",
    b"g\xc3\xa9",
    b"\0",
];

/// One garbage CSV. Kinds: 0 raw random bytes; 1 random CSV-ish tokens; 2 a valid header followed
/// by random tokens; 3 a valid file whose rows (not the header) get byte-level mutations; 4 good
/// rows with random cells replaced by values from `CELLS`. Kinds 2-4 end with a row with no id,
/// so even a lucky mutation leaves the batch invalid.
fn garbage(seed: u64, header_names_are_fields: bool) -> (usize, Vec<u8>) {
    let mut rng = Rng(seed.wrapping_mul(0x5851_F42D_4C95_7F2D) ^ 0xC0FFEE);
    let kind = (seed % 5) as usize;
    let mut out = Vec::new();
    if kind >= 2 {
        out.extend_from_slice(header(header_names_are_fields));
    }
    let good_row = GOOD_ROW.join(",") + "\n";
    match kind {
        0 => {
            let n = rng.below(3000);
            out.extend((0..n).map(|_| rng.next() as u8));
        }
        1 | 2 => {
            for _ in 0..rng.below(800) {
                out.extend_from_slice(rng.pick(TOKENS));
            }
        }
        3 => {
            let body = out.len();
            for _ in 0..8 {
                out.extend_from_slice(good_row.as_bytes());
            }
            for _ in 0..1 + rng.below(12) {
                let at = body + rng.below(out.len() - body);
                match rng.below(3) {
                    0 => {
                        let t = rng.pick(TOKENS).to_vec();
                        out.splice(at..at, t);
                    }
                    1 => {
                        out.remove(at);
                    }
                    _ => out[at] = rng.pick(TOKENS)[0],
                }
            }
        }
        _ => {
            for _ in 0..12 {
                for (i, cell) in GOOD_ROW.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    if rng.below(5) == 0 {
                        out.extend_from_slice(rng.pick(CELLS));
                    } else {
                        out.extend_from_slice(cell.as_bytes());
                    }
                }
                out.push(b'\n');
            }
        }
    }
    if kind >= 2 {
        out.extend_from_slice(b"\n,,,,,,,,,\n");
    }
    (kind, out)
}

/// Crashes already documented by a case of the corpus (marked `known_bug` there): a garbage input
/// that hits one is printed, not failed, so the test keeps guarding against new crashes.
const KNOWN_CRASHES: &[(&str, &str)] = &[(
    "is not a char boundary",
    "tests/fixtures/bad/csv-utf8-char-split-across-cells",
)];

#[test]
fn no_input_makes_validate_panic() {
    // Two manifests: one maps the columns by name, one takes the header names as item fields.
    let mapped = corpus().join("csv-header-only/manifest.yaml");
    let unmapped = corpus().join("csv-wrong-delimiter-unmapped/manifest.yaml");
    let keep = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("bad_inputs_garbage");
    let _ = std::fs::remove_dir_all(&keep);
    let mut failures = Vec::new();
    let mut known = Vec::new();
    for seed in 0..40u64 {
        let header_names_are_fields = seed % 8 >= 4;
        let (kind, bytes) = garbage(seed, header_names_are_fields);
        let dir = keep.join(format!("seed-{seed:02}"));
        std::fs::create_dir_all(&dir).unwrap();
        let manifest = if header_names_are_fields {
            &unmapped
        } else {
            &mapped
        };
        std::fs::copy(manifest, dir.join("manifest.yaml")).unwrap();
        std::fs::write(dir.join("employees.csv"), &bytes).unwrap();
        let run = run_validate(&dir.join("manifest.yaml"), "json");
        let mut problems = run.basic_problems();
        if !matches!(run.code, Some(1) | Some(2)) {
            problems.push(format!(
                "exit code {:?}, expected 1 or 2; stderr: {}",
                run.code,
                excerpt(&run.stderr, 300)
            ));
        }
        if let Err(e) = run.json() {
            problems.push(e);
        }
        let finding = format!(
            "seed {seed} (kind {kind}, {} bytes): {}\n    reproduce: target/debug/payrun validate {} --format json",
            bytes.len(),
            problems.join("; "),
            dir.join("manifest.yaml").display()
        );
        let known_crash = KNOWN_CRASHES
            .iter()
            .find(|(signature, _)| run.panicked() && run.stderr.contains(signature));
        match known_crash {
            _ if problems.is_empty() => {
                let _ = std::fs::remove_dir_all(&dir);
            }
            Some((_, case)) => known.push(format!("{finding}\n    known bug, see {case}")),
            None => failures.push(finding),
        }
    }
    for k in &known {
        println!("KNOWN BUG {k}");
    }
    assert!(
        failures.is_empty(),
        "validate misbehaved on {} garbage inputs (kept under {}):\n{}",
        failures.len(),
        keep.display(),
        failures.join("\n")
    );
}
