//! What Umami records as a visitor's browser, OS and device: the rules of the npm package
//! `detect-browser` (5.3, which Umami's `src/lib/detect.ts` calls as `browserName(ua)` and
//! `detectOS(ua)`) and Umami's own `getDevice(screen, os)`.
//!
//! Only the rules a Rust client's user agent can meet are modelled, in `detect-browser`'s order
//! (the first match wins): the common browsers, webviews and `curl`. A user agent no rule
//! matches gets no browser at all, which is what a plain `Mozilla/5.0 (X11; Linux x86_64)
//! myapp/1.0` gets from the real server. The OS rules are independent of the browser's.

/// `<name>` followed by `[0-9._]+` and then whitespace, the end, or anything (`end` false).
fn versioned(ua: &str, name: &str, end: bool) -> bool {
    ua.match_indices(name).any(|(i, _)| {
        let rest = &ua[i + name.len()..];
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_')).unwrap_or(rest.len());
        digits > 0 && (!end || rest[digits..].is_empty() || rest[digits..].starts_with(char::is_whitespace))
    })
}

/// `a` and later `b`.
fn then(ua: &str, a: &str, b: &str) -> bool {
    ua.find(a).is_some_and(|i| ua[i + a.len()..].contains(b))
}

/// One browser rule: its name and whether it matches.
type Rule<'a> = (&'static str, &'a dyn Fn(&str) -> bool);

/// `detect-browser`'s `browserName(ua)`: the name of the first rule that matches.
pub(crate) fn browser(ua: &str) -> Option<&'static str> {
    // `(?!Chrom.*OPR)Chrom(?:e|ium)/v(\s|$)`: Chrome, unless Opera's token follows.
    let chrome =
        |ua: &str| (versioned(ua, "Chrome/", true) || versioned(ua, "Chromium/", true)) && !then(ua, "Chrom", "OPR");
    let rules: [Rule<'_>; 18] = [
        ("aol", &|ua| versioned(ua, "AOLShield/", false)),
        ("edge", &|ua| versioned(ua, "Edge/", false)),
        ("edge-ios", &|ua| versioned(ua, "EdgiOS/", false)),
        ("yandexbrowser", &|ua| versioned(ua, "YaBrowser/", false)),
        ("samsung", &|ua| versioned(ua, "SamsungBrowser/", false)),
        ("edge-chromium", &|ua| versioned(ua, "Edg/", false) || versioned(ua, "EdgA/", false)),
        ("chromium-webview", &|ua| ua.find("wv)").is_some_and(|i| chrome(&ua[i..]))),
        ("chrome", &chrome),
        ("phantomjs", &|ua| versioned(ua, "PhantomJS/", true)),
        ("crios", &|ua| versioned(ua, "CriOS/", true)),
        ("firefox", &|ua| versioned(ua, "Firefox/", true)),
        ("fxios", &|ua| versioned(ua, "FxiOS/", false)),
        ("opera", &|ua| versioned(ua, "Opera/", true) || versioned(ua, "OPR/", true)),
        ("ie", &|ua| then(ua, "Trident/7.0", "rv:") || versioned(ua, "MSIE ", false)),
        ("android", &|ua| versioned(ua, "Android ", false)),
        ("ios", &|ua| ua.find("Version/").is_some_and(|i| then(&ua[i..], "Mobile", "Safari"))),
        ("safari", &|ua| then(ua, "Version/", "Safari")),
        ("ios-webview", &|ua| {
            then(ua, "AppleWebKit/", "Mobile") || (ua.contains("AppleWebKit/") && ua.ends_with("Gecko)"))
        }),
    ];
    if ua.is_empty() {
        return None;
    }
    if let Some((name, _)) = rules.iter().find(|(_, rule)| rule(ua)) {
        return Some(name);
    }
    // `^curl/v$`
    ua.strip_prefix("curl/")
        .filter(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .map(|_| "curl")
}

