//! Writing a benchmark's table into BENCHMARKS.md, between its markers.

/// Replaces what lies between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->` in the file at
/// `path` with `text` (appending the markers and text if the file has none).
pub fn write(path: &str, name: &str, text: &str) {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let (start, end) = (
        format!("<!-- bench:{name} -->"),
        format!("<!-- /bench:{name} -->"),
    );
    let section = format!("{start}\n{text}{end}");
    let new = match (old.find(&start), old.find(&end)) {
        (Some(a), Some(b)) if b > a => format!("{}{}{}", &old[..a], section, &old[b + end.len()..]),
        _ => format!("{old}\n{section}\n"),
    };
    std::fs::write(path, new).expect("write the benchmark file");
    eprintln!("wrote {path}");
}
