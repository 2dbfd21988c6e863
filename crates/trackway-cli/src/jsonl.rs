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
    if error.is_syntax()
        && let Some((word, column)) = word_at(text, error.column())
        && matches!(word.to_ascii_lowercase().as_str(), "nan" | "infinity" | "-infinity" | "inf" | "-inf")
    {
        return format!(
            "`{word}` at column {column} is not valid JSON: JSON numbers are finite \
             (write null, or the value as a string)"
        );
    }
    format!("invalid JSON: {error}")
}

/// The word (letters, digits, a leading `-`) around byte column `column` (1-based) of `text`,
/// where serde stopped on a value JSON does not have, and the column it starts at. `None` off a
/// character boundary.
fn word_at(text: &str, column: usize) -> Option<(&str, usize)> {
    let at = column.checked_sub(1)?;
    let bytes = text.as_bytes();
    let is_word = |b: u8| b.is_ascii_alphanumeric();
    let mut start = at.min(bytes.len());
    while start > 0 && is_word(bytes[start - 1]) {
        start -= 1;
    }
    if start > 0 && bytes[start - 1] == b'-' {
        start -= 1;
    }
    let end = at + bytes.get(at..)?.iter().take_while(|b| is_word(**b)).count();
    text.get(start..end).filter(|w| !w.is_empty()).map(|w| (w, start + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message for `text`, with the error serde gives for it as an event (any struct).
    fn message(text: &str) -> String {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code, reason = "only parsed, to get serde's error")]
        struct Event {
            id: String,
        }
        let error = serde_json::from_str::<Event>(text).expect_err("not an event");
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
        assert!(message(r#"{"note":"NaN here is text","v":oops}"#).starts_with("invalid JSON"));
        let nan = message(r#"{"properties":{"price":NaN}}"#);
        assert_eq!(
            nan,
            "`NaN` at column 24 is not valid JSON: JSON numbers are finite (write null, or the value as a string)"
        );
        assert!(message(r#"{"a":[1,-Infinity]}"#).starts_with("`-Infinity` at column 9"));
        assert!(message(r#"{"a":nan}"#).starts_with("`nan` at column 6"));
        // A valid object that is not an event keeps serde's own words.
        assert!(message(r#"{"note":"NaN here is text","v":true}"#).starts_with("invalid JSON: "));
        assert!(message("{\"id\": oops").starts_with("invalid JSON: "));
    }
}
