//! Shared by the execution benches (`throughput`, `resume`, `memory`): a generated payroll in
//! the format of batches/payroll-paysend, its manifest, a sandbox configuration for big batches,
//! peak RSS and an RSS time series of a child process, and the Paysend request trees of every
//! item as `payrun run` builds them.

#![allow(dead_code)]

use payrun::compile::Flow;
use payrun::validate::{ItemRow, Visitor};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Limits written into the generated manifest.
pub struct Limits {
    pub requests_per_second: u32,
    pub burst: u32,
    pub concurrency: u32,
    pub tasks_per_request: u32,
}

/// Writes `employees.csv` (`items` rows, ids `E0000000`…) and `manifest.yaml` for `batch` into
/// `dir`; `environment` is `sandbox` or a base URL. Every item pays its own IBAN (`iban`).
/// Amounts average about 26 EUR, so that a few hundred thousand items stay inside the
/// sandbox's default EUR balance (10,000,000); more need `write_sandbox_config`'s.
pub fn write_batch(
    dir: &Path,
    batch: &str,
    items: usize,
    environment: &str,
    limits: &Limits,
) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut csv =
        std::io::BufWriter::new(std::fs::File::create(dir.join("employees.csv")).unwrap());
    writeln!(
        csv,
        "employee_id,first_name,last_name,email,street,city,country,iban,bic,net_pay,currency"
    )
    .unwrap();
    for i in 0..items {
        writeln!(
            csv,
            "{},Anna,Muller,anna{}@acme.example,Torstrasse {},Berlin,DE,{},COBADEFFXXX,{}.{:02},EUR",
            item_id(i),
            i % 1000,
            i % 200 + 1,
            iban(i),
            1 + i % 50,
            i % 100
        )
        .unwrap();
    }
    csv.flush().unwrap();
    let manifest = std::fs::read_to_string(root.join("batches/payroll-paysend/manifest.yaml"))
        .unwrap()
        .replace("batch: acme-payroll-2026-11", &format!("batch: {batch}"))
        .replace(
            "environment: sandbox",
            &format!("environment: {environment}"),
        )
        .replace(
            "requests_per_second: 5",
            &format!("requests_per_second: {}", limits.requests_per_second),
        )
        .replace("burst: 5", &format!("burst: {}", limits.burst))
        .replace(
            "concurrency: 4",
            &format!("concurrency: {}", limits.concurrency),
        )
        .replace(
            "tasks_per_request: 10 ",
            &format!("tasks_per_request: {} ", limits.tasks_per_request),
        );
    let path = dir.join("manifest.yaml");
    std::fs::write(&path, manifest).unwrap();
    path
}

/// Writes `sandbox.yaml` into `dir`: the embedded sandbox's configuration for big batches, given
/// to `payrun run --sandbox-config` and loaded by the in-process sandboxes of the benches, so
/// both sides meet the same provider. Two defaults stop a million-item run and change nothing
/// below 20,000 items: the EUR balance (10,000,000; the generated items average about 26 EUR)
/// and the status window of `GET /processing/status` (2 h of provider time, 7.2 s at ×1000,
/// after which payrun falls back to one task.statusGet per item).
pub fn write_sandbox_config(dir: &Path) -> PathBuf {
    let path = dir.join("sandbox.yaml");
    std::fs::write(
        &path,
        "paysend:\n  balances:\n    EUR: \"1000000000.00\"\n  status_window: 100000h\n",
    )
    .unwrap();
    path
}

/// A German IBAN of its own for generated item `i` (bank code 37040044, account number `i`):
/// the repeated-recipient check (`item.repeated-recipient`) refuses two items paying the same
/// account the same amount, and a real payroll pays everyone to their own account.
pub fn iban(i: usize) -> String {
    let bban = format!("37040044{i:010}");
    // ISO 13616 check digits: 98 - (BBAN, then "DE00" as digits, D=13 E=14) mod 97.
    let rem = format!("{bban}131400")
        .bytes()
        .fold(0u32, |r, d| (r * 10 + u32::from(d - b'0')) % 97);
    format!("DE{:02}{bban}", 98 - rem)
}

