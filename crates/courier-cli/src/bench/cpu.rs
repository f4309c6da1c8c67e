//! CPU time spent during a measured run: this process's user+sys time (`getrusage`) and the whole
//! machine's busy time (`/proc/stat`), which also covers the brokers and databases the run drives.
//! Both are divided by the events of the run, so loads of different sizes compare.

use std::time::{Duration, Instant};

/// The CPU counters at one instant.
#[derive(Debug, Clone, Copy)]
struct Sample {
    process: Duration,
    /// `None` where `/proc/stat` cannot be read (not Linux).
    machine: Option<Duration>,
}

impl Sample {
    fn now() -> Self {
        let machine = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|text| machine_busy(&text, clock_ticks_per_second()));
        Self { process: process_cpu(), machine }
    }
}

/// A run's wall clock and CPU counters, started where its clock starts.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    at_start: Sample,
}

/// What a [`Clock`] measured.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub elapsed: Duration,
    pub process_cpu: Duration,
    pub machine_cpu: Option<Duration>,
}

impl Clock {
    pub fn start() -> Self {
        let at_start = Sample::now();
        Self { start: Instant::now(), at_start }
    }

    pub fn started_at(&self) -> Instant {
        self.start
    }

    /// The span from the start to `end` (the run's last ACK); CPU counters are read now, which
    /// is right after `end` in every caller.
    pub fn stop(&self, end: Instant) -> Span {
        let now = Sample::now();
        Span {
            elapsed: end.saturating_duration_since(self.start),
            process_cpu: now.process.saturating_sub(self.at_start.process),
            machine_cpu: now.machine.zip(self.at_start.machine).map(|(b, a)| b.saturating_sub(a)),
        }
    }
}

impl Span {
    /// Process CPU microseconds per event.
    pub fn cpu_us_per_event(&self, events: u64) -> f64 {
        per_event_us(self.process_cpu, events)
    }

    /// Whole-machine CPU microseconds per event.
    pub fn machine_cpu_us_per_event(&self, events: u64) -> Option<f64> {
        self.machine_cpu.map(|cpu| per_event_us(cpu, events))
    }
}

/// `cpu` in microseconds divided by `events` (zero events: zero).
pub fn per_event_us(cpu: Duration, events: u64) -> f64 {
    if events == 0 {
        return 0.0;
    }
    cpu.as_secs_f64() * 1e6 / events as f64
}

/// The busy time of all CPUs since boot from `/proc/stat`'s aggregate `cpu` line: user, nice,
/// system, irq, softirq and steal ticks (idle and iowait are not busy; guest time is already
/// inside user and nice, so it is not added again).
pub fn machine_busy(proc_stat: &str, ticks_per_second: u64) -> Option<Duration> {
    let line = proc_stat.lines().find(|l| l.split_whitespace().next() == Some("cpu"))?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    let busy_indices = [0, 1, 2, 5, 6, 7];
    let ticks: u64 = busy_indices.iter().filter_map(|&i| fields.get(i)).sum();
    if fields.len() < 4 || ticks_per_second == 0 {
        return None;
    }
    Some(Duration::from_secs_f64(ticks as f64 / ticks_per_second as f64))
}

/// `USER_HZ`, the unit of `/proc/stat`.
fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).unwrap_or(100)
}

/// This process's user+sys CPU time, all threads.
fn process_cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return Duration::ZERO;
        }
        usage.assume_init()
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROC_STAT: &str = "\
cpu  1000 50 300 9000 200 10 40 5 100 0
cpu0 500 25 150 4500 100 5 20 2 50 0
intr 12345 0 0
";

    #[test]
    fn machine_busy_counts_user_nice_system_irq_softirq_steal() {
        // 1000 + 50 + 300 + 10 + 40 + 5 = 1405 ticks at 100 Hz.
        assert_eq!(machine_busy(PROC_STAT, 100), Some(Duration::from_millis(14_050)));
    }

    #[test]
    fn machine_busy_reads_the_aggregate_line_only() {
        let per_cpu_only = "cpu0 500 25 150 4500 100 5 20 2 50 0\n";
        assert_eq!(machine_busy(per_cpu_only, 100), None);
    }

    #[test]
    fn machine_busy_refuses_garbage() {
        assert_eq!(machine_busy("cpu  a b c d\n", 100), None);
        assert_eq!(machine_busy("", 100), None);
        assert_eq!(machine_busy(PROC_STAT, 0), None);
    }

    #[test]
    fn old_kernels_without_steal_still_count() {
        // Four fields only: user nice system idle.
        assert_eq!(machine_busy("cpu 10 0 10 80\n", 100), Some(Duration::from_millis(200)));
    }

    #[test]
    fn per_event_divides_microseconds() {
        assert_eq!(per_event_us(Duration::from_millis(3), 1000), 3.0);
        assert_eq!(per_event_us(Duration::from_secs(1), 0), 0.0);
    }

    #[test]
    fn a_clock_sees_its_own_cpu() {
        let clock = Clock::start();
        let mut x = 0u64;
        while clock.started_at().elapsed() < Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let span = clock.stop(Instant::now());
        assert!(span.process_cpu > Duration::ZERO, "{span:?}");
        assert!(span.elapsed >= Duration::from_millis(30));
    }
}
