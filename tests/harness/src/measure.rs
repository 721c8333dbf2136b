//! Small shared helpers of tests and benchmarks: benchmark arguments, CPU clocks (benchmarks
//! report rates per CPU-second so a busy machine does not shrink them) and the reproducible
//! test seed.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

/// A benchmark's `--flag value` arguments (cargo's own `--bench` is skipped). An unknown flag,
/// a flag without a value or a value that does not parse panics with the flag's name: a
/// benchmark must not silently run something else than asked.
#[derive(Debug)]
pub struct BenchArgs {
    given: BTreeMap<String, String>,
}

impl BenchArgs {
    /// The process's arguments; `flags` are the ones this benchmark knows.
    pub fn parse(flags: &[&str]) -> BenchArgs {
        let mut given = BTreeMap::new();
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            if flag == "--bench" {
                continue;
            }
            assert!(
                flags.contains(&flag.as_str()),
                "unknown argument {flag:?}; this benchmark takes {}",
                flags.join(", ")
            );
            let value = args
                .next()
                .unwrap_or_else(|| panic!("{flag} needs a value"));
            given.insert(flag, value);
        }
        BenchArgs { given }
    }

    /// The text given for `flag`, if it was.
    pub fn text(&self, flag: &str) -> Option<&str> {
        self.given.get(flag).map(String::as_str)
    }

    /// The value of `flag`, or `default` when it was not given.
    pub fn get<T: FromStr>(&self, flag: &str, default: T) -> T {
        match self.given.get(flag) {
            None => default,
            Some(text) => text
                .parse()
                .unwrap_or_else(|_| panic!("{flag}: cannot read {text:?}")),
        }
    }

    /// The comma-separated values of `flag`, or `default`.
    pub fn list<T: FromStr>(&self, flag: &str, default: Vec<T>) -> Vec<T> {
        match self.given.get(flag) {
            None => default,
            Some(text) => text
                .split(',')
                .map(|item| {
                    item.trim()
                        .parse()
                        .unwrap_or_else(|_| panic!("{flag}: cannot read {item:?}"))
                })
                .collect(),
        }
    }
}

/// The runtime a benchmark runs its services in: multi-threaded with 2 workers, the cores of
/// the machine the targets are set for.
pub fn bench_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime for the benchmark")
}

/// `(median, min, max)` of a benchmark's runs (`values` not empty).
pub fn median_min_max(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

/// CPU time (user + system) of the whole process.
pub fn process_cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes only the rusage we pass, which lives for the call.
    #[allow(unsafe_code)]
    let (status, usage) = unsafe {
        let status = libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        (status, usage.assume_init())
    };
    assert_eq!(status, 0, "getrusage");
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// CPU time of the calling thread.
pub fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec we pass, which lives for the call.
    #[allow(unsafe_code)]
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "clock_gettime");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// The seed of randomised tests: `SNAPFEED_TEST_SEED` if set (to repeat a run), else the clock.
pub fn test_seed() -> u64 {
    std::env::var("SNAPFEED_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}
