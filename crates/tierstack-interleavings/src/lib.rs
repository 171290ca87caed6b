#![doc = include_str!("../README.md")]

use std::future::Future;

/// Runs `scenario` `runs` times on a 2-worker tokio runtime; a run that
/// does not finish in 30 s fails (a caller never woken, a wedged key
/// spinning) without waiting for the stuck workers.
///
/// # Panics
///
/// When a run panics or does not finish in time.
#[cfg(not(shuttle))]
pub fn check<F: Future<Output = ()> + 'static>(runs: usize, scenario: fn() -> F) {
    let limit = std::time::Duration::from_secs(30);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("a tokio runtime");
    for _ in 0..runs {
        let finished = runtime.block_on(async { tokio::time::timeout(limit, scenario()).await });
        if finished.is_err() {
            runtime.shutdown_background();
            panic!("the scenario did not finish in {limit:?}: a caller was never answered");
        }
    }
    runtime.shutdown_background();
}

/// Runs `scenario` under shuttle's random scheduler for
/// `TIERSTACK_SHUTTLE_ITERATIONS` schedules (default 20,000); `runs` is
/// for the tokio build only.
///
/// # Panics
///
/// When a schedule fails an assertion, deadlocks or exceeds shuttle's step
/// limit; shuttle prints the schedule that replays it.
#[cfg(shuttle)]
pub fn check<F: Future<Output = ()> + 'static>(_runs: usize, scenario: fn() -> F) {
    let iterations = std::env::var("TIERSTACK_SHUTTLE_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    // The cache's futures, unoptimised, outgrow shuttle's default 60 KiB
    // task stacks.
    let mut config = shuttle::Config::default();
    config.stack_size = 1 << 20;
    let scheduler = shuttle::scheduler::RandomScheduler::new(iterations);
    shuttle::Runner::new(scheduler, config).run(move || shuttle::future::block_on(scenario()));
}
