//! Timelines: what computed and what copied when, written as Chrome trace-event JSON (opens in
//! Perfetto or `chrome://tracing`).
//!
//! Tracks: `compute` (one span per step, and a `stall` span wherever the caller waited for a
//! block before the step could start), `copy` (one span per copy job on the link, split only
//! where a more urgent job cut in) and, when the RAM tier reads a model file directly, `disk`
//! (one span per block read). Seeing the copy track busy under the compute spans is seeing the
//! overlap; a `stall` span is where it failed; a gap on the disk track where copies wait for
//! the disk is a read that came too late.

use std::io::Write;

use serde::Serialize;

use crate::{Error, Result};

/// Which track a span is drawn on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Track {
    /// Steps and stalls of the caller.
    Compute,
    /// Copies on the link (host-to-device loads and device-to-host write-backs).
    Copy,
    /// The RAM tier's direct reads from the disk (`ram_tier/disk_reader.rs`), one span per
    /// block read: `read` for a streamed block, `read-cached` for one of the cached set.
    Disk,
}

/// One span.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Span {
    /// Track.
    pub track: Track,
    /// Label (`step 12`, `stall`, `load l3.wq`, `write-back l3.kv`).
    pub name: String,
    /// Category (`step`, `stall`, `prefetch`, `demand`, `write-back`).
    pub cat: &'static str,
    /// Start, seconds from the start of the run.
    pub start_s: f64,
    /// Duration, seconds.
    pub dur_s: f64,
    /// Bytes (copies) or the pass number (steps).
    pub value: u64,
}

/// A recorded timeline.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trace {
    /// Spans in the order they were recorded.
    pub spans: Vec<Span>,
}

#[derive(Serialize)]
struct ChromeEvent<'a> {
    name: &'a str,
    cat: &'a str,
    ph: &'static str,
    ts: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    dur: Option<f64>,
    pid: u32,
    tid: u32,
    args: serde_json::Value,
}

impl Trace {
    /// Appends a span.
    pub fn push(
        &mut self,
        track: Track,
        name: impl Into<String>,
        cat: &'static str,
        start_s: f64,
        dur_s: f64,
        value: u64,
    ) {
        self.spans.push(Span {
            track,
            name: name.into(),
            cat,
            start_s,
            dur_s: dur_s.max(0.0),
            value,
        });
    }

    /// Appends a copy span, merging it into the previous copy span of the same job when the two
    /// touch (a job copied in consecutive chunks is one span).
    pub fn push_copy(
        &mut self,
        name: &str,
        cat: &'static str,
        start_s: f64,
        end_s: f64,
        bytes: u64,
    ) {
        if let Some(last) = self.spans.iter_mut().rev().find(|s| s.track == Track::Copy) {
            let end = last.start_s + last.dur_s;
            if last.name == name && last.cat == cat && (start_s - end).abs() <= 1e-9 + end * 1e-12 {
                last.dur_s = end_s - last.start_s;
                last.value += bytes;
                return;
            }
        }
        self.push(Track::Copy, name, cat, start_s, end_s - start_s, bytes);
    }

    /// The Chrome trace-event document.
    pub fn write_chrome(&self, out: &mut dyn Write, title: &str) -> std::io::Result<()> {
        let meta = |tid: u32, name: &str| {
            serde_json::json!({"name": "thread_name", "ph": "M", "pid": 1, "tid": tid,
                               "args": {"name": name}})
        };
        let mut events = vec![
            serde_json::json!({"name": "process_name", "ph": "M", "pid": 1,
                               "args": {"name": title}}),
            meta(1, "compute"),
            meta(2, "copy"),
            meta(3, "disk"),
        ];
        for s in &self.spans {
            let (tid, args) = match s.track {
                Track::Compute => (1, serde_json::json!({ "pass": s.value })),
                Track::Copy => (2, serde_json::json!({ "bytes": s.value })),
                Track::Disk => (3, serde_json::json!({})),
            };
            let e = ChromeEvent {
                name: &s.name,
                cat: s.cat,
                ph: "X",
                ts: s.start_s * 1e6,
                dur: Some(s.dur_s * 1e6),
                pid: 1,
                tid,
                args,
            };
            events.push(serde_json::to_value(e).map_err(std::io::Error::other)?);
        }
        let doc = serde_json::json!({ "traceEvents": events, "displayTimeUnit": "ms" });
        serde_json::to_writer(&mut *out, &doc).map_err(std::io::Error::other)?;
        out.flush()
    }

    /// Writes the Chrome trace-event document to `path`.
    pub fn save(&self, path: &std::path::Path, title: &str) -> Result<()> {
        let io =
            |e: std::io::Error| Error::Workload(format!("cannot write {}: {e}", path.display()));
        let f = std::fs::File::create(path).map_err(io)?;
        let mut w = std::io::BufWriter::new(f);
        self.write_chrome(&mut w, title).map_err(io)
    }

    /// Seconds of `track` covered by spans of category `cat` (overlaps counted once per span).
    pub fn total_s(&self, track: Track, cat: &str) -> f64 {
        self.spans
            .iter()
            .filter(|s| s.track == track && s.cat == cat)
            .map(|s| s.dur_s)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chrome_document_has_both_tracks() {
        let mut t = Trace::default();
        t.push(Track::Compute, "step 0", "step", 0.0, 0.5, 0);
        t.push_copy("load a", "prefetch", 0.0, 0.25, 10);
        t.push_copy("load a", "prefetch", 0.25, 0.5, 10);
        t.push_copy("load b", "demand", 0.5, 0.75, 5);
        assert_eq!(t.spans.len(), 3, "consecutive chunks of a job merge");
        assert_eq!(t.spans[1].value, 20);
        let mut buf = Vec::new();
        t.write_chrome(&mut buf, "test").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        let ev = v["traceEvents"].as_array().unwrap();
        assert_eq!(ev.iter().filter(|e| e["ph"] == "X").count(), 3);
        assert!(ev
            .iter()
            .any(|e| e["ph"] == "X" && e["tid"] == 2 && e["dur"] == 500000.0));
        assert!(ev.iter().any(|e| e["args"]["name"] == "copy"));
    }
}
