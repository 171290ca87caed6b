//! JSON values as the user wrote them. `serde_json::Value` keeps numbers as
//! `u64`, `i64` or `f64`, so `12345678901234567890123` or `1.50` would come
//! back changed; the CLI keeps the text instead (`RawValue`), which the JSON
//! codec stores verbatim. Codecs that are not text (MessagePack, bincode)
//! get the value, and a number they cannot hold exactly is refused rather
//! than rounded.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// A JSON value: its text as written (from the command line, a fetch
/// command, or an entry of the JSON codec), or a decoded value (from an
/// entry of another codec).
#[derive(Debug)]
pub(crate) enum Json {
    Text(Box<RawValue>),
    Value(serde_json::Value),
}

impl Json {
    /// Parses and validates JSON text, keeping it as written.
    pub(crate) fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str::<Box<RawValue>>(text).map(Self::Text)
    }

    /// The value on one line (text as written, without the whitespace
    /// around it).
    pub(crate) fn to_line(&self) -> String {
        match self {
            Self::Text(raw) => raw.get().trim().to_owned(),
            Self::Value(value) => value.to_string(),
        }
    }

    /// The value laid out for people; text as written is shown as written.
    pub(crate) fn to_pretty(&self) -> String {
        match self {
            Self::Text(_) => self.to_line(),
            Self::Value(value) => {
                serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
            }
        }
    }
}

impl Json {
    /// The first number of the text a binary codec (64-bit integers and
    /// floats) cannot hold exactly.
    pub(crate) fn inexact_number(&self) -> Option<&str> {
        match self {
            Self::Text(raw) => inexact_number(raw.get()),
            Self::Value(_) => None,
        }
    }
}

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            // The JSON codec writes the text verbatim.
            Self::Text(raw) if serializer.is_human_readable() => raw.serialize(serializer),
            Self::Text(raw) => {
                if let Some(number) = self.inexact_number() {
                    return Err(serde::ser::Error::custom(format!(
                        "the number {number} cannot be stored exactly by this codec (it holds 64-bit integers and 64-bit floats); store it as a JSON string, or use `codec: json`"
                    )));
                }
                let value: serde_json::Value =
                    serde_json::from_str(raw.get()).map_err(serde::ser::Error::custom)?;
                value.serialize(serializer)
            }
            Self::Value(value) => value.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            // Only the JSON codec is human-readable: its bytes are the text.
            Box::<RawValue>::deserialize(deserializer).map(Self::Text)
        } else {
            serde_json::Value::deserialize(deserializer).map(Self::Value)
        }
    }
}

/// The first number in valid JSON `text` that a 64-bit integer or float
/// does not hold exactly (same value, whatever its spelling: `1.50` is
/// `1.5`, which a float holds; `0.1` reads back as `0.1`).
fn inexact_number(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // Skip the string, escapes included.
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let number = &text[start..i];
                if !held_exactly(number) {
                    return Some(number);
                }
            }
            _ => i += 1,
        }
    }
    None
}

fn held_exactly(number: &str) -> bool {
    let integer = !number.contains(['.', 'e', 'E']);
    if integer {
        return number.parse::<i64>().is_ok() || number.parse::<u64>().is_ok();
    }
    match number.parse::<f64>() {
        Ok(float) if float.is_finite() => decimal(&float.to_string()) == decimal(number),
        _ => false,
    }
}

/// A decimal number as (negative, significant digits, power of ten), so
/// that two spellings of one value compare equal.
fn decimal(text: &str) -> (bool, String, i64) {
    let (negative, text) = text
        .strip_prefix('-')
        .map_or((false, text), |rest| (true, rest));
    let (mantissa, exponent) = text
        .split_once(['e', 'E'])
        .map_or((text, 0), |(m, e)| (m, e.parse::<i64>().unwrap_or(0)));
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut digits: String = format!("{whole}{fraction}")
        .trim_start_matches('0')
        .to_owned();
    let mut power = exponent - fraction.len() as i64;
    while digits.ends_with('0') {
        digits.pop();
        power += 1;
    }
    if digits.is_empty() {
        return (false, digits, 0);
    }
    (negative, digits, power)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_a_float_or_a_64_bit_integer_holds_are_told_apart() {
        for exact in [
            "0",
            "-0",
            "1.50",
            "0.1",
            "1e22",
            "-9223372036854775808",
            "18446744073709551615",
            "2.5e-3",
            "100.000",
        ] {
            assert!(held_exactly(exact), "{exact}");
        }
        for inexact in [
            "12345678901234567890123",
            "18446744073709551616",
            "3.14159265358979323846",
            "0.30000000000000000001",
            "1e400",
        ] {
            assert!(!held_exactly(inexact), "{inexact}");
        }
        assert_eq!(
            inexact_number(
                r#"{"a":"12345678901234567890123","b":[1,2.0,12345678901234567890123]}"#
            ),
            Some("12345678901234567890123")
        );
        assert_eq!(inexact_number(r#"{"a\"1":1.50}"#), None);
    }
}
