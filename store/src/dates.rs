//! Dates as the library keeps them: Unix seconds, read and written as
//! "UTC-ish" wall-clock time like EXIF dates (see
//! [`PhotoMetadata::taken_at`](crate::PhotoMetadata::taken_at)). Shared by
//! the CLI's and the HTTP API's date filters and outputs.

/// `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM[:SS]` (a space also accepted) as Unix
/// seconds; `None` when the text is not such a date (or not a real day).
pub fn parse_date(text: &str) -> Option<i64> {
    let text = text.trim();
    let (date, clock) = match text.split_once(['T', ' ']) {
        Some((d, c)) => (d, Some(c)),
        None => (text, None),
    };
    let parts: Vec<&str> = date.split('-').collect();
    let [y, m, d] = parts.as_slice() else {
        return None;
    };
    let (y, m, d): (i64, u32, u32) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    if !(-9999..=9999).contains(&y) || !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    let mut seconds = 0i64;
    if let Some(clock) = clock {
        let c: Vec<&str> = clock.split(':').collect();
        if !(2..=3).contains(&c.len()) {
            return None;
        }
        let nums: Vec<i64> = c
            .iter()
            .map(|x| x.parse::<i64>().ok().filter(|n| *n >= 0))
            .collect::<Option<_>>()?;
        if nums[0] > 23 || nums[1] > 59 || nums.get(2).is_some_and(|s| *s > 59) {
            return None;
        }
        seconds = nums[0] * 3600 + nums[1] * 60 + nums.get(2).copied().unwrap_or(0);
    }
    Some(days_from_civil(y, m, d) * 86_400 + seconds)
}

/// Unix seconds as `YYYY-MM-DD HH:MM` (for people).
pub fn format_date(seconds: i64) -> String {
    let (y, m, d, rest) = civil(seconds);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60
    )
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SS` (ISO 8601 without a zone, for
/// programs: the value is UTC-ish wall-clock time).
pub fn format_iso(seconds: i64) -> String {
    let (y, m, d, rest) = civil(seconds);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

fn days_in_month(y: i64, m: u32) -> u32 {
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    match m {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month, day, seconds into the day) of Unix seconds.
fn civil(seconds: i64) -> (i64, i64, i64, i64) {
    let days = seconds.div_euclid(86_400);
    let rest = seconds.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_and_bad_ones_are_refused() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2000-03-01T12:30"), Some(951_913_800));
        assert_eq!(parse_date("2000-03-01 12:30:05"), Some(951_913_805));
        assert_eq!(format_date(951_913_800), "2000-03-01 12:30");
        assert_eq!(format_iso(951_913_805), "2000-03-01T12:30:05");
        assert_eq!(format_date(-86_400), "1969-12-31 00:00");
        for bad in [
            "2021-02-29",
            "2021-13-01",
            "yesterday",
            "2021-01-01T25:00",
            "2021-01-01T-1:00",
            "",
            "99999999999999-01-01",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
        assert!(parse_date("2024-02-29").is_some());
        // Every day of a few years survives the round trip.
        let mut t = parse_date("1999-12-25").unwrap();
        for _ in 0..2000 {
            let shown = format_iso(t);
            assert_eq!(parse_date(&shown), Some(t), "{shown}");
            t += 86_400 + 3_661;
        }
    }
}
