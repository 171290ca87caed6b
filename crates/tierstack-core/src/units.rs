//! Human units in config files: durations (`90s`, `1h`, `7d`) and sizes
//! (`512MiB`, `1GB`), with serde helpers for backend configs.

use std::time::Duration;

/// Parses a duration: a humantime string (`90s`, `1h 30m`, `7d`) or a bare
/// number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("invalid duration {text:?} ({e}); expected e.g. 90s, 1h, 7d"))
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Parses a size: a number with an optional unit (`B`, `KB`, `KiB`, `MB`,
/// `MiB`, `GB`, `GiB`, `TB`, `TiB`; case-insensitive; decimal units are
/// powers of 1000, binary ones of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || format!("invalid size {text:?}; expected e.g. 4096, 64MiB, 1GB");
    let number: f64 = number.parse().map_err(|_| bad())?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        _ => return Err(bad()),
    };
    #[allow(clippy::cast_precision_loss, clippy::cast_sign_loss)]
    let bytes = number * multiplier as f64;
    if !bytes.is_finite() || !(0.0..=18e18).contains(&bytes) {
        return Err(bad());
    }
    #[allow(clippy::cast_sign_loss)]
    Ok(bytes.round() as u64)
}

/// Formats a size with the largest binary unit that divides it.
pub fn format_size(bytes: u64) -> String {
    for (unit, size) in [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ] {
        if bytes >= size && bytes % size == 0 {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}B")
}

/// Formats a size for people: the largest binary unit it reaches, one
/// decimal (`512 B`, `12.1 KiB`, `41.0 MiB`). Lossy; [`format_size`] is the
/// exact form that [`parse_size`] reads back.
pub fn format_size_approx(bytes: u64) -> String {
    for (unit, size) in [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ] {
        if bytes >= size {
            #[allow(clippy::cast_precision_loss)] // one decimal is shown
            let scaled = bytes as f64 / size as f64;
            return format!("{scaled:.1} {unit}");
        }
    }
    format!("{bytes} B")
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum TextOrNumber {
    Number(u64),
    Text(String),
}

/// serde helpers for `Option<Duration>` fields (`ttl: 1h`).
pub mod duration_opt {
    use super::{TextOrNumber, format_duration, parse_duration};
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Serialises as a humantime string.
    #[allow(clippy::ref_option)]
    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_str(&format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    /// Reads a humantime string or a number of seconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<TextOrNumber>::deserialize(d)? {
            None => Ok(None),
            Some(TextOrNumber::Number(secs)) => Ok(Some(Duration::from_secs(secs))),
            Some(TextOrNumber::Text(t)) => parse_duration(&t)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// serde helpers for `Option<u64>` byte sizes (`max_size: 512MiB`).
pub mod size_opt {
    use super::{TextOrNumber, format_size, parse_size};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialises as a size string.
    #[allow(clippy::ref_option)]
    pub fn serialize<S: Serializer>(value: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(n) => s.serialize_str(&format_size(*n)),
            None => s.serialize_none(),
        }
    }

    /// Reads a size string or a number of bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Option::<TextOrNumber>::deserialize(d)? {
            None => Ok(None),
            Some(TextOrNumber::Number(n)) => Ok(Some(n)),
            Some(TextOrNumber::Text(t)) => {
                parse_size(&t).map(Some).map_err(serde::de::Error::custom)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert_eq!(parse_duration("3600").unwrap(), Duration::from_secs(3600));
        assert!(
            parse_duration("soon")
                .unwrap_err()
                .contains("expected e.g.")
        );
    }

    #[test]
    fn approximate_sizes_use_the_largest_unit_reached() {
        assert_eq!(format_size_approx(0), "0 B");
        assert_eq!(format_size_approx(1023), "1023 B");
        assert_eq!(format_size_approx(12_400), "12.1 KiB");
        assert_eq!(format_size_approx(41 * (1 << 20) + 52_000), "41.0 MiB");
        assert_eq!(format_size_approx(3 << 30), "3.0 GiB");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1GB").unwrap(), 1_000_000_000);
        assert_eq!(parse_size("512 mib").unwrap(), 512 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1.5KiB").unwrap(), 1536);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("64XB").is_err());
        assert_eq!(format_size(512 << 20), "512MiB");
        assert_eq!(format_size(1000), "1000B");
    }

    #[test]
    fn every_unit_has_its_factor() {
        for (text, bytes) in [
            ("2", 2),
            ("2B", 2),
            ("2k", 2_000),
            ("2KB", 2_000),
            ("2KiB", 2 << 10),
            ("2m", 2_000_000),
            ("2MB", 2_000_000),
            ("2MiB", 2 << 20),
            ("2g", 2_000_000_000),
            ("2GB", 2_000_000_000),
            ("2GiB", 2 << 30),
            ("2t", 2_000_000_000_000),
            ("2TB", 2_000_000_000_000),
            ("2TiB", 2 << 40),
        ] {
            assert_eq!(parse_size(text).unwrap(), bytes, "{text}");
        }
        // Beyond what a u64 holds, or not a number at all.
        for bad in ["20000000TB", "1e400", "inf", "NaN", "-1"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exact_sizes_use_the_largest_unit_that_divides_them() {
        assert_eq!(format_size(0), "0B");
        assert_eq!(format_size(1 << 10), "1KiB");
        assert_eq!(format_size(3 << 40), "3TiB");
        // Reaches a MiB but is not a whole number of them.
        assert_eq!(format_size((1 << 20) + (1 << 10)), "1025KiB");
        assert_eq!(format_size((1 << 20) + 1), "1048577B");
        for bytes in [1, 1 << 10, 5 << 20, 7 << 30, 3 << 40, 1000] {
            assert_eq!(parse_size(&format_size(bytes)).unwrap(), bytes);
        }
    }

    #[test]
    fn durations_format_as_they_parse() {
        assert_eq!(format_duration(Duration::from_secs(90)), "1m 30s");
        assert_eq!(
            parse_duration(&format_duration(Duration::from_secs(7 * 86_400))).unwrap(),
            Duration::from_secs(7 * 86_400)
        );
    }

    /// The serde helpers read text or numbers, and nothing for a missing
    /// value.
    #[test]
    fn config_fields_read_text_numbers_or_nothing() {
        #[derive(serde::Deserialize, serde::Serialize, Debug, PartialEq)]
        struct Fields {
            #[serde(default, with = "duration_opt")]
            ttl: Option<Duration>,
            #[serde(default, with = "size_opt")]
            max_size: Option<u64>,
        }
        let read = |json: &str| serde_json::from_str::<Fields>(json).unwrap();
        assert_eq!(
            read(r#"{"ttl": "1h", "max_size": "64MiB"}"#),
            Fields {
                ttl: Some(Duration::from_secs(3600)),
                max_size: Some(64 << 20)
            }
        );
        assert_eq!(
            read(r#"{"ttl": 90, "max_size": 4096}"#),
            Fields {
                ttl: Some(Duration::from_secs(90)),
                max_size: Some(4096)
            }
        );
        assert_eq!(
            read(r#"{"ttl": null}"#),
            Fields {
                ttl: None,
                max_size: None
            }
        );
        for bad in [r#"{"ttl": "soon"}"#, r#"{"max_size": "lots"}"#] {
            let err = serde_json::from_str::<Fields>(bad).unwrap_err();
            assert!(err.to_string().contains("expected e.g."), "{err}");
        }
        let written =
            serde_json::to_string(&read(r#"{"ttl": "1h", "max_size": "64MiB"}"#)).unwrap();
        assert_eq!(written, r#"{"ttl":"1h","max_size":"64MiB"}"#);
    }
}
