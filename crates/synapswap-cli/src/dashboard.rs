//! The live dashboard of `run` and `simulate`: VRAM bar, hit rate, efficiency, stall, bandwidth and
//! bytes moved, redrawn in place on a terminal (indicatif, on stderr), plain lines otherwise.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use synapswap::run::Progress;
use synapswap::size::{format_bandwidth, format_bytes};

/// Where and how progress is shown.
pub struct Dashboard {
    bar: Option<ProgressBar>,
    plain: bool,
    clock: &'static str,
    last_line: Option<Instant>,
}

impl Dashboard {
    /// `tty`: redraw in place; otherwise (and unless `quiet`) print a plain line now and then.
    /// `clock` names the time base shown (`wall` for run, `virtual` for simulate).
    pub fn new(tty: bool, quiet: bool, total: u64, clock: &'static str) -> Dashboard {
        let bar = (tty && !quiet).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {pos}/{len}\n{msg}")
                    .expect("static template")
                    .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar.set_prefix("tokens");
            bar.set_message("  preparing host copies");
            bar
        });
        Dashboard {
            bar,
            plain: !tty && !quiet,
            clock,
            last_line: None,
        }
    }

    /// The lines shown for `p`.
    pub fn render(p: &Progress, clock: &str) -> [String; 3] {
        let s = &p.stats;
        let a = &p.stats_at_timed;
        let budget = s.vram_budget_bytes.max(1);
        let width = 30usize;
        let filled = ((s.device_used_bytes as f64 / budget as f64) * width as f64).round() as usize;
        let vram = format!(
            "  VRAM [{}{}] {} / {} (peak {})",
            "#".repeat(filled.min(width)),
            "-".repeat(width - filled.min(width)),
            format_bytes(s.device_used_bytes),
            format_bytes(s.vram_budget_bytes),
            format_bytes(s.peak_device_bytes)
        );
        let (moved, stall, waits, hits) = if p.timed {
            (
                s.bytes_h2d - a.bytes_h2d,
                s.stall_s - a.stall_s,
                s.waits - a.waits,
                s.hits - a.hits,
            )
        } else {
            (s.bytes_h2d, s.stall_s, s.waits, s.hits)
        };
        let hit = if waits == 0 {
            1.0
        } else {
            hits as f64 / waits as f64
        };
        let rates = if p.timed && p.elapsed_s > 0.0 {
            format!(
                "  {:.3} tokens/s = {:.1}% of bound {:.3} | link {} ({} clock)",
                p.tokens_per_s(),
                p.efficiency() * 100.0,
                p.bound_tokens_per_s,
                format_bandwidth(moved as f64 / p.elapsed_s),
                clock
            )
        } else {
            format!(
                "  warm-up (cold load, untimed) | bound {:.3} tokens/s",
                p.bound_tokens_per_s
            )
        };
        let counts = format!(
            "  hit {:.1}% | stall {:.2} s | moved {} | evictions {} | {}",
            hit * 100.0,
            stall,
            format_bytes(moved),
            s.evictions - if p.timed { a.evictions } else { 0 },
            if p.integrity.verified_blocks == 0 {
                "no bytes moved (simulated)".to_string()
            } else if p.integrity.mismatches == 0 {
                format!("{} uses verified", p.integrity.verified_blocks)
            } else {
                format!("{} MISMATCHES", p.integrity.mismatches)
            }
        );
        [vram, rates, counts]
    }

    /// Shows `p`.
    pub fn update(&mut self, p: &Progress) {
        let lines = Self::render(p, self.clock);
        if let Some(bar) = &self.bar {
            bar.set_position(p.done);
            bar.set_prefix(if p.timed { "decoding" } else { "warm-up" });
            bar.set_message(lines.join("\n"));
        } else if self.plain {
            // At most one line a second, plus the last.
            let due = self
                .last_line
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
            if due || p.done == p.total {
                self.last_line = Some(Instant::now());
                eprintln!(
                    "[{}/{}] {} | {} | {}",
                    p.done,
                    p.total,
                    lines[1].trim(),
                    lines[2].trim(),
                    lines[0].trim()
                );
            }
        }
    }

    /// Clears the live view.
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
