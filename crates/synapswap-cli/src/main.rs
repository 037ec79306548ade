//! `synapswap`: the command line.

mod dashboard;
mod plot;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};
use dashboard::Dashboard;
use synapswap::backend::{self as backends, BackendKind, CudaBackend, SimConfig};
use synapswap::run::{self, Progress, RunConfig, RunReport, Verify};
use synapswap::simulate::{self, BenchRow, SimPolicy, SimulateConfig};
use synapswap::size::{format_bandwidth, format_bytes, parse_bandwidth, parse_size};
use synapswap::workload::{self, Workload};
use synapswap::Engine;

#[derive(Parser, Debug)]
#[command(
    name = "synapswap",
    version,
    about = "Run models whose weights do not fit in GPU memory: stream them from host RAM ahead of use."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Decode a Llama-shaped model through the real engine with real, verified bytes.
    Run(RunArgs),
    /// Predict a workload's speed on a virtual clock, driving the same planner as `run`.
    Simulate(SimulateArgs),
    /// Every preset under every policy (ours and peers' strategies) in one deterministic table.
    Bench(BenchArgs),
    /// Measure the host-device link: bandwidth by chunk size, pageable vs pinned, D2H, overlap.
    Probe(ProbeArgs),
    /// What a model file would do on a device: resident tensors and each policy's tokens/s.
    Plan(PlanArgs),
}

#[derive(clap::Args, Debug)]
struct PlanArgs {
    /// A `.safetensors` file, a Hugging Face directory, or a `.gguf` file.
    #[arg(long)]
    model: std::path::PathBuf,
    /// The steps of this order file instead of the order the tensor names give (as `run`).
    #[arg(long)]
    order: Option<std::path::PathBuf>,
    /// Device budget for the model [default: the device's memory, less 10% for activations].
    #[arg(long, value_parser = size_arg)]
    vram: Option<u64>,
    /// Device profile: rtx3060, rtx3090, rtx4090, rtx5090, a100, h100, h200 [default: rtx4090].
    #[arg(long, default_value = "rtx4090")]
    gpu: String,
    /// Host-to-device bandwidth from pinned memory [default: the profile's].
    #[arg(long, value_parser = bandwidth_value)]
    h2d: Option<f64>,
    /// Dense 16-bit FLOP/s of the device, e.g. 165e12 [default: the profile's].
    #[arg(long)]
    flops: Option<f64>,
    /// Device memory bandwidth, e.g. 1TB/s [default: the profile's].
    #[arg(long, value_parser = bandwidth_value)]
    hbm: Option<f64>,
    /// The host's memory bandwidth, for host-compute (assumed desktop DDR5) [default: 80GB/s].
    #[arg(long, default_value = "80GB/s", value_parser = bandwidth_value)]
    host_bw: f64,
    /// The host's math throughput for host-compute, FLOP/s (assumed: a desktop CPU's vector
    /// units) [default: 1e12].
    #[arg(long, default_value_t = 1e12)]
    host_flops: f64,
    /// Tokens per pass (1: batch-1 decode).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    batch: u64,
    /// Host memory for the model file's pages, e.g. 24GiB: a model larger than this reads what
    /// neither VRAM nor RAM holds from the disk every pass [default: the file fits in RAM].
    #[arg(long, value_parser = size_arg)]
    ram: Option<u64>,
    /// With --ram: the disk's read rate (assumed: an NVMe SSD) [default: 3GB/s].
    #[arg(long, default_value = "3GB/s", value_parser = bandwidth_value, requires = "ram")]
    disk_bw: f64,
    /// Also find the smallest budget at which synapswap reaches this many tokens/s.
    #[arg(long)]
    target: Option<f64>,
    /// Also write an SVG chart of predicted tokens/s against the VRAM budget, per policy.
    #[arg(long)]
    plot: Option<std::path::PathBuf>,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
}

/// A model file, in the order of `order` if given: a bad file is exit code 2.
fn open_model(
    path: &std::path::Path,
    order: Option<&std::path::Path>,
) -> Result<synapswap::model::Model, (u8, String)> {
    let mut m = synapswap::model::Model::open(path).map_err(|e| (2, e.to_string()))?;
    if let Some(o) = order {
        m.use_order_file(o).map_err(|e| (2, e.to_string()))?;
    }
    Ok(m)
}

