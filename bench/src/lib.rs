//! What several benchmarks share: cleanup of their lab when they are interrupted, and the median.

use lbfleet_tests::lab;

/// For a benchmark's `main`: on SIGINT or SIGTERM, says so under `program`'s name, runs
/// [`lab::cleanup_this_process`] and exits 130 (Drop guards do not run on a signal). Runs on its own thread.
pub fn cleanup_on_signal(program: &'static str) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            eprintln!("{program}: interrupted; removing this run's namespaces and machines");
            lab::cleanup_this_process();
            std::process::exit(130);
        });
    });
}

/// The median of `v` (sorted in place; the upper one of an even count), NaN when empty.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}
