//! Fork-join over the machine's cores, for the steps of a pipeline that read and decode
//! several partitions at once.

use std::sync::OnceLock;
use std::thread;

/// `f` over `items`, on up to as many threads as the machine has cores (the calling thread is
/// one of them); the answers in the order of `items`. A panic in `f` is raised again here.
pub fn in_parallel<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    // Asked once: the answer reads the process's cgroup files each time.
    static CORES: OnceLock<usize> = OnceLock::new();
    let cores = *CORES.get_or_init(|| thread::available_parallelism().map_or(1, |n| n.get()));
    let workers = cores.min(items.len());
    if workers <= 1 {
        return items.into_iter().map(f).collect();
    }
    let per_worker = items.len().div_ceil(workers);
    let mut items = items.into_iter();
    let mut shares: Vec<Vec<T>> = Vec::with_capacity(workers);
    loop {
        let share: Vec<T> = items.by_ref().take(per_worker).collect();
        if share.is_empty() {
            break;
        }
        shares.push(share);
    }
    let f = &f;
    let mut shares = shares.into_iter();
    let own = shares.next().unwrap_or_default();
    thread::scope(|scope| {
        let others: Vec<_> = shares
            .map(|share| scope.spawn(move || share.into_iter().map(f).collect::<Vec<R>>()))
            .collect();
        let mut answers: Vec<R> = own.into_iter().map(f).collect();
        for other in others {
            answers.extend(
                other
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            );
        }
        answers
    })
}

#[cfg(test)]
mod tests {
    use super::in_parallel;

    #[test]
    fn answers_come_in_the_order_of_the_items() {
        for n in [0, 1, 2, 3, 7, 64] {
            let items: Vec<u64> = (0..n).collect();
            let answers = in_parallel(items.clone(), |i| i * i);
            assert_eq!(answers, items.iter().map(|i| i * i).collect::<Vec<_>>());
        }
    }
}
