//! The standard `process_*` metrics every Prometheus client library
//! exports (CPU, memory, file descriptors, threads, start time), read
//! from /proc at each scrape, under the names dashboards and alerts
//! already use. Linux only: elsewhere the collector exports nothing.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Reads the process's figures when scraped.
#[derive(Debug, Default)]
pub struct ProcessCollector;

/// What one scrape reads.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub threads: u64,
    /// None where /proc/stat is hidden (systemd's ProcSubset=pid).
    pub start_time_seconds: Option<f64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
}

impl ProcessStats {
    /// This process's, or None where /proc is not there to read.
    pub fn read() -> Option<Self> {
        let ticks = clock_ticks_per_second()?;
        let page = page_size()?;
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|text| boot_time_seconds(&text));
        let mut stats = Self::parse_stat(&stat, ticks, page, boot_time)?;
        stats.open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|entries| entries.count() as u64);
        stats.max_fds = crate::config::open_file_limit();
        Some(stats)
    }

    /// The figures of a `/proc/<pid>/stat` line (proc(5)): `ticks` clock
    /// ticks a second, pages of `page` bytes, and the boot time if known.
    fn parse_stat(stat: &str, ticks: f64, page: u64, boot_time: Option<u64>) -> Option<Self> {
        // The command name (field 2) is in parentheses and may hold
        // spaces and parentheses itself: the fields that follow start
        // after the last ')', at field 3.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |number: usize| -> Option<u64> { fields.get(number - 3)?.parse().ok() };
        let (utime, stime) = (field(14)?, field(15)?);
        let started = field(22)? as f64 / ticks;
        Some(Self {
            cpu_seconds: (utime + stime) as f64 / ticks,
            threads: field(20)?,
            start_time_seconds: boot_time.map(|boot| boot as f64 + started),
            virtual_bytes: field(23)?,
            resident_bytes: field(24)? * page,
            open_fds: None,
            max_fds: None,
        })
    }
}

/// `btime` of /proc/stat: when the machine booted, in seconds since the
/// epoch.
fn boot_time_seconds(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

fn clock_ticks_per_second() -> Option<f64> {
    use nix::unistd::{SysconfVar, sysconf};
    let ticks = sysconf(SysconfVar::CLK_TCK).ok()??;
    (ticks > 0).then_some(ticks as f64)
}

fn page_size() -> Option<u64> {
    use nix::unistd::{SysconfVar, sysconf};
    u64::try_from(sysconf(SysconfVar::PAGE_SIZE).ok()??).ok()
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(stats) = ProcessStats::read() else {
            return Ok(());
        };
        let counter = ConstCounter::new(stats.cpu_seconds);
        counter.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            counter.metric_type(),
        )?)?;
        let mut gauge = |name: &str, help: &str, value: f64| {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
        };
        gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            stats.resident_bytes as f64,
        )?;
        gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            stats.virtual_bytes as f64,
        )?;
        gauge(
            "process_threads",
            "Number of OS threads in the process.",
            stats.threads as f64,
        )?;
        if let Some(start) = stats.start_time_seconds {
            gauge(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                start,
            )?;
        }
        if let Some(open) = stats.open_fds {
            gauge(
                "process_open_fds",
                "Number of open file descriptors.",
                open as f64,
            )?;
        }
        if let Some(max) = stats.max_fds {
            gauge(
                "process_max_fds",
                "Maximum number of open file descriptors.",
                max as f64,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_with_spaces_and_parentheses_in_its_name() {
        // Fields 3 to 24 of a real line, with a command name that would
        // split a naive reader.
        let line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 150 0 0 20 0 7 0 12345 987654321 2048 18446744073709551615";
        let stats = ProcessStats::parse_stat(line, 100.0, 4096, Some(1_700_000_000)).unwrap();
        assert_eq!(stats.cpu_seconds, 4.0);
        assert_eq!(stats.threads, 7);
        assert_eq!(stats.start_time_seconds, Some(1_700_000_123.45));
        assert_eq!(stats.virtual_bytes, 987_654_321);
        assert_eq!(stats.resident_bytes, 2048 * 4096);
    }

    #[test]
    fn a_truncated_stat_line_is_not_read() {
        assert_eq!(
            ProcessStats::parse_stat("1 (x) S 1 2 3", 100.0, 4096, Some(0)),
            None
        );
    }

    #[test]
    fn boot_time_is_read_from_proc_stat() {
        let text = "cpu  1 2 3\nintr 5\nbtime 1700000000\nprocesses 9\n";
        assert_eq!(boot_time_seconds(text), Some(1_700_000_000));
        assert_eq!(boot_time_seconds("cpu 1\n"), None);
    }

    #[test]
    fn this_process_reads() {
        let stats = ProcessStats::read().expect("/proc is there on Linux");
        assert!(stats.resident_bytes > 0);
        assert!(stats.threads >= 1);
        assert!(stats.open_fds.is_some_and(|open| open >= 3));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = stats
            .start_time_seconds
            .expect("/proc/stat is readable here");
        assert!(start <= now + 1.0);
        assert!(start > now - 24.0 * 3600.0);
    }
}
