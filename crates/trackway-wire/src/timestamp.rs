//! UTC timestamps with millisecond precision, serialized as RFC 3339 (`2026-11-23T08:04:41.123Z`).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time, UTC, in milliseconds since the Unix epoch.
///
/// Timestamps are taken on the caller's thread when an event is enqueued, never at send time, so a
/// batch that waits offline for an hour still carries the time each event happened.
///
/// ```
/// use trackway_wire::Timestamp;
/// let t = Timestamp::from_unix_millis(1_700_000_000_123);
/// assert_eq!(t.to_string(), "2023-11-14T22:13:20.123Z");
/// assert_eq!("2023-11-14T22:13:20.123Z".parse::<Timestamp>().unwrap(), t);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The timestamp `millis` milliseconds after the Unix epoch (negative: before it).
    pub const fn from_unix_millis(millis: i64) -> Self {
        Timestamp(millis)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn unix_millis(self) -> i64 {
        self.0
    }

    /// Whole seconds since the Unix epoch (rounded down).
    pub const fn unix_seconds(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// The current system time. Falls back to the epoch if the system clock is before 1970.
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    /// The time `d` after this one, saturating.
    pub fn saturating_add(self, d: Duration) -> Self {
        Timestamp(self.0.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
    }

    /// How long after `earlier` this timestamp is; zero if it is not after it.
    pub fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            Err(e) => Timestamp(-i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX)),
        }
    }
}

/// Converts days since 1970-01-01 to a (year, month, day) civil date.
///
/// Howard Hinnant's `civil_from_days`; hand-written rather than calling `time`'s formatter because
/// this runs on the caller's thread for every event and must stay in the tens of nanoseconds.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl Timestamp {
    /// Writes the RFC 3339 form into a fixed buffer; returns the used length (24 for years 0..=9999).
    pub(crate) fn format_into(self, buf: &mut [u8; 32]) -> usize {
        let millis = self.0.rem_euclid(1000);
        let secs = self.0.div_euclid(1000);
        let days = secs.div_euclid(86_400);
        let sod = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        if !(0..=9999).contains(&year) {
            // Outside RFC 3339's four-digit years; fall back to the slow, general path.
            let s = format!(
                "{year:+07}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
                sod / 3600,
                sod / 60 % 60,
                sod % 60
            );
            let n = s.len().min(32);
            buf[..n].copy_from_slice(&s.as_bytes()[..n]);
            return n;
        }
        let digits = |buf: &mut [u8], mut v: i64, width: usize| {
            for slot in buf[..width].iter_mut().rev() {
                *slot = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        digits(&mut buf[0..], year, 4);
        buf[4] = b'-';
        digits(&mut buf[5..], i64::from(month), 2);
        buf[7] = b'-';
        digits(&mut buf[8..], i64::from(day), 2);
        buf[10] = b'T';
        digits(&mut buf[11..], sod / 3600, 2);
        buf[13] = b':';
        digits(&mut buf[14..], sod / 60 % 60, 2);
        buf[16] = b':';
        digits(&mut buf[17..], sod % 60, 2);
        buf[19] = b'.';
        digits(&mut buf[20..], millis, 3);
        buf[23] = b'Z';
        24
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 32];
        let n = self.format_into(&mut buf);
        f.write_str(std::str::from_utf8(&buf[..n]).map_err(|_| fmt::Error)?)
    }
}

/// The error returned when a string is not an RFC 3339 timestamp.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid timestamp {input:?}: expected RFC 3339, e.g. 2026-11-23T08:04:41.123Z")]
pub struct ParseTimestampError {
    input: String,
}

impl std::str::FromStr for Timestamp {
    type Err = ParseTimestampError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let error = || ParseTimestampError { input: s.to_owned() };
        let Ok(parsed) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) else {
            // Outside years 0..=9999 a timestamp is written in the expanded form; it must read back
            // (a stored or imported event carries it).
            return parse_expanded(s).ok_or_else(error);
        };
        let millis = parsed.unix_timestamp_nanos().div_euclid(1_000_000);
        i64::try_from(millis).map(Timestamp).map_err(|_| error())
    }
}

