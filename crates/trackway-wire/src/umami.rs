//! Umami's collection protocol facts shared by the SDK's destination and the collector's backend:
//! its limits (counted in UTF-16 code units, as JavaScript's `string.length` does), its bot check,
//! and the date form it types as a date. See `specs/umami.md` in the design documents.

/// The reserved property a message's `tag` is kept under until a destination sends it as
/// Umami's `tag` (set by `Track::tag(..)` and the like in the SDK).
pub const TAG_PROPERTY: &str = "$tag";
/// The reserved property a custom event's or identify's URL is kept under (Umami's `url`).
pub const URL_PROPERTY: &str = "$url";

/// Most UTF-16 units of an event `name` (zod `max(50)`; a 400 beyond).
pub const NAME_MAX: usize = 50;
/// Most UTF-16 units of a `tag` (zod `max(50)`).
pub const TAG_MAX: usize = 50;
/// Most UTF-16 units of the distinct `id` (Postgres `varchar(50)`: a 500 beyond).
pub const ID_MAX: usize = 50;
/// Most UTF-16 units of `hostname` (zod `max(100)`).
pub const HOSTNAME_MAX: usize = 100;
/// Most UTF-16 units of `language` (zod `max(35)`).
pub const LANGUAGE_MAX: usize = 35;
/// Most UTF-16 units of `screen` (zod `max(11)`).
pub const SCREEN_MAX: usize = 11;
/// What the server keeps of a `title`, a `url` path and of each event-data key or string value.
pub const TEXT_MAX: usize = 500;

/// The length of `s` as the server counts it: UTF-16 code units (`"😀"` is 2, `"é"` is 1).
pub fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

/// The longest prefix of `s` that is at most `max` UTF-16 units, never splitting a character.
pub fn truncate_utf16(s: &str, max: usize) -> &str {
    let mut units = 0;
    for (i, c) in s.char_indices() {
        units += c.len_utf16();
        if units > max {
            return &s[..i];
        }
    }
    s
}

/// Whether Umami's bot check (`isbot` 5.1.37, on by default) would discard requests with this
/// user agent. Such requests are answered 200 `{"beep":"boop"}` on `/api/send` and silently
/// counted as processed on `/api/batch`.
///
/// This is a hand-written subset of isbot's patterns, checked against every user agent in the
/// spec's table (§2.1): bare `name/version` agents (`curl/8.0.1`, `reqwest/0.12`,
/// `my-rust-app/1.0`), `Mozilla/5.0 (compatible; …)`, headless browsers, `Node/…`, and the
/// usual crawler words. It errs on the side of calling an agent a bot: a false positive costs a
/// configuration change, a false negative costs data lost without a word.
///
/// ```
/// use trackway_wire::umami::is_bot_user_agent;
/// assert!(is_bot_user_agent("curl/8.0.1"));
/// assert!(!is_bot_user_agent("Mozilla/5.0 (X11; Linux x86_64) my-rust-app/1.0"));
/// ```
pub fn is_bot_user_agent(ua: &str) -> bool {
    let ua = ua.trim();
    if ua.is_empty() {
        // Accepted by the server (browser and OS come out empty).
        return false;
    }
    let lower = ua.to_ascii_lowercase();
    // A "naked" agent: one `name/version` token and nothing else, as HTTP libraries send.
    if !lower.contains(' ') && !lower.contains('(') {
        return true;
    }
    if lower.starts_with("mozilla/5.0 (compatible") {
        return true;
    }
    const WORDS: &[&str] = &[
        "bot",
        "crawl",
        "spider",
        "slurp",
        "headless",
        "phantomjs",
        "puppeteer",
        "playwright",
        "selenium",
        "lighthouse",
        "curl/",
        "wget/",
        "python",
        "java/",
        "okhttp",
        "go-http-client",
        "node/",
        "node.js",
        "axios/",
        "reqwest/",
        "libwww",
        "httpclient",
        "scrapy",
        "fetch/",
        "http_request",
        "preview",
        "monitor",
        "scanner",
        "validator",
    ];
    WORDS.iter().any(|w| lower.contains(w))
}

