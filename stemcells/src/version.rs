//! The version of a built stemcell: Debian's point release, read from `/etc/debian_version`
//! inside the image (`12.8`), then the build date (`12.8.20261126`). A point release moves
//! the first part; a rebuild on a later day moves the last, so rebuilding after a Debian
//! security update gives a higher version, and `version: latest` picks it up.

use std::fmt;

/// A calendar date (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Date {
    /// Year.
    pub year: i64,
    /// Month, 1 to 12.
    pub month: u32,
    /// Day of the month, 1 to 31.
    pub day: u32,
}

impl Date {
    /// The UTC date of a Unix time (seconds since 1970-01-01T00:00:00Z).
    pub fn from_unix(seconds: i64) -> Date {
        // Howard Hinnant's `civil_from_days`.
        let z = seconds.div_euclid(86_400) + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        Date {
            year,
            month: u32::try_from(month).expect("1 to 12"),
            day: u32::try_from(day).expect("1 to 31"),
        }
    }
}

impl fmt::Display for Date {
    /// `YYYYMMDD`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}{:02}{:02}", self.year, self.month, self.day)
    }
}

/// The point release in the text of `/etc/debian_version` (`12.8\n` → `12.8`); `None` when
/// it is not one (testing and unstable say `trixie/sid`).
pub fn point_release(debian_version: &str) -> Option<&str> {
    let text = debian_version.trim();
    let valid = !text.is_empty()
        && text
            .split('.')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
    valid.then_some(text)
}

/// The stemcell version of a point release built on `date`: `12.8.20261126`.
pub fn stemcell_version(point_release: &str, date: Date) -> String {
    format!("{point_release}.{date}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use director_core::stemcell::StemcellVersion;

    #[test]
    fn dates_from_unix_time() {
        assert_eq!(Date::from_unix(0).to_string(), "19700101");
        // `date -u -d 2026-11-26T23:59:59 +%s`
        assert_eq!(Date::from_unix(1_795_737_599).to_string(), "20261126");
        assert_eq!(Date::from_unix(1_795_737_600).to_string(), "20261127");
        // A leap day, and the day before the epoch.
        assert_eq!(Date::from_unix(951_782_400).to_string(), "20000229");
        assert_eq!(Date::from_unix(-1).to_string(), "19691231");
    }

    #[test]
    fn point_releases_from_debian_version() {
        assert_eq!(point_release("12.8\n"), Some("12.8"));
        assert_eq!(point_release("12.10"), Some("12.10"));
        assert_eq!(point_release("13.0\n"), Some("13.0"));
        assert_eq!(point_release("trixie/sid\n"), None);
        assert_eq!(point_release(""), None);
        assert_eq!(point_release("12..8"), None);
    }

    #[test]
    fn versions_order_by_point_release_then_build_date() {
        let day = |seconds| Date::from_unix(seconds);
        let built = stemcell_version("12.8", day(1_795_737_599));
        assert_eq!(built, "12.8.20261126");
        let parse = |text: &str| StemcellVersion::parse(text).unwrap();
        // A rebuild a day later, after a security update, is newer…
        assert!(parse(&stemcell_version("12.8", day(1_795_737_600))) > parse(&built));
        // …and so is the next point release, whatever the day.
        assert!(parse(&stemcell_version("12.9", day(0))) > parse(&built));
        assert!(parse(&stemcell_version("12.10", day(0))) > parse("12.9.20261126"));
    }
}
