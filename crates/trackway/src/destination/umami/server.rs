//! What the destination knows of its server's release: the version configured with
//! [`Umami::server_version`](super::Umami::server_version), and what the server's answers showed
//! (kept in the stored state, keyed to the base URL and the website, and forgotten after
//! [`REPROBE_AFTER`]). Both narrow a range of releases; the fields the server cannot store, the
//! endpoint and the user agent follow from it.

use std::fmt;
use std::time::Duration;

use crate::destination::DestinationState;

/// How long a lesson about the server holds before it is tested again: a server is upgraded,
/// a proxy in front of it is fixed, and a choice must not outlive its reason.
pub const REPROBE_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// An Umami release, `major.minor.patch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Version(u16, u16, u16);

impl Version {
    /// No release is older.
    const ZERO: Version = Version(0, 0, 0);
    /// No release is newer.
    const MAX: Version = Version(u16::MAX, u16::MAX, u16::MAX);

    /// The release after every `major.minor.patch`.x (the exclusive end of one release).
    fn next(self) -> Version {
        Version(self.0, self.1, self.2.saturating_add(1))
    }

    /// `3`, `3.1`, `v2.10.0` (a missing part is 0).
    pub(super) fn parse(s: &str) -> Option<Version> {
        let mut parts = s.trim().trim_start_matches('v').split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        let patch = parts.next().map_or(Some(0), |p| p.parse().ok())?;
        parts.next().is_none().then_some(Version(major, minor, patch))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// `tag` is stored from this release on.
pub(super) const TAG_SINCE: Version = Version(2, 11, 0);
/// `timestamp` is stored (and `/api/batch` exists) from this release on.
pub(super) const TIMESTAMP_SINCE: Version = Version(2, 17, 0);
/// `/api/batch` exists from this release on.
pub(super) const BATCH_SINCE: Version = Version(2, 17, 0);
/// The distinct `id` is stored from this release on.
pub(super) const ID_SINCE: Version = Version(2, 18, 0);
/// `/api/batch` works (it could answer 500 before) and answers a `cache`; `browser`, `os` and
/// `device` in the payload override the user agent's parsing.
pub(super) const CLIENT_INFO_SINCE: Version = Version(3, 0, 2);

/// What an answer showed about the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fact {
    /// `/api/batch` 404 (or 405) while `/api/send` works: older than 2.17.
    Before2_17,
    /// `/api/batch` 500 while `/api/send` works: a batch route that fails (2.17 to 3.0.1).
    BatchBroken,
    /// `/api/batch` answered without a `cache`: 2.17 to 3.0.1.
    BatchWithoutCache,
    /// `/api/batch` answered a `cache`: 3.0.2 or newer.
    BatchWithCache,
}

impl Fact {
    fn as_str(self) -> &'static str {
        match self {
            Fact::Before2_17 => "before-2.17",
            Fact::BatchBroken => "batch-broken",
            Fact::BatchWithoutCache => "2.17-3.0.1",
            Fact::BatchWithCache => "3.0.2+",
        }
    }

    fn from_str(s: &str) -> Option<Fact> {
        [Fact::Before2_17, Fact::BatchBroken, Fact::BatchWithoutCache, Fact::BatchWithCache]
            .into_iter()
            .find(|f| f.as_str() == s)
    }

    /// The releases it leaves: `[lo, hi)`.
    fn range(self) -> Range {
        match self {
            Fact::Before2_17 => Range { lo: Version::ZERO, hi: BATCH_SINCE },
            Fact::BatchBroken | Fact::BatchWithoutCache => Range { lo: BATCH_SINCE, hi: CLIENT_INFO_SINCE },
            Fact::BatchWithCache => Range { lo: CLIENT_INFO_SINCE, hi: Version::MAX },
        }
    }

    /// What the warning says the lesson came from.
    pub(super) fn source(self) -> &'static str {
        match self {
            Fact::Before2_17 => "a 404 on /api/batch while /api/send works",
            Fact::BatchBroken => "a 500 on /api/batch while /api/send works",
            Fact::BatchWithoutCache => "an /api/batch answer without a cache token",
            Fact::BatchWithCache => "an /api/batch answer with a cache token",
        }
    }
}

/// The releases the server may be, `[lo, hi)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Range {
    lo: Version,
    hi: Version,
}

impl Range {
    /// Any release.
    pub(super) const ANY: Range = Range { lo: Version::ZERO, hi: Version::MAX };

    /// Exactly the configured release.
    pub(super) fn exactly(v: Version) -> Range {
        Range { lo: v, hi: v.next() }
    }

    /// Both, or `learned` alone when they contradict each other: what the server did beats what
    /// it was said to be.
    pub(super) fn narrow(self, learned: Range) -> Range {
        let both = Range { lo: self.lo.max(learned.lo), hi: self.hi.min(learned.hi) };
        if both.lo < both.hi { both } else { learned }
    }

    /// Surely older than `since`: a field from `since` on is dropped.
    pub(super) fn before(self, since: Version) -> bool {
        self.hi <= since
    }

    /// Surely `since` or newer.
    pub(super) fn from(self, since: Version) -> bool {
        self.lo >= since
    }

