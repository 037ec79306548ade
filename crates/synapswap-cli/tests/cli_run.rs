//! The `synapswap` binary: `run --json` keys and invariants, and clear errors with exit code 2.

use std::process::Command;

fn synapswap(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_synapswap"))
        .args(args)
        .output()
        .expect("run the synapswap binary")
}

#[test]
fn run_json_reports_every_key_and_holds_its_invariants() {
    // One layer (0.63 GiB) through 300 MiB, unpaced: seconds, not minutes.
    let out = synapswap(&[
        "run", "--json", "--layers", "1", "--vram", "300MiB", "--h2d", "max", "--tokens", "3",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    for key in [
        "backend",
        "workload",
        "model_bytes",
        "vram_budget_bytes",
        "tokens",
        "wall_s",
        "tokens_per_s",
        "bound_tokens_per_s",
        "efficiency",
        "bytes_h2d",
        "min_bytes_h2d",
        "hit_rate",
        "stall_s",
        "prefetch",
        "peak_device_bytes",
        "integrity",
    ] {
        assert!(v.get(key).is_some(), "missing key {key}");
    }
    for key in ["issued", "used", "wasted"] {
        assert!(v["prefetch"].get(key).is_some(), "missing prefetch.{key}");
    }
    assert_eq!(v["backend"], "sim");
    assert_eq!(v["tokens"], 3);
    assert_eq!(v["integrity"]["mismatches"], 0);
    assert!(v["integrity"]["verified_blocks"].as_u64().unwrap() > 0);
    let budget = v["vram_budget_bytes"].as_u64().unwrap();
    assert_eq!(budget, 300 << 20);
    assert!(v["peak_device_bytes"].as_u64().unwrap() <= budget);
    assert!(v["model_bytes"].as_u64().unwrap() >= 2 * budget);
    assert!(v["bytes_h2d"].as_u64().unwrap() >= v["min_bytes_h2d"].as_u64().unwrap());
    let eff = v["efficiency"].as_f64().unwrap();
    let ratio = v["tokens_per_s"].as_f64().unwrap() / v["bound_tokens_per_s"].as_f64().unwrap();
    assert!((eff - ratio).abs() < 1e-9);
}

#[test]
fn malformed_sizes_are_clear_errors_with_exit_code_2() {
    for args in [
        ["run", "--vram", "12XB"],
        ["run", "--vram", "lots"],
        ["run", "--h2d", "fastGB/s"],
        ["run", "--h2d", "0GB/s"],
    ] {
        let out = synapswap(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("invalid"), "{args:?}: {err}");
        assert!(out.stdout.is_empty());
    }
    let out = synapswap(&["run", "--vram", "100"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("budget"));
}

#[test]
fn a_budget_smaller_than_a_step_is_an_argument_error_naming_the_minimum() {
    // The largest step is the lm_head (250 MiB) with the final norm (8 KiB): 262,152,192 bytes.
    // The error names that, not the first block that does not fit (the lm_head alone at 64 MiB,
    // "out of device memory" at 250 MiB).
    for vram in ["64MiB", "250MiB"] {
        let out = synapswap(&["run", "--layers", "1", "--vram", vram, "--h2d", "max"]);
        assert_eq!(out.status.code(), Some(2), "{vram}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("too small"), "{vram}: {err}");
        assert!(
            err.contains("262152192 bytes (250.01 MiB)"),
            "{vram}: {err}"
        );
    }
}

#[test]
fn budgets_just_above_the_largest_step_run() {
    // 256-276 MiB failed with "out of device memory ... (held 8192 bytes)" while 252 and 280
    // MiB worked: the final norm landed where the lm_head's room was. (With 1 layer it did not
    // show; with 4 it did at 256 and 266 MiB, with the default 8 at all three.)
    for (layers, vram) in [("4", "256MiB"), ("4", "266MiB"), ("8", "276MiB")] {
        let out = synapswap(&[
            "run", "--json", "--layers", layers, "--vram", vram, "--h2d", "max", "--tokens", "1",
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{vram}: {err}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["integrity"]["mismatches"], 0, "{vram}");
    }
}

#[test]
fn cuda_without_a_driver_is_a_clear_error_or_runs() {
    let cuda = synapswap::backend::cuda::available();
    for args in [
        &["run", "--backend", "cuda", "--layers", "1", "--tokens", "1"][..],
        &["probe", "--backend", "cuda", "--size", "16MiB"][..],
    ] {
        let out = synapswap(args);
        let err = String::from_utf8_lossy(&out.stderr);
        match &cuda {
            Err(why) => {
                eprintln!("no CUDA here ({why}): checking the error path");
                assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
                assert!(err.contains("cuda") && err.contains("unavailable"), "{err}");
                assert!(!err.contains("panicked"), "{err}");
            }
            Ok(_) => assert!(out.status.success(), "{args:?}: {err}"),
        }
    }
}

#[test]
fn probe_measures_the_sim_link() {
    let out = synapswap(&["probe", "--backend", "sim", "--size", "16MiB", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["backend"], "sim");
    let rates = v["pinned_h2d"].as_array().unwrap();
    assert_eq!(rates.len(), 6);
    assert!(rates
        .iter()
        .all(|r| r["bytes_per_s"].as_f64().unwrap() > 1e8));
    assert!(v["pageable_h2d_bytes_per_s"].as_f64().unwrap() > 1e8);
    assert!(v["d2h_bytes_per_s"].as_f64().unwrap() > 1e8);
}
