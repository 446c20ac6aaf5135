//! Batches paid over HTTPS: a `payrun sandbox --tls` process (self-signed certificate for
//! 127.0.0.1) as the provider, trusted through `--ca-file` or the manifest's `tls.ca_file`;
//! without it the run stops before sending anything and says the certificate is not trusted.
//! Also the manifest's refusal of plain http to another machine, and unusable CA files.

mod support;

use std::path::Path;
use std::process::Command;
use support::run::*;

/// The sandbox's certificate, and that it serves https on 127.0.0.1.
fn ca_of(sandbox: &Sandbox) -> String {
    assert!(
        sandbox.base.starts_with("https://127.0.0.1:"),
        "{}",
        sandbox.base
    );
    let ca = sandbox
        .ca_file
        .as_ref()
        .expect("the sandbox names its certificate");
    assert!(ca.is_file(), "{}", ca.display());
    ca.to_string_lossy().into_owned()
}

#[test]
fn the_payroll_example_is_paid_over_https_trusting_the_sandbox_certificate_by_ca_file() {
    let sandbox = sandbox().tls().start();
    let ca = ca_of(&sandbox);
    let batch = Batch::payroll(&sandbox);

    batch.run().arg("--ca-file").arg(&ca).succeeds();

    let report = batch.report();
    assert_eq!(report.rows.len(), 50);
    report.all_paid().agrees_with(&sandbox.ledger());
    let ledger = sandbox.ledger();
    assert_eq!(ledger.len(), 50);
    assert!(ledger.paid_twice().is_empty(), "{:?}", ledger.paid_twice());
    // The getBalance preflight, then 5 packs of 10, after one probe of the base URL.
    assert_eq!(sandbox.requests("POST /paysend/processing 200"), 6);
}

#[test]
fn an_untrusted_certificate_stops_the_run_before_anything_is_sent() {
    let sandbox = sandbox().tls().start();
    let ca = ca_of(&sandbox);
    let batch = Batch::payroll(&sandbox);

    let run = batch.run().exits_with(2);

    let said = run.log();
    assert!(
        said.contains(
            "error[run.transport]: certificate not trusted for host 127.0.0.1 (UnknownIssuer)"
        ),
        "{said}"
    );
    assert!(said.contains("--ca-file or tls.ca_file"), "{said}");
    assert!(said.contains("nothing was sent"), "{said}");
    assert!(sandbox.ledger().is_empty());
    let c = sandbox.counters();
    assert!(
        c["requests"]
            .as_object()
            .is_none_or(|r| r.keys().all(|k| !k.starts_with("POST /paysend"))),
        "{c}"
    );
    let status = batch.status();
    let n = |state: &str| status["states"][state].as_u64().unwrap_or(0);
    assert_eq!(n("failed"), 0, "{status}");
    assert_eq!(n("needs_review"), 0, "{status}");
    assert_eq!(n("paid"), 0, "{status}");

    // The same CA named in the manifest (relative to its folder): the batch is paid whole.
    std::fs::copy(&ca, batch.dir.path().join("provider-ca.pem")).unwrap();
    let batch = batch.edit(
        "provider: paysend",
        "provider: paysend\ntls:\n  ca_file: provider-ca.pem",
    );
    batch.run().succeeds();
    batch.report().all_paid().agrees_with(&sandbox.ledger());
    assert_eq!(sandbox.ledger().len(), 50);
}

#[test]
fn an_unreadable_ca_file_is_refused_with_exit_2_and_nothing_sent() {
    let sandbox = sandbox().tls().start();
    let _ = ca_of(&sandbox);
    let batch = Batch::payroll(&sandbox);

    let run = batch
        .run()
        .arg("--ca-file")
        .arg("no-such-ca.pem")
        .exits_with(2);
    let said = run.log();
    assert!(
        said.contains("error[run.tls]: cannot read --ca-file no-such-ca.pem"),
        "{said}"
    );

    std::fs::write(batch.dir.path().join("not-a-ca.pem"), "hello\n").unwrap();
    let batch = batch.edit(
        "provider: paysend",
        "provider: paysend\ntls:\n  ca_file: not-a-ca.pem",
    );
    let run = batch.run().exits_with(2);
    let said = run.log();
    assert!(said.contains("not-a-ca.pem holds no certificate"), "{said}");
    assert!(sandbox.ledger().is_empty());
    assert_eq!(sandbox.requests("POST /paysend/processing 200"), 0);
}

/// The payroll example in a folder of its own, its manifest edited by `edit`.
fn payroll_with(edit: impl Fn(String) -> String) -> tempfile::TempDir {
    let src = root().join("batches/payroll-paysend");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("employees.csv"), dir.path().join("employees.csv")).unwrap();
    let manifest = std::fs::read_to_string(src.join("manifest.yaml")).unwrap();
    std::fs::write(dir.path().join("manifest.yaml"), edit(manifest)).unwrap();
    dir
}

fn validate(dir: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_payrun"))
        .current_dir(dir)
        .args(["validate", "manifest.yaml"])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn environment(manifest: String, url: &str) -> String {
    manifest
        .lines()
        .map(|l| {
            if l.starts_with("environment:") {
                format!("environment: {url}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect()
}

#[test]
fn plain_http_to_another_machine_is_refused_by_validate_unless_allowed() {
    let dir = payroll_with(|m| environment(m, "http://10.0.0.5/paysend"));
    let (code, said) = validate(dir.path());
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("error[manifest.insecure-http]"), "{said}");
    let text = std::fs::read_to_string(dir.path().join("manifest.yaml")).unwrap();
    let line = 1 + text
        .lines()
        .position(|l| l.starts_with("environment:"))
        .unwrap();
    assert!(
        said.contains(&format!("--> manifest.yaml:{line}:")),
        "{said}"
    );
    assert!(said.contains("allow_insecure_http: true"), "{said}");

    let dir = payroll_with(|m| {
        environment(m, "http://10.0.0.5/paysend") + "tls:\n  allow_insecure_http: true\n"
    });
    let (code, said) = validate(dir.path());
    assert_eq!(code, Some(0), "{said}");

    // This machine is never "another machine".
    for url in [
        "http://127.0.0.1:8900/paysend",
        "http://localhost:8900/paysend",
        "http://[::1]:8900/paysend",
    ] {
        let dir = payroll_with(|m| environment(m, url));
        let (code, said) = validate(dir.path());
        assert_eq!(code, Some(0), "{url}: {said}");
    }
}

#[test]
fn a_tls_block_with_a_certificate_and_no_key_or_an_unknown_key_is_refused() {
    let dir = payroll_with(|m| m + "tls:\n  client_cert: qwac.pem\n");
    let (code, said) = validate(dir.path());
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("error[manifest.tls]"), "{said}");
    assert!(said.contains("needs `tls.client_key`"), "{said}");

    let dir = payroll_with(|m| m + "tls:\n  ca_bundle: ca.pem\n");
    let (code, said) = validate(dir.path());
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("ca_bundle"), "{said}");
}

#[test]
fn ssl_cert_file_is_honoured_as_the_platform_roots() {
    let sandbox = sandbox().tls().start();
    let ca = ca_of(&sandbox);
    let batch = Batch::payroll(&sandbox);

    batch.run().env("SSL_CERT_FILE", &ca).succeeds();

    batch.report().all_paid().agrees_with(&sandbox.ledger());
    assert_eq!(sandbox.ledger().len(), 50);
}
