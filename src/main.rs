//! The `payrun` command line: wires the library's stages together and maps failures to exit
//! codes. Data (reports, plans, templates) goes to stdout; diagnostics and progress to stderr.
//!
//! Exit codes (`payrun::execute::errors::exit`, which maps every layer's errors to them): 0
//! success; 1 the batch or manifest is invalid, changed since it started, refused by the
//! provider or declined (nothing was or would be sent); 2 usage error, a file that cannot be
//! read or written, a batch held by another runner, or a provider that cannot be reached; 4 a
//! run ended with items failed, needing review, reversed or unfinished; 130 stopped by a signal.

use clap::{Parser, Subcommand, ValueEnum};
use payrun::diagnostic::Diagnostic;
use payrun::execute::errors::exit;
// Writes to a closed or full stdout/stderr never panic or hang payrun (see `payrun::out`).
use payrun::pipeline::{self, Failure};
use payrun::schema::Registry;
use payrun::{eprintln, print, println};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "payrun",
    version,
    about = "Declarative batch payouts: validate a payroll batch against the provider's field schemas, plan it, run it exactly once.",
    after_help = "Exit codes: 0 ok, 1 the batch is invalid (nothing is sent), 2 usage or I/O error.\nExamples: payrun validate batches/payroll-paysend/manifest.yaml\n          payrun plan batches/payroll-paysend/manifest.yaml -o plan.json"
)]
struct Cli {
    /// Read provider schemas from this folder instead of the ones built into payrun.
    #[arg(long, global = true, env = "PAYRUN_SCHEMAS", value_name = "DIR")]
    schemas: Option<PathBuf>,
    /// Log lines (stderr, level from PAYRUN_LOG, default warn) as text or as JSON objects.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Human,
    Json,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Graph {
    Dot,
}

#[derive(Subcommand)]
enum Command {
    /// Check every item of a batch against the provider's field schemas, in one pass.
    ///
    /// Reports every problem with file:line, column, field, rule, the (masked) value and a hint;
    /// totals per rule; exit 1 when anything is wrong. Nothing is sent.
    Validate {
        /// The batch manifest (YAML).
        manifest: PathBuf,
        /// Output format: human (diagnostics on stderr, summary on stdout) or json (stdout).
        #[arg(long, value_enum, default_value = "human")]
        format: Format,
        /// Print at most this many errors (the totals always count all of them).
        #[arg(long, default_value_t = 50, value_name = "N")]
        max_errors: usize,
    },
    /// Dry run: compile every item into its job graph and show what `run` would do.
    ///
    /// Shows tasks per operation, totals per currency, API calls, the estimated duration under
    /// the manifest's rate limits and the first items' task trees (account numbers to their last
    /// four, secrets whole, names to initials, e-mails to their domain).
    Plan {
        /// The batch manifest (YAML).
        manifest: PathBuf,
        /// human (summary) or json (the full plan, every item and task with its keys).
        #[arg(long, value_enum, default_value = "human")]
        format: Format,
        /// Save the full JSON plan with its fingerprint to this file, for `payrun run --plan`.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
        /// Print the flow template as a Graphviz graph instead of the plan.
        #[arg(long, value_enum)]
        graph: Option<Graph>,
        /// How many items' trees the human plan shows.
        #[arg(long, default_value_t = 3, value_name = "N")]
        show: usize,
        /// Print at most this many validation errors when the batch is invalid.
        #[arg(long, default_value_t = 50, value_name = "N")]
        max_errors: usize,
    },
    /// Execute a batch: every item paid exactly once, checkpointed so a stopped run resumes.
    ///
    /// Paysend and Payonic batches so far; each item is a graph of tasks (a Paysend tree sent
    /// whole, or Payonic operations payrun sends one by one, each once the one above it ended,
    /// reading its result). Validates first (nothing is sent for an invalid batch), shows the items and amounts per currency this command will send and asks for
    /// confirmation (--yes to skip; required without a terminal; any answer but y/yes sends
    /// nothing and exits 1). A batch that was started before continues where it stopped: items
    /// that ended are not sent again, items sent before are looked up first; a batch whose
    /// items all ended says "nothing left to send" and starts nothing. Exit codes: 0 every item
    /// paid; 1 invalid batch, stale plan, changed items, or declined at the prompt; 2 usage or
    /// I/O error; 4 the run ended with items (or later steps) failed or needing review; 130
    /// stopped by Ctrl-C or SIGTERM (resume with `payrun resume <batch>`).
    Run {
        /// The batch manifest (YAML); with --retry-failed, the batch id will do.
        manifest: PathBuf,
        /// Start the embedded sandbox and run the batch against it (a rehearsal). It keeps what
        /// it remembers (payments, balances, ledger) in <state-dir>/<batch>.sandbox, so a resume
        /// meets the same provider; `payrun sandbox ledger --state <that file>` shows it.
        #[arg(long)]
        sandbox: bool,
        /// Start the embedded sandbox from this configuration (the YAML of `payrun sandbox
        /// --config`: balances, faults, Payonic payments…); --time-scale and the webhook URL
        /// still come from the run. Once the batch's sandbox state exists, what it remembers
        /// wins: its balances are the ones left by earlier runs.
        #[arg(long, value_name = "FILE", requires = "sandbox")]
        sandbox_config: Option<PathBuf>,
        /// The embedded sandbox keeps its state in memory only and forgets it when the command
        /// ends (a resume then meets a provider that never saw the batch); for measuring payrun
        /// itself.
        #[arg(long, requires = "sandbox")]
        sandbox_in_memory: bool,
        /// Accept, for this reason, rows changed or added since the batch started that were
        /// never sent (changed in place or added at the end): the change is recorded in the
        /// batch and shown by `status` and `report`. Rows removed or moved, rows already sent
        /// and a changed flow are never accepted.
        #[arg(long, value_name = "REASON")]
        accept_changes: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// Refuse to run unless the inputs still match this saved plan's fingerprint.
        #[arg(long, value_name = "FILE")]
        plan: Option<PathBuf>,
        /// Where batch state is kept.
        #[arg(
            long,
            default_value = ".payrun",
            env = "PAYRUN_STATE",
            value_name = "DIR"
        )]
        state_dir: PathBuf,
        /// Provider time runs this many times faster (only for a sandbox started with the same
        /// --time-scale; it shortens the documented waits such as Paysend's 3 minutes).
        #[arg(long, default_value_t = 1.0, value_name = "FACTOR")]
        time_scale: f64,
        /// Send again the failed items whose error the provider's table calls safe to resend
        /// (Paysend: 1000, 3004, 3009, 4000, 4002, 4010, and requests payrun gave up retrying),
        /// each as a new attempt with a new idempotency key; the start line and the prompt
        /// count only those; the earlier key and code stay in the report.
        #[arg(long)]
        retry_failed: bool,
        /// Trust the CAs in this PEM file too (on top of the platform's roots, SSL_CERT_FILE /
        /// SSL_CERT_DIR, and the manifest's tls.ca_file): a provider with a private CA, or
        /// `payrun sandbox --tls`'s certificate.
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
    },
    /// Continue a stopped batch where it stopped (in-doubt items are settled first).
    Resume {
        /// The batch id (as in the manifest's `batch:`).
        batch: String,
        /// Run against the embedded sandbox, which continues from <state-dir>/<batch>.sandbox
        /// (what it remembered when the batch stopped).
        #[arg(long)]
        sandbox: bool,
        /// As for `run` (the sandbox's state, once it exists, wins over the file's balances).
        #[arg(long, value_name = "FILE", requires = "sandbox")]
        sandbox_config: Option<PathBuf>,
        /// As for `run`.
        #[arg(long, requires = "sandbox")]
        sandbox_in_memory: bool,
        /// As for `run`.
        #[arg(long, value_name = "REASON")]
        accept_changes: Option<String>,
        #[arg(
            long,
            default_value = ".payrun",
            env = "PAYRUN_STATE",
            value_name = "DIR"
        )]
        state_dir: PathBuf,
        /// As for `run`.
        #[arg(long, default_value_t = 1.0, value_name = "FACTOR")]
        time_scale: f64,
        /// As for `run`.
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
    },
    /// Show a batch's progress: items by state, amounts per currency paid / pending / failed /
    /// under review, items in doubt or needing review, delayed steps, and the runner holding it.
    ///
    /// Works while a run is in progress in another process (the runner answers on
    /// <state-dir>/<batch>.sock, or the snapshot it keeps is read) and after it ended (from the
    /// store).
    Status {
        batch: String,
        #[arg(long, value_enum, default_value = "human")]
        format: Format,
        #[arg(
            long,
            default_value = ".payrun",
            env = "PAYRUN_STATE",
            value_name = "DIR"
        )]
        state_dir: PathBuf,
    },
    /// Write the per-item results as CSV: id, line, state, payment and global ids, error code
    /// and the provider's description, amount, currency, attempt, idempotency key, requests,
    /// first sent / finished / updated times, earlier attempts, delayed steps, the provider's
    /// reference of the accepted request and the request's trace id (Payonic TraceApi). Cells
    /// that a spreadsheet would run as formulas are neutralised. Works during a run too.
    Report {
        batch: String,
        /// Write to this file instead of stdout.
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
        #[arg(
            long,
            default_value = ".payrun",
            env = "PAYRUN_STATE",
            value_name = "DIR"
        )]
        state_dir: PathBuf,
    },
    /// List the batches in the state folder with their progress and runner.
    List {
        #[arg(long, value_enum, default_value = "human")]
        format: Format,
        #[arg(
            long,
            default_value = ".payrun",
            env = "PAYRUN_STATE",
            value_name = "DIR"
        )]
        state_dir: PathBuf,
    },
    /// Remove a batch's lock left by a runner that is gone (another machine, or a lost process).
    Unlock {
        batch: String,
        /// Confirm that the holder named in the lock is gone.
        #[arg(long)]
        force: bool,
        #[arg(
            long,
            default_value = ".payrun",
            env = "PAYRUN_STATE",
            value_name = "DIR"
        )]
        state_dir: PathBuf,
    },
    /// Run the provider sandbox: Paysend and Payonic emulated as their documents describe,
    /// with faults.
    ///
    /// Prints the base URLs and the test credentials it accepts, then serves until Ctrl-C.
    /// Sandbox-only endpoints: GET /__sandbox/ledger, GET /__sandbox/counters,
    /// POST /__sandbox/reset, POST /__sandbox/payonic/lifecycle/{paymentid} (the card issuer
    /// updates a payment's card; notified to payonic.lifecycle_url).
    ///
    /// With --state FILE it remembers what a provider would (accepted requests, payments,
    /// balances, Payonic operations, ledger, counters) across restarts, even after kill -9;
    /// `payrun sandbox ledger --state FILE` and `payrun sandbox counters --state FILE` read
    /// that file without starting a server.
    #[command(args_conflicts_with_subcommands = true)]
    Sandbox {
        #[command(subcommand)]
        inspect: Option<SandboxInspect>,
        /// Keep the sandbox's state in this file (created if missing) and continue from it: a
        /// sandbox restarted with the same file is the same provider. What the file remembers
        /// wins over --config (balances, payments); credentials, faults and timings come from
        /// the config on every start. No keys, card or account numbers are written to it.
        #[arg(long, value_name = "FILE")]
        state: Option<PathBuf>,
        /// Address to listen on (loopback by default; port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:8900")]
        listen: std::net::SocketAddr,
        /// Sandbox configuration (YAML): credentials, balances, timings, faults.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Seed for fault injection (overrides the config's).
        #[arg(long)]
        seed: Option<u64>,
        /// Provider time runs this many times faster than real time (overrides the config's).
        #[arg(long, value_name = "FACTOR")]
        time_scale: Option<f64>,
        /// Sets a fault knob, e.g. --fault error_5xx_rate=0.1 --fault latency_max=200ms
        /// (repeatable; overrides the config's).
        #[arg(long = "fault", value_name = "NAME=VALUE")]
        faults: Vec<String>,
        /// Serve HTTPS with a self-signed certificate for localhost / 127.0.0.1 / ::1, kept in
        /// --tls-dir (made on first use): pass its sandbox-cert.pem to `payrun run --ca-file`.
        #[arg(long)]
        tls: bool,
        /// Where --tls keeps its certificate (sandbox-cert.pem) and key (sandbox-key.pem).
        #[arg(
            long,
            default_value = ".payrun-sandbox",
            value_name = "DIR",
            requires = "tls"
        )]
        tls_dir: PathBuf,
    },
    /// Show what a payroll clerk needs to prepare a file for one provider operation.
    ///
    /// The columns with required/optional, format and an example, generated from the same
    /// schema files `validate` enforces.
    Template {
        /// Provider, e.g. paysend.
        provider: String,
        /// Operation, e.g. pay.toAccount.
        operation: String,
        /// Write a CSV header row and one example row instead of the table.
        #[arg(long, conflicts_with = "manifest")]
        csv: bool,
        /// Write a starter manifest for this operation instead of the table.
        #[arg(long)]
        manifest: bool,
        /// Include optional fields in --csv and --manifest output (the table always lists all).
        #[arg(long)]
        all: bool,
    },
}

