//! Taking a lock whatever another thread did while it held it.
//!
//! Every critical section in Weir leaves the data behind its lock consistent before anything
//! in it can fail or panic (and indexes, the one exception, are derived data that recovery
//! rebuilds), so a lock poisoned by a panic elsewhere still guards usable data: these helpers
//! take it anyway, instead of spreading that panic to every later caller.

use std::sync::{Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

pub fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// Waits on `condvar` with `guard`, as [`Condvar::wait`] does.
pub fn wait<'a, T>(condvar: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    condvar.wait(guard).unwrap_or_else(|e| e.into_inner())
}
