//! Cron expressions as the scheduler reads them: six fields, seconds first.

use croner::Cron;
use croner::parser::{CronParser, Seconds};

/// Parses with the same crate tokio-cron-scheduler uses, so a schedule that validates here is one
/// the daemon will run.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    let fields = expr.split_whitespace().count();
    if fields != 6 {
        return Err(format!(
            "`{expr}` has {fields} fields; expected 6 (seconds first), e.g. \"0 */15 * * * *\""
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Required)
        .build()
        .parse(expr.trim())
        .map_err(|e| format!("`{expr}` is not a valid cron expression: {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn six_fields_required() {
        assert!(super::parse_cron("0 */15 * * * *").is_ok());
        assert!(super::parse_cron("*/15 * * * *").is_err());
        assert!(super::parse_cron("0 61 * * * *").is_err());
    }
}
