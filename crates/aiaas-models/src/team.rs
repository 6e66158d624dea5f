//! A team of threads that runs the steps of one forward pass in lockstep: the threads of the
//! rayon pool join the calling one for the whole pass, and between steps they spin, watching for
//! the next one, instead of going to sleep.
//!
//! A small network on one image is a chain of some fifty steps of a tenth of a millisecond
//! each, every one shared out among the threads. As rayon jobs, each step woke the idle threads
//! up (a futex, and on a virtual machine a halted virtual CPU that the host must schedule
//! again): a sixth of the time went to the scheduler, and more when the host was busy. A team
//! pays one wake-up per pass.
//!
//! The leader (the thread that gathered the team) offers each step as a job of numbered tasks,
//! and waits until all are finished before the next step. Each thread has a seat, and each seat
//! a share of the tasks: the same fraction of every step (the same rows of the image, step
//! after step), so that a thread mostly reads what it wrote itself, in its own core's cache
//! (across the cores of a virtual machine, a cache line can take 170 ns). A thread takes the
//! tasks of its share first, then what is left of the others'. A thread of the pool that is
//! busy elsewhere joins late or not at all: the others take its share, so the pass never waits
//! for it.
//!
//! A job borrows from the leader's stack (the step's closure, its buffers), so the members reach
//! it through a pointer whose lifetime is erased: that, and only that, is this module's
//! `unsafe`. The leader withdraws the job and waits until no member still holds it before the
//! job goes out of scope, on return and on unwinding alike.
#![allow(unsafe_code)]

use std::hint::spin_loop;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

/// Spins an idle thread makes before it starts yielding its core between looks (a millisecond
/// or so: far longer than the gap between two steps of a pass, far shorter than what a
/// thread busy-waiting for nothing should burn).
const SPINS_BEFORE_YIELDING: u32 = 1 << 16;

/// The threads working on one forward pass; see the module's documentation.
pub struct Team {
    /// The job on offer; null between jobs.
    job: AtomicPtr<Job<'static>>,
    /// How many jobs were offered: what idle members watch.
    offered: AtomicUsize,
    /// Members looking at the job now.
    readers: AtomicUsize,
    /// Set when the pass is over: the members leave.
    over: AtomicBool,
    /// Seats taken: the leader's is 0, each member takes the next.
    seated: AtomicUsize,
    threads: usize,
}

/// One step: `tasks` numbered tasks of `task`.
struct Job<'a> {
    task: &'a (dyn Fn(usize) + Sync),
    tasks: usize,
    /// Per seat, the next task of its share to take (each on a cache line of its own: the
    /// seats count at once).
    next: Vec<Cursor>,
    /// Tasks done (or that panicked).
    finished: AtomicUsize,
    panicked: AtomicBool,
}

#[repr(align(64))]
struct Cursor(AtomicUsize);

