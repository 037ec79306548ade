//! `synapswap`: the command line.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use synapswap::backend::{Backend, SimBackend, SimConfig};
use synapswap::run::{self, Progress, RunConfig, RunReport};
use synapswap::size::{format_bandwidth, format_bytes, parse_bandwidth, parse_size};
use synapswap::workload::{self, DeviceModel, LlamaShape};
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
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum BackendChoice {
    /// The best backend present (today: sim, the only one built in).
    Auto,
    /// Simulated device: a host arena with paced copies.
    Sim,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Device budget, e.g. 1792MiB or 2GiB [default: half the model].
    #[arg(long, value_parser = size_arg)]
    vram: Option<u64>,
    /// Host-to-device bandwidth the sim backend models, e.g. 25GB/s, or `max` for unpaced memcpy.
    #[arg(long, default_value = "2GB/s", value_parser = bandwidth_arg)]
    h2d: Bandwidth,
    /// Tokens to decode (timed), after one warm-up token.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    tokens: u64,
    /// Layers of the Llama-7B-shaped model (8 layers = 3.29 GiB).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=256))]
    layers: u64,
    /// Copy chunk size.
    #[arg(long, default_value = "8MiB", value_parser = size_arg)]
    chunk: u64,
    /// Copies kept queued on the device's copy engine at once [default: the backend's].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=16))]
    pipeline_depth: Option<u64>,
    /// Device backend.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// Print one JSON object at the end instead of a summary.
    #[arg(long)]
    json: bool,
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
            | synapswap::Error::InvalidBudget(_)
            | synapswap::Error::PinnedOverBudget { .. }
            | synapswap::Error::Parse { .. } => 2u8,
            _ => 1,
        };
        (code, e.to_string())
    };
    let shape = LlamaShape {
        layers: args.layers,
        ..LlamaShape::LLAMA_8L
    };
    let name = format!("llama-7b-shaped-{}l-bf16-decode", args.layers);
    let wl = workload::llama(&name, shape, DeviceModel::CONSUMER);
    let model_bytes = wl.model_bytes();
    let budget = args.vram.unwrap_or(model_bytes / 2 / (1 << 20) * (1 << 20));
    if budget > 0 && budget >= model_bytes && !args.json {
        eprintln!(
            "note: the budget ({}) holds the whole model ({}); nothing will stream",
            format_bytes(budget),
            format_bytes(model_bytes)
        );
    }
    if args.backend == BackendChoice::Auto && !args.json {
        eprintln!("note: --backend auto chose sim (no GPU backend is built into this version)");
    }
    let (sim_cfg, bound_bw, source) = match args.h2d {
        Bandwidth::Paced(bw) => (
            SimConfig {
                h2d_bytes_per_s: Some(bw),
                ..SimConfig::default()
            },
            bw,
            "modelled by the sim backend".to_string(),
        ),
        Bandwidth::Max => (
            SimConfig::unpaced(),
            measure_memcpy(),
            "single-thread memcpy measured in this run".to_string(),
        ),
    };
    let backend: Arc<dyn Backend> = Arc::new(SimBackend::new(sim_cfg).map_err(fail)?);
    let mut builder = Engine::builder()
        .budget(budget)
        .backend(backend)
        .chunk_bytes(args.chunk);
    if let Some(d) = args.pipeline_depth {
        builder = builder.pipeline_depth(d as usize);
    }
    let engine = builder.build().map_err(fail)?;
    let cfg = RunConfig {
        tokens: args.tokens,
        warmup_tokens: 1,
        bound_bytes_per_s: bound_bw,
        bound_source: source,
    };
    let show = std::io::stderr().is_terminal() && !args.json;
    let bar = if show {
        let bar = ProgressBar::new(cfg.warmup_tokens + cfg.tokens);
        bar.set_style(
            ProgressStyle::with_template("{spinner} tokens {pos}/{len} [{bar:30}] {elapsed} {msg}")
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        bar.set_message("filling host copies");
        Some(bar)
    } else {
        None
    };
    let mut on_progress = |p: &Progress| {
        if let Some(bar) = &bar {
            bar.set_position(p.done);
            bar.set_message(format!(
                "{} | hit {:.0}% | moved {} | stall {:.2}s | vram {}/{} | {}",
                if p.timed { "decoding" } else { "warm-up" },
                p.stats.hit_rate() * 100.0,
                format_bytes(p.stats.bytes_h2d),
                p.stats.stall_s,
                format_bytes(p.stats.device_used_bytes),
                format_bytes(p.stats.vram_budget_bytes),
                if p.integrity.mismatches == 0 {
                    "bytes verified".to_string()
                } else {
                    format!("{} MISMATCHES", p.integrity.mismatches)
                }
            ));
        }
    };
    let report = run::run(&engine, &wl, &cfg, &mut on_progress).map_err(fail)?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
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

fn print_summary(r: &RunReport) {
    println!("SynapSwap run: {} on {}", r.workload, r.backend_description);
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
        "  peak device use {} of {}; integrity: {} block uses verified ({}), {} mismatches",
        format_bytes(r.peak_device_bytes),
        format_bytes(r.vram_budget_bytes),
        r.integrity.verified_blocks,
        format_bytes(r.integrity.verified_bytes),
        r.integrity.mismatches
    );
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            eprintln!("synapswap: error: {msg}");
            ExitCode::from(code)
        }
    }
}
