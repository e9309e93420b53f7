//! Calendar arithmetic for plugins that parse timestamps out of log lines (no clock is read:
//! plugins are deterministic).

/// A UTC calendar time, broken down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CivilTime {
    pub year: i64,
    /// 1..=12
    pub month: u32,
    /// 1..=31
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub millisecond: u32,
    /// Offset of the local time from UTC, in minutes (`-0700` is -420).
    pub offset_minutes: i64,
}

impl CivilTime {
    /// Milliseconds since the Unix epoch, or `None` for a field out of range.
    ///
    /// ```
    /// use weir::time::CivilTime;
    /// let t = CivilTime { year: 2000, month: 10, day: 10, hour: 13, minute: 55, second: 36, millisecond: 0, offset_minutes: -420 };
    /// assert_eq!(t.unix_ms(), Some(971_211_336_000));
    /// ```
    pub fn unix_ms(&self) -> Option<i64> {
        let valid = (1..=12).contains(&self.month)
            && (1..=31).contains(&self.day)
            && self.hour < 24
            && self.minute < 60
            && self.second <= 60
            && self.millisecond < 1000;
        if !valid {
            return None;
        }
        // Days from 1970-01-01 to the date (H. Hinnant's days_from_civil).
        let year = if self.month <= 2 {
            self.year - 1
        } else {
            self.year
        };
        let era = year.div_euclid(400);
        let year_of_era = year - era * 400;
        let month = i64::from(self.month);
        let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5
            + i64::from(self.day)
            - 1;
        let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
        let days = era * 146_097 + day_of_era - 719_468;
        let seconds = days * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
            - self.offset_minutes * 60;
        Some(seconds * 1000 + i64::from(self.millisecond))
    }
}

/// The month number (1..=12) of an English three-letter abbreviation (`"Oct"`).
pub fn month_number(abbreviation: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    MONTHS
        .iter()
        .position(|m| *m == abbreviation)
        .map(|i| i as u32 + 1)
}

/// Parses an RFC 3339 timestamp (`2003-10-11T22:14:15.003Z`, `…+02:00`) to Unix milliseconds.
///
/// ```
/// assert_eq!(weir::time::parse_rfc3339("1970-01-01T00:00:01.5Z"), Some(1500));
/// assert_eq!(weir::time::parse_rfc3339("1970-01-01T02:00:00+02:00"), Some(0));
/// assert_eq!(weir::time::parse_rfc3339("yesterday"), None);
/// ```
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let number = |range: std::ops::Range<usize>| text.get(range)?.parse::<u32>().ok();
    let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if text.len() < 20
        || separators.iter().any(|(i, c)| text.as_bytes()[*i] != *c)
        || !matches!(text.as_bytes()[10], b'T' | b't' | b' ')
    {
        return None;
    }
    let mut time = CivilTime {
        year: i64::from(number(0..4)?),
        month: number(5..7)?,
        day: number(8..10)?,
        hour: number(11..13)?,
        minute: number(14..16)?,
        second: number(17..19)?,
        ..CivilTime::default()
    };
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        let millis: String = fraction[..digits]
            .chars()
            .chain("000".chars())
            .take(3)
            .collect();
        time.millisecond = millis.parse().ok()?;
        rest = &fraction[digits..];
    }
    time.offset_minutes = match rest {
        "Z" | "z" => 0,
        zone => parse_utc_offset(zone)?,
    };
    time.unix_ms()
}

/// A UTC offset, `+hh:mm` or `+hhmm` (or `-`), in minutes.
///
/// ```
/// assert_eq!(weir::time::parse_utc_offset("-0700"), Some(-420));
/// assert_eq!(weir::time::parse_utc_offset("+05:30"), Some(330));
/// assert_eq!(weir::time::parse_utc_offset("0700"), None);
/// ```
pub fn parse_utc_offset(zone: &str) -> Option<i64> {
    let sign = match zone.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits = match zone.len() {
        6 if zone.as_bytes()[3] == b':' => [&zone[1..3], &zone[4..6]],
        5 => [zone.get(1..3)?, zone.get(3..5)?],
        _ => return None,
    };
    let [hours, minutes] = digits.map(|d| {
        d.parse::<i64>()
            .ok()
            .filter(|_| d.bytes().all(|b| b.is_ascii_digit()))
    });
    Some(sign * (hours? * 60 + minutes?))
}
