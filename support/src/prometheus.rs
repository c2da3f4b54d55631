//! Reading samples out of a Prometheus text exposition (the format of
//! `GET /metrics`), for tests and tools that check what the server counts.

/// The value of `series` (a metric name with its labels exactly as the
/// server writes them, e.g. `signaling_connections_total{role="device"}`),
/// or `None` when the exposition has no such sample.
///
/// Label values may hold spaces and escaped quotes, and a sample may end
/// with a timestamp; both are read as the format defines them.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = split_sample(line)?;
            (name == series).then(|| parse_value(value))?
        })
}

/// [`sample`], reading an absent series as 0: a counter that has not been
/// incremented yet may not be exposed at all.
pub fn sample_or_zero(exposition: &str, series: &str) -> f64 {
    sample(exposition, series).unwrap_or(0.0)
}

/// `name{labels}` and the value text of one sample line.
fn split_sample(line: &str) -> Option<(&str, &str)> {
    let line = line.trim_start();
    let series_end = match line.find(['{', ' ']) {
        Some(at) if line.as_bytes()[at] == b'{' => at + closing_brace(&line[at..])? + 1,
        Some(at) => at,
        None => return None,
    };
    let (series, rest) = line.split_at(series_end);
    let value = rest.split_whitespace().next()?;
    Some((series, value))
}

/// The offset of the `}` that closes the label set `labels` starts with,
/// skipping braces inside quoted values.
fn closing_brace(labels: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (at, c) in labels.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(at),
            _ => {}
        }
    }
    None
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = r#"# HELP signaling_errors_sent_total Errors sent.
# TYPE signaling_errors_sent_total counter
signaling_errors_sent_total{phrase="Device id already taken"} 2
signaling_errors_sent_total{phrase="odd } \" value"} 5
signaling_connections 7 1700000000000
signaling_bytes_total{direction="in"} 1.5e3
signaling_wait_seconds_bucket{le="+Inf"} +Inf
"#;

    #[test]
    fn reads_samples_with_spaces_braces_and_timestamps() {
        let read = |series| sample(EXPOSITION, series);
        assert_eq!(
            read(r#"signaling_errors_sent_total{phrase="Device id already taken"}"#),
            Some(2.0)
        );
        assert_eq!(
            read(r#"signaling_errors_sent_total{phrase="odd } \" value"}"#),
            Some(5.0)
        );
        assert_eq!(read("signaling_connections"), Some(7.0));
        assert_eq!(
            read(r#"signaling_bytes_total{direction="in"}"#),
            Some(1500.0)
        );
        assert_eq!(
            read(r#"signaling_wait_seconds_bucket{le="+Inf"}"#),
            Some(f64::INFINITY)
        );
    }

    #[test]
    fn a_missing_series_is_none_or_zero() {
        assert_eq!(sample(EXPOSITION, "signaling_errors_sent_total"), None);
        assert_eq!(sample(EXPOSITION, "signaling_bytes_total"), None);
        assert_eq!(sample_or_zero(EXPOSITION, "nothing_here"), 0.0);
        // Comments are not samples, even when they look like one.
        assert_eq!(
            sample("# signaling_connections 3\n", "signaling_connections"),
            None
        );
    }
}
