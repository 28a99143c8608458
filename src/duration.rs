//! Durations in config files, as humantime strings ("150ms", "10s", "90d"): the one serde
//! helper for them, used by the daemon's config and the hot path's client and server configs.
//!
//! Invariant: a value that is not a duration is refused with the text it was and an example of
//! what is wanted; where zero makes no sense (`nonzero`) it is refused too, never taken as
//! "off".

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Any duration, zero included: `#[serde(with = "crate::duration")]`.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map_err(|e| serde::de::Error::custom(format!("{s:?} is not a duration like \"10s\": {e}")))
}

/// A duration above zero: `#[serde(deserialize_with = "crate::duration::nonzero")]`.
pub(crate) fn nonzero<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let v = deserialize(d)?;
    if v.is_zero() {
        return Err(serde::de::Error::custom("a duration of zero is not allowed"));
    }
    Ok(v)
}

/// An optional duration above zero (absent: `None`, with `#[serde(default)]`).
pub(crate) fn optional_nonzero<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    nonzero(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct T {
        #[serde(default, with = "super")]
        any: Duration,
        #[serde(default, deserialize_with = "nonzero")]
        positive: Duration,
    }

    #[test]
    fn humantime_strings_parse_and_zero_is_refused_only_where_it_makes_no_sense() {
        let t: T = toml::from_str("any = \"0s\"\npositive = \"1m 30s\"").unwrap();
        assert_eq!((t.any, t.positive), (Duration::ZERO, Duration::from_secs(90)));
        let e = toml::from_str::<T>("positive = \"0ms\"").unwrap_err().to_string();
        assert!(e.contains("zero is not allowed"), "{e}");
        let e = toml::from_str::<T>("any = \"soon\"").unwrap_err().to_string();
        assert!(e.contains("\"soon\" is not a duration like \"10s\""), "{e}");
    }
}
