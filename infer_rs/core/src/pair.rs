//! A two-thread team for calls too short for a thread pool's wake-up. The caller runs
//! part 0 of a job while one helper thread runs part 1.
//!
//! The helper spins on an atomic for a short while after each job, so calls that
//! follow each other closely hand off in well under a microsecond, then parks (a futex
//! wait: no CPU at all while the engine is idle). A parked helper takes several
//! microseconds to wake, so part 1 goes to whichever thread claims it first: when the
//! caller finishes part 0 before the helper has started part 1, it runs part 1 itself.
//! A call on a cold team therefore costs at most what it costs on one thread.
//!
//! One caller at a time: a second concurrent caller finds the team busy and runs both
//! parts itself.
//!
//! The helper keeps off the caller's CPU (`placement`). Woken onto the caller's CPU, a
//! spinning helper would stay there, and the two threads would take turns on one core
//! while the other sat idle: a call on two threads then ran slower than on one (a VAE
//! decode of one row: 23.5 us against 12.3 us with the threads on separate CPUs, and
//! 19.8 us on one thread, on a 2-vCPU AMD EPYC Zen 4).

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long the helper spins for the next job before it parks: long enough for
/// back-to-back calls, short enough that a quiet engine costs nothing.
const SPIN: Duration = Duration::from_micros(50);

type Job<'a> = dyn Fn(usize) + Sync + 'a;

struct Team {
    /// Serialises callers; held for the whole hand-off.
    busy: Mutex<()>,
    /// The job of the current epoch: a `*const &Job` valid until the epoch's part 1
    /// is claimed by the caller or done by the helper.
    job: AtomicPtr<()>,
    /// Bumped by the caller for each job.
    epoch: AtomicU64,
    /// The last epoch whose part 1 a thread has claimed: `epoch - 1` while it is
    /// unclaimed, `epoch` once the helper or the caller took it.
    claimed: AtomicU64,
    /// The last epoch whose part 1 the helper finished.
    done: AtomicU64,
    helper_panicked: AtomicBool,
    helper: Thread,
    /// The CPU the caller ran on when it posted the current job (`placement::current`).
    caller_cpu: AtomicUsize,
}

impl Team {
    /// Take part 1 of `epoch`; true for exactly one of the two threads.
    fn claim(&self, epoch: u64) -> bool {
        self.claimed
            .compare_exchange(epoch - 1, epoch, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }
}

static TEAM: OnceLock<Option<&'static Team>> = OnceLock::new();

fn team() -> Option<&'static Team> {
    *TEAM.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("infer-pair".into())
            .spawn(move || {
                let team: &'static Team = Box::leak(Box::new(Team {
                    busy: Mutex::new(()),
                    job: AtomicPtr::new(std::ptr::null_mut()),
                    epoch: AtomicU64::new(0),
                    claimed: AtomicU64::new(0),
                    done: AtomicU64::new(0),
                    helper_panicked: AtomicBool::new(false),
                    helper: std::thread::current(),
                    caller_cpu: AtomicUsize::new(placement::UNKNOWN),
                }));
                let _ = tx.send(team);
                helper_loop(team);
            })
            .ok()?;
        rx.recv().ok()
    })
}

fn helper_loop(team: &Team) {
    let allowed = placement::allowed();
    let mut seen = 0;
    loop {
        let started = Instant::now();
        while team.epoch.load(Ordering::Acquire) == seen {
            if started.elapsed() > SPIN {
                // The caller unparks after each bump; a token left by an earlier
                // unpark only makes this return early, and the loop checks again.
                std::thread::park();
            } else {
                std::hint::spin_loop();
            }
        }
        seen = team.epoch.load(Ordering::Acquire);
        let caller_cpu = team.caller_cpu.load(Ordering::Relaxed);
        if caller_cpu != placement::UNKNOWN && placement::current() == caller_cpu {
            // Running now means the caller is not: leave it part 1, and its CPU.
            placement::avoid(&allowed, caller_cpu);
            continue;
        }
        if !team.claim(seen) {
            continue; // the caller ran part 1 itself
        }
        let job = team.job.load(Ordering::Acquire) as *const &Job;
        // SAFETY: the caller published a pointer to a live `&Job` before bumping the
        // epoch, and, since it lost the claim, does not return (or unwind) before we
        // store `done = seen`.
        let ok = catch_unwind(AssertUnwindSafe(|| unsafe { (*job)(1) })).is_ok();
        if !ok {
            team.helper_panicked.store(true, Ordering::Release);
        }
        team.done.store(seen, Ordering::Release);
    }
}

/// Ends the caller's side of an epoch, also if part 0 unwinds: unless the caller
/// claimed part 1, either claim it now (so the helper never starts it) or wait for
/// the helper to finish it.
struct Finish<'a> {
    team: &'a Team,
    epoch: u64,
    caller_claimed: bool,
}

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        if self.caller_claimed || self.team.claim(self.epoch) {
            return;
        }
        while self.team.done.load(Ordering::Acquire) != self.epoch {
            std::hint::spin_loop();
        }
    }
}