fn cmd_plan(args: PlanArgs) -> Result<(), (u8, String)> {
    let mut device = synapswap::plan::profile(&args.gpu).ok_or_else(|| {
        let names: Vec<&str> = synapswap::plan::PROFILES.iter().map(|p| p.name).collect();
        (
            2u8,
            format!("unknown --gpu '{}' (known: {})", args.gpu, names.join(", ")),
        )
    })?;
    if let Some(v) = args.h2d {
        device.h2d_pinned = v;
    }
    if let Some(v) = args.flops {
        if !(v.is_finite() && v > 0.0) {
            return Err((2, format!("--flops {v} must be positive")));
        }
        device.flops = v;
    }
    if let Some(v) = args.hbm {
        device.hbm = v;
    }
    let model = open_model(&args.model, args.order.as_deref())?;
    let cfg = synapswap::plan::PlanConfig {
        device,
        budget: args.vram.unwrap_or(device.vram_bytes / 10 * 9),
        host_bytes_per_s: args.host_bw,
        host_flops: args.host_flops,
        batch: args.batch,
        host_ram: args.ram,
        disk_bytes_per_s: args.disk_bw,
    };
    let plan = synapswap::plan::plan(&model, &cfg).map_err(input_fail)?;
    let target = match args.target {
        Some(t) => Some((
            t,
            synapswap::plan::budget_for(&model, &cfg, t).map_err(input_fail)?,
        )),
        None => None,
    };
    if let Some(path) = &args.plot {
        let sweep = synapswap::plan::sweep(&model, &cfg, 16).map_err(input_fail)?;
        let title = format!(
            "{} on {} (batch {}): predicted tokens/s",
            plan.model.path, device.name, plan.batch
        );
        plot::tokens_per_s_against_vram(path, &title, &sweep).map_err(|e| (1, e))?;
    }
    if args.json {
        let mut v = serde_json::to_value(&plan).map_err(|e| (1, e.to_string()))?;
        if let Some((t, b)) = target {
            v["target"] = serde_json::json!({"tokens_per_s": t, "vram_budget_bytes": b});
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| (1, e.to_string()))?
        );
        return Ok(());
    }
    println!(
        "SynapSwap plan: {} ({}, {}, {} tensors, {}, {} layers)",
        plan.model.path,
        plan.model.format,
        plan.model.family,
        plan.model.tensors,
        format_bytes(plan.model.bytes),
        plan.model.layers
    );
    if let Some(r) = &plan.model.routing {
        println!("  routing: {r}");
    }
    if let Some(d) = &plan.disk {
        println!(
            "  {} of RAM for the file, disk at {}: {} cached, {} read from the disk per token (the page cache alone: {})",
            format_bytes(d.ram_bytes),
            format_bandwidth(d.disk_bytes_per_s),
            format_bytes(d.cached_bytes),
            format_bytes(d.synapswap_disk_bytes_per_token as u64),
            format_bytes(d.page_cache_disk_bytes_per_token as u64)
        );
    }
    println!(
        "  on {} with a {} budget, batch {}: {} resident ({} tensors)",
        device.name,
        format_bytes(plan.vram_budget_bytes),
        plan.batch,
        format_bytes(plan.resident_bytes),
        plan.resident.len()
    );
    println!("  device figures: {}", device.source);
    println!("\n| policy | tokens/s | bytes to the device per token |\n|---|---|---|");
    for p in &plan.policies {
        println!(
            "| {} | {:.3} | {} |",
            p.policy,
            p.tokens_per_s,
            format_bytes(p.bytes_h2d_per_token as u64)
        );
    }
    println!("\n{}", plan.verdict);
    if let Some((t, b)) = target {
        match b {
            Some(b) => println!("{t} tokens/s needs a budget of {}", format_bytes(b)),
            None => println!("{t} tokens/s is not reached even with the whole model resident"),
        }
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
struct SimulateArgs {
    /// A workload JSON file (schema in the README), or a preset: llama-7b, llama-7b-prefill,
    /// llama-70b, llama-70b-prefill, mixtral-8x7b, mixtral-8x7b-routed, deepseek-v3,
    /// deepseek-v3-routed, unet-sdxl, run, small-tensors, scattered-tensors.
    #[arg(long)]
    workload: String,
    /// Device budget [default: the workload's `vram_budget`, else half its bytes].
    #[arg(long, value_parser = size_arg)]
    vram: Option<u64>,
    /// Host-to-device bandwidth [default: the workload's `h2d_bytes_per_s`, else 2GB/s].
    #[arg(long, value_parser = bandwidth_value)]
    h2d: Option<f64>,
    /// Strategy: synapswap, oracle, demand-lru, stream-sync, lookahead or host-moe.
    #[arg(long, default_value = "synapswap", value_parser = policy_arg)]
    policy: SimPolicy,
    /// Host memory bandwidth at which host-moe computes the experts it keeps on the host
    /// [default: 60GB/s, assumed].
    #[arg(long, value_parser = bandwidth_value)]
    host_bw: Option<f64>,
    /// Timed passes (tokens) [default: the workload's `passes`, else 8], after one warm-up pass.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    tokens: Option<u64>,
    /// Fixed cost per copy, e.g. 2us or 10us [default: 2us].
    #[arg(long, value_parser = duration_arg)]
    latency: Option<f64>,
    /// Copy chunk size (as the runtime cuts copies).
    #[arg(long, default_value = "8MiB", value_parser = size_arg)]
    chunk: u64,
    /// Seed of routed (`choose`) draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write a Chrome trace-event timeline (open in Perfetto) to this file.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Print one JSON object (the keys of `run --json`) instead of a summary.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct BenchArgs {
    /// Print a JSON array of rows instead of a table.
    #[arg(long)]
    json: bool,
    /// Also rewrite the `bench:simulate` section of this Markdown file (BENCHMARKS.md).
    #[arg(long)]
    write: Option<PathBuf>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum BackendChoice {
    /// CUDA when a driver and a device are present, else sim.
    Auto,
    /// Simulated device: a host arena with paced copies.
    Sim,
    /// An NVIDIA GPU through the CUDA driver (loaded at run time).
    Cuda,
}

impl BackendChoice {
    fn kind(self) -> BackendKind {
        match self {
            BackendChoice::Auto => BackendKind::Auto,
            BackendChoice::Sim => BackendKind::Sim,
            BackendChoice::Cuda => BackendKind::Cuda,
        }
    }
}

#[derive(clap::Args, Debug)]
struct ProbeArgs {
    /// Device backend to measure.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// Bytes copied per measurement.
    #[arg(long, default_value = "256MiB", value_parser = size_arg)]
    size: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Device budget, e.g. 1792MiB or 2GiB [default: half the model].
    #[arg(long, value_parser = size_arg)]
    vram: Option<u64>,
    /// Host-to-device bandwidth the sim backend models, e.g. 25GB/s, or `max` for unpaced memcpy
    /// [default: 2GB/s]. On CUDA the bound uses pinned bandwidth measured in the same run.
    #[arg(long, value_parser = bandwidth_arg)]
    h2d: Option<Bandwidth>,
    /// Tokens to decode (timed), after one warm-up token.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    tokens: u64,
    /// Layers of the Llama-7B-shaped model (8 layers = 3.29 GiB).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    layers: u64,
    /// Run this workload instead of the Llama-shaped model: a workload JSON file (schema in the
    /// README) or a preset (as `simulate`), e.g. `small-tensors` (4,000 tensors of 64 KiB).
    /// Its budget is the default for --vram; the sim backend's link stays --h2d's.
    #[arg(long, conflicts_with = "layers")]
    workload: Option<String>,
    /// Run a model's own tensors from its files instead: a `.safetensors` file, or a Hugging
    /// Face directory (sharded through `model.safetensors.index.json`). The files are mapped and
    /// used in place (no copy in RAM), in the order their tensor names give; every use is checked
    /// against the file. Compute per step is estimated for batch-1 decode on a consumer GPU.
    #[arg(long, conflicts_with_all = ["layers", "workload"])]
    model: Option<std::path::PathBuf>,
    /// With --model: run the steps of this order file (JSON, a list of steps of tensor names, as
    /// `OffloadHandle.save_order` writes) instead of the order the names give.
    #[arg(long, requires = "model")]
    order: Option<std::path::PathBuf>,
    /// Copy chunk size.
    #[arg(long, default_value = "8MiB", value_parser = size_arg)]
    chunk: u64,
    /// Copies kept queued on the device's copy engine at once [default: the backend's].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=16))]
    pipeline_depth: Option<u64>,
    /// With --model: bytes of the model's file pages the RAM tier keeps cached [default: seven
    /// eighths of the host memory available after the arena]; the rest of a file larger than that is read
    /// from the disk each pass, ahead of its copy.
    #[arg(long, requires = "model", value_parser = size_arg)]
    ram_cap: Option<u64>,
    /// With --model: leave the file's pages to the kernel's page cache (no RAM tier: no
    /// read-ahead, nothing dropped), for comparison.
    #[arg(long, requires = "model")]
    no_ram_tier: bool,
    /// Device backend.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// How much of each used block to check: every byte, or edges and a random window per use
    /// [default: full on sim, sampled on CUDA, where reading every byte back would cost more
    /// than streaming it].
    #[arg(long, value_enum)]
    verify: Option<VerifyChoice>,
    /// Write a Chrome trace-event timeline (open in Perfetto) to this file.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Print one JSON object at the end instead of a summary.
    #[arg(long)]
    json: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum VerifyChoice {
    /// Every byte of every use.
    Full,
    /// First and last 4 KiB and a random 64 KiB window per use (KV caches in full).
    Sampled,
}

#[derive(Debug, Clone, Copy)]
enum Bandwidth {
    Paced(f64),
    Max,
}

fn size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

fn bandwidth_arg(s: &str) -> Result<Bandwidth, String> {
    if s.eq_ignore_ascii_case("max") {
        return Ok(Bandwidth::Max);
    }
    parse_bandwidth(s)
        .map(Bandwidth::Paced)
        .map_err(|e| e.to_string())
}

fn bandwidth_value(s: &str) -> Result<f64, String> {
    parse_bandwidth(s).map_err(|e| e.to_string())
}

fn policy_arg(s: &str) -> Result<SimPolicy, String> {
    s.parse().map_err(|e: synapswap::Error| e.to_string())
}

/// `10us`, `2ms`, `0.5s` or plain seconds.
fn duration_arg(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix("ns") {
        (n, 1e-9)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else {
        (t, 1.0)
    };
    match num.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v * scale),
        _ => Err(format!("'{s}' is not a duration (examples: 2us, 1.5ms, 0)")),
    }
}

/// Single-threaded memcpy bandwidth of this machine, measured over 256 MiB.
fn measure_memcpy() -> f64 {
    let n = 256 << 20;
    let src = vec![1u8; n];
    let mut dst = vec![0u8; n];
    dst.copy_from_slice(&src); // touch every page first
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        for (d, s) in dst.chunks_mut(8 << 20).zip(src.chunks(8 << 20)) {
            d.copy_from_slice(s);
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    n as f64 / best
}

fn cmd_run(args: RunArgs) -> Result<(), (u8, String)> {
    // Errors caused by the arguments (a budget too small for a block, say) exit with 2.
    let fail = |e: synapswap::Error| {
        let code = match e {
            synapswap::Error::BlockTooLarge { .. }
            | synapswap::Error::BudgetTooSmall { .. }
            | synapswap::Error::InvalidBudget(_)
            | synapswap::Error::PinnedOverBudget { .. }
            | synapswap::Error::HostMemory { .. }
            | synapswap::Error::DeviceMemory { .. }
            | synapswap::Error::Parse { .. } => 2u8,
            _ => 1,
        };
        (code, e.to_string())
    };
    let model = match &args.model {
        Some(path) => Some(open_model(path, args.order.as_deref())?),
        None => None,
    };
    let wl = match (&model, &args.workload) {
        (Some(m), _) => m.workload(),
        (None, Some(arg)) => load_workload(arg)?,
        (None, None) => workload::run_model(args.layers),
    };
    let model_bytes = wl.model_bytes();
    let budget = args.vram.or(wl.vram_budget).unwrap_or_else(|| {
        // Half the model, in whole MiB (in whole 4 KiB below 2 MiB: a small model file), and
        // never less than the least budget that runs it (a step's blocks at once).
        let half = model_bytes / 2;
        let unit = if half >= 2 << 20 { 1 << 20 } else { 4 << 10 };
        let least = wl.min_budget().map_or(0, |(m, _)| m);
        (half / unit * unit).max(least.div_ceil(unit) * unit)
    });
    if budget > 0 && budget >= model_bytes && !args.json {
        eprintln!(
            "note: the budget ({}) holds the whole model ({}); nothing will stream",
            format_bytes(budget),
            format_bytes(model_bytes)
        );
    }
    let unavailable = |e: synapswap::Error| (2u8, e.to_string());
    let sim_cfg = match args.h2d {
        Some(Bandwidth::Max) => SimConfig::unpaced(),
        Some(Bandwidth::Paced(bw)) => SimConfig {
            h2d_bytes_per_s: Some(bw),
            ..SimConfig::default()
        },
        None => SimConfig::default(),
    };
    let (backend, fell_back) = backends::open(args.backend.kind(), sim_cfg).map_err(unavailable)?;
    if let (Some(why), false) = (&fell_back, args.json) {
        eprintln!("note: --backend auto chose sim ({why})");
    }
    if let (Some(r), false) = (model.as_ref().and_then(|m| m.routing_summary()), args.json) {
        eprintln!("note: routing: {r}");
    }
    // Before anything big is allocated: a model the machine cannot hold is refused (exit 2),
    // not killed by the kernel halfway through filling it.
    match &model {
        Some(m) => run::check_model_host_memory(m, budget, backend.host_addressable()),
        None => run::check_host_memory(&wl, budget, backend.host_addressable()),
    }
    .map_err(fail)?;
    let (bound_bw, source) = if backend.info().name == "cuda" {
        if args.h2d.is_some() && !args.json {
            eprintln!("note: --h2d models the sim backend's link; on CUDA the bound is measured");
        }
        let r = synapswap::probe::probe(backend.as_ref(), 256 << 20).map_err(fail)?;
        (
            r.h2d_bytes_per_s(),
            "pinned host-to-device copies measured in this run (8-64 MiB chunks)".to_string(),
        )
    } else {
        match sim_cfg.h2d_bytes_per_s {
            Some(bw) => (bw, "modelled by the sim backend".to_string()),
            None => (
                measure_memcpy(),
                "single-thread memcpy measured in this run".to_string(),
            ),
        }
    };
    let host_addressable = backend.host_addressable();
    let mut builder = Engine::builder()
        .budget(budget)
        .backend(backend)
        .chunk_bytes(args.chunk)
        .trace(args.trace.is_some());
    if let Some(c) = args.ram_cap {
        builder = builder.ram_cap(c);
    }
    if args.no_ram_tier {
        builder = builder.ram_tier(false);
    }
    if let Some(d) = args.pipeline_depth {
        builder = builder.pipeline_depth(d as usize);
    }
    let engine = builder.build().map_err(fail)?;
    let cfg = RunConfig {
        tokens: args.tokens,
        warmup_tokens: 1,
        bound_bytes_per_s: bound_bw,
        bound_source: source,
        seed: 0,
        verify: match args.verify {
            Some(VerifyChoice::Full) => Verify::Full,
            Some(VerifyChoice::Sampled) => Verify::Sampled,
            // The sim's device is host memory: checking it in full costs no copy.
            None if host_addressable => Verify::Full,
            None => Verify::Sampled,
        },
    };
    let tty = std::io::stderr().is_terminal();
    let mut dash = Dashboard::new(tty, args.json, cfg.warmup_tokens + cfg.tokens, "wall");
    let mut on_progress = |p: &Progress| dash.update(p);
    let report = if let Some(m) = &model {
        let mut trace = args
            .trace
            .as_ref()
            .map(|_| synapswap::trace::Trace::default());
        let report =
            run::run_model(&engine, m, &cfg, &mut on_progress, trace.as_mut()).map_err(fail)?;
        if let (Some(path), Some(trace)) = (&args.trace, trace) {
            trace
                .save(path, &format!("synapswap run: {}", wl.name))
                .map_err(|e| (1, e.to_string()))?;
        }
        report
    } else if let Some(path) = &args.trace {
        let (report, trace) =
            run::run_traced(&engine, &wl, &cfg, &mut on_progress).map_err(fail)?;
        trace
            .save(path, &format!("synapswap run: {}", wl.name))
            .map_err(|e| (1, e.to_string()))?;
        report
    } else {
        run::run(&engine, &wl, &cfg, &mut on_progress).map_err(fail)?
    };
    dash.finish();
    engine.shutdown();
    if args.json {
        let s = serde_json::to_string_pretty(&report).map_err(|e| (1, e.to_string()))?;
        println!("{s}");
    } else {
        print_summary(&report);
    }
    if report.integrity.mismatches > 0 {
        return Err((
            1,
            format!("{} integrity mismatches", report.integrity.mismatches),
        ));
    }
    Ok(())
}

/// Exit code of a library error: 2 when the input (arguments, workload file) is at fault.
fn input_fail(e: synapswap::Error) -> (u8, String) {
    let code = match e {
        synapswap::Error::BlockTooLarge { .. }
        | synapswap::Error::BudgetTooSmall { .. }
        | synapswap::Error::InvalidBudget(_)
        | synapswap::Error::PinnedOverBudget { .. }
        | synapswap::Error::InvalidPriority(_)
        | synapswap::Error::ZeroSize
        | synapswap::Error::Parse { .. }
        | synapswap::Error::Workload(_) => 2u8,
        _ => 1,
    };
    (code, e.to_string())
}

/// A workload from a JSON file or a preset name.
fn load_workload(arg: &str) -> Result<Workload, (u8, String)> {
    let path = std::path::Path::new(arg);
    if path.is_file() {
        let text = std::fs::read_to_string(path)
            .map_err(|e| (2, format!("cannot read {}: {e}", path.display())))?;
        let w: Workload =
            serde_json::from_str(&text).map_err(|e| (2, format!("{}: {e}", path.display())))?;
        w.resolve().map_err(input_fail)?;
        return Ok(w);
    }
    workload::preset(arg).ok_or_else(|| {
        let names: Vec<&str> = workload::PRESETS.iter().map(|p| p.0).collect();
        (
            2,
            format!(
                "'{arg}' is neither a file nor a preset (presets: {})",
                names.join(", ")
            ),
        )
    })
}

fn cmd_simulate(args: SimulateArgs) -> Result<(), (u8, String)> {
    let wl = load_workload(&args.workload)?;
    let mut cfg = SimulateConfig::for_workload(&wl);
    if let Some(v) = args.vram {
        cfg.budget = v;
    }
    if let Some(bw) = args.h2d {
        cfg.h2d_bytes_per_s = bw;
        cfg.d2h_bytes_per_s = bw;
    }
    if let Some(t) = args.tokens {
        cfg.tokens = t;
    }
    if let Some(l) = args.latency {
        cfg.latency_s = l;
    }
    if let Some(bw) = args.host_bw {
        cfg.host_bytes_per_s = bw;
    }
    cfg.chunk_bytes = args.chunk;
    cfg.seed = args.seed;
    cfg.policy = args.policy;
    cfg.trace = args.trace.is_some();
    let tty = std::io::stderr().is_terminal();
    let mut dash = Dashboard::new(tty, args.json, cfg.warmup_tokens + cfg.tokens, "virtual");
    let sim = simulate::simulate(&wl, &cfg, &mut |p| dash.update(p)).map_err(input_fail)?;
    dash.finish();
    if let Some(path) = &args.trace {
        sim.trace
            .save(
                path,
                &format!("synapswap simulate: {} ({})", wl.name, cfg.policy),
            )
            .map_err(|e| (1, e.to_string()))?;
    }
    if args.json {
        let s = serde_json::to_string_pretty(&sim.report).map_err(|e| (1, e.to_string()))?;
        println!("{s}");
    } else {
        print_summary(&sim.report);
    }
    Ok(())
}

fn bench_table(rows: &[BenchRow]) -> String {
    let mut out = String::from(
        "| workload | policy | tokens/s | GB moved / pass | stall s / pass | ratio to oracle |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        out += &format!(
            "| {} | {} | {:.4} | {:.3} | {:.4} | {:.3} |\n",
            r.workload,
            r.policy,
            r.tokens_per_s,
            r.bytes_h2d_per_pass / 1e9,
            r.stall_s_per_pass,
            r.ratio_to_oracle
        );
    }
    out
}

fn cmd_bench(args: BenchArgs) -> Result<(), (u8, String)> {
    let rows = simulate::bench(simulate::BENCH_PRESETS).map_err(|e| (1, e.to_string()))?;
    if args.json {
        let s = serde_json::to_string_pretty(&rows).map_err(|e| (1, e.to_string()))?;
        println!("{s}");
    } else {
        print!("{}", bench_table(&rows));
    }
    if let Some(path) = &args.write {
        let mut section = String::from("Presets (budget, link): ");
        let described: Vec<String> = simulate::BENCH_PRESETS
            .iter()
            .filter_map(|n| workload::PRESETS.iter().find(|p| p.0 == *n))
            .map(|(n, d)| format!("`{n}`: {d}"))
            .collect();
        section += &described.join("; ");
        section += ".\n\n";
        section += &bench_table(&rows);
        replace_section(path, "bench:simulate", &section).map_err(|e| (1, e))?;
    }
    Ok(())
}

/// Replaces the text between `<!-- NAME -->` and `<!-- /NAME -->` in a file (appending the
/// section if the markers are missing).
fn replace_section(path: &std::path::Path, name: &str, body: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let (start, end) = (format!("<!-- {name} -->"), format!("<!-- /{name} -->"));
    let section = format!("{start}\n{body}{end}");
    let new = match (text.find(&start), text.find(&end)) {
        (Some(a), Some(b)) if a < b => {
            format!("{}{}{}", &text[..a], section, &text[b + end.len()..])
        }
        _ => format!("{text}\n{section}\n"),
    };
    std::fs::write(path, new).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn cmd_probe(args: ProbeArgs) -> Result<(), (u8, String)> {
    let unavailable = |e: synapswap::Error| (2u8, e.to_string());
    let report = match args.backend {
        BackendChoice::Sim => {
            let (b, _) =
                backends::open(BackendKind::Sim, SimConfig::unpaced()).map_err(unavailable)?;
            synapswap::probe::probe(b.as_ref(), args.size).map_err(|e| (1, e.to_string()))?
        }
        choice => match backends::cuda::available() {
            Ok(_) => CudaBackend::new(0)
                .map_err(unavailable)?
                .probe(args.size)
                .map_err(|e| (1, e.to_string()))?,
            Err(why) if choice == BackendChoice::Cuda => {
                return Err((2, format!("backend 'cuda' is unavailable: {why}")))
            }
            Err(why) => {
                if !args.json {
                    eprintln!("note: --backend auto measures the sim backend, unpaced ({why})");
                }
                let (b, _) =
                    backends::open(BackendKind::Sim, SimConfig::unpaced()).map_err(unavailable)?;
                synapswap::probe::probe(b.as_ref(), args.size).map_err(|e| (1, e.to_string()))?
            }
        },
    };
    if args.json {
        let s = serde_json::to_string_pretty(&report).map_err(|e| (1, e.to_string()))?;
        println!("{s}");
        return Ok(());
    }
    println!("SynapSwap probe: {} ({})", report.device, report.backend);
    if let (Some(free), Some(total)) = (report.free_bytes, report.total_bytes) {
        println!(
            "  device memory: {} free of {}",
            format_bytes(free),
            format_bytes(total)
        );
    }
    println!(
        "  host-to-device from the backend's host memory (pinned on CUDA), {} per round:",
        format_bytes(report.bytes_per_round)
    );
    for c in &report.pinned_h2d {
        println!(
            "    {:>9} chunks: {}",
            format_bytes(c.chunk_bytes),
            format_bandwidth(c.bytes_per_s)
        );
    }
    println!(
        "  host-to-device from pageable memory (16 MiB chunks): {}",
        format_bandwidth(report.pageable_h2d_bytes_per_s)
    );
    println!(
        "  device-to-host (16 MiB chunks): {}",
        format_bandwidth(report.d2h_bytes_per_s)
    );
    match &report.overlap {
        Some(o) => println!(
            "  copy under a kernel: kernel {:.1} ms, copy {:.1} ms, both {:.1} ms: {:.0}% hidden",
            o.kernel_s * 1e3,
            o.copy_s * 1e3,
            o.both_s * 1e3,
            o.hidden_fraction * 100.0
        ),
        None => println!("  copy under a kernel: not measured (no GPU)"),
    }
    Ok(())
}

fn print_summary(r: &RunReport) {
    let simulated = r.backend == "simulator";
    if r.pageable_files > 0 {
        eprintln!(
            "note: the device would not page-lock {} model file(s); they are copied through the pinned staging ring (an extra host copy per chunk)",
            r.pageable_files
        );
    }
    println!(
        "SynapSwap {}: {} on {}",
        if simulated { "simulate" } else { "run" },
        r.workload,
        r.backend_description
    );
    println!(
        "  model {} through a {} budget, {} tokens after {} warm-up ({:.2}s)",
        format_bytes(r.model_bytes),
        format_bytes(r.vram_budget_bytes),
        r.tokens,
        r.warmup_tokens,
        r.first_token_s
    );
    println!(
        "  {:.3} tokens/s, bound {:.3} ({} {}): efficiency {:.1}%",
        r.tokens_per_s,
        r.bound_tokens_per_s,
        format_bandwidth(r.h2d_bytes_per_s),
        r.h2d_source,
        r.efficiency * 100.0
    );
    println!(
        "  moved {} (minimum {}), hit rate {:.1}%, stall {:.2}s, prefetch {} issued / {} used / {} wasted",
        format_bytes(r.bytes_h2d),
        format_bytes(r.min_bytes_h2d),
        r.hit_rate * 100.0,
        r.stall_s,
        r.prefetch.issued,
        r.prefetch.used,
        r.prefetch.wasted
    );
    println!(
        "  {} write-backs of mutable blocks ({} device to host)",
        r.writebacks,
        format_bytes(r.bytes_d2h)
    );
    if simulated {
        println!(
            "  peak device use {} of {}; virtual clock (no bytes moved)",
            format_bytes(r.peak_device_bytes),
            format_bytes(r.vram_budget_bytes)
        );
    } else {
        println!(
            "  peak device use {} of {}; integrity: {} block uses verified ({}), {} of them after a write-back, {} mismatches",
            format_bytes(r.peak_device_bytes),
            format_bytes(r.vram_budget_bytes),
            r.integrity.verified_blocks,
            format_bytes(r.integrity.verified_bytes),
            r.integrity.reloaded_after_writeback,
            r.integrity.mismatches
        );
    }
    if let Some(h) = &r.host_tier {
        println!(
            "  RAM tier: {} of the files kept cached (cap {}), page cache hit {:.1}%, {} read from the disk ({}, measured on the {})",
            format_bytes(h.cached_bytes),
            format_bytes(h.cap_bytes),
            100.0 * h.page_cache_hit_rate,
            format_bytes(h.disk_bytes_read),
            format_bandwidth(h.disk_bytes_per_s),
            h.disk_rate_from
        );
        if h.bound_tokens_per_s > 0.0 {
            let disk = if h.disk_bound_tokens_per_s > 0.0 {
                format!("; the disk alone allows {:.4}", h.disk_bound_tokens_per_s)
            } else {
                String::new()
            };
            println!(
                "  in the timed passes: link {}, bound {:.4} tokens/s (efficiency {:.3}{disk})",
                format_bandwidth(h.link_bytes_per_s),
                h.bound_tokens_per_s,
                r.tokens_per_s / h.bound_tokens_per_s,
            );
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        Command::Run(args) => cmd_run(args),
        Command::Simulate(args) => cmd_simulate(args),
        Command::Bench(args) => cmd_bench(args),
        Command::Probe(args) => cmd_probe(args),
        Command::Plan(args) => cmd_plan(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            eprintln!("synapswap: error: {msg}");
            ExitCode::from(code)
        }
    }
}