/// The id of generated item `i`.
pub fn item_id(i: usize) -> String {
    format!("E{i:07}")
}

/// The generated batch, prepared as every payrun command prepares it.
pub fn prepared(manifest: &Path) -> payrun::pipeline::Prepared {
    let registry = payrun::schema::Registry::from_option(None);
    payrun::pipeline::prepare(manifest, &registry)
        .unwrap_or_else(|f| panic!("the generated manifest is invalid: {:?}", f.diagnostics))
}

/// Validates the batch (`chunk` rows per batch of work) and keeps what `each` makes of every
/// valid item, in file order.
pub fn validated<T: Send>(
    manifest: &Path,
    chunk: usize,
    each: fn(&Flow, &ItemRow) -> T,
) -> (Flow, Vec<T>) {
    struct Each<'f, T>(&'f Flow, fn(&Flow, &ItemRow) -> T);
    impl<T: Send> Visitor for Each<'_, T> {
        type Chunk = Vec<T>;
        fn item(&self, item: &ItemRow, chunk: &mut Vec<T>) {
            if item.valid {
                chunk.push((self.1)(self.0, item));
            }
        }
    }
    let prepared = prepared(manifest);
    let flow = prepared.flow;
    let mut source = prepared.source;
    let mut items = Vec::new();
    let report = payrun::validate::validate(&flow, &mut source, chunk, &Each(&flow, each), |c| {
        items.extend(c)
    })
    .expect("the generated CSV reads");
    assert!(report.is_ok(), "the generated batch is invalid");
    (flow, items)
}

/// Every valid item's idempotency key and Paysend task trees, exactly as `payrun run` computes
/// them (the same library functions: `keys::item_key`, `providers::paysend::item_tree`).
pub fn item_trees(manifest: &Path) -> (Flow, Vec<(String, Vec<Value>)>) {
    validated(manifest, 5, |flow, item| {
        let key = payrun::keys::item_key(&flow.manifest.batch, item.id);
        let trees = payrun::providers::paysend::item_tree(flow, item, &key);
        (key, trees)
    })
}

/// `payrun run <manifest> --yes --state-dir <state>`, its stdout to `out` and stderr to `err`;
/// the caller adds what its run needs (`--sandbox`, `--time-scale`, …) and spawns it.
pub fn payrun_run(manifest: &Path, state: &Path, out: &Path, err: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_payrun"));
    cmd.arg("run")
        .arg(manifest)
        .arg("--yes")
        .arg("--state-dir")
        .arg(state)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(out).unwrap())
        .stderr(std::fs::File::create(err).unwrap());
    cmd
}

/// `payrun run` of `manifest` against its embedded sandbox kept in memory only, configured by
/// the `sandbox.yaml` beside the manifest (the throughput and memory benches' setting).
pub fn payrun_rehearsal(
    manifest: &Path,
    state: &Path,
    out: &Path,
    err: &Path,
    time_scale: f64,
) -> Command {
    let mut cmd = payrun_run(manifest, state, out, err);
    cmd.args([
        "--sandbox",
        "--sandbox-in-memory",
        "--sandbox-config",
        &manifest.with_file_name("sandbox.yaml").to_string_lossy(),
        "--time-scale",
        &time_scale.to_string(),
    ]);
    cmd
}

/// The stdout of a `payrun run` that `ended`, which must have exited 0 with all `items` paid.
pub fn paid_everything(ended: &Ended, out: &Path, err: &Path, items: usize) -> String {
    let stdout = std::fs::read_to_string(out).unwrap();
    assert!(
        libc::WIFEXITED(ended.status) && libc::WEXITSTATUS(ended.status) == 0,
        "payrun run: {}\n{stdout}\n{}",
        describe(ended.status),
        std::fs::read_to_string(err).unwrap_or_default()
    );
    assert!(
        stdout.contains(&format!("{items} items: {items} paid")),
        "{stdout}"
    );
    stdout
}