impl Team {
    /// Runs `pass` on this thread with the rest of the rayon pool as its team (the pass runs
    /// on a thread of the pool), and returns what it returns.
    pub fn gather<R: Send>(pass: impl FnOnce(&Team) -> R + Send) -> R {
        let team = Team {
            job: AtomicPtr::new(ptr::null_mut()),
            offered: AtomicUsize::new(0),
            readers: AtomicUsize::new(0),
            over: AtomicBool::new(false),
            seated: AtomicUsize::new(1),
            threads: rayon::current_num_threads(),
        };
        rayon::scope(|scope| {
            for _ in 1..team.threads {
                scope.spawn(|_| team.serve());
            }
            // The members leave when the pass is over, even if it panicked.
            struct Dismiss<'a>(&'a Team);
            impl Drop for Dismiss<'_> {
                fn drop(&mut self) {
                    self.0.over.store(true, Ordering::Release);
                }
            }
            let _dismiss = Dismiss(&team);
            pass(&team)
        })
    }

    /// The threads of the team, the leader included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `task(i)` for every `i` in `0..tasks`, each once, on the team; returns when all
    /// are done. Only the leader (inside `gather`'s pass) calls this.
    pub fn run(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        if self.threads == 1 || tasks <= 1 {
            (0..tasks).for_each(task);
            return;
        }
        let job = Job {
            task,
            tasks,
            next: (0..self.threads)
                .map(|seat| Cursor(AtomicUsize::new(part_start(seat, tasks, self.threads))))
                .collect(),
            finished: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
        };
        // SAFETY (of the members' use of this pointer): `Withdraw` keeps `job` alive until no
        // member holds it; see `serve`.
        let erased = ptr::from_ref(&job).cast::<Job<'static>>().cast_mut();
        self.job.store(erased, Ordering::SeqCst);
        self.offered.fetch_add(1, Ordering::Release);
        struct Withdraw<'a>(&'a Team);
        impl Drop for Withdraw<'_> {
            fn drop(&mut self) {
                self.0.job.store(ptr::null_mut(), Ordering::SeqCst);
                // A member that saw the job before it was withdrawn is counted by now (its
                // increment precedes its load of the pointer, which precedes the store above).
                wait_until(|| self.0.readers.load(Ordering::SeqCst) == 0);
            }
        }
        let withdraw = Withdraw(self);
        job.work(0);
        wait_until(|| job.finished.load(Ordering::Acquire) == tasks);
        drop(withdraw);
        assert!(
            !job.panicked.load(Ordering::Relaxed),
            "a task of the team panicked"
        );
    }

    /// `f(i, item)` for the `i`th of `items`, each on one task of the team: how a step hands
    /// out disjoint parts of its output (chunks from `chunks_mut`, say).
    pub fn share<T: Send>(&self, items: impl Iterator<Item = T>, f: impl Fn(usize, T) + Sync) {
        let slots: Vec<Mutex<Option<T>>> = items.map(|item| Mutex::new(Some(item))).collect();
        self.run(slots.len(), &|i| {
            let item = slots[i]
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            f(i, item.expect("the team runs each task once"));
        });
    }

    /// A member's part of the pass: whenever a job is offered, its tasks until none is left;
    /// spinning in between, until the pass is over.
    fn serve(&self) {
        let seat = self.seated.fetch_add(1, Ordering::Relaxed);
        let (mut seen, mut idle) = (0, 0u32);
        while !self.over.load(Ordering::Acquire) {
            let offered = self.offered.load(Ordering::Acquire);
            if offered != seen {
                seen = offered;
                idle = 0;
                self.join_job(seat);
            } else if idle < SPINS_BEFORE_YIELDING {
                idle += 1;
                spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// The job on offer's tasks, if one is on offer.
    fn join_job(&self, seat: usize) {
        struct Reading<'a>(&'a Team);
        impl Drop for Reading<'_> {
            fn drop(&mut self) {
                self.0.readers.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.readers.fetch_add(1, Ordering::SeqCst);
        let _reading = Reading(self);
        let job = self.job.load(Ordering::SeqCst);
        // SAFETY: a non-null pointer is the job `run` offered, which stays alive until
        // `readers` is back to zero, after this function.
        if let Some(job) = unsafe { job.as_ref() } {
            job.work(seat);
        }
    }
}

impl Job<'_> {
    /// Takes and runs tasks until none is left: those of `seat`'s share, then the others'.
    fn work(&self, seat: usize) {
        let seats = self.next.len();
        for share in (seat..seats).chain(0..seat) {
            let end = part_start(share + 1, self.tasks, seats);
            loop {
                let i = self.next[share].0.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    break;
                }
                self.run_task(i);
            }
        }
    }

    fn run_task(&self, i: usize) {
        struct Finish<'a>(&'a Job<'a>);
        impl Drop for Finish<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.panicked.store(true, Ordering::Relaxed);
                }
                self.0.finished.fetch_add(1, Ordering::Release);
            }
        }
        let _finish = Finish(self);
        (self.task)(i);
    }
}

/// The first of `units` in part `part` when they are shared out among `parts` in order, as
/// equally as can be (the parts differ by one unit at most): how the team shares out a step's
/// tasks among its seats, and how steps share out their pixels, rows or outputs among tasks.
pub fn part_start(part: usize, units: usize, parts: usize) -> usize {
    part * units / parts
}

/// Spins until `done`, yielding the core after a while.
fn wait_until(done: impl Fn() -> bool) {
    let mut spins = 0u32;
    while !done() {
        if spins < SPINS_BEFORE_YIELDING {
            spins += 1;
            spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::panic;

    use super::*;

    #[test]
    fn every_task_runs_once_across_many_steps() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let counts: Vec<AtomicUsize> = (0..100).map(|_| AtomicUsize::new(0)).collect();
        pool.install(|| {
            Team::gather(|team| {
                assert_eq!(team.threads(), 3);
                for tasks in 0..100 {
                    team.run(tasks, &|i| {
                        counts[i].fetch_add(1, Ordering::Relaxed);
                    });
                }
            })
        });
        for (i, count) in counts.iter().enumerate() {
            // Task i ran in every step of more than i tasks.
            assert_eq!(count.load(Ordering::Relaxed), 99 - i);
        }
    }

    #[test]
    fn shared_chunks_are_written_by_their_tasks() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let mut values = vec![0usize; 1000];
        pool.install(|| {
            Team::gather(|team| {
                team.share(values.chunks_mut(7).enumerate(), |i, (chunk, values)| {
                    assert_eq!(i, chunk);
                    for (j, v) in values.iter_mut().enumerate() {
                        *v = chunk * 7 + j;
                    }
                });
            })
        });
        assert!(values.iter().enumerate().all(|(i, &v)| i == v));
    }

    #[test]
    fn a_panicking_task_fails_the_pass_and_the_team_disbands() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let outcome = panic::catch_unwind(panic::AssertUnwindSafe(|| {
            pool.install(|| {
                Team::gather(|team| {
                    team.run(64, &|i| assert!(i != 37, "task 37 fails"));
                })
            })
        }));
        assert!(outcome.is_err());
        // The pool is free again: a later pass runs.
        let sum = AtomicUsize::new(0);
        pool.install(|| {
            Team::gather(|team| {
                team.run(10, &|i| {
                    sum.fetch_add(i, Ordering::Relaxed);
                })
            })
        });
        assert_eq!(sum.load(Ordering::Relaxed), 45);
    }
}
