//! `synapswap simulate`, `synapswap bench` and `--trace`.

use std::collections::BTreeSet;
use std::process::Command;

fn synapswap(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_synapswap"))
        .args(args)
        .output()
        .expect("run the synapswap binary")
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn keys(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[test]
fn simulate_prints_the_keys_of_run() {
    let sim = json(&synapswap(&[
        "simulate",
        "--workload",
        "llama-70b",
        "--json",
        "--tokens",
        "3",
    ]));
    let run = json(&synapswap(&[
        "run", "--json", "--layers", "1", "--vram", "300MiB", "--h2d", "max", "--tokens", "1",
    ]));
    assert_eq!(keys(&sim), keys(&run));
    assert_eq!(sim["backend"], "simulator");
    assert_eq!(sim["tokens"], 3);
    assert!(sim["efficiency"].as_f64().unwrap() > 0.9);
    assert!(sim["bytes_h2d"].as_u64().unwrap() >= sim["min_bytes_h2d"].as_u64().unwrap());
}

#[test]
fn simulate_overrides_and_policies() {
    let base = |extra: &[&str]| {
        let mut a = vec![
            "simulate",
            "--workload",
            "llama-7b",
            "--json",
            "--tokens",
            "2",
        ];
        a.extend_from_slice(extra);
        json(&synapswap(&a))
    };
    let v = base(&["--vram", "6GiB", "--h2d", "32GB/s"]);
    assert_eq!(v["vram_budget_bytes"], 6u64 << 30);
    assert_eq!(v["h2d_bytes_per_s"], 32e9);
    let oracle = base(&["--policy", "oracle"]);
    let ours = base(&[]);
    assert!(oracle["tokens_per_s"].as_f64() >= ours["tokens_per_s"].as_f64());
    // Deterministic: same inputs, same output.
    assert_eq!(base(&[]), ours);
}

#[test]
fn workload_files_are_checked() {
    let dir = std::env::temp_dir().join(format!("synapswap-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = r#"{"name": "two-layer", "vram_budget": 3000000, "h2d_bytes_per_s": 1e9,
        "passes": 3,
        "blocks": [{"name": "a", "bytes": 2000000}, {"name": "b", "bytes": 2000000},
                   {"name": "e0", "bytes": 500000, "priority": 3, "policy": "lru"},
                   {"name": "e1", "bytes": 500000}, {"name": "kv", "bytes": 100000, "mutable": true}],
        "steps": [{"compute_s": 0.001, "uses": ["a", "kv"]},
                  {"compute_s": 0.001, "uses": ["b"], "choose": {"k": 1, "from": ["e0", "e1"]}}]}"#;
    let path = dir.join("good.json");
    std::fs::write(&path, good).unwrap();
    let v = json(&synapswap(&[
        "simulate",
        "--workload",
        path.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(v["workload"], "two-layer");
    assert_eq!(v["tokens"], 3);
    assert_eq!(v["vram_budget_bytes"], 3_000_000);
    for (name, text, want) in [
        (
            "unknown-field",
            good.replace("\"passes\"", "\"pases\""),
            "pases",
        ),
        ("missing-block", good.replace("[\"b\"]", "[\"zz\"]"), "zz"),
        ("zero-size", good.replace("100000", "0"), "zero bytes"),
        ("bad-k", good.replace("\"k\": 1", "\"k\": 3"), "choose.k"),
        ("not-json", "{".to_string(), "EOF"),
    ] {
        let p = dir.join(format!("{name}.json"));
        std::fs::write(&p, text).unwrap();
        let out = synapswap(&["simulate", "--workload", p.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(want), "{name}: {err}");
    }
    let out = synapswap(&["simulate", "--workload", "no-such-preset"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("llama-70b"));
    let out = synapswap(&["simulate", "--workload", "llama-7b", "--policy", "fifo"]);
    assert_eq!(out.status.code(), Some(2));
    let out = synapswap(&["simulate", "--workload", "llama-7b", "--vram", "1MiB"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("too small"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bench_json_rows() {
    let out = synapswap(&["bench", "--json"]);
    let v = json(&out);
    let rows = v.as_array().unwrap();
    // Six policies on the four routed presets (host-moe among them), five on the five others.
    assert_eq!(rows.len(), 4 * 6 + 5 * 5);
    let want: BTreeSet<String> = [
        "workload",
        "policy",
        "tokens_per_s",
        "bytes_h2d_per_pass",
        "stall_s_per_pass",
        "ratio_to_oracle",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for r in rows {
        assert_eq!(keys(r), want);
    }
    assert_eq!(
        synapswap(&["bench", "--json"]).stdout,
        out.stdout,
        "deterministic"
    );
}

#[test]
fn traces_open_as_chrome_trace_events() {
    let dir = std::env::temp_dir().join(format!("synapswap-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sim = dir.join("sim.json");
    let run = dir.join("run.json");
    let out = synapswap(&[
        "simulate",
        "--workload",
        "unet-sdxl",
        "--tokens",
        "2",
        "--trace",
        sim.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    // Not a terminal: the dashboard prints plain lines on stderr.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("VRAM [") && err.contains("of bound"), "{err}");
    let out = synapswap(&[
        "run",
        "--layers",
        "1",
        "--vram",
        "300MiB",
        "--h2d",
        "max",
        "--tokens",
        "2",
        "--trace",
        run.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for path in [&sim, &run] {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path).unwrap()).expect("valid JSON");
        let events = v["traceEvents"].as_array().unwrap();
        let on = |tid: u64| {
            events
                .iter()
                .filter(|e| e["ph"] == "X" && e["tid"] == tid)
                .count()
        };
        assert!(on(1) > 10, "{}: compute spans", path.display());
        assert!(on(2) > 10, "{}: copy spans", path.display());
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_run_preset_simulates_at_every_budget_above_its_largest_step() {
    // 256-276 MiB failed with "out of device memory ... (held 8192 bytes)"; 252 and 280 worked.
    for vram in [
        "252MiB", "256MiB", "260MiB", "264MiB", "268MiB", "272MiB", "276MiB", "280MiB",
    ] {
        let out = synapswap(&["simulate", "--workload", "run", "--vram", vram, "--json"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{vram}: {err}");
        assert!(json(&out)["peak_device_bytes"].as_u64().unwrap() <= 280 << 20);
    }
    // Below it, the error names the real minimum: the lm_head step, granule-rounded.
    for vram in ["100MiB", "250MiB"] {
        let out = synapswap(&["simulate", "--workload", "run", "--vram", vram]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{vram}: {err}");
        assert!(
            err.contains("step 64 needs 262152192 bytes"),
            "{vram}: {err}"
        );
    }
}
