//! Amounts in minor units and currencies: parsed from what a person types (`12.50`), never
//! through floating point, and printed back the same way.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// Minor units per major unit: every currency of the ledger has two decimals.
const SCALE: i64 = 100;

/// The largest single amount, in minor units (one trillion major units). Far from `i64`'s
/// limit, so balances and per-currency totals never overflow.
pub const MAX_AMOUNT: i64 = 100_000_000_000_000;

/// The largest balance an account may hold, in minor units.
pub const MAX_BALANCE: i64 = 10 * MAX_AMOUNT;

/// An ISO 4217-shaped currency code: three upper-case ASCII letters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency(String);

impl Currency {
    /// The code as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Currency {
    type Err = MoneyError;

    fn from_str(s: &str) -> Result<Self, MoneyError> {
        let code = s.trim().to_ascii_uppercase();
        if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(Self(code))
        } else {
            Err(MoneyError::BadCurrency(s.to_owned()))
        }
    }
}

impl TryFrom<String> for Currency {
    type Error = MoneyError;

    fn try_from(s: String) -> Result<Self, MoneyError> {
        s.parse()
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> Self {
        c.0
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a typed amount or currency was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// Not a plain decimal with at most two decimals.
    #[error("bad amount {0:?}: write a positive number with at most two decimals, like 12.50")]
    BadAmount(String),
    /// Zero or negative.
    #[error("bad amount {0:?}: it must be more than zero")]
    NotPositive(String),
    /// Larger than the ledger can hold.
    #[error("bad amount {0:?}: more than the largest amount, 1000000000000.00")]
    TooLarge(String),
    /// Not three letters.
    #[error("bad currency {0:?}: use a three-letter code like EUR")]
    BadCurrency(String),
}

/// Parses a positive amount typed by a person (`12`, `12.5`, `12.50`, `1_000.00` is refused)
/// into minor units, with integer arithmetic only.
///
/// # Errors
/// [`MoneyError`] naming the input when it is not a plain decimal with at most two decimals,
/// is not positive, or does not fit.
pub fn parse_amount(input: &str) -> Result<i64, MoneyError> {
    let s = input.trim();
    let bad = || MoneyError::BadAmount(input.to_owned());
    let (whole, frac) = match s.split_once('.') {
        Some((w, f)) => (w, f),
        None => (s, ""),
    };
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 2
        || (s.contains('.') && frac.is_empty())
    {
        return Err(bad());
    }
    let too_large = || MoneyError::TooLarge(input.to_owned());
    let whole: i64 = whole.parse().map_err(|_| too_large())?;
    let frac: i64 = match frac.len() {
        0 => 0,
        1 => frac.parse::<i64>().map_err(|_| bad())? * 10,
        _ => frac.parse().map_err(|_| bad())?,
    };
    let minor = whole
        .checked_mul(SCALE)
        .and_then(|m| m.checked_add(frac))
        .filter(|m| *m <= MAX_AMOUNT)
        .ok_or_else(too_large)?;
    if minor == 0 {
        return Err(MoneyError::NotPositive(input.to_owned()));
    }
    Ok(minor)
}

/// Formats minor units as a decimal with two places (`-1250` is `-12.50`).
pub fn format_amount(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    let scale = SCALE.unsigned_abs();
    format!("{sign}{}.{:02}", abs / scale, abs % scale)
}

/// An amount with its currency, printed as `120.00 EUR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Money {
    /// Minor units.
    pub minor: i64,
    /// The currency.
    pub currency: Currency,
}

impl Money {
    /// An amount of `minor` units of `currency`.
    pub fn new(minor: i64, currency: Currency) -> Self {
        Self { minor, currency }
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", format_amount(self.minor), self.currency)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn typed_amounts() {
        assert_eq!(parse_amount("12.50"), Ok(1250));
        assert_eq!(parse_amount("12.5"), Ok(1250));
        assert_eq!(parse_amount(" 12 "), Ok(1200));
        assert_eq!(parse_amount("0.01"), Ok(1));
        for bad in [
            "", "12.", ".5", "12.505", "-1", "1e3", "1,50", "+3", "abc", "1.2.3",
        ] {
            assert!(
                matches!(parse_amount(bad), Err(MoneyError::BadAmount(_))),
                "{bad:?} was accepted"
            );
        }
        assert!(matches!(
            parse_amount("0.00"),
            Err(MoneyError::NotPositive(_))
        ));
        assert!(matches!(
            parse_amount("99999999999999999999"),
            Err(MoneyError::TooLarge(_))
        ));
        assert_eq!(parse_amount("1000000000000"), Ok(MAX_AMOUNT));
        assert!(matches!(
            parse_amount("1000000000000.01"),
            Err(MoneyError::TooLarge(_))
        ));
    }

    #[test]
    fn currencies() {
        assert_eq!("eur".parse::<Currency>().unwrap().as_str(), "EUR");
        assert!("EURO".parse::<Currency>().is_err());
        assert!("E1R".parse::<Currency>().is_err());
        let m = Money::new(-12050, "USD".parse().unwrap());
        assert_eq!(m.to_string(), "-120.50 USD");
    }

    proptest! {
        #[test]
        fn format_then_parse_is_identity(minor in 1i64..=MAX_AMOUNT) {
            prop_assert_eq!(parse_amount(&format_amount(minor)), Ok(minor));
        }
    }
}