/// Reading a sandbox's state file.
#[derive(Subcommand)]
enum SandboxInspect {
    /// Print the ledger kept in a sandbox state file: one line per money movement (provider,
    /// idempotency key, amount, currency, time, operation), then "N movements, K keys paid
    /// more than once". Exit 0 when the file was read (whatever it holds), 2 when it cannot be.
    ///
    /// For a rehearsal: payrun sandbox ledger --state <state-dir>/<batch>.sandbox
    Ledger {
        /// The state file (`payrun sandbox --state`, or <state-dir>/<batch>.sandbox).
        #[arg(long, value_name = "FILE")]
        state: PathBuf,
        /// human (one line per movement and the summary) or json.
        #[arg(long, value_enum, default_value = "human")]
        format: Format,
    },
    /// Print the counters kept in a sandbox state file as JSON (what GET /__sandbox/counters
    /// answers). Exit 2 when the file cannot be read.
    Counters {
        #[arg(long, value_name = "FILE")]
        state: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("PAYRUN_LOG").unwrap_or_else(|_| "warn".into())
    };
    match cli.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_writer(|| payrun::out::ErrWriter)
            .with_env_filter(filter())
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_writer(|| payrun::out::ErrWriter)
            .with_env_filter(filter())
            .init(),
    }
    let registry = Registry::from_option(cli.schemas);
    let code = match cli.command {
        Command::Validate {
            manifest,
            format,
            max_errors,
        } => validate(&registry, &manifest, format, max_errors),
        Command::Plan {
            manifest,
            format,
            output,
            graph,
            show,
            max_errors,
        } => plan(
            &registry, &manifest, format, output, graph, show, max_errors,
        ),
        Command::Template {
            provider,
            operation,
            csv,
            manifest,
            all,
        } => template(&registry, &provider, &operation, csv, manifest, all),
        Command::Sandbox {
            inspect: Some(what),
            ..
        } => sandbox_inspect(what),
        Command::Sandbox {
            inspect: None,
            state,
            listen,
            config,
            seed,
            time_scale,
            faults,
            tls,
            tls_dir,
        } => sandbox(
            listen,
            config,
            state,
            seed,
            time_scale,
            &faults,
            tls.then_some(tls_dir.as_path()),
        ),
        Command::Run {
            manifest,
            sandbox,
            yes,
            plan,
            state_dir,
            time_scale,
            retry_failed,
            ca_file,
            sandbox_config,
            sandbox_in_memory,
            accept_changes,
        } => payrun::execute::command::run(
            &registry,
            &manifest,
            &payrun::execute::command::RunOptions {
                sandbox,
                yes,
                plan: plan.as_deref(),
                state_dir: &state_dir,
                time_scale,
                retry_failed,
                ca_file: ca_file.as_deref(),
                sandbox_config: sandbox_config.as_deref(),
                sandbox_in_memory,
                accept_changes: accept_changes.as_deref(),
            },
        ),
        Command::Resume {
            batch,
            sandbox,
            sandbox_config,
            sandbox_in_memory,
            accept_changes,
            state_dir,
            time_scale,
            ca_file,
        } => payrun::execute::command::resume(
            &registry,
            &batch,
            sandbox,
            &state_dir,
            time_scale,
            ca_file.as_deref(),
            sandbox_config.as_deref(),
            sandbox_in_memory,
            accept_changes.as_deref(),
        ),
        Command::Status {
            batch,
            format,
            state_dir,
        } => payrun::execute::command::status(&batch, &state_dir, format == Format::Json),
        Command::Report {
            batch,
            output,
            state_dir,
        } => payrun::execute::command::report(&batch, &state_dir, output.as_deref()),
        Command::Unlock {
            batch,
            force,
            state_dir,
        } => payrun::execute::command::unlock(&batch, &state_dir, force),
        Command::List { format, state_dir } => {
            payrun::execute::command::list(&state_dir, format == Format::Json)
        }
    };
    ExitCode::from(code)
}

