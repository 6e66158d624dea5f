//! Unix time and the UTC calendar arithmetic the service needs (day and month boundaries for
//! quotas, `YYYY-MM-DD` for reports and flags), without a date library.

use std::time::{SystemTime, UNIX_EPOCH};

const DAY: i64 = 86_400;

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `(year, month, day)` of a day count since 1970-01-01 (Howard Hinnant's civil_from_days).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's days_from_civil).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DD` (UTC) of a unix time.
pub fn date_of(unix: i64) -> String {
    let (y, m, d) = civil_from_days(unix.div_euclid(DAY));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Midnight UTC starting the day of `unix`.
pub fn day_start(unix: i64) -> i64 {
    unix - unix.rem_euclid(DAY)
}

/// Midnight UTC starting the month of `unix`.
pub fn month_start(unix: i64) -> i64 {
    let (y, m, _) = civil_from_days(unix.div_euclid(DAY));
    days_from_civil(y, m, 1) * DAY
}

/// Parses `YYYY-MM-DD` (midnight UTC) or a unix time in seconds.
pub fn parse_date(text: &str) -> Option<i64> {
    if let Ok(unix) = text.parse::<i64>() {
        return Some(unix);
    }
    let mut parts = text.splitn(3, '-').map(str::parse::<i64>);
    let (Some(Ok(y)), Some(Ok(m)), Some(Ok(d))) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    let valid = (1..=12).contains(&m) && (1..=31).contains(&d);
    let days = days_from_civil(y, m, d);
    // Reject dates like 2026-02-31 that do not round-trip.
    (valid && civil_from_days(days) == (y, m, d)).then_some(days * DAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_round_trips() {
        assert_eq!(date_of(0), "1970-01-01");
        assert_eq!(date_of(1_795_868_903), "2026-11-28");
        assert_eq!(parse_date("2026-11-28"), Some(day_start(1_795_868_903)));
        assert_eq!(date_of(month_start(1_795_868_903)), "2026-11-01");
        assert_eq!(
            parse_date("2024-02-29").map(date_of).as_deref(),
            Some("2024-02-29")
        );
        assert_eq!(parse_date("2026-02-31"), None);
        assert_eq!(parse_date("soon"), None);
        assert_eq!(parse_date("1700000000"), Some(1_700_000_000));
    }
}
