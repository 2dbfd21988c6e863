//! Secrets kept out of what a server answers.
//!
//! A server may put the request it got into its answer: a debugging endpoint, a proxy's error
//! page, a hostile server. That answer becomes a dead letter's detail, a destination's
//! `last_error`, a log line and the CLI's output, so the secrets the request carried would end
//! up in all of them. Every answer body is therefore searched for the secret values of its
//! request before anything reads it, and each one found is replaced by `<redacted>`.
//!
//! The secrets are the values of the headers set with `HttpOptions::header` (trackway's place for
//! credentials) and, among the headers the destination set itself, those that carry credentials
//! by their name (`authorization`, `proxy-authorization`, `cookie`, and any name with `key`,
//! `token`, `secret` or `auth` in it) or are marked sensitive. Besides each whole value, the
//! credential after an auth scheme (`Bearer <token>`) and, for `Basic`, the decoded
//! `user:password` and the password alone are searched for, as is each with `/` escaped as `\/`
//! (as some JSON encoders write it). Values shorter than [`MIN_SECRET`] bytes are not searched
//! for: they would match ordinary text, and no real credential is that short.

use bytes::Bytes;
use http::HeaderMap;

/// What replaces a secret in an answer.
pub(crate) const REDACTED: &[u8] = b"<redacted>";

/// The shortest value searched for.
pub(crate) const MIN_SECRET: usize = 8;

/// The byte strings to replace in an answer, longest first (so a whole `Bearer <token>` is
/// replaced before the token alone).
#[derive(Clone, Debug, Default)]
pub(crate) struct Redactor {
    needles: Vec<Vec<u8>>,
}

impl Redactor {
    /// Searches for every value of `secrets` (the destination's configured headers).
    pub(crate) fn new(secrets: &HeaderMap) -> Self {
        let mut redactor = Redactor::default();
        for value in secrets.values() {
            redactor.add(value.as_bytes());
        }
        redactor.sort();
        redactor
    }

    /// This redactor plus the credentials among `headers` (a request's own); `None` when there are
    /// none, so the common request costs no copy.
    pub(crate) fn with_request(&self, headers: &HeaderMap) -> Option<Redactor> {
        let mut credentials =
            headers.iter().filter(|(name, value)| value.is_sensitive() || is_credential(name.as_str())).peekable();
        credentials.peek()?;
        let mut redactor = self.clone();
        for (_, value) in credentials {
            redactor.add(value.as_bytes());
        }
        redactor.sort();
        Some(redactor)
    }

    /// `body` with every secret replaced by [`REDACTED`] (the same bytes when none is in it).
    pub(crate) fn apply(&self, body: Bytes) -> Bytes {
        if !self.needles.iter().any(|n| find(&body, n, 0).is_some()) {
            return body;
        }
        let mut text = body.to_vec();
        for needle in &self.needles {
            text = replace_all(&text, needle);
        }
        Bytes::from(text)
    }

    fn add(&mut self, value: &[u8]) {
        let value = value.trim_ascii();
        self.push(value);
        // `Bearer <token>`, `Basic <base64>`, `Token <key>`: the credential alone too.
        if let Some(space) = value.iter().position(|b| *b == b' ') {
            let (scheme, credential) = (&value[..space], value[space + 1..].trim_ascii());
            self.push(credential);
            if scheme.eq_ignore_ascii_case(b"basic")
                && let Some(decoded) = base64_decode(credential)
            {
                self.push(&decoded);
                if let Some(colon) = decoded.iter().position(|b| *b == b':') {
                    self.push(&decoded[colon + 1..]);
                }
            }
        }
    }

    fn push(&mut self, needle: &[u8]) {
        if needle.len() < MIN_SECRET {
            return;
        }
        if needle.contains(&b'/') {
            let escaped: Vec<u8> =
                needle.iter().flat_map(|b| if *b == b'/' { b"\\/".to_vec() } else { vec![*b] }).collect();
            self.needles.push(escaped);
        }
        self.needles.push(needle.to_vec());
    }

