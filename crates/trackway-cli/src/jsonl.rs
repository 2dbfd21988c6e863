//! What is wrong with a line of a JSON Lines file that does not parse as an event, said in the
//! user's terms: serde's "expected value at line 1 column 1" does not tell that the file starts
//! with a byte order mark, that the line is an array, or that `NaN` is not JSON.

use serde_json::Value;

/// The message for `text` (one line, trimmed), which failed to parse as an event with `error`.
pub(crate) fn explain(text: &str, error: &serde_json::Error) -> String {
    if let Some(rest) = text.strip_prefix('\u{feff}') {
        let valid = serde_json::from_str::<Value>(rest).is_ok_and(|v| v.is_object());
        return format!(
            "starts with a UTF-8 byte order mark (BOM, the bytes EF BB BF), which JSON Lines does not allow: \
             save the file as UTF-8 without BOM{}",
            if valid { " (the rest of the line is a valid JSON object)" } else { "" }
        );
    }
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        let found = match &value {
            Value::Object(_) => None,
            Value::Array(_) => Some("an array"),
            Value::String(_) => Some("a string"),
            Value::Number(_) => Some("a number"),
            Value::Bool(_) => Some("a boolean"),
            Value::Null => Some("null"),
        };
        if let Some(found) = found {
            return format!("each line must be one JSON object (one event), not {found}: write one event per line");
        }
    }
    if let Some((word, column)) = bare_word(text)
        && matches!(word.to_ascii_lowercase().as_str(), "nan" | "infinity" | "-infinity" | "inf" | "-inf")
    {
        return format!(
            "`{word}` at column {column} is not valid JSON: JSON numbers are finite \
             (write null, or the value as a string)"
        );
    }
    format!("invalid JSON: {error}")
}

/// The first word outside a string that is not `true`, `false` or `null`, with its column
/// (1-based, in characters): a value JSON does not have.
fn bare_word(text: &str) -> Option<(&str, usize)> {
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        let starts_word = c.is_alphabetic() || (c == '-' && chars.peek().is_some_and(|(_, next)| next.is_alphabetic()));
        if c == '"' {
            in_string = true;
        } else if starts_word {
            let end = text[i + c.len_utf8()..]
                .find(|c: char| !c.is_alphanumeric())
                .map_or(text.len(), |n| i + c.len_utf8() + n);
            let word = &text[i..end];
            if !matches!(word, "true" | "false" | "null") {
                return Some((word, text[..i].chars().count() + 1));
            }
            while chars.peek().is_some_and(|(j, _)| *j < end) {
                chars.next();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: &str) -> String {
        let error = serde_json::from_str::<serde::de::IgnoredAny>("{").expect_err("an error to pass");
        explain(text, &error)
    }

    #[test]
    fn each_problem_is_named() {
        assert!(message("[1,2,3]").starts_with("each line must be one JSON object (one event), not an array"));
        assert!(message("\"x\"").contains("not a string"));
        assert!(message("null").contains("not null"));
        let bom = message("\u{feff}{\"id\":\"x\"}");
        assert!(bom.contains("byte order mark") && bom.contains("the rest of the line is a valid"), "{bom}");
        assert!(!message("\u{feff}oops").contains("the rest"), "{}", message("\u{feff}oops"));
        let nan = message(r#"{"properties":{"price":NaN}}"#);
        assert_eq!(
            nan,
            "`NaN` at column 24 is not valid JSON: JSON numbers are finite (write null, or the value as a string)"
        );
        assert!(message(r#"{"a":[1,-Infinity]}"#).starts_with("`-Infinity` at column 9"));
        assert!(message(r#"{"note":"NaN here is text","v":true,"w":null}"#).starts_with("invalid JSON"));
        assert!(message("{\"id\": oops").starts_with("invalid JSON: "));
    }
}
