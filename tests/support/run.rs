//! A harness for end-to-end runs: a `payrun sandbox` process as the provider, `payrun run` /
//! `resume` / `report` / `status` as processes against it, and the sandbox's ledger as the judge.
//!
//! ```ignore
//! let sandbox = sandbox().fault("drop_after_commit_rate=0.05").start();
//! let batch = Batch::payroll(&sandbox).packs_of(2);
//! batch.run().env("PAYRUN_CRASH_AT", "after-send:3").dies_by_sigkill();
//! batch.resume().succeeds();
//! batch.report().agrees_with(&sandbox.ledger());
//! ```
//!
//! Every child process is killed when its handle drops and every wait has a limit, so a test
//! that goes wrong fails instead of hanging or leaving processes behind.

#![allow(dead_code)]

use rust_decimal::Decimal;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Provider time runs this much faster than real time, in the sandbox and in the runner alike:
/// Paysend's 3-minute propagation delay takes 180 ms.
pub const TIME_SCALE: f64 = 1000.0;

/// The runner's propagation wait in real time (`timings()` in src/execute/command.rs).
pub const PROPAGATION: Duration = Duration::from_millis(180);

/// How long any one payrun process may take before the test gives up on it.
pub const LIMIT: Duration = Duration::from_secs(30);

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_payrun")
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A child process that is killed (SIGKILL) and reaped when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port (for payrun's webhook listener).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// ---------------------------------------------------------------------------------------------
// The sandbox process

/// What the sandbox process is started with.
pub struct SandboxSpec {
    seed: u64,
    faults: Vec<String>,
    paysend: Vec<String>,
    payonic: Vec<String>,
    tls: bool,
}

/// A sandbox to start: seed 5, provider time 1000× faster, no faults.
pub fn sandbox() -> SandboxSpec {
    SandboxSpec {
        seed: 5,
        faults: Vec::new(),
        paysend: Vec::new(),
        payonic: Vec::new(),
        tls: false,
    }
}

impl SandboxSpec {
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// A `--fault NAME=VALUE` (see batches/sandbox.yaml).
    pub fn fault(mut self, assignment: &str) -> Self {
        self.faults.push(assignment.to_string());
        self
    }

    /// One line of the config file's `paysend:` section, e.g. `level_time: 20m`.
    pub fn paysend(mut self, line: &str) -> Self {
        self.paysend.push(line.to_string());
        self
    }

    /// A line of the sandbox config's `payonic:` section, e.g. `notify_delay_max: 1m`.
    pub fn payonic(mut self, line: &str) -> Self {
        self.payonic.push(line.to_string());
        self
    }

    /// Expanded webhooks to payrun's listener on `port` (signed with the outbound key).
    pub fn webhooks_to(self, port: u16) -> Self {
        self.paysend(&format!(
            "webhook_url: http://127.0.0.1:{port}/paysend/webhook"
        ))
    }

    /// Serves HTTPS (`--tls`), its certificate kept with its config; `Sandbox::ca_file` names it.
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    pub fn start(self) -> Sandbox {
        let config_dir = tempfile::tempdir().unwrap();
        let config = config_dir.path().join("sandbox.yaml");
        let mut text = String::from("paysend:\n");
        for l in &self.paysend {
            text.push_str(&format!("  {l}\n"));
        }
        text.push_str("payonic:\n");
        for l in &self.payonic {
            text.push_str(&format!("  {l}\n"));
        }
        std::fs::write(&config, text).unwrap();
        let mut cmd = Command::new(bin());
        cmd.args(["sandbox", "--listen", "127.0.0.1:0", "--seed"])
            .arg(self.seed.to_string())
            .arg("--time-scale")
            .arg(TIME_SCALE.to_string())
            .arg("--config")
            .arg(&config);
        for f in &self.faults {
            cmd.args(["--fault", f]);
        }
        if self.tls {
            cmd.arg("--tls").arg("--tls-dir").arg(config_dir.path());
        }
        let mut child = Killed(
            cmd.stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("the sandbox starts"),
        );
        let out = BufReader::new(child.0.stdout.take().unwrap());
        let mut said: HashMap<String, String> = HashMap::new();
        for line in out.lines().map_while(Result::ok) {
            if let Some((k, v)) = line.trim().split_once(':')
                && !said.contains_key(k)
            {
                said.insert(k.to_string(), v.trim().to_string());
            }
            if line.starts_with("ledger:") {
                break;
            }
        }
        let base = said
            .get("paysend")
            .cloned()
            .expect("the sandbox prints its URL");
        Sandbox {
            root: base.trim_end_matches("/paysend").to_string(),
            base,
            partner: said["partner_id"].clone(),
            inbound_key: said["inbound_key"].clone(),
            outbound_key: said["outbound_key"].clone(),
            payonic_key: said.get("api_key").cloned().unwrap_or_default(),
            ca_file: said.get("certificate").map(PathBuf::from),
            _child: child,
            _config: config_dir,
        }
    }
}

pub struct Sandbox {
    /// `http://127.0.0.1:PORT`
    pub root: String,
    /// `http://127.0.0.1:PORT/paysend`
    pub base: String,
    pub partner: String,
    pub inbound_key: String,
    pub outbound_key: String,
    /// The Payonic emulation's API key (its base is `<root>/payonic`).
    pub payonic_key: String,
    /// The certificate a `--tls` sandbox serves (to trust with `--ca-file`).
    pub ca_file: Option<PathBuf>,
    _child: Killed,
    _config: tempfile::TempDir,
}

impl Sandbox {
    pub fn ledger(&self) -> Ledger {
        let v = get_json_trusting(
            &format!("{}/__sandbox/ledger", self.root),
            self.ca_file.as_deref(),
        );
        Ledger(v.as_array().cloned().expect("the ledger is a list"))
    }

    pub fn counters(&self) -> Value {
        get_json_trusting(
            &format!("{}/__sandbox/counters", self.root),
            self.ca_file.as_deref(),
        )
    }

    /// Requests the sandbox counted as "METHOD path status" (e.g. `POST /paysend/processing 404`).
    pub fn requests(&self, what: &str) -> u64 {
        self.counters()["requests"][what].as_u64().unwrap_or(0)
    }
}

pub fn get_json(url: &str) -> Value {
    get_json_trusting(url, None)
}

/// `get_json`, trusting the certificate in `ca_file` too (a `--tls` sandbox).
pub fn get_json_trusting(url: &str, ca_file: Option<&Path>) -> Value {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut http = reqwest::Client::builder().timeout(Duration::from_secs(10));
        if let Some(ca) = ca_file {
            let pem = std::fs::read(ca).unwrap();
            http = http.add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
        }
        let http = http.build().unwrap();
        http.get(url)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"))
    })
}