/// `detect-browser`'s `detectOS(ua)`.
pub(crate) fn os(ua: &str) -> Option<&'static str> {
    let any = |needles: &[&str]| needles.iter().any(|n| ua.contains(n));
    let rules: [(&str, &[&str]); 26] = [
        ("iOS", &["iPhone", "iPod", "iPad"]),
        ("Android OS", &["Android"]),
        ("BlackBerry OS", &["BlackBerry", "BB10"]),
        ("Windows Mobile", &["IEMobile"]),
        ("Amazon OS", &["Kindle"]),
        ("Windows 3.11", &["Win16"]),
        ("Windows 95", &["Windows 95", "Win95", "Windows_95"]),
        ("Windows 98", &["Windows 98", "Win98"]),
        ("Windows 2000", &["Windows NT 5.0", "Windows 2000"]),
        ("Windows XP", &["Windows NT 5.1", "Windows XP"]),
        ("Windows Server 2003", &["Windows NT 5.2"]),
        ("Windows Vista", &["Windows NT 6.0"]),
        ("Windows 7", &["Windows NT 6.1"]),
        ("Windows 8", &["Windows NT 6.2"]),
        ("Windows 8.1", &["Windows NT 6.3"]),
        ("Windows 10", &["Windows NT 10.0"]),
        ("Windows ME", &["Windows ME"]),
        ("Windows CE", &["Windows CE", "WinCE", "Microsoft Pocket Internet Explorer"]),
        ("Open BSD", &["OpenBSD"]),
        ("Sun OS", &["SunOS"]),
        ("Chrome OS", &["CrOS"]),
        ("Linux", &["Linux", "X11"]),
        ("Mac OS", &["Mac_PowerPC", "Macintosh"]),
        ("QNX", &["QNX"]),
        ("BeOS", &["BeOS"]),
        ("OS/2", &["OS/2"]),
    ];
    rules.iter().find(|(_, needles)| any(needles)).map(|(name, _)| *name)
}

/// Umami's `getDevice(screen, os)` (constants from its `src/lib/constants.ts`): no screen, no
/// device.
pub(crate) fn device(screen: Option<&str>, os: Option<&str>) -> Option<&'static str> {
    const DESKTOP_OS: &[&str] = &[
        "BeOS",
        "Chrome OS",
        "Linux",
        "Mac OS",
        "Open BSD",
        "OS/2",
        "QNX",
        "Sun OS",
        "Windows 10",
        "Windows 2000",
        "Windows 3.11",
        "Windows 7",
        "Windows 8",
        "Windows 8.1",
        "Windows 95",
        "Windows 98",
        "Windows ME",
        "Windows Server 2003",
        "Windows Vista",
        "Windows XP",
    ];
    const MOBILE_OS: &[&str] = &["Amazon OS", "Android OS", "BlackBerry OS", "iOS", "Windows Mobile"];
    let width: f64 = screen?.split('x').next()?.trim().parse().unwrap_or(f64::NAN);
    let os = os.unwrap_or("");
    Some(if DESKTOP_OS.contains(&os) {
        if os == "Chrome OS" || width < 1920.0 { "laptop" } else { "desktop" }
    } else if MOBILE_OS.contains(&os) {
        if os == "Amazon OS" || width > 479.0 { "tablet" } else { "mobile" }
    } else if width >= 1920.0 {
        "desktop"
    } else if width >= 1024.0 {
        "laptop"
    } else if width >= 479.0 {
        "tablet"
    } else {
        "mobile"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_and_systems_as_detect_browser_names_them() {
        let cases = [
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
                Some("chrome"),
                Some("Windows 10"),
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.0.0",
                Some("edge-chromium"),
                Some("Windows 10"),
            ),
            (
                "Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 OPR/106.0.0.0",
                Some("opera"),
                Some("Windows 10"),
            ),
            ("Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0", Some("firefox"), Some("Linux")),
            (
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15",
                Some("safari"),
                Some("Mac OS"),
            ),
            (
                "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
                Some("ios"),
                Some("iOS"),
            ),
            (
                "Mozilla/5.0 (Linux; Android 10; K; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/120.0.0.0 Mobile Safari/537.36",
                Some("chromium-webview"),
                Some("Android OS"),
            ),
            ("Mozilla/5.0 (X11; Linux x86_64) myapp/1.2.3", None, Some("Linux")),
            ("Mozilla/5.0 (Java; 1.0; Unknown) UmamiKmpSdk/1.0.0", None, None),
            ("curl/8.0.1", Some("curl"), None),
            ("", None, None),
        ];
        for (ua, b, o) in cases {
            assert_eq!((browser(ua), os(ua)), (b, o), "{ua}");
        }
    }

    #[test]
    fn devices_from_screen_and_os() {
        assert_eq!(device(Some("1920x1080"), Some("Linux")), Some("desktop"));
        assert_eq!(device(Some("1440x900"), Some("Mac OS")), Some("laptop"));
        assert_eq!(device(Some("390x844"), Some("iOS")), Some("mobile"));
        assert_eq!(device(Some("1024x768"), None), Some("laptop"));
        assert_eq!(device(None, Some("Linux")), None);
    }
}
