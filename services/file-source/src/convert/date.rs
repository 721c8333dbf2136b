//! Dates and timestamps in the mapping's formats. The common formats (`%m/%d/%Y`, `%Y-%m-%d`,
//! and `%Y-%m-%d %H:%M:%S` / `%Y-%m-%dT%H:%M:%S`) are parsed by hand — hundreds of thousands
//! of cells per file — and anything the fast path does not recognise falls back to chrono, so
//! the result is always chrono's. Pure: no delivery guarantee of its own.

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};

/// One date format, with the common ones parsed by hand.
#[derive(Debug, Clone)]
pub(super) enum DateFormat {
    /// `%m/%d/%Y`.
    MonthDayYear,
    /// `%Y-%m-%d`.
    YearMonthDay,
    /// `%Y-%m-%d %H:%M:%S` or `%Y-%m-%dT%H:%M:%S` (the separator byte).
    IsoDateTime(u8),
    /// Anything else, by chrono.
    Chrono(String),
}

impl DateFormat {
    pub(super) fn new(format: &str) -> DateFormat {
        match format {
            "%m/%d/%Y" => DateFormat::MonthDayYear,
            "%Y-%m-%d" => DateFormat::YearMonthDay,
            "%Y-%m-%d %H:%M:%S" => DateFormat::IsoDateTime(b' '),
            "%Y-%m-%dT%H:%M:%S" => DateFormat::IsoDateTime(b'T'),
            other => DateFormat::Chrono(other.to_string()),
        }
    }

    /// Chrono's spelling, for the fallback.
    pub(super) fn chrono(&self) -> &str {
        match self {
            DateFormat::MonthDayYear => "%m/%d/%Y",
            DateFormat::YearMonthDay => "%Y-%m-%d",
            DateFormat::IsoDateTime(b'T') => "%Y-%m-%dT%H:%M:%S",
            DateFormat::IsoDateTime(_) => "%Y-%m-%d %H:%M:%S",
            DateFormat::Chrono(format) => format,
        }
    }

    pub(super) fn parse_date(&self, text: &str) -> Option<NaiveDate> {
        let fast = match self {
            DateFormat::MonthDayYear => fast_mdy(text.as_bytes()),
            DateFormat::YearMonthDay => fast_ymd(text.as_bytes()),
            _ => Fast::NotRecognised,
        };
        match fast {
            Fast::Parsed(date) => Some(date),
            Fast::Invalid => None,
            Fast::NotRecognised => NaiveDate::parse_from_str(text, self.chrono()).ok(),
        }
    }

    pub(super) fn parse_datetime(&self, text: &str) -> Option<NaiveDateTime> {
        let fast = match self {
            DateFormat::IsoDateTime(separator) => fast_iso_datetime(text.as_bytes(), *separator),
            _ => Fast::NotRecognised,
        };
        match fast {
            Fast::Parsed(datetime) => Some(datetime),
            Fast::Invalid => None,
            Fast::NotRecognised => NaiveDateTime::parse_from_str(text, self.chrono()).ok(),
        }
    }
}

/// The outcome of a hand parser: it only claims inputs chrono would read the same way.
enum Fast<T> {
    Parsed(T),
    /// The right shape but no such date (e.g. 02/30/2021): chrono would refuse it too.
    Invalid,
    /// Leave it to chrono (e.g. a 2-digit year, which chrono's `%Y` reads as year 20).
    NotRecognised,
}

/// Reads 1–2 ASCII digits, returning the value and the rest.
fn digits_1_2(bytes: &[u8]) -> Option<(u32, &[u8])> {
    match bytes {
        [a @ b'0'..=b'9', b @ b'0'..=b'9', rest @ ..] => {
            Some((u32::from(a - b'0') * 10 + u32::from(b - b'0'), rest))
        }
        [a @ b'0'..=b'9', rest @ ..] => Some((u32::from(a - b'0'), rest)),
        _ => None,
    }
}

/// Reads exactly `N` ASCII digits.
fn digits_exact<const N: usize>(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let (head, rest) = bytes.split_at_checked(N)?;
    let mut value = 0;
    for &b in head {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u32::from(b - b'0');
    }
    Some((value, rest))
}

