//! Push tokens: what a token call sends (Bloomreach's `notification_state` event) and when the
//! tracking frequency lets it go out.

use serde::{Deserialize, Serialize};
use trackway_wire::{Properties, Timestamp};

/// Which push service issued a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PushPlatform {
    /// Firebase Cloud Messaging (sent as platform `android`).
    Fcm,
    /// Huawei Mobile Services (sent as platform `huawei`).
    Hms,
}

impl PushPlatform {
    /// The `platform` property on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            PushPlatform::Fcm => "android",
            PushPlatform::Hms => "huawei",
        }
    }
}

/// How often a token that did not change is tracked again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenFrequency {
    /// Only when the token or the permission changes (the default).
    #[default]
    OnChange,
    /// Once per process run (each launch of the app).
    EveryLaunch,
    /// At most once per UTC day.
    Daily,
}

/// A push token to register for the current user ([`Client::track_push_token`]).
///
/// [`Client::track_push_token`]: crate::Client::track_push_token
///
/// ```
/// use trackway::PushToken;
/// let token = PushToken::fcm("fcm-token-from-the-sdk").permission_granted(false);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct PushToken {
    pub(crate) platform: PushPlatform,
    pub(crate) token: String,
    pub(crate) granted: bool,
    pub(crate) force: bool,
}

impl PushToken {
    /// A Firebase (FCM) token.
    pub fn fcm(token: impl Into<String>) -> Self {
        PushToken::new(PushPlatform::Fcm, token)
    }

    /// A Huawei (HMS) token.
    pub fn hms(token: impl Into<String>) -> Self {
        PushToken::new(PushPlatform::Hms, token)
    }

    /// A token of `platform`.
    pub fn new(platform: PushPlatform, token: impl Into<String>) -> Self {
        PushToken { platform, token: token.into(), granted: true, force: false }
    }

    /// Whether the user allowed notifications (default: true). With
    /// [`require_push_permission`](crate::AppLifecycle::require_push_permission), a token without
    /// permission is sent as not valid.
    pub fn permission_granted(mut self, granted: bool) -> Self {
        self.granted = granted;
        self
    }

    /// Tracks it whatever the frequency says.
    pub fn force(mut self) -> Self {
        self.force = true;
        self
    }
}

/// The last token tracked, persisted under the `push` state key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PushState {
    pub(crate) platform: PushPlatform,
    pub(crate) token: String,
    pub(crate) granted: bool,
    /// When it was last tracked (Unix ms).
    pub(crate) tracked_at: i64,
    /// The app version it was tracked under: a new version tracks it again.
    #[serde(default)]
    pub(crate) app_version: Option<String>,
    /// Invalidated (the user it belonged to was anonymized) and not tracked since.
    #[serde(default)]
    pub(crate) cancelled: bool,
}

/// Whether `token` is tracked now, given what was tracked before.
///
/// Always when it was never tracked, was cancelled, the permission or the app version changed;
/// otherwise by `frequency`: `OnChange` when the token differs, `EveryLaunch` when it was not
/// tracked yet in this process, `Daily` when it was last tracked on an earlier UTC day.
pub(crate) fn is_due(
    token: &PushToken,
    last: Option<&PushState>,
    frequency: TokenFrequency,
    tracked_this_launch: bool,
    app_version: Option<&str>,
    now: Timestamp,
) -> bool {
    let Some(last) = last else { return true };
    if token.force || last.cancelled || last.granted != token.granted || last.app_version.as_deref() != app_version {
        return true;
    }
    if last.token != token.token || last.platform != token.platform {
        return true;
    }
    match frequency {
        TokenFrequency::OnChange => false,
        TokenFrequency::EveryLaunch => !tracked_this_launch,
        TokenFrequency::Daily => utc_day(last.tracked_at) < utc_day(now.unix_millis()),
    }
}

fn utc_day(unix_millis: i64) -> i64 {
    unix_millis.div_euclid(86_400_000)
}

/// The `description` of a token tracked for the current user (an invalidated one says
/// `Invalidated`).
pub(crate) fn description(granted: bool) -> &'static str {
    if granted { "Permission granted" } else { "Permission denied" }
}

/// The `notification_state` properties (no default properties: Bloomreach never adds them here).
pub(crate) fn properties(platform: PushPlatform, token: &str, valid: bool, description: &str) -> Properties {
    Properties::with_capacity(4)
        .with("push_notification_token", token)
        .with("platform", platform.as_str())
        .with("valid", valid)
        .with("description", description)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn last(token: &str, at: i64) -> PushState {
        PushState {
            platform: PushPlatform::Fcm,
            token: token.into(),
            granted: true,
            tracked_at: at,
            app_version: Some("1.0".into()),
            cancelled: false,
        }
    }

    fn due(t: &PushToken, l: Option<&PushState>, f: TokenFrequency, this_launch: bool, now: i64) -> bool {
        is_due(t, l, f, this_launch, Some("1.0"), Timestamp::from_unix_millis(now))
    }

    #[test]
    fn on_change_tracks_new_tokens_and_permission_changes_only() {
        let t = PushToken::fcm("a");
        assert!(due(&t, None, TokenFrequency::OnChange, false, 0));
        assert!(!due(&t, Some(&last("a", 0)), TokenFrequency::OnChange, false, 10 * DAY));
        assert!(due(&PushToken::fcm("b"), Some(&last("a", 0)), TokenFrequency::OnChange, true, 1));
        assert!(due(&t.clone().permission_granted(false), Some(&last("a", 0)), TokenFrequency::OnChange, true, 1));
        assert!(due(&PushToken::hms("a"), Some(&last("a", 0)), TokenFrequency::OnChange, true, 1));
    }

    #[test]
    fn every_launch_tracks_once_per_process() {
        let t = PushToken::fcm("a");
        assert!(due(&t, Some(&last("a", 0)), TokenFrequency::EveryLaunch, false, 1));
        assert!(!due(&t, Some(&last("a", 0)), TokenFrequency::EveryLaunch, true, 2));
    }

    #[test]
    fn daily_tracks_on_a_new_utc_day() {
        let t = PushToken::fcm("a");
        let l = last("a", 10 * DAY + 1);
        assert!(!due(&t, Some(&l), TokenFrequency::Daily, true, 11 * DAY - 1));
        assert!(due(&t, Some(&l), TokenFrequency::Daily, true, 11 * DAY));
    }

    #[test]
    fn cancelled_app_version_and_force_always_track() {
        let t = PushToken::fcm("a");
        let mut l = last("a", 0);
        l.cancelled = true;
        assert!(due(&t, Some(&l), TokenFrequency::OnChange, true, 1));
        let l = last("a", 0);
        assert!(is_due(&t, Some(&l), TokenFrequency::OnChange, true, Some("2.0"), Timestamp::from_unix_millis(1)));
        assert!(due(&t.force(), Some(&l), TokenFrequency::OnChange, true, 1));
    }

    #[test]
    fn descriptions() {
        assert_eq!(description(true), "Permission granted");
        assert_eq!(description(false), "Permission denied");
    }
}
