//! `include/synapswap.h` is written by hand (the original declarations are kept exactly); this
//! test regenerates the declarations from `src/lib.rs` with cbindgen and fails if the two drift:
//! every function prototype, every constant's value and every field of `ss_stats_t`.

use std::collections::{BTreeMap, BTreeSet};

fn strip_comments(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("/*") {
        out.push_str(&rest[..i]);
        match rest[i..].find("*/") {
            Some(j) => rest = &rest[i + j + 2..],
            None => rest = "",
        }
    }
    out.push_str(rest);
    out.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Collapses whitespace and spaces around punctuation: `void * f ( int a )` -> `void*f(int a)`.
fn normalize(decl: &str) -> String {
    let words: Vec<&str> = decl.split_whitespace().collect();
    let mut s = words.join(" ");
    for p in ["*", "(", ")", ","] {
        s = s.replace(&format!(" {p}"), p).replace(&format!("{p} "), p);
    }
    s
}

/// Statements (split at `;`) that declare a `synapswap_` function.
fn prototypes(text: &str) -> BTreeSet<String> {
    strip_comments(text)
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .split(';')
        .map(|s| {
            // The statement's last line group: drop anything before a closing brace.
            let s = s.rsplit('}').next().unwrap_or(s);
            normalize(s)
        })
        .filter(|s| s.contains("synapswap_") && s.contains('(') && !s.contains("typedef"))
        .map(|s| s.replace("(void)", "()"))
        .collect()
}

fn parse_int(v: &str) -> i64 {
    let v = v.trim().trim_end_matches(['u', 'U']);
    v.parse()
        .unwrap_or_else(|_| panic!("not an integer: {v:?}"))
}

/// Every constant: `#define NAME VALUE` and the members of `enum { ... }` bodies (implicit
/// values counted as C does).
fn constants(text: &str) -> BTreeMap<String, i64> {
    let text = strip_comments(text);
    let mut out = BTreeMap::new();
    for l in text.lines() {
        let mut w = l.split_whitespace();
        if w.next() == Some("#define") {
            if let (Some(name), Some(value)) = (w.next(), w.next()) {
                if name.starts_with("SS_") {
                    out.insert(name.to_string(), parse_int(value));
                }
            }
        }
    }
    let mut rest = text.as_str();
    while let Some(i) = rest.find("enum") {
        rest = &rest[i + 4..];
        let (Some(a), Some(b)) = (rest.find('{'), rest.find('}')) else {
            break;
        };
        let mut next = 0;
        for member in rest[a + 1..b].split(',') {
            let member = member.trim();
            if member.is_empty() {
                continue;
            }
            let (name, value) = match member.split_once('=') {
                Some((n, v)) => (n.trim(), parse_int(v)),
                None => (member, next),
            };
            out.insert(name.to_string(), value);
            next = value + 1;
        }
        rest = &rest[b..];
    }
    out
}

/// `(type, name)` of each field of `typedef struct { ... } ss_stats_t;`, comma lists expanded.
fn stats_fields(text: &str) -> Vec<(String, String)> {
    let text = strip_comments(text);
    let end = text.find("} ss_stats_t;").expect("ss_stats_t is defined");
    let start = text[..end].rfind('{').expect("a struct body");
    let mut fields = Vec::new();
    for decl in text[start + 1..end].split(';') {
        let decl = normalize(decl);
        if decl.is_empty() {
            continue;
        }
        let (ty, names) = decl.split_once(' ').expect("type and names");
        for n in names.split(',') {
            fields.push((ty.to_string(), n.trim().to_string()));
        }
    }
    fields
}

#[test]
fn header_matches_the_code() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let cfg = cbindgen::Config {
        language: cbindgen::Language::C,
        style: cbindgen::Style::Type,
        usize_is_size_t: true,
        ..Default::default()
    };
    let bindings = cbindgen::Builder::new()
        .with_config(cfg)
        .with_src(format!("{dir}/src/lib.rs"))
        .generate()
        .expect("cbindgen parses src/lib.rs");
    let mut buf = Vec::new();
    bindings.write(&mut buf);
    let generated = String::from_utf8(buf).unwrap();
    let header = std::fs::read_to_string(format!("{dir}/../../include/synapswap.h"))
        .expect("include/synapswap.h");

    let (g, h) = (prototypes(&generated), prototypes(&header));
    assert!(g.len() >= 20, "cbindgen found too few functions: {g:#?}");
    assert_eq!(
        g,
        h,
        "prototypes drifted.\nonly in the code: {:#?}\nonly in the header: {:#?}",
        g.difference(&h).collect::<Vec<_>>(),
        h.difference(&g).collect::<Vec<_>>()
    );
    let (gc, hc) = (constants(&generated), constants(&header));
    assert!(gc.len() >= 16, "{gc:#?}");
    assert_eq!(gc, hc, "constants drifted");
    assert_eq!(
        stats_fields(&generated),
        stats_fields(&header),
        "ss_stats_t drifted"
    );
}

#[test]
fn the_seed_declarations_are_kept_verbatim() {
    let header = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../include/synapswap.h"
    ))
    .unwrap();
    let h = prototypes(&header);
    for seed in [
        "ss_status_t synapswap_init(size_t vram_limit, bool verbose)",
        "void synapswap_shutdown(void)",
        "void* synapswap_malloc(size_t size, int priority, ss_policy_t policy, const char* tag)",
        "void synapswap_free(void* ptr)",
        "void synapswap_register_dependency(int node_id, void* data_ptr, int next_node_id)",
        "void synapswap_precompute_hint(int node_id)",
        "ss_status_t synapswap_wait_for_data(void* ptr)",
        "void* synapswap_get_vram_ptr(void* ptr)",
        "void synapswap_get_stats(ss_stats_t* stats)",
    ] {
        let want = normalize(seed).replace("(void)", "()");
        assert!(h.contains(&want), "missing or changed: {seed}");
    }
    let c = constants(&header);
    for (name, value) in [
        ("SS_SUCCESS", 0),
        ("SS_ERR_INITIALIZATION", -1),
        ("SS_ERR_OUT_OF_VRAM", -2),
        ("SS_ERR_OUT_OF_RAM", -3),
        ("SS_ERR_INVALID_PTR", -4),
        ("SS_ERR_NOT_FOUND", -5),
        ("SS_ERR_CUDA", -6),
        ("SS_ERR_UNKNOWN", -99),
        ("SS_POLICY_AUTO", 0),
        ("SS_POLICY_STRICT_VRAM", 1),
        ("SS_POLICY_LRU", 2),
        ("SS_POLICY_VOLATILE", 3),
    ] {
        assert_eq!(c.get(name), Some(&value), "{name}");
    }
}
