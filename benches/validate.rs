//! Throughput of `payrun validate` and `payrun plan` on a generated 1,000,000-row payroll in the
//! format of batches/payroll-paysend, against a bare `csv` crate parse of the same file (the
//! physical floor). Run with `cargo bench --bench validate` (add `-- --rows N` for another size).
//! Prints figures; asserts nothing about time.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn main() {
    let mut rows: usize = 1_000_000;
    let mut runs = 3;
    let args: Vec<String> = std::env::args().collect();
    for w in args.windows(2) {
        match w[0].as_str() {
            "--rows" => rows = w[1].parse().expect("--rows N"),
            "--runs" => runs = w[1].parse().expect("--runs N"),
            _ => {}
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target/bench-data");
    std::fs::create_dir_all(&dir).unwrap();
    let csv_path = dir.join(format!("payroll-{rows}.csv"));
    if !csv_path.exists() {
        let t = Instant::now();
        generate(&csv_path, rows);
        eprintln!("generated {} rows in {:.2?}", rows, t.elapsed());
    }
    let manifest = dir.join(format!("manifest-{rows}.yaml"));
    let text = std::fs::read_to_string(root.join("batches/payroll-paysend/manifest.yaml")).unwrap();
    std::fs::write(
        &manifest,
        text.replace(
            "source: employees.csv",
            &format!(
                "source: {}",
                csv_path.file_name().unwrap().to_string_lossy()
            ),
        ),
    )
    .unwrap();
    let size = std::fs::metadata(&csv_path).unwrap().len();
    println!(
        "input: {rows} rows, {:.1} MB ({})",
        size as f64 / 1e6,
        csv_path.display()
    );

    let bare = best(runs, || {
        let t = Instant::now();
        let mut r = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_path(&csv_path)
            .unwrap();
        let mut rec = csv::ByteRecord::new();
        let mut n = 0u64;
        while r.read_byte_record(&mut rec).unwrap() {
            n += rec.len() as u64;
        }
        assert!(n > 0);
        (t.elapsed().as_secs_f64(), 0)
    });
    report("bare csv parse (floor)", rows, bare, None);

    let bin = env!("CARGO_BIN_EXE_payrun");
    let validate = best(runs, || run(bin, &["validate", manifest.to_str().unwrap()]));
    report("payrun validate", rows, validate, Some(bare.0));
    let plan = best(runs, || run(bin, &["plan", manifest.to_str().unwrap()]));
    report("payrun plan (summary)", rows, plan, Some(validate.0));
    let out = dir.join("plan.json");
    let plan_full = best(runs, || {
        run(
            bin,
            &[
                "plan",
                manifest.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
            ],
        )
    });
    report(
        "payrun plan -o plan.json",
        rows,
        plan_full,
        Some(validate.0),
    );
    println!(
        "plan.json: {:.1} MB",
        std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0) as f64 / 1e6
    );
    let _ = std::fs::remove_file(out);
}

/// Best (fastest) of `runs`: (seconds, peak RSS in KiB).
fn best(runs: usize, mut f: impl FnMut() -> (f64, u64)) -> (f64, u64) {
    (0..runs)
        .map(|_| f())
        .fold((f64::MAX, 0), |a, b| (a.0.min(b.0), a.1.max(b.1)))
}

fn run(bin: &str, args: &[&str]) -> (f64, u64) {
    let t = Instant::now();
    let mut child = Command::new(bin)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // wait4 gives this child's own peak RSS.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(r, pid);
    let _ = child.try_wait();
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{bin} {args:?} failed with {status}"
    );
    (secs, usage.ru_maxrss as u64)
}

fn report(name: &str, rows: usize, (secs, rss): (f64, u64), base: Option<f64>) {
    let ratio = base
        .map(|b| format!(", {:.2}x of the line above's baseline", secs / b))
        .unwrap_or_default();
    let rss = if rss > 0 {
        format!(", peak RSS {:.1} MB", rss as f64 / 1024.0)
    } else {
        String::new()
    };
    println!(
        "{name:<28} {secs:>7.3} s  {:>12.0} rows/s{rss}{ratio}",
        rows as f64 / secs
    );
}

fn generate(path: &PathBuf, rows: usize) {
    let f = std::fs::File::create(path).unwrap();
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    w.write_all(b"employee_id,first_name,last_name,email,street,city,country,iban,bic,net_pay,currency,department\r\n").unwrap();
    let first = [
        "Anna",
        "Lukas",
        "Sophie",
        "Jonas",
        "Marie",
        "Felix",
        "Chlo\u{e9}",
        "S\u{f8}ren",
        "Mateo",
        "Isla",
    ];
    let last = [
        "M\u{fc}ller",
        "Schmidt",
        "Dubois",
        "de Jong",
        "O'Brien",
        "Rossi",
        "Jensen",
        "Garc\u{ed}a",
        "Taylor",
        "Weber",
    ];
    let cities = [
        ("Berlin", "DE", "EUR", "COBADEFFXXX"),
        ("Paris", "FR", "EUR", "BNPAFRPPXXX"),
        ("London", "GB", "GBP", "BARCGB22XXX"),
        ("Amsterdam", "NL", "EUR", "INGBNL2AXXX"),
    ];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for i in 0..rows {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let f = first[(x % 10) as usize];
        let l = last[((x >> 8) % 10) as usize];
        let (city, cc, cur, bic) = cities[((x >> 16) % 4) as usize];
        let street = if x.is_multiple_of(50) {
            format!("\"{} Main Street, Apt {}\"", x % 200, x % 40)
        } else {
            format!("{} Main Street", x % 200)
        };
        let pay = 150_000 + (x >> 24) % 700_000;
        writeln!(
            w,
            "E{i:07},{f},{l},{}.{}{}@acme.example,{street},{city},{cc},{},{bic},{}.{:02},{cur},Ops\r",
            f.to_lowercase().chars().filter(char::is_ascii_alphabetic).collect::<String>(),
            l.to_lowercase().chars().filter(char::is_ascii_alphabetic).collect::<String>(),
            i % 100,
            iban(cc, x),
            pay / 100,
            pay % 100
        )
        .unwrap();
    }
    w.flush().unwrap();
}

/// A valid IBAN of `cc` (its registry length and layout, mod-97 check digits): validate checks
/// them, so a bench of made-up ones would measure the error path.
fn iban(cc: &str, x: u64) -> String {
    let bban = match cc {
        "DE" => format!("{:018}", x % 1_000_000_000_000_000_000),
        "FR" => format!("{:03}{:020}", x % 1000, x),
        "GB" => format!("WEST{:014}", x % 100_000_000_000_000),
        _ => format!("INGB{:010}", x % 10_000_000_000),
    };
    let rem = bban
        .chars()
        .chain(cc.chars())
        .chain("00".chars())
        .fold(0u32, |r, c| {
            let n = c.to_digit(36).unwrap();
            if n < 10 {
                (r * 10 + n) % 97
            } else {
                (r * 100 + n) % 97
            }
        });
    format!("{cc}{:02}{bban}", 98 - rem)
}
