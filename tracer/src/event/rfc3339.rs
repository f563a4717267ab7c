//! serde for `SystemTime` as RFC 3339 with milliseconds (`2026-11-23T00:12:03.114Z`).

use std::time::SystemTime;

use serde::{Deserialize, Deserializer, Serializer};

pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
    parse(&std::borrow::Cow::<str>::deserialize(d)?)
}

fn parse<E: serde::de::Error>(s: &str) -> Result<SystemTime, E> {
    humantime::parse_rfc3339_weak(s).map_err(E::custom)
}

/// The same with nanoseconds, for a time that others are derived from (the log
/// header's boot time: a line's wall time is it plus the line's `ns`).
pub mod nanos {
    use std::time::SystemTime;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_nanos(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        super::deserialize(d)
    }
}

/// An optional RFC 3339 time (a key older log versions wrote and newer ones derive).
pub mod option {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        Option::<std::borrow::Cow<'_, str>>::deserialize(d)?
            .map(|s| super::parse(&s))
            .transpose()
    }
}
