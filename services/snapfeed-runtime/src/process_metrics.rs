//! The process's own resources, under the names every Prometheus exporter uses
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_virtual_memory_bytes`,
//! `process_open_fds`, `process_max_fds`, `process_start_time_seconds`), read from `/proc` at
//! each scrape. Linux only (the containers snapfeed ships in); elsewhere nothing is exported.
//!
//! Written here rather than with the `prometheus` crate's `process` feature: that one pulls in
//! the `procfs` crate and its dependency tree for six numbers read from three small files.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, Opts, Registry};

/// Registers the process collector in `registry`.
pub fn register(registry: &Registry) -> prometheus::Result<()> {
    registry.register(Box::new(ProcessCollector::new()?))
}

struct ProcessCollector {
    cpu: Counter,
    resident: Gauge,
    virtual_memory: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    start_time: Gauge,
    descs: Vec<Desc>,
}

impl ProcessCollector {
    fn new() -> prometheus::Result<ProcessCollector> {
        let cpu = Counter::with_opts(Opts::new(
            "process_cpu_seconds_total",
            "User and system CPU time spent, in seconds.",
        ))?;
        let gauge = |name: &str, help: &str| Gauge::with_opts(Opts::new(name, help));
        let resident = gauge(
            "process_resident_memory_bytes",
            "Resident memory, in bytes.",
        )?;
        let virtual_memory = gauge("process_virtual_memory_bytes", "Virtual memory, in bytes.")?;
        let open_fds = gauge("process_open_fds", "Open file descriptors.")?;
        let max_fds = gauge("process_max_fds", "The limit of open file descriptors.")?;
        let start_time = gauge(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds.",
        )?;
        let descs = [
            cpu.desc(),
            resident.desc(),
            virtual_memory.desc(),
            open_fds.desc(),
            max_fds.desc(),
            start_time.desc(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        Ok(ProcessCollector {
            cpu,
            resident,
            virtual_memory,
            open_fds,
            max_fds,
            start_time,
            descs,
        })
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(sample) = Sample::read() else {
            return Vec::new();
        };
        // The counter only moves forward: add what was spent since the last scrape.
        let spent = sample.cpu_seconds - self.cpu.get();
        if spent > 0.0 {
            self.cpu.inc_by(spent);
        }
        self.resident.set(sample.resident_bytes);
        self.virtual_memory.set(sample.virtual_bytes);
        self.open_fds.set(sample.open_fds);
        if let Some(max) = sample.max_fds {
            self.max_fds.set(max);
        }
        self.start_time.set(sample.start_time_seconds);
        [
            self.cpu.collect(),
            self.resident.collect(),
            self.virtual_memory.collect(),
            self.open_fds.collect(),
            self.max_fds.collect(),
            self.start_time.collect(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// One reading of `/proc/self`.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    cpu_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    open_fds: f64,
    max_fds: Option<f64>,
    start_time_seconds: f64,
}

impl Sample {
    #[cfg(target_os = "linux")]
    fn read() -> Option<Sample> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        parse(&stat, &status, boot_time, open_fds, &limits)
    }

    #[cfg(not(target_os = "linux"))]
    fn read() -> Option<Sample> {
        None
    }
}

/// `/proc` counts CPU time in USER_HZ ticks, 100 per second on every architecture snapfeed
/// ships for (the kernel's ABI; `sysconf(_SC_CLK_TCK)` answers the same).
const TICKS_PER_SECOND: f64 = 100.0;

/// The sample from the text of `/proc/self/stat`, `/proc/self/status` and `/proc/self/limits`.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn parse(stat: &str, status: &str, boot_time: f64, open_fds: f64, limits: &str) -> Option<Sample> {
    // The command name (field 2) is in parentheses and may hold spaces: fields after it count
    // from the last ')'. Field 3 is the state, so fields[i] is field i + 3.
    let after = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
    let (utime, stime) = (field(14)?, field(15)?);
    let start_ticks = field(22)?;
    let vsize = field(23)?;
    let resident_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())?;
    let max_fds = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|soft| soft.parse::<f64>().ok());
    Some(Sample {
        cpu_seconds: (utime + stime) / TICKS_PER_SECOND,
        resident_bytes: resident_kb * 1024.0,
        virtual_bytes: vsize,
        open_fds,
        max_fds,
        start_time_seconds: boot_time + start_ticks / TICKS_PER_SECOND,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_is_parsed_even_with_spaces_in_the_command_name() {
        // Fields 1–24 of a real line, the command renamed to hold a space and a ')'.
        let stat = "4242 (api sink) R 1 4242 4242 0 -1 4194560 1000 0 0 0 250 150 0 0 20 0 \
                    9 0 12000 104857600 2560 18446744073709551615";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1048576              1048576              files\n";
        let status = "Name:\tapi-sink\nVmRSS:\t   10240 kB\nThreads:\t9\n";
        let sample = parse(stat, status, 1_700_000_000.0, 17.0, limits).unwrap();
        assert_eq!(sample.cpu_seconds, 4.0, "(250 + 150) ticks at 100/s");
        assert_eq!(sample.resident_bytes, 10240.0 * 1024.0);
        assert_eq!(sample.virtual_bytes, 104_857_600.0);
        assert_eq!(sample.start_time_seconds, 1_700_000_120.0);
        assert_eq!(sample.max_fds, Some(1_048_576.0));
        assert_eq!(sample.open_fds, 17.0);
        assert!(parse("garbage", status, 0.0, 0.0, "").is_none());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_collector_exports_this_process() {
        use prometheus::{Encoder, TextEncoder};
        let registry = Registry::new();
        register(&registry).unwrap();
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut text)
            .unwrap();
        let text = String::from_utf8(text).unwrap();
        for name in [
            "process_cpu_seconds_total ",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_max_fds ",
            "process_start_time_seconds ",
        ] {
            assert!(text.contains(name), "{name} missing:\n{text}");
        }
        let resident: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            resident > 1e6,
            "a test process uses more than 1 MB: {resident}"
        );
    }
}