/// The sending window of `batch` in the store in `state`: the earliest `first_sent` and the
/// latest `Succeeded.at` (ms since the epoch), and how many items it holds; every item must be
/// paid.
pub fn sending_window(state: &Path, batch: &str) -> (u64, u64, usize) {
    let store = payrun::execute::store::Store::open(state, batch).unwrap();
    let recs = store.items().unwrap();
    let mut first = u64::MAX;
    let mut last = 0u64;
    for (_, r) in &recs {
        let payrun::execute::machine::State::Succeeded { at, .. } = r.state else {
            panic!("item {} is not paid: {:?}", r.id, r.state);
        };
        first = first.min(r.first_sent.expect("a paid item was sent"));
        last = last.max(at);
    }
    (first, last, recs.len())
}

/// What wait4 tells about a child that ended.
pub struct Ended {
    /// The status as wait4 gives it.
    pub status: i32,
    /// Peak RSS in KiB (this child's own; also when it was killed).
    pub rss_kib: u64,
    /// User + system CPU time.
    pub cpu: std::time::Duration,
}

/// Waits for `child` to end.
pub fn wait_rss(child: &mut std::process::Child) -> Ended {
    let pid = child.id();
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: plain syscall on a child of this process, with valid out-pointers.
    let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(r, pid as libc::pid_t, "wait4");
    // Reaped already; this only lets `Child` know.
    let _ = child.try_wait();
    Ended {
        status,
        rss_kib: usage.ru_maxrss as u64,
        cpu: cpu(&usage),
    }
}

fn cpu(u: &libc::rusage) -> std::time::Duration {
    let t = |v: libc::timeval| {
        std::time::Duration::from_secs(v.tv_sec as u64)
            + std::time::Duration::from_micros(v.tv_usec as u64)
    };
    t(u.ru_utime) + t(u.ru_stime)
}

/// CPU time (user + system) this process has used so far.
pub fn own_cpu() -> std::time::Duration {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    cpu(&usage)
}

/// "exit 0", "killed by signal 9", …
pub fn describe(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exit {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("status {status}")
    }
}

pub fn mb(kib: u64) -> String {
    format!("{:.1} MB", kib as f64 / 1024.0)
}

/// `--name value` from the command line, parsed.
pub fn arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .find(|w| w[0] == name)
        .map(|w| {
            w[1].parse()
                .unwrap_or_else(|_| panic!("{name}: cannot read `{}`", w[1]))
        })
        .unwrap_or(default)
}

/// Rows of `payrun run`'s summary line: "… N requests, M commits (x per item), s s".
pub fn summary_numbers(stdout: &str) -> Option<(u64, u64)> {
    let line = stdout.lines().find(|l| l.contains(" requests, "))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let before = |w: &str| {
        words
            .iter()
            .position(|x| x.trim_end_matches(',') == w)
            .and_then(|p| words.get(p - 1))
            .and_then(|n| n.parse::<u64>().ok())
    };
    Some((before("requests")?, before("commits")?))
}

/// Samples a process every 5 ms until it is gone: its CPU time (user + system, all threads,
/// from /proc/<pid>/stat) against wall-clock milliseconds since the epoch, and its peak RSS
/// (VmHWM). `cpu_at` then interpolates CPU time at instants the child timestamped itself.
///
/// Why VmHWM and not wait4's ru_maxrss: Linux folds the RSS of the image a child had before
/// `exec` into ru_maxrss — with `posix_spawn`/vfork that is this bench process's own peak — so a
/// bench holding a big sandbox would see its own size reported for every child it starts.
/// VmHWM belongs to the child's own address space.
pub struct ProcSampler {
    samples: std::sync::Arc<std::sync::Mutex<Vec<(u64, f64)>>>,
    /// (ms since the epoch, VmRSS in KiB), at the same instants.
    rss: std::sync::Arc<std::sync::Mutex<Vec<(u64, u64)>>>,
    hwm_kib: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A process's peak RSS so far (VmHWM, KiB), if it still has an address space.
pub fn vm_hwm_kib(pid: u32) -> Option<u64> {
    vm_kib(pid, "VmHWM:")
}

/// A process's RSS now (VmRSS, KiB), if it still has an address space.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    vm_kib(pid, "VmRSS:")
}