/// Prints diagnostics to stderr, with the offending manifest line where there is one.
fn print_diagnostics(ds: &[Diagnostic], manifest: Option<&(String, String)>) {
    let mut err = std::io::stderr().lock();
    for d in ds {
        let src = manifest
            .filter(|(name, _)| *name == d.file)
            .map(|(_, t)| t.as_str());
        let _ = writeln!(err, "{}\n", d.render_with(src));
    }
}

fn fail(f: Failure, format: Format) -> u8 {
    if format == Format::Json {
        let out = serde_json::json!({"ok": false, "stage": if f.exit_code == 2 { "io" } else { "manifest" }, "errors": f.diagnostics});
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        print_diagnostics(&f.diagnostics, f.manifest.as_ref());
        eprintln!(
            "{}",
            if f.exit_code == 2 {
                "payrun: cannot read the input; nothing was checked"
            } else {
                "payrun: the batch cannot be read as it is; no item was checked"
            }
        );
    }
    f.exit_code as u8
}

fn validate(
    registry: &Registry,
    manifest: &std::path::Path,
    format: Format,
    max_errors: usize,
) -> u8 {
    let prepared = match pipeline::prepare(manifest, registry) {
        Ok(p) => p,
        Err(f) => return fail(f, format),
    };
    let manifest_text = (
        prepared.flow.manifest.display.clone(),
        prepared.flow.manifest.text.clone(),
    );
    let mut source = prepared.source;
    let report = match payrun::validate::validate(
        &prepared.flow,
        &mut source,
        max_errors,
        &payrun::validate::NoVisitor,
        |_| {},
    ) {
        Ok(r) => r,
        Err(d) => return fail(Failure::io(d), format),
    };
    match format {
        Format::Json => {
            let mut v = serde_json::to_value(&report).unwrap_or_default();
            v["ok"] = serde_json::Value::Bool(report.is_ok());
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Format::Human => {
            print_diagnostics(&report.errors, Some(&manifest_text));
            for w in &report.warnings {
                eprintln!("warning: {w}");
            }
            print!("{}", payrun::plan::render::validation_summary(&report));
        }
    }
    if report.is_ok() { 0 } else { 1 }
}

fn plan(
    registry: &Registry,
    manifest: &std::path::Path,
    format: Format,
    output: Option<PathBuf>,
    graph: Option<Graph>,
    show: usize,
    max_errors: usize,
) -> u8 {
    let prepared = match pipeline::prepare(manifest, registry) {
        Ok(p) => p,
        Err(f) => return fail(f, format),
    };
    if graph == Some(Graph::Dot) {
        print!("{}", payrun::plan::dot::render(&prepared.flow));
        return exit::OK;
    }
    let manifest_text = (
        prepared.flow.manifest.display.clone(),
        prepared.flow.manifest.text.clone(),
    );
    let full = format == Format::Json || output.is_some();
    // The full plan is written next to its destination, so that saving it is a rename.
    let tmp_dir = output.as_ref().map(|p| match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    });
    let built = match payrun::plan::build(prepared, show, full, tmp_dir.as_deref(), max_errors) {
        Ok(p) => p,
        Err(d) => return fail(Failure::io(d), format),
    };
    let (mut plan, report) = built;
    if !report.is_ok() {
        if format == Format::Json {
            let mut v = serde_json::to_value(&report).unwrap_or_default();
            v["ok"] = serde_json::Value::Bool(false);
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        } else {
            print_diagnostics(&report.errors, Some(&manifest_text));
            print!("{}", payrun::plan::render::validation_summary(&report));
            eprintln!(
                "payrun: the batch is invalid; there is no plan until every item passes `payrun validate`"
            );
        }
        return exit::INVALID;
    }
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    let mut saved: Option<PathBuf> = None;
    if let Some(path) = &output {
        let Some(full) = plan.full.take() else {
            eprintln!("payrun: internal error: no full plan was built");
            return exit::IO;
        };
        // The complete plan replaces the target in one rename: never a half-written plan.
        if let Err(e) = full.persist(path) {
            eprintln!(
                "error[plan.io]: cannot write {}: {}",
                path.display(),
                e.error
            );
            return exit::IO;
        }
        eprintln!(
            "plan saved to {} (fingerprint {})",
            path.display(),
            plan.fingerprint.as_deref().unwrap_or("")
        );
        saved = Some(path.clone());
    }
    match format {
        Format::Json => {
            let file = saved.or_else(|| plan.full.as_ref().map(|f| f.path().to_path_buf()));
            let copied = file.map(|f| {
                std::fs::File::open(f)
                    .and_then(|mut r| std::io::copy(&mut r, &mut std::io::stdout().lock()))
            });
            if let Some(Err(e)) = copied {
                eprintln!("payrun: cannot write the plan to stdout: {e}");
                return exit::IO;
            }
        }
        Format::Human => print!("{}", plan.human),
    }
    exit::OK
}