/// Whether `s` has the form Umami types as a date in event and session data:
/// `YYYY-MM-DDTHH:MM:SS` optionally followed by `.sss` and then optionally `Z` or `+HH:MM`.
pub fn is_umami_date(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let at = |i: usize, c: u8| b.get(i) == Some(&c);
    let base = digits(0..4)
        && at(4, b'-')
        && digits(5..7)
        && at(7, b'-')
        && digits(8..10)
        && at(10, b'T')
        && digits(11..13)
        && at(13, b':')
        && digits(14..16)
        && at(16, b':')
        && digits(17..19);
    if !base {
        return false;
    }
    match b.len() {
        19 => true,
        23 => at(19, b'.') && digits(20..23),
        24 => at(19, b'.') && digits(20..23) && at(23, b'Z'),
        29 => at(19, b'.') && digits(20..23) && at(23, b'+') && digits(24..26) && at(26, b':') && digits(27..29),
        _ => false,
    }
}

/// Whether `s` is a UUID in the textual form zod's `z.uuid()` accepts (8-4-4-4-12 hex digits,
/// version 1 to 8, RFC variant; either case).
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 36 {
        return false;
    }
    for (i, c) in b.iter().enumerate() {
        let ok = match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        };
        if !ok {
            return false;
        }
    }
    matches!(b[14], b'1'..=b'8') && matches!(b[19].to_ascii_lowercase(), b'8' | b'9' | b'a' | b'b')
}

/// Whether `s` has the `WxH` form of a screen size (`1920x1080`).
pub fn is_screen(s: &str) -> bool {
    match s.split_once('x') {
        Some((w, h)) => {
            !w.is_empty()
                && !h.is_empty()
                && w.bytes().all(|c| c.is_ascii_digit())
                && h.bytes().all(|c| c.is_ascii_digit())
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_utf16_units() {
        assert_eq!(utf16_len(&"😀".repeat(25)), 50);
        assert_eq!(utf16_len(&"é".repeat(50)), 50);
        assert_eq!(truncate_utf16("a😀b", 2), "a");
        assert_eq!(truncate_utf16("a😀b", 3), "a😀");
        assert_eq!(truncate_utf16("abc", 10), "abc");
    }

    #[test]
    fn bot_check_agrees_with_the_spec_table() {
        for ua in [
            "Mozilla/5.0 (Java; 1.0; Unknown) UmamiKmpSdk/1.0.0",
            "Mozilla/5.0 Umami/v20.0.0",
            "Mozilla/5.0 (X11; Linux x86_64) my-rust-app/1.0",
            "",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
        ] {
            assert!(!is_bot_user_agent(ua), "{ua}");
        }
        for ua in [
            "Mozilla/5.0 Node/v20.0.0",
            "reqwest/0.12",
            "my-rust-app/1.0",
            "curl/8.0.1",
            "Mozilla/5.0 (compatible; MyApp/1.0)",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0 Safari/537.36",
        ] {
            assert!(is_bot_user_agent(ua), "{ua}");
        }
    }

    #[test]
    fn date_form() {
        assert!(is_umami_date("2024-01-15T10:00:00.000Z"));
        assert!(is_umami_date("2024-01-15T10:00:00"));
        assert!(is_umami_date("2024-01-15T10:00:00.000+01:00"));
        assert!(!is_umami_date("2024-01-15T10:00:00Z"));
        assert!(!is_umami_date("2024-01-15"));
    }

    #[test]
    fn uuid_and_screen_forms() {
        assert!(is_uuid("b59e9c65-ae32-47f1-8400-119fcf4861c4"));
        assert!(is_uuid("B59E9C65-AE32-47F1-8400-119FCF4861C4"));
        assert!(!is_uuid("b59e9c65-ae32-07f1-8400-119fcf4861c4"));
        assert!(!is_uuid("not-a-uuid"));
        assert!(is_screen("1920x1080"));
        assert!(!is_screen("1920 x 1080"));
        assert!(!is_screen("x1080"));
    }
}