fn vm_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// What a `ProcSampler` saw.
pub struct Sampled {
    /// (ms since the epoch, CPU seconds).
    pub cpu: Vec<(u64, f64)>,
    /// (ms since the epoch, VmRSS KiB).
    pub rss: Vec<(u64, u64)>,
    /// The highest VmHWM seen (KiB).
    pub peak_kib: u64,
}

impl Sampled {
    /// RSS (KiB) of the last sample at or before `at` (ms since the epoch).
    pub fn rss_at(&self, at: u64) -> u64 {
        let i = self.rss.partition_point(|(t, _)| *t <= at);
        i.checked_sub(1)
            .and_then(|j| self.rss.get(j))
            .or(self.rss.first())
            .map_or(0, |&(_, k)| k)
    }

    /// The highest RSS sampled in [from, to] (KiB).
    pub fn rss_max(&self, from: u64, to: u64) -> u64 {
        self.rss
            .iter()
            .filter(|(t, _)| (from..=to).contains(t))
            .map(|&(_, k)| k)
            .max()
            .unwrap_or(0)
    }
}

impl ProcSampler {
    pub fn start(pid: u32) -> ProcSampler {
        let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let rss = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let hwm_kib = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (s, r, h) = (
            std::sync::Arc::clone(&samples),
            std::sync::Arc::clone(&rss),
            std::sync::Arc::clone(&hwm_kib),
        );
        // SAFETY: sysconf has no preconditions.
        let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let thread = std::thread::spawn(move || {
            let path = format!("/proc/{pid}/stat");
            loop {
                let Ok(text) = std::fs::read_to_string(&path) else {
                    return;
                };
                if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    let field = |name: &str| {
                        status
                            .lines()
                            .find_map(|l| l.strip_prefix(name))
                            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                    };
                    if let Some(kib) = field("VmHWM:") {
                        h.fetch_max(kib, std::sync::atomic::Ordering::Relaxed);
                    }
                    if let Some(kib) = field("VmRSS:") {
                        r.lock().unwrap().push((epoch_ms(), kib));
                    }
                }
                // Fields after the command's closing parenthesis: state is field 3, utime 14,
                // stime 15; a zombie still has its times.
                let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
                let f: Vec<&str> = rest.split_whitespace().collect();
                if f.len() < 13 {
                    return;
                }
                let ticks =
                    f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0);
                s.lock().unwrap().push((epoch_ms(), ticks / tick));
                if f[0] == "Z" || f[0] == "X" {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        });
        ProcSampler {
            samples,
            rss,
            hwm_kib,
            thread: Some(thread),
        }
    }

    /// The highest VmHWM seen so far (KiB).
    pub fn peak_rss_kib(&self) -> u64 {
        self.hwm_kib.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits for the sampling to end (the process has ended) and returns the CPU samples and
    /// the peak RSS (KiB).
    pub fn finish(self) -> (Vec<(u64, f64)>, u64) {
        let s = self.finish_all();
        (s.cpu, s.peak_kib)
    }

    /// Waits for the sampling to end and returns everything it saw.
    pub fn finish_all(mut self) -> Sampled {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        Sampled {
            cpu: std::mem::take(&mut *self.samples.lock().unwrap()),
            rss: std::mem::take(&mut *self.rss.lock().unwrap()),
            peak_kib: self.peak_rss_kib(),
        }
    }
}

/// CPU seconds used by `at` (ms since the epoch), interpolated between samples.
pub fn cpu_at(samples: &[(u64, f64)], at: u64) -> f64 {
    let i = samples.partition_point(|(t, _)| *t <= at);
    match (
        i.checked_sub(1).and_then(|j| samples.get(j)),
        samples.get(i),
    ) {
        (Some(&(t0, c0)), Some(&(t1, c1))) if t1 > t0 => {
            c0 + (c1 - c0) * (at - t0) as f64 / (t1 - t0) as f64
        }
        (Some(&(_, c)), _) | (None, Some(&(_, c))) => c,
        (None, None) => 0.0,
    }
}

pub fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The machine's 1-minute load average (other work on a shared machine skews wall times).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(String::from))
        .unwrap_or_else(|| "?".into())
}