fn template(
    registry: &Registry,
    provider: &str,
    operation: &str,
    csv: bool,
    manifest: bool,
    all: bool,
) -> u8 {
    let p = match registry.provider(provider) {
        Ok(p) => p,
        Err(d) => {
            print_diagnostics(&d.0, None);
            return exit::IO;
        }
    };
    let Some(op) = p.operation(operation) else {
        let hint = payrun::text::did_you_mean(operation, p.operations.keys().map(String::as_str))
            .map(|m| format!("did you mean `{m}`?"))
            .unwrap_or_else(|| {
                format!(
                    "{provider} operations: {}",
                    p.operations.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            });
        eprintln!(
            "error[template.operation]: {provider} has no operation `{operation}`\n  hint: {hint}"
        );
        return exit::IO;
    };
    let out = if csv {
        payrun::template::csv(op, all)
    } else if manifest {
        payrun::template::manifest(&p, op, all)
    } else {
        payrun::template::table(op)
    };
    print!("{out}");
    exit::OK
}

/// `payrun sandbox ledger|counters --state FILE`.
fn sandbox_inspect(what: SandboxInspect) -> u8 {
    let state = match &what {
        SandboxInspect::Ledger { state, .. } | SandboxInspect::Counters { state } => state,
    };
    let ledger = match payrun::sandbox::ledger::Ledger::from_state_file(state) {
        Ok(l) => l,
        Err(m) => {
            eprintln!("error[sandbox.state]: {m}");
            return exit::IO;
        }
    };
    let mut out = std::io::stdout().lock();
    let written = match what {
        SandboxInspect::Counters { .. } => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&ledger.counters()).unwrap_or_default()
        ),
        SandboxInspect::Ledger { format, .. } => {
            let entries = ledger.entries();
            let twice = payrun::sandbox::ledger::paid_more_than_once(&entries);
            if format == Format::Json {
                let v = serde_json::json!({
                    "entries": entries,
                    "movements": entries.len(),
                    "keys_paid_more_than_once": twice.iter().map(|(p, k, n)| serde_json::json!({"provider": p, "key": k, "times": n})).collect::<Vec<_>>(),
                });
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&v).unwrap_or_default()
                )
            } else {
                let mut r = Ok(());
                for e in &entries {
                    r = r.and_then(|_| {
                        writeln!(
                            out,
                            "{:<8} {:<36} {:>14} {:<3} {} {}",
                            e.provider, e.key, e.amount, e.currency, e.time, e.operation
                        )
                    });
                }
                for (p, k, n) in &twice {
                    r = r.and_then(|_| writeln!(out, "paid {n} times: {p} {k}"));
                }
                r.and_then(|_| {
                    writeln!(
                        out,
                        "{} movements, {} keys paid more than once",
                        entries.len(),
                        twice.len()
                    )
                })
            }
        }
    };
    if written.is_err() {
        return exit::IO;
    }
    exit::OK
}

