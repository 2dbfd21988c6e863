//! The SDK's checks of addresses and phone numbers (spec §1.3), with its messages, written out
//! instead of as regular expressions (the crate has no regex engine, and these two are small).

/// `Email address cannot be empty` / `Invalid email address format`, as the SDK's
/// `^[^\s@]+@[^\s@]+\.[^\s@]+$`: no whitespace, exactly one `@` with something before it, and
/// after it a `.` with something on both sides.
pub(super) fn email(address: &str) -> Result<(), String> {
    if address.trim().is_empty() {
        return Err("Email address cannot be empty".into());
    }
    let valid = !address.chars().any(char::is_whitespace)
        && match address.split_once('@') {
            Some((local, domain)) if !local.is_empty() && !domain.contains('@') => {
                // A `.` that is neither the first nor the last character of the domain.
                domain.char_indices().any(|(i, c)| c == '.' && i > 0 && i + 1 < domain.len())
            }
            _ => false,
        };
    if valid { Ok(()) } else { Err("Invalid email address format".into()) }
}

/// `Phone number cannot be empty` / `Phone number must be in international format (e.g.,
/// +1234567890)`, as the SDK's E.164 `^\+?[1-9]\d{1,14}$`.
pub(super) fn phone(number: &str) -> Result<(), String> {
    if number.trim().is_empty() {
        return Err("Phone number cannot be empty".into());
    }
    let digits = number.strip_prefix('+').unwrap_or(number);
    let valid = (2..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits.as_bytes().first().is_some_and(|&b| b != b'0');
    if valid { Ok(()) } else { Err("Phone number must be in international format (e.g., +1234567890)".into()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_as_the_sdks_regex() {
        for ok in ["a@b.co", "jane.doe+x@mail.example.com", "a@b.c.d", "x@.b.c", "é@ü.de"] {
            assert_eq!(email(ok), Ok(()), "{ok}");
        }
        for bad in ["a@b", "a@b.", "a@.b", "@b.co", "a b@c.de", "a@b@c.de", "a@", "plain", "a@b .co"] {
            assert_eq!(email(bad), Err("Invalid email address format".into()), "{bad}");
        }
        assert_eq!(email("  "), Err("Email address cannot be empty".into()));
    }

    #[test]
    fn phone_numbers_as_e164() {
        for ok in ["+1234567890", "1234567890", "+12", "+123456789012345"] {
            assert_eq!(phone(ok), Ok(()), "{ok}");
        }
        let format = Err("Phone number must be in international format (e.g., +1234567890)".to_owned());
        for bad in ["+0123", "+1", "+1234567890123456", "+1 234", "12-34", "++12", "abc"] {
            assert_eq!(phone(bad), format, "{bad}");
        }
        assert_eq!(phone(" "), Err("Phone number cannot be empty".into()));
    }
}