fn ymd(year: u32, month: u32, day: u32) -> Fast<NaiveDate> {
    let year = i32::try_from(year).unwrap_or(i32::MAX);
    match NaiveDate::from_ymd_opt(year, month, day) {
        Some(date) => Fast::Parsed(date),
        None => Fast::Invalid,
    }
}

/// `M/D/YYYY` with 1–2 digit month and day and a 4-digit year.
fn fast_mdy(bytes: &[u8]) -> Fast<NaiveDate> {
    let parsed = (|| {
        let (month, rest) = digits_1_2(bytes)?;
        let (day, rest) = digits_1_2(rest.strip_prefix(b"/")?)?;
        let (year, rest) = digits_exact::<4>(rest.strip_prefix(b"/")?)?;
        rest.is_empty().then_some((year, month, day))
    })();
    match parsed {
        Some((year, month, day)) => ymd(year, month, day),
        None => Fast::NotRecognised,
    }
}

/// `YYYY-M-D` with a 4-digit year and 1–2 digit month and day.
fn fast_ymd(bytes: &[u8]) -> Fast<NaiveDate> {
    match split_ymd(bytes) {
        Some((year, month, day, [])) => ymd(year, month, day),
        _ => Fast::NotRecognised,
    }
}

fn split_ymd(bytes: &[u8]) -> Option<(u32, u32, u32, &[u8])> {
    let (year, rest) = digits_exact::<4>(bytes)?;
    let (month, rest) = digits_1_2(rest.strip_prefix(b"-")?)?;
    let (day, rest) = digits_1_2(rest.strip_prefix(b"-")?)?;
    Some((year, month, day, rest))
}

/// `YYYY-MM-DD?HH:MM:SS` with exactly two digits per time part.
fn fast_iso_datetime(bytes: &[u8], separator: u8) -> Fast<NaiveDateTime> {
    let parsed = (|| {
        let (year, month, day, rest) = split_ymd(bytes)?;
        let (hour, rest) = digits_exact::<2>(rest.strip_prefix(&[separator])?)?;
        let (minute, rest) = digits_exact::<2>(rest.strip_prefix(b":")?)?;
        let (second, rest) = digits_exact::<2>(rest.strip_prefix(b":")?)?;
        // 60 is a leap second to chrono; leave that rarity to it.
        (rest.is_empty() && second < 60).then_some((year, month, day, hour, minute, second))
    })();
    let Some((year, month, day, hour, minute, second)) = parsed else {
        return Fast::NotRecognised;
    };
    match (
        ymd(year, month, day),
        NaiveTime::from_hms_opt(hour, minute, second),
    ) {
        (Fast::Parsed(date), Some(time)) => Fast::Parsed(date.and_time(time)),
        _ => Fast::Invalid,
    }
}

/// Days from 0001-01-01 (CE day 1) to 1970-01-01.
pub(super) const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_fast_paths_agree_with_chrono() {
        let inputs = [
            "01/05/2020",
            "1/5/2020",
            "12/31/1999",
            "02/29/2020",
            "02/29/2021",
            "13/01/2020",
            "1/5/20",
            "1/5/02020",
            "2020-01-05",
            "2020-1-5",
            "2020-13-01",
            "20-01-05",
            "2020-01-05x",
            "x",
            "",
            "+2020-01-05",
            "1/ 5/2020",
        ];
        for format in ["%m/%d/%Y", "%Y-%m-%d"] {
            let fast = DateFormat::new(format);
            assert!(!matches!(fast, DateFormat::Chrono(_)));
            for input in inputs {
                assert_eq!(
                    fast.parse_date(input),
                    NaiveDate::parse_from_str(input, format).ok(),
                    "{format} {input:?}"
                );
            }
        }
        let stamps = [
            "2021-03-17 08:09:10",
            "2021-03-17T08:09:10",
            "2021-3-7 8:09:10",
            "2021-03-17 24:00:00",
            "2021-02-29 00:00:00",
            "2021-03-17 08:09:60",
            "2021-03-17 08:09",
            "2021-03-17 08:09:10.5",
        ];
        for format in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"] {
            let fast = DateFormat::new(format);
            assert!(matches!(fast, DateFormat::IsoDateTime(_)));
            for input in stamps {
                assert_eq!(
                    fast.parse_datetime(input),
                    NaiveDateTime::parse_from_str(input, format).ok(),
                    "{format} {input:?}"
                );
            }
        }
    }
}