/// Run `work` over runs of `step` items that cover 0..n, on the pair: both threads claim
/// runs until none is left, so a thread the OS holds back leaves its share to the other.
pub fn share(n: usize, step: usize, work: &(dyn Fn(Range<usize>) + Sync)) {
    let next = AtomicUsize::new(0);
    run_pair(&|_| loop {
        let first = next.fetch_add(step, Ordering::Relaxed);
        if first >= n {
            break;
        }
        work(first..(first + step).min(n));
    });
}

/// Run `job(0)` and `job(1)`, on two threads when the team is free.
pub fn run_pair(job: &Job) {
    let Some(team) = team() else {
        job(0);
        job(1);
        return;
    };
    let Ok(_guard) = team.busy.try_lock() else {
        job(0);
        job(1);
        return;
    };
    let slot: &Job = job;
    team.job
        .store(&slot as *const &Job as *mut (), Ordering::Release);
    team.caller_cpu
        .store(placement::current(), Ordering::Relaxed);
    let epoch = team.epoch.load(Ordering::Relaxed) + 1;
    team.epoch.store(epoch, Ordering::Release);
    team.helper.unpark();
    let mut finish = Finish {
        team,
        epoch,
        caller_claimed: false,
    };
    job(0);
    if team.claim(epoch) {
        finish.caller_claimed = true;
        job(1);
    }
    drop(finish);
    assert!(
        !team.helper_panicked.swap(false, Ordering::AcqRel),
        "the helper thread panicked in part 1"
    );
}

/// Which CPU a thread runs on, and moving the helper off one (Linux; elsewhere the
/// helper stays where the OS puts it).
mod placement {
    /// The CPU of a thread whose CPU is not known.
    pub const UNKNOWN: usize = usize::MAX;

    /// The CPUs the helper may run on, read when it starts.
    #[cfg(target_os = "linux")]
    pub struct Allowed(pub(super) Option<libc::cpu_set_t>);
    #[cfg(not(target_os = "linux"))]
    pub struct Allowed;

    /// The calling thread's CPU now: a vDSO call of a few nanoseconds.
    #[cfg(target_os = "linux")]
    pub fn current() -> usize {
        // SAFETY: no arguments; -1 (no CPU) becomes UNKNOWN.
        usize::try_from(unsafe { libc::sched_getcpu() }).unwrap_or(UNKNOWN)
    }

    #[cfg(target_os = "linux")]
    pub fn allowed() -> Allowed {
        // SAFETY: a zeroed cpu_set_t is the empty set; the call fills it for this thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            let size = std::mem::size_of::<libc::cpu_set_t>();
            Allowed((libc::sched_getaffinity(0, size, &mut set) == 0).then_some(set))
        }
    }

    /// Restrict the calling thread to the allowed CPUs other than `cpu`; the kernel
    /// moves it at once. Nothing happens where `cpu` is the only one allowed: the
    /// caller then runs both parts, since the helper finds itself on its CPU every time
    /// (a VAE decode of one row: 23 us against 19.5 us on one thread). Nor where the set
    /// of CPUs changed since `allowed` and the kernel refuses the new one.
    #[cfg(target_os = "linux")]
    pub fn avoid(allowed: &Allowed, cpu: usize) {
        let Some(mut set) = allowed.0 else { return };
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: `set` is a valid cpu_set_t; CPU_CLR ignores a cpu past its capacity.
        unsafe {
            libc::CPU_CLR(cpu, &mut set);
            if libc::CPU_COUNT(&set) > 0 {
                libc::sched_setaffinity(0, size, &set);
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub fn current() -> usize {
        UNKNOWN
    }

    #[cfg(not(target_os = "linux"))]
    pub fn allowed() -> Allowed {
        Allowed
    }

    #[cfg(not(target_os = "linux"))]
    pub fn avoid(_: &Allowed, _: usize) {}
}

#[cfg(test)]
mod tests {
    use super::run_pair;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn both_parts_run_once_per_call_from_many_threads() {
        let counts = [AtomicUsize::new(0), AtomicUsize::new(0)];
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for i in 0..500 {
                        if i % 100 == 0 {
                            // let the helper park, so some calls find it cold
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        run_pair(&|part| {
                            counts[part].fetch_add(1, Ordering::Relaxed);
                        });
                    }
                });
            }
        });
        assert_eq!(counts[0].load(Ordering::Relaxed), 2000);
        assert_eq!(counts[1].load(Ordering::Relaxed), 2000);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn avoiding_a_cpu_moves_the_thread_off_it_at_once() {
        use super::placement::{allowed, avoid, current};
        std::thread::spawn(|| {
            let allowed = allowed();
            let mask = allowed.0.expect("sched_getaffinity answers on Linux");
            // SAFETY: `mask` is a valid cpu_set_t.
            if unsafe { libc::CPU_COUNT(&mask) } < 2 {
                eprintln!("skipped: this process may run on one CPU only");
                return;
            }
            for _ in 0..20 {
                let cpu = current();
                avoid(&allowed, cpu);
                assert_ne!(current(), cpu, "still on CPU {cpu} after avoiding it");
            }
        })
        .join()
        .unwrap();
    }
}