/// The sandbox's record of every money movement.
pub struct Ledger(pub Vec<Value>);

impl Ledger {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The movements made with this idempotency key (Paysend invoiceId).
    pub fn for_key(&self, key: &str) -> Vec<&Value> {
        self.0.iter().filter(|e| e["key"] == key).collect()
    }

    /// Keys paid more than once, with how often.
    pub fn paid_twice(&self) -> Vec<(String, usize)> {
        let mut n: BTreeMap<String, usize> = BTreeMap::new();
        for e in &self.0 {
            *n.entry(e["key"].as_str().unwrap_or("").to_string())
                .or_default() += 1;
        }
        n.into_iter().filter(|(_, c)| *c > 1).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Batches and payrun processes

/// A batch in a temporary folder of its own (manifest, items, state folder, logs).
pub struct Batch {
    pub dir: tempfile::TempDir,
    pub id: String,
    env: Vec<(String, String)>,
}

/// Fast retries for tests: backoff is real time, not provider time.
const FAST_RETRY: &str = "retry:
  initial_interval: 20ms
  factor: 2
  max_interval: 200ms
  max_attempts: 30
  per_class:
    rate_limited:
      initial_interval: 20ms
";

impl Batch {
    /// A batch from a manifest text and data files, pointed at the sandbox.
    pub fn new(sandbox: &Sandbox, manifest: &str, files: &[(&str, &str)]) -> Batch {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let manifest = manifest.replace(
            "environment: sandbox",
            &format!("environment: {}", sandbox.base),
        );
        let id = manifest
            .lines()
            .find_map(|l| l.strip_prefix("batch: "))
            .expect("the manifest names its batch")
            .trim()
            .to_string();
        std::fs::write(dir.path().join("manifest.yaml"), manifest).unwrap();
        Batch {
            dir,
            id,
            env: vec![
                ("PAYSEND_PARTNER_ID".into(), sandbox.partner.clone()),
                ("PAYSEND_INBOUND_KEY".into(), sandbox.inbound_key.clone()),
                ("PAYSEND_OUTBOUND_KEY".into(), sandbox.outbound_key.clone()),
            ],
        }
    }

    /// batches/payroll-paysend as it is (50 employees, getBalance preflight), pointed at the
    /// sandbox, with retries fast enough for a test.
    pub fn payroll(sandbox: &Sandbox) -> Batch {
        let src = root().join("batches/payroll-paysend");
        let csv = std::fs::read_to_string(src.join("employees.csv")).unwrap();
        let manifest = std::fs::read_to_string(src.join("manifest.yaml")).unwrap();
        Batch::new(sandbox, &manifest, &[("employees.csv", &csv)]).fast_retries()
    }

    /// The payroll example with `n` employees: the example's rows over and over, each with an
    /// id of its own.
    pub fn payroll_of(sandbox: &Sandbox, n: usize) -> Batch {
        let src = root().join("batches/payroll-paysend");
        let mut r = csv::Reader::from_path(src.join("employees.csv")).unwrap();
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(r.headers().unwrap()).unwrap();
        let rows: Vec<csv::StringRecord> = r.records().map(Result::unwrap).collect();
        for i in 0..n {
            let row = &rows[i % rows.len()];
            let id = format!("X{:05}", i + 1);
            w.write_record(std::iter::once(id.as_str()).chain(row.iter().skip(1)))
                .unwrap();
        }
        let csv = String::from_utf8(w.into_inner().unwrap()).unwrap();
        let manifest = std::fs::read_to_string(src.join("manifest.yaml")).unwrap();
        // The rows repeat, so their accounts and amounts do: allowed for this test batch.
        let manifest =
            manifest.replacen("items:\n", "items:\n  allow_repeated_recipients: true\n", 1);
        Batch::new(sandbox, &manifest, &[("employees.csv", &csv)]).fast_retries()
    }

    /// batches/contractors-cards (fx.rateGet → pay.toCard → on fail task.statusGet) with its
    /// webhook listener on `port` of this machine.
    pub fn contractors(sandbox: &Sandbox, port: u16) -> Batch {
        Batch::contractors_with(sandbox, port, None)
    }

    /// The contractors example with other rows (the example's header).
    pub fn contractors_with(sandbox: &Sandbox, port: u16, rows: Option<&str>) -> Batch {
        let src = root().join("batches/contractors-cards");
        let mut csv = std::fs::read_to_string(src.join("contractors.csv")).unwrap();
        if let Some(rows) = rows {
            let header = csv.lines().next().unwrap().to_string();
            csv = format!("{header}\n{rows}");
        }
        let manifest = std::fs::read_to_string(src.join("manifest.yaml")).unwrap();
        Batch::new(sandbox, &manifest, &[("contractors.csv", &csv)])
            .edit(
                "listen: 127.0.0.1:8787",
                &format!("listen: 127.0.0.1:{port}"),
            )
            .edit(
                "public_url: https://payouts.acme.example.com/payrun/paysend",
                &format!("public_url: http://127.0.0.1:{port}"),
            )
            .fast_retries()
    }

    /// Payroll-style batches: outcomes also by webhook, to payrun's listener on `port`.
    pub fn webhooks_on(self, port: u16) -> Self {
        self.edit(
            "notifications:\n  mode: polling",
            &format!(
                "notifications:\n  listen: 127.0.0.1:{port}\n  public_url: http://127.0.0.1:{port}"
            ),
        )
    }

    pub fn manifest(&self) -> PathBuf {
        self.dir.path().join("manifest.yaml")
    }

    /// Replaces text in the manifest (which must contain it).
    pub fn edit(self, from: &str, to: &str) -> Self {
        let text = std::fs::read_to_string(self.manifest()).unwrap();
        assert!(text.contains(from), "the manifest has no {from:?}");
        std::fs::write(self.manifest(), text.replacen(from, to, 1)).unwrap();
        self
    }

    /// Sends to another base URL (e.g. a proxy in front of the sandbox).
    pub fn environment(self, base_url: &str) -> Self {
        let text = std::fs::read_to_string(self.manifest()).unwrap();
        let text: String = text
            .lines()
            .map(|l| {
                if l.starts_with("environment: ") {
                    format!("environment: {base_url}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(self.manifest(), text).unwrap();
        self
    }

    /// Another batch id (so several batches can share one sandbox).
    pub fn named(self, id: &str) -> Self {
        let text = std::fs::read_to_string(self.manifest()).unwrap();
        let old = format!("batch: {}", self.id);
        assert!(text.contains(&old));
        std::fs::write(
            self.manifest(),
            text.replacen(&old, &format!("batch: {id}"), 1),
        )
        .unwrap();
        Batch {
            id: id.to_string(),
            ..self
        }
    }

    /// Replaces the manifest's whole `limits:` block.
    pub fn limits(self, rps: u32, burst: u32, concurrency: u32, pack: u32) -> Self {
        self.replace_block(
            "limits:",
            &format!(
                "limits:\n  requests_per_second: {rps}\n  burst: {burst}\n  concurrency: {concurrency}\n  tasks_per_request: {pack}\n"
            ),
        )
    }

    /// Item trees per request, at a rate that lets a test run quickly.
    pub fn packs_of(self, pack: u32) -> Self {
        self.limits(100, 10, 4, pack)
    }

    pub fn fast_retries(self) -> Self {
        self.replace_block("retry:", FAST_RETRY)
    }

    /// Replaces a top-level block (its key line and the indented lines under it), or appends it.
    fn replace_block(self, key: &str, block: &str) -> Self {
        let text = std::fs::read_to_string(self.manifest()).unwrap();
        let mut out = String::new();
        let mut skipping = false;
        let mut replaced = false;
        for line in text.lines() {
            if line.starts_with(key) {
                skipping = true;
                replaced = true;
                out.push_str(block);
                continue;
            }
            if skipping && (line.starts_with(' ') || line.trim().is_empty()) {
                continue;
            }
            skipping = false;
            out.push_str(line);
            out.push('\n');
        }
        if !replaced {
            out.push_str(block);
        }
        std::fs::write(self.manifest(), out).unwrap();
        self
    }

    fn payrun(&self, args: &[&str]) -> Invocation {
        let mut cmd = Command::new(bin());
        cmd.current_dir(self.dir.path()).args(args);
        for (k, _) in std::env::vars() {
            if k.starts_with("PAYSEND_") || k.starts_with("PAYRUN_") {
                cmd.env_remove(k);
            }
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let n = std::fs::read_dir(self.dir.path()).map_or(0, |d| d.count());
        let log = self
            .dir
            .path()
            .join(format!("{}-{n}.log", args[0].replace(' ', "_")));
        Invocation { cmd, log }
    }

    /// `payrun run manifest.yaml --yes`, provider time 1000× faster.
    pub fn run(&self) -> Invocation {
        self.payrun(&[
            "run",
            "manifest.yaml",
            "--yes",
            "--state-dir",
            "state",
            "--time-scale",
            &TIME_SCALE.to_string(),
        ])
    }

    /// `payrun run manifest.yaml` without `--yes`: it asks (and, without a terminal, refuses).
    pub fn run_asking(&self) -> Invocation {
        self.payrun(&[
            "run",
            "manifest.yaml",
            "--state-dir",
            "state",
            "--time-scale",
            &TIME_SCALE.to_string(),
        ])
    }

    /// `payrun run manifest.yaml --yes` in real provider time (no `--time-scale`).
    pub fn run_in_real_time(&self) -> Invocation {
        self.payrun(&["run", "manifest.yaml", "--yes", "--state-dir", "state"])
    }

    /// `payrun resume <batch>`, provider time 1000× faster.
    pub fn resume(&self) -> Invocation {
        self.payrun(&[
            "resume",
            &self.id,
            "--state-dir",
            "state",
            "--time-scale",
            &TIME_SCALE.to_string(),
        ])
    }

    /// `payrun status <batch> --format json` (works while a runner holds the batch).
    pub fn status(&self) -> Value {
        self.try_status().expect("payrun status answers")
    }

    /// The status, or `None` while there is none yet (a runner that has just started).
    pub fn try_status(&self) -> Option<Value> {
        let out = self
            .payrun(&[
                "status",
                &self.id,
                "--state-dir",
                "state",
                "--format",
                "json",
            ])
            .output();
        if out.status.code() != Some(0) {
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).expect("status prints JSON"))
    }

    /// `payrun report <batch> -o report.csv`, read back.
    pub fn report(&self) -> Report {
        let path = self.dir.path().join("report.csv");
        let _ = std::fs::remove_file(&path);
        self.payrun(&[
            "report",
            &self.id,
            "--state-dir",
            "state",
            "-o",
            "report.csv",
        ])
        .succeeds();
        Report::read(&path)
    }

    /// Forgets the batch's state (as if the state folder were lost).
    pub fn lose_state(&self) {
        std::fs::remove_dir_all(self.dir.path().join("state")).unwrap();
    }
}

/// Bank payouts whose `transferAmount` and `transferCurrency` come from each item, all to one
/// account (repeats allowed).
pub fn bank_payouts_manifest(batch: &str, items: &[(String, String, &str)]) -> String {
    let mut list = String::new();
    for (id, amount, currency) in items {
        list.push_str(&format!(
            "    - {{id: {id}, amount: \"{amount}\", currency: {currency}}}\n"
        ));
    }
    format!(
        "batch: {batch}
provider: paysend
environment: sandbox
credentials:
  partner_id: PAYSEND_PARTNER_ID
  inbound_key: PAYSEND_INBOUND_KEY
  outbound_key: PAYSEND_OUTBOUND_KEY
items:
  allow_repeated_recipients: true
  inline:
{list}defaults:
  company: {{type: LegalEntity, name: ACME, address: {{addressLine1: Main 1, city: Berlin, country: DE}}}}
flow:
  - op: pay.toAccount
    payload:
      transferAmount: ${{item.amount}}
      transferCurrency: ${{item.currency}}
      purposeOfPayment: Salary
      from: {{sender: \"${{item.company}}\"}}
      to:
        destinationTransactionInstrument: {{identifierType: IBAN, accountIdentifier: DE89370400440532013000, bic: COBADEFFXXX, country: DE}}
        recipient: {{type: Individual, firstName: Anna, lastName: Muller, address: {{addressLine1: Main 2, city: Berlin, country: DE}}}}
limits: {{requests_per_second: 100, burst: 20, tasks_per_request: 5}}
"
    )
}

/// A payrun command about to run; its stderr goes to a log file quoted when something fails.
pub struct Invocation {
    cmd: Command,
    log: PathBuf,
}

impl Invocation {
    pub fn arg(mut self, a: &str) -> Self {
        self.cmd.arg(a);
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.cmd.env(k, v);
        self
    }

    pub fn spawn(mut self) -> Running {
        let log = std::fs::File::create(&self.log).unwrap();
        let child = self
            .cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("payrun starts");
        Running {
            child: Killed(child),
            log: self.log,
        }
    }

    /// Starts with stdout and stderr going where the test says (a closed pipe, a full one).
    pub fn spawn_into(mut self, out: Stdio, err: Stdio) -> Running {
        let child = self
            .cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("payrun starts");
        Running {
            child: Killed(child),
            log: self.log,
        }
    }

    fn output(mut self) -> std::process::Output {
        let mut child = Killed(
            self.cmd
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("payrun starts"),
        );
        // Read both pipes on threads so a chatty child cannot block on a full pipe.
        let mut out = child.0.stdout.take().unwrap();
        let mut err = child.0.stderr.take().unwrap();
        let t_out = std::thread::spawn(move || {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut out, &mut b).ok();
            b
        });
        let t_err = std::thread::spawn(move || {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut err, &mut b).ok();
            b
        });
        let status = wait_for(&mut child.0, LIMIT).unwrap_or_else(|| {
            panic!(
                "payrun {:?} did not finish in {LIMIT:?}",
                self.cmd.get_args()
            )
        });
        std::process::Output {
            status,
            stdout: t_out.join().unwrap(),
            stderr: t_err.join().unwrap(),
        }
    }

    /// Runs to the end; the exit code must be `code`.
    pub fn exits_with(self, code: i32) -> Running {
        let mut r = self.spawn();
        let status = r.wait();
        assert_eq!(
            status.code(),
            Some(code),
            "payrun exited with {status}\n{}",
            r.log_tail()
        );
        r
    }

    pub fn succeeds(self) -> Running {
        self.exits_with(0)
    }

    /// Runs until the process is killed by SIGKILL (a crash point).
    pub fn dies_by_sigkill(self) -> Running {
        use std::os::unix::process::ExitStatusExt;
        let mut r = self.spawn();
        let status = r.wait();
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "payrun was to die by SIGKILL, but {status}\n{}",
            r.log_tail()
        );
        r
    }
}

fn wait_for(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A payrun process in progress.
pub struct Running {
    child: Killed,
    log: PathBuf,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Waits for the end (at most `LIMIT`).
    pub fn wait(&mut self) -> ExitStatus {
        match wait_for(&mut self.child.0, LIMIT) {
            Some(s) => s,
            None => panic!("payrun did not finish in {LIMIT:?}\n{}", self.log_tail()),
        }
    }

    /// `kill -9`, as an operator or the OOM killer would.
    pub fn kill9(mut self) -> ExitStatus {
        use std::os::unix::process::ExitStatusExt;
        self.child.0.kill().unwrap();
        let status = self.wait();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
        status
    }

    /// Sends a signal (SIGINT for Ctrl-C, SIGTERM as a service manager would).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of a child this handle has not reaped yet.
        assert_eq!(unsafe { libc::kill(self.child.0.id() as i32, sig) }, 0);
    }

    /// Waits at most `limit` for the end; None if the process still runs.
    pub fn wait_at_most(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(s) = self.child.0.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    pub fn has_exited(&mut self) -> bool {
        self.child.0.try_wait().unwrap().is_some()
    }

    /// What the process said on stderr (its last lines).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(40);
        format!(
            "--- {} (tail)\n{}",
            self.log.display(),
            lines[from..].join("\n")
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Polls `what` every 10 ms until it holds, for at most `limit`.
pub fn eventually(limit: Duration, mut what: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if what() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

// ---------------------------------------------------------------------------------------------
// The report, and what it must agree with

/// One row of `payrun report`.
#[derive(Debug, Clone)]
pub struct Row(pub BTreeMap<String, String>);

impl Row {
    pub fn get(&self, column: &str) -> &str {
        self.0
            .get(column)
            .unwrap_or_else(|| panic!("the report has no column {column}"))
    }
    pub fn id(&self) -> &str {
        self.get("item_id")
    }
    pub fn state(&self) -> &str {
        self.get("state")
    }
    pub fn key(&self) -> &str {
        self.get("idempotency_key")
    }
    pub fn code(&self) -> &str {
        self.get("error_code")
    }
    pub fn description(&self) -> &str {
        self.get("error_description")
    }
}

pub struct Report {
    pub rows: Vec<Row>,
}

impl Report {
    pub fn read(path: &Path) -> Report {
        let mut r = csv::Reader::from_path(path).expect("the report is a CSV file");
        let headers: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
        let rows = r
            .records()
            .map(|rec| {
                let rec = rec.unwrap();
                Row(headers
                    .iter()
                    .cloned()
                    .zip(rec.iter().map(String::from))
                    .collect())
            })
            .collect();
        Report { rows }
    }

    pub fn row(&self, id: &str) -> &Row {
        self.rows
            .iter()
            .find(|r| r.id() == id)
            .unwrap_or_else(|| panic!("no report row for {id}"))
    }

    pub fn count(&self, state: &str) -> usize {
        self.rows.iter().filter(|r| r.state() == state).count()
    }

    /// Items by state, for messages.
    pub fn states(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for r in &self.rows {
            *m.entry(r.state().to_string()).or_default() += 1;
        }
        m
    }

    /// Every item ended paid.
    pub fn all_paid(&self) -> &Self {
        assert!(
            self.rows.iter().all(|r| r.state() == "paid"),
            "not every item is paid: {:?}\n{}",
            self.states(),
            self.rows
                .iter()
                .filter(|r| r.state() != "paid")
                .map(|r| format!("{:?}", r.0))
                .collect::<Vec<_>>()
                .join("\n")
        );
        self
    }

    /// The report and the sandbox's ledger tell the same story: each paid item moved money
    /// exactly once, with the payment id, amount and currency the report shows; a failed item
    /// moved none; an item under review at most once; and the ledger holds nothing else.
    pub fn agrees_with(&self, ledger: &Ledger) -> &Self {
        assert!(
            ledger.paid_twice().is_empty(),
            "paid twice: {:?}",
            ledger.paid_twice()
        );
        for r in &self.rows {
            let moved = ledger.for_key(r.key());
            match r.state() {
                "paid" => {
                    assert_eq!(moved.len(), 1, "{} is paid once in the ledger", r.id());
                    let e = moved[0];
                    assert!(
                        !r.get("payment_id").is_empty(),
                        "{} has a payment id",
                        r.id()
                    );
                    assert_eq!(
                        r.get("payment_id"),
                        e["payment_id"],
                        "{}: report and ledger name the same payment",
                        r.id()
                    );
                    assert_eq!(
                        decimal(r.get("amount")),
                        decimal(e["amount"].as_str().unwrap()),
                        "{}: the amount paid",
                        r.id()
                    );
                    assert_eq!(r.get("currency"), e["currency"], "{}: currency", r.id());
                }
                "failed" => assert!(moved.is_empty(), "{} failed but moved money", r.id()),
                "needs_review" => assert!(moved.len() <= 1, "{}", r.id()),
                other => panic!("{} is still {other}", r.id()),
            }
        }
        let keys: std::collections::HashSet<&str> = self.rows.iter().map(Row::key).collect();
        for e in &ledger.0 {
            assert!(
                keys.contains(e["key"].as_str().unwrap_or("")),
                "the ledger has a payment of no item in the report: {e}"
            );
        }
        self
    }
}

pub fn decimal(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap_or_else(|_| panic!("{s:?} is not a decimal"))
}