    /// The fields (from those this module knows) that a server in this range drops.
    pub(super) fn dropped_fields(self) -> Vec<&'static str> {
        [("tag", TAG_SINCE), ("timestamp", TIMESTAMP_SINCE), ("id", ID_SINCE)]
            .into_iter()
            .filter(|(_, since)| self.before(*since))
            .map(|(f, _)| f)
            .collect()
    }

    /// "older than 2.17", "2.17.0 to 3.0.1", "3.1.0": for messages.
    pub(super) fn describe(self) -> String {
        match (self.lo, self.hi) {
            (Version::ZERO, hi) => format!("older than {}.{}", hi.0, hi.1),
            (lo, Version::MAX) => format!("{lo} or newer"),
            (lo, hi) if hi == lo.next() => format!("{lo}"),
            (lo, hi) => format!("at least {lo} and older than {hi}"),
        }
    }
}

/// The stored-state key of what was learned about the server at `base_url` for `website`, and
/// of a pending probe there. FNV-1a like the cache keys: stable across versions and runs.
pub(super) fn keys(base_url: &str, website: &str) -> (String, String) {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in base_url.trim_end_matches('/').bytes().chain([0xff]).chain(website.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (format!("server/{h:016x}"), format!("probe/{h:016x}"))
}

/// A stored lesson: the fact and when it was learned (Unix seconds).
pub(super) fn encode_fact(fact: Fact, at_secs: i64) -> Vec<u8> {
    format!("{} {at_secs}", fact.as_str()).into_bytes()
}

/// The lesson stored under `key`, unless it is older than [`REPROBE_AFTER`] at `now_secs`.
pub(super) fn fresh_fact(state: &DestinationState, key: &str, now_secs: i64) -> Option<Fact> {
    let text = std::str::from_utf8(state.get(key)?).ok()?;
    let (fact, at) = text.split_once(' ')?;
    let at: i64 = at.parse().ok()?;
    let max_age = i64::try_from(REPROBE_AFTER.as_secs()).unwrap_or(i64::MAX);
    (now_secs.saturating_sub(at) < max_age).then_some(())?;
    Fact::from_str(fact)
}

/// The range a fact leaves, on top of what was configured.
pub(super) fn range(configured: Option<Version>, fact: Option<Fact>) -> Range {
    let base = configured.map_or(Range::ANY, Range::exactly);
    match fact {
        Some(f) => base.narrow(f.range()),
        None => base,
    }
}

/// The version table of the module docs, for the docs test that keeps them in step.
#[cfg(test)]
pub(super) fn table_row(v: &str) -> (bool, Vec<&'static str>, bool) {
    let r = Range::exactly(Version::parse(v).expect("version"));
    (!r.before(BATCH_SINCE), r.dropped_fields(), r.from(CLIENT_INFO_SINCE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order() {
        assert_eq!(Version::parse("2.10"), Some(Version(2, 10, 0)));
        assert_eq!(Version::parse("v3.0.2"), Some(Version(3, 0, 2)));
        assert_eq!(Version::parse("3"), Some(Version(3, 0, 0)));
        assert!(Version::parse("3.x").is_none() && Version::parse("").is_none() && Version::parse("1.2.3.4").is_none());
        assert!(Version(2, 9, 9) < TAG_SINCE && Version(2, 17, 0) >= TIMESTAMP_SINCE);
    }

    #[test]
    fn the_version_table() {
        assert_eq!(table_row("2.10"), (false, vec!["tag", "timestamp", "id"], false));
        assert_eq!(table_row("2.15"), (false, vec!["timestamp", "id"], false));
        assert_eq!(table_row("2.17"), (true, vec!["id"], false));
        assert_eq!(table_row("2.18"), (true, vec![], false));
        assert_eq!(table_row("3.0.2"), (true, vec![], true));
        assert_eq!(table_row("3.1"), (true, vec![], true));
    }

    #[test]
    fn learned_facts_narrow_and_win_a_contradiction() {
        let old = range(None, Some(Fact::Before2_17));
        assert_eq!(old.dropped_fields(), ["timestamp", "id"], "tag is unknown before 2.17");
        assert_eq!(old.describe(), "older than 2.17");
        assert_eq!(range(Version::parse("2.10"), Some(Fact::Before2_17)).dropped_fields(), ["tag", "timestamp", "id"]);
        assert_eq!(range(Version::parse("3.1"), Some(Fact::Before2_17)), old, "the server's answer wins");
        assert!(range(None, Some(Fact::BatchWithCache)).from(CLIENT_INFO_SINCE));
        assert!(range(None, None).dropped_fields().is_empty(), "nothing is counted while nothing is known");
    }

    #[test]
    fn stored_facts_expire() {
        let (key, _) = keys("http://a/", "site");
        let mut state = DestinationState::default();
        state.apply(&[(key.clone(), Some(encode_fact(Fact::Before2_17, 1_000)))]);
        assert_eq!(fresh_fact(&state, &key, 1_000 + 60), Some(Fact::Before2_17));
        let later = 1_000 + i64::try_from(REPROBE_AFTER.as_secs()).expect("secs");
        assert_eq!(fresh_fact(&state, &key, later), None);
        assert_ne!(keys("http://a", "site").0, keys("http://b", "site").0);
        assert_ne!(keys("http://a", "site").0, keys("http://a", "other").0);
        assert_eq!(keys("http://a/", "site"), keys("http://a", "site"));
    }
}