/// Parses the form [`Timestamp::format_into`] writes outside years 0..=9999 (ISO 8601's expanded
/// years): `±YYYYYY-MM-DDTHH:MM:SS.mmmZ`, six digits or more, UTC only.
fn parse_expanded(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    let sign: i128 = match b.first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits = b[1..].iter().take_while(|c| c.is_ascii_digit()).count();
    // The rest has a fixed shape: `-MM-DDTHH:MM:SS.mmmZ`.
    let rest = &b[1 + digits..];
    if !(6..=18).contains(&digits) || rest.len() != 20 {
        return None;
    }
    let number = |at: usize, len: usize| -> Option<i128> {
        let field = &rest[at..at + len];
        field.iter().all(u8::is_ascii_digit).then(|| field.iter().fold(0, |n, d| n * 10 + i128::from(d - b'0')))
    };
    let punctuation = [(0, b'-'), (3, b'-'), (6, b'T'), (9, b':'), (12, b':'), (15, b'.'), (19, b'Z')];
    if punctuation.iter().any(|&(at, c)| rest[at] != c) {
        return None;
    }
    let year = sign * b[1..1 + digits].iter().fold(0i128, |n, d| n * 10 + i128::from(d - b'0'));
    let (month, day) = (number(1, 2)?, number(4, 2)?);
    let (hour, minute, second, millis) = (number(7, 2)?, number(10, 2)?, number(13, 2)?, number(16, 3)?);
    let leap = year.rem_euclid(4) == 0 && (year.rem_euclid(100) != 0 || year.rem_euclid(400) == 0);
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if !(1..=month_days).contains(&day) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let total = ((days * 86_400 + hour * 3600 + minute * 60 + second) * 1000) + millis;
    i64::try_from(total).ok().map(Timestamp)
}

/// Days since 1970-01-01 of a (year, month, day) civil date: the inverse of [`civil_from_days`]
/// (Howard Hinnant's `days_from_civil`), in `i128` so no year can overflow it.
fn days_from_civil(year: i128, month: i128, day: i128) -> i128 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut buf = [0u8; 32];
        let n = self.format_into(&mut buf);
        let s = std::str::from_utf8(&buf[..n]).map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(s)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(Timestamp::from_unix_millis(0).to_string(), "1970-01-01T00:00:00.000Z");
        assert_eq!(Timestamp::from_unix_millis(951_782_400_000).to_string(), "2000-02-29T00:00:00.000Z");
        assert_eq!(Timestamp::from_unix_millis(-1).to_string(), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn format_agrees_with_time_crate_over_a_wide_range() {
        let mut ms: i64 = -2_000_000_000_000;
        while ms < 4_000_000_000_000 {
            let ours = Timestamp::from_unix_millis(ms).to_string();
            let parsed: Timestamp = ours.parse().expect("parses");
            assert_eq!(parsed.unix_millis(), ms, "{ours}");
            ms += 7_777_777_777;
        }
    }

    /// Checked by `fuzz/fuzz_targets/properties_value.rs` (stored events read back): an event
    /// imported with a date after 9999 was stored in the expanded form and could not be read
    /// back ("stored event is not valid").
    #[test]
    fn timestamps_outside_four_digit_years_read_back() {
        for ms in [253_402_300_800_000, -62_167_219_200_001, -62_162_035_200_000, i64::MAX, i64::MIN, 1 << 60] {
            let t = Timestamp::from_unix_millis(ms);
            let text = t.to_string();
            assert_eq!(text.parse::<Timestamp>().ok(), Some(t), "{text}");
            let json = serde_json::to_string(&t).expect("serializes");
            assert_eq!(serde_json::from_str::<Timestamp>(&json).ok(), Some(t), "{json}");
        }
        assert_eq!(Timestamp::from_unix_millis(253_402_300_800_000).to_string(), "+010000-01-01T00:00:00.000Z");
        for bad in [
            "+010000-02-30T00:00:00.000Z",
            "+010001-02-29T00:00:00.000Z",
            "+01000-01-01T00:00:00.000Z",
            "+010000-01-01T24:00:00.000Z",
            "+010000-01-01T00:00:00.000+01:00",
            "+999999999999999999-01-01T00:00:00.000Z",
            "+0100é0-01-01T00:00:00.000Z",
        ] {
            assert!(bad.parse::<Timestamp>().is_err(), "{bad}");
        }
        assert!("+010004-02-29T00:00:00.000Z".parse::<Timestamp>().is_ok(), "a leap day");
    }

    #[test]
    fn parses_offsets_and_rejects_garbage() {
        let t: Timestamp = "2026-11-23T09:00:00+01:00".parse().expect("offset");
        assert_eq!(t.to_string(), "2026-11-23T08:00:00.000Z");
        assert!("yesterday".parse::<Timestamp>().is_err());
    }
}
