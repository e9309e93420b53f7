//! A guard against blocking an async reactor. Storage's blocking entry points (appends, reads,
//! fsyncs, creating and deleting topics) check, in debug builds, that they do not run on a
//! thread that polls futures: a program that embeds storage in an async runtime installs how to
//! recognise its runtime's threads ([`set_runtime_probe`]) and runs storage work inside
//! [`blocking`] on its blocking pool. A call outside [`blocking`] on a runtime thread stops a
//! debug build at once, naming the call, so no test can pass over it; release builds skip the
//! check.

use std::cell::Cell;
use std::sync::OnceLock;

thread_local! {
    /// How many [`blocking`] sections this thread is inside.
    static BLOCKING: Cell<u32> = const { Cell::new(0) };
}

static RUNTIME_PROBE: OnceLock<fn() -> bool> = OnceLock::new();

/// Installs how to tell that the current thread belongs to an async runtime; the first
/// installation stays.
pub fn set_runtime_probe(probe: fn() -> bool) {
    let _ = RUNTIME_PROBE.set(probe);
}

/// Runs `f` as work that may block: on a blocking-pool thread, inside `spawn_blocking`.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    struct Section;
    impl Drop for Section {
        fn drop(&mut self) {
            BLOCKING.with(|b| b.set(b.get() - 1));
        }
    }
    BLOCKING.with(|b| b.set(b.get() + 1));
    let _section = Section;
    f()
}

/// Stops a debug build when `what`, which blocks, runs on a runtime thread outside [`blocking`].
pub(crate) fn check(what: &str) {
    if cfg!(debug_assertions)
        && BLOCKING.with(Cell::get) == 0
        && RUNTIME_PROBE.get().is_some_and(|probe| probe())
    {
        // Only this program's frames: the runtime's own would bury them.
        let trace = std::backtrace::Backtrace::force_capture().to_string();
        let ours: Vec<&str> = trace
            .lines()
            .filter(|l| l.contains("weir") || l.trim_start().starts_with("at ./"))
            .collect();
        eprintln!(
            "{what} blocks, and ran on an async runtime thread outside weir_storage::reactor::blocking, at\n{}",
            ours.join("\n")
        );
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocking_section_ends_even_when_its_work_panics() {
        let _ = std::panic::catch_unwind(|| blocking(|| panic!("work failed")));
        assert_eq!(BLOCKING.with(Cell::get), 0);
        blocking(|| assert_eq!(BLOCKING.with(Cell::get), 1));
    }
}