    fn sort(&mut self) {
        self.needles.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        self.needles.dedup();
    }
}

/// Whether a header carries a credential, by its name (the collector's rule, plus `auth`).
fn is_credential(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    matches!(name.as_str(), "authorization" | "proxy-authorization" | "cookie")
        || ["key", "token", "secret", "auth"].iter().any(|w| name.contains(w))
}

/// The first position of `needle` in `haystack` at or after `from`.
/// memchr's `memmem` (SIMD): a window-by-window comparison called `memcmp` at every byte of
/// every answer for each secret, 6 % of the worker's time in the Bloomreach bench.
fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    memchr::memmem::find(haystack.get(from..)?, needle).map(|i| i + from)
}

fn replace_all(text: &[u8], needle: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut at = 0;
    while let Some(found) = find(text, needle, at) {
        out.extend_from_slice(&text[at..found]);
        out.extend_from_slice(REDACTED);
        at = found + needle.len();
    }
    out.extend_from_slice(&text[at..]);
    out
}

/// Standard base64, padded or not; `None` if `text` is not base64.
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(n, v)| (http::HeaderName::from_static(n), HeaderValue::from_static(v))).collect()
    }

    fn redact(redactor: &Redactor, body: &str) -> String {
        String::from_utf8(redactor.apply(Bytes::copy_from_slice(body.as_bytes())).to_vec()).expect("utf-8")
    }

    #[test]
    fn configured_values_and_their_tokens_are_replaced() {
        let r = Redactor::new(&headers(&[("authorization", "Bearer tw-s3cr3t/0a9f"), ("x-short", "abc")]));
        assert_eq!(redact(&r, "got Bearer tw-s3cr3t/0a9f!"), "got <redacted>!");
        assert_eq!(redact(&r, "token tw-s3cr3t/0a9f, again tw-s3cr3t\\/0a9f"), "token <redacted>, again <redacted>");
        assert_eq!(redact(&r, "abc stays: too short to be a secret"), "abc stays: too short to be a secret");
        let untouched = Bytes::from_static(b"nothing here");
        assert_eq!(r.apply(untouched.clone()).as_ptr(), untouched.as_ptr(), "no copy when nothing matches");
    }

    #[test]
    fn a_requests_own_credentials_are_added_basic_decoded() {
        let base = Redactor::new(&HeaderMap::new());
        assert!(base.with_request(&headers(&[("content-type", "application/json")])).is_none());
        // base64("site-id-1:api-key-XYZ123")
        let basic = "Basic c2l0ZS1pZC0xOmFwaS1rZXktWFlaMTIz";
        assert_eq!(
            base64_decode(b"c2l0ZS1pZC0xOmFwaS1rZXktWFlaMTIz").as_deref(),
            Some(&b"site-id-1:api-key-XYZ123"[..])
        );
        let r = base
            .with_request(&headers(&[("authorization", basic), ("x-api-key", "k-0123456789"), ("accept", "*/*")]))
            .expect("credentials");
        let echoed = format!("{basic} / site-id-1:api-key-XYZ123 / api-key-XYZ123 / k-0123456789 / */*");
        assert_eq!(redact(&r, &echoed), "<redacted> / <redacted> / <redacted> / <redacted> / */*");
    }

    #[test]
    fn base64_padding_and_garbage() {
        assert_eq!(base64_decode(b"YWJj").as_deref(), Some(&b"abc"[..]));
        assert_eq!(base64_decode(b"YWI=").as_deref(), Some(&b"ab"[..]));
        assert_eq!(base64_decode(b"YQ==").as_deref(), Some(&b"a"[..]));
        assert_eq!(base64_decode(b"Y"), None);
        assert_eq!(base64_decode(b"a b!"), None);
    }
}
