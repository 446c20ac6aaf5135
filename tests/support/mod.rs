//! A small harness so integration tests read like sentences:
//! `payrun(["validate", "batches/x/manifest.yaml"]).succeeds().stdout_has("50 items")`.

#![allow(dead_code)]

pub mod payonic;
pub mod paysend;
pub mod run;
pub mod wire;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the real binary from the crate root, without any provider credentials in the
/// environment (so output does not depend on the machine).
pub fn payrun<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    payrun_in(&root(), args)
}

pub fn payrun_in<I, S>(dir: &Path, args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_payrun"));
    cmd.current_dir(dir).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("PAYSEND_") || k == "PAYRUN_SCHEMAS" || k == "PAYRUN_LOG" {
            cmd.env_remove(k);
        }
    }
    let output = cmd.output().expect("the payrun binary runs");
    Run { output }
}

pub struct Run {
    pub output: Output,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.output.status.code().unwrap_or(-1)
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    fn context(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code(),
            self.stdout(),
            self.stderr()
        )
    }

    pub fn exits_with(self, code: i32) -> Self {
        assert_eq!(self.code(), code, "{}", self.context());
        assert!(!self.stderr().contains("panicked"), "{}", self.context());
        self
    }

    pub fn succeeds(self) -> Self {
        self.exits_with(0)
    }

    pub fn stdout_has(self, text: &str) -> Self {
        assert!(
            self.stdout().contains(text),
            "stdout lacks {text:?}\n{}",
            self.context()
        );
        self
    }

    pub fn stderr_has(self, text: &str) -> Self {
        assert!(
            self.stderr().contains(text),
            "stderr lacks {text:?}\n{}",
            self.context()
        );
        self
    }

    pub fn stdout_lacks(self, text: &str) -> Self {
        assert!(
            !self.stdout().contains(text),
            "stdout has {text:?}\n{}",
            self.context()
        );
        self
    }

    pub fn stderr_lacks(self, text: &str) -> Self {
        assert!(
            !self.stderr().contains(text),
            "stderr has {text:?}\n{}",
            self.context()
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.output.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e})\n{}", self.context()))
    }
}

/// Copies a batch folder into a fresh temporary directory (to edit it safely).
pub fn copy_batch(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(root().join("batches").join(name))
        .unwrap()
        .flatten()
    {
        std::fs::copy(e.path(), dir.path().join(e.file_name())).unwrap();
    }
    dir
}
