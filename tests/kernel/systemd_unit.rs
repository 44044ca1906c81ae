//! Issue 14: `dist/faasd.service` passes `systemd-analyze verify` without a complaint, its
//! ExecStart pointed at the faasd just built (verify wants the binary to exist). Marked
//! ignored where systemd-analyze is missing (rootfs-tools/test-all.sh installs it).

use std::fs;
use std::process::Command;

use libtest_mimic::{Failed, Trial};

use crate::support::TestResult;

pub fn tests() -> Vec<Trial> {
    let missing = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err();
    vec![Trial::test("systemd_unit::verify_passes", verify_passes).with_ignored_flag(missing)]
}

const UNIT: &str = include_str!("../../dist/faasd.service");

/// `systemd-analyze verify` of `unit` with ExecStart at the built faasd: its complaints
/// (it exits 0 on a directive it ignores, saying so on stderr).
fn complaints(unit: &str) -> Result<String, Failed> {
    let dir = tempfile::tempdir()?;
    let exe = env!("CARGO_BIN_EXE_faasd");
    let text: String = unit
        .lines()
        .map(|l| match l.starts_with("ExecStart=") {
            true => format!("ExecStart={exe}\n"),
            false => format!("{l}\n"),
        })
        .collect();
    let path = dir.path().join("faasd.service");
    fs::write(&path, text)?;
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Other units on the machine may draw remarks of their own: keep only ours.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("faasd.service"))
        .collect();
    Ok(match out.status.success() {
        true => ours.join("\n"),
        false => format!("exit {}: {stderr}", out.status),
    })
}

fn verify_passes() -> TestResult {
    let said = complaints(UNIT)?;
    if !said.is_empty() {
        return Err(format!("systemd-analyze verify dist/faasd.service: {said}").into());
    }
    // The check can fail: a directive systemd does not understand is reported.
    let broken = UNIT.replace("KillMode=mixed", "KillMode=gently");
    let said = complaints(&broken)?;
    if !said.contains("kill mode") {
        return Err(format!("a bad KillMode went unnoticed: {said:?}").into());
    }
    Ok(())
}
