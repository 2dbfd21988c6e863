//! Bloomreach Engagement's tracking API facts shared by the SDK's destination and the
//! collector's backend: paths, limits and the checks of project tokens and application ids
//! (`specs/bloomreach.md` §1, §8 in the design documents).

/// The default base URL (every tenant has its own; copy it from *Project settings > Access
/// management > API*).
pub const DEFAULT_BASE_URL: &str = "https://api.exponea.com";
/// The default application id of the mobile SDKs.
pub const DEFAULT_APPLICATION_ID: &str = "default-application";
/// The default hard id name (`customer_ids.registered`).
pub const DEFAULT_HARD_ID: &str = "registered";
/// The soft id every app-mode event carries (`customer_ids.cookie`).
pub const COOKIE: &str = "cookie";

/// Most commands in one `POST …/batch` (docs "Batch commands").
pub const MAX_BATCH_COMMANDS: usize = 50;
/// A customer update must be smaller than this many bytes of JSON ("update customer properties").
pub const MAX_CUSTOMER_UPDATE_BYTES: usize = 800 * 1000;
/// Each customer property value must be smaller than this many bytes of JSON.
pub const MAX_CUSTOMER_PROPERTY_BYTES: usize = 16 * 1000;
/// Longest application id the SDKs accept.
pub const MAX_APPLICATION_ID: usize = 50;

/// The path of an event (`customers/events`), a customer update (`customers`) or a batch
/// (`batch`) for `token`: `/track/v2/projects/{token}/{command}`.
pub fn path(token: &str, command: &str) -> String {
    format!("/track/v2/projects/{token}/{command}")
}

/// The project token and command of a tracking path, if it is one:
/// `/track/v2/projects/{token}/customers/events` → `(token, "customers/events")`.
pub fn split_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/track/v2/projects/")?;
    let (token, command) = rest.split_once('/')?;
    (!token.is_empty()).then_some((token, command))
}

/// Checks a project token as the Android SDK does: not blank, only `[A-Za-z0-9-]`.
///
/// ```
/// use trackway_wire::bloomreach::check_project_token;
/// assert!(check_project_token("0aef3a96-3e2b-11ef-9a4b-6a1f1c6e1b0f").is_ok());
/// assert!(check_project_token("my token").is_err());
/// ```
///
/// # Errors
/// A message naming what is wrong (the token is no secret: it is in every URL).
pub fn check_project_token(token: &str) -> Result<(), String> {
    if token.trim().is_empty() {
        return Err("project token is empty (copy it from Project settings > Access management > API)".into());
    }
    if let Some(c) = token.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-')) {
        return Err(format!("project token {token:?} contains {c:?}: only letters, digits and `-` are allowed"));
    }
    Ok(())
}

/// Checks an application id as the SDKs do: `^[a-z0-9]+(?:[-.][a-z0-9]+)*$`, at most 50 characters.
///
/// ```
/// use trackway_wire::bloomreach::check_application_id;
/// assert!(check_application_id("com.example.shop").is_ok());
/// assert!(check_application_id("Shop App").is_err());
/// ```
///
/// # Errors
/// A message naming the rule.
pub fn check_application_id(id: &str) -> Result<(), String> {
    let rule = "lowercase letters and digits in groups separated by one `-` or `.` (e.g. `com.example.shop`)";
    if id.len() > MAX_APPLICATION_ID {
        return Err(format!("application id is {} characters; the limit is {MAX_APPLICATION_ID}", id.len()));
    }
    let groups_ok = !id.is_empty()
        && id
            .split(['-', '.'])
            .all(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
    if !groups_ok {
        return Err(format!("application id {id:?} must be {rule}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_back_into_token_and_command() {
        let p = path("tok-1", "customers/events");
        assert_eq!(p, "/track/v2/projects/tok-1/customers/events");
        assert_eq!(split_path(&p), Some(("tok-1", "customers/events")));
        assert_eq!(split_path("/track/v2/projects//batch"), None);
        assert_eq!(split_path("/api/send"), None);
    }

    #[test]
    fn application_ids_follow_the_sdk_rule() {
        for ok in ["default-application", "a", "com.example.shop", "a1-b2.c3"] {
            assert!(check_application_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "A", "a..b", "-a", "a-", "a_b", &"a".repeat(51)] {
            assert!(check_application_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn project_tokens_allow_letters_digits_and_dashes() {
        assert!(check_project_token("abc-DEF-123").is_ok());
        for bad in ["", " ", "a/b", "a b", "tök"] {
            assert!(check_project_token(bad).is_err(), "{bad}");
        }
    }
}
