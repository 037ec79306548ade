//! Human-readable sizes and bandwidths: `512MiB`, `8GiB`, `1.5GB`, `25GB/s`.
//!
//! Binary suffixes (`KiB`, `MiB`, `GiB`, `TiB`) are powers of 1024, decimal ones (`KB`, `MB`, `GB`,
//! `TB`) powers of 1000, as on every datasheet. A bare number is bytes. Case is ignored for the unit.

use crate::{Error, Result};

fn unit_multiplier(unit: &str) -> Option<f64> {
    Some(match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    })
}

fn parse_scaled(input: &str, what: &'static str) -> Result<f64> {
    let err = |reason: &str| Error::Parse {
        what,
        input: input.to_string(),
        reason: reason.to_string(),
    };
    let s = input.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: String = num.chars().filter(|&c| c != '_').collect();
    if num.is_empty() {
        return Err(err("expected a number such as 512MiB, 8GiB or 1.5GB"));
    }
    let value: f64 = num
        .parse()
        .map_err(|_| err("the number part is malformed"))?;
    let mult = unit_multiplier(unit.trim())
        .ok_or_else(|| err("unknown unit (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)"))?;
    let v = value * mult;
    if !v.is_finite() {
        return Err(err("value is out of range"));
    }
    Ok(v)
}

/// Parses a byte size such as `512MiB`, `8GiB`, `1.5GB` or `4096`.
pub fn parse_size(input: &str) -> Result<u64> {
    let v = parse_scaled(input, "size")?;
    if v >= u64::MAX as f64 {
        return Err(Error::Parse {
            what: "size",
            input: input.to_string(),
            reason: "value is out of range".into(),
        });
    }
    if v.fract() != 0.0 {
        return Err(Error::Parse {
            what: "size",
            input: input.to_string(),
            reason: "not a whole number of bytes".into(),
        });
    }
    Ok(v as u64)
}

/// Parses a bandwidth such as `25GB/s`, `4GiB/s` or `500MB/s` into bytes per second.
/// The `/s` suffix is optional.
pub fn parse_bandwidth(input: &str) -> Result<f64> {
    let s = input.trim();
    let body = s
        .strip_suffix("/s")
        .or_else(|| s.strip_suffix("/S"))
        .unwrap_or(s);
    let v = parse_scaled(body, "bandwidth").map_err(|e| match e {
        Error::Parse { what, reason, .. } => Error::Parse {
            what,
            input: input.to_string(),
            reason,
        },
        other => other,
    })?;
    if v <= 0.0 {
        return Err(Error::Parse {
            what: "bandwidth",
            input: input.to_string(),
            reason: "must be greater than zero".into(),
        });
    }
    Ok(v)
}

/// Formats bytes with a binary unit, e.g. `1.50 GiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.2} {}", UNITS[i])
    }
}

/// Formats a bandwidth in decimal gigabytes per second, e.g. `4.00 GB/s`.
pub fn format_bandwidth(bytes_per_s: f64) -> String {
    format!("{:.2} GB/s", bytes_per_s / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("8GiB").unwrap(), 8 << 30);
        assert_eq!(parse_size("1.5GB").unwrap(), 1_500_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size(" 2 gib ").unwrap(), 2 << 30);
        for bad in ["", "MiB", "12XB", "1.5", "-1GiB", "1e400GB", "1..2GB"] {
            assert!(parse_size(bad).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn bandwidths() {
        assert_eq!(parse_bandwidth("25GB/s").unwrap(), 25e9);
        assert_eq!(parse_bandwidth("1GiB/s").unwrap(), 1073741824.0);
        assert_eq!(parse_bandwidth("500MB").unwrap(), 5e8);
        assert!(parse_bandwidth("0GB/s").is_err());
        assert!(parse_bandwidth("fast").is_err());
        let e = parse_bandwidth("3XB/s").unwrap_err().to_string();
        assert!(e.contains("3XB/s"), "{e}");
    }

    #[test]
    fn formatting() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(3 << 29), "1.50 GiB");
        assert_eq!(format_bandwidth(4e9), "4.00 GB/s");
    }
}