fn sandbox(
    listen: std::net::SocketAddr,
    config: Option<PathBuf>,
    state: Option<PathBuf>,
    seed: Option<u64>,
    time_scale: Option<f64>,
    faults: &[String],
    tls_dir: Option<&std::path::Path>,
) -> u8 {
    use payrun::sandbox::{Sandbox, SandboxConfig};
    let mut cfg = match &config {
        Some(path) => match SandboxConfig::load(path) {
            Ok(c) => c,
            Err(d) => {
                print_diagnostics(&[d], None);
                return exit::IO;
            }
        },
        None => SandboxConfig::default(),
    };
    if let Some(s) = seed {
        cfg.seed = s;
    }
    if let Some(t) = time_scale {
        cfg.time_scale = t;
    }
    for f in faults {
        if let Err(m) = cfg.faults.set(f) {
            eprintln!("error[sandbox.fault]: {m}");
            return exit::IO;
        }
    }
    if let Err(m) = cfg.check() {
        eprintln!("error[sandbox.config]: {m}");
        return exit::IO;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("payrun: cannot start the async runtime: {e}");
            return exit::IO;
        }
    };
    runtime.block_on(async move {
        let config = cfg.clone();
        let started = match tls_dir {
            None => Sandbox::start_with(cfg, listen, state.as_deref(), None)
                .await
                .map(|s| (s, None)),
            Some(dir) => {
                let (cert, path) = match payrun::sandbox::tls::SelfSigned::load_or_create(dir) {
                    Ok(c) => c,
                    Err(m) => {
                        eprintln!("error[sandbox.tls]: {m}");
                        return exit::IO;
                    }
                };
                Sandbox::start_with(cfg, listen, state.as_deref(), Some(&cert))
                    .await
                    .map(|s| (s, Some(path)))
            }
        };
        let (sb, cert) = match started {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error[sandbox.start]: cannot start the sandbox on {listen}: {e}");
                return exit::IO;
            }
        };
        let root = sb.root_url();
        println!("payrun sandbox listening on {root}");
        if let Some(cert) = &cert {
            // Absolute, so that it can be pasted into `payrun run --ca-file` from anywhere.
            let cert = std::fs::canonicalize(cert).unwrap_or_else(|_| cert.clone());
            println!("certificate: {}", cert.display());
            println!("  trust it with: payrun run <manifest> --ca-file {}", cert.display());
        }
        for line in sb.banner(&config) {
            println!("{line}");
        }
        if let (Some(path), Some(r)) = (&state, sb.restored) {
            println!(
                "state: {} ({} records replayed from {} earlier start{}{})",
                path.display(),
                r.records,
                r.starts,
                if r.starts == 1 { "" } else { "s" },
                if r.torn > 0 {
                    format!("; a torn last line of {} bytes dropped", r.torn)
                } else {
                    String::new()
                }
            );
        }
        println!(
            "ledger: {root}/__sandbox/ledger  counters: {root}/__sandbox/counters  reset: POST {root}/__sandbox/reset"
        );
        eprintln!("press Ctrl-C to stop");
        let _ = tokio::signal::ctrl_c().await;
        sb.stop().await;
        exit::OK
    })
}
