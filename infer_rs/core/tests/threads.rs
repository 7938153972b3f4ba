//! `set_threads` sizes the engine's pool when it comes before the first call, and after
//! it accepts only the size the pool has. Its own process, so that no other test has
//! sized the pool first.

#[test]
fn threads_are_set_before_the_first_call_and_kept_after() {
    // one more than the cores: never the size the pool would take by itself
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = cores + 1;
    infer_core::set_threads(n).unwrap();
    assert_eq!(infer_core::cpu_info().unwrap().threads, n);

    infer_core::set_threads(n).unwrap(); // the size it has: nothing to change
    let err = infer_core::set_threads(n + 1).unwrap_err().to_string();
    assert!(err.contains(&format!("it runs on {n}")), "{err}");
    let err = infer_core::set_threads(0).unwrap_err().to_string();
    assert!(err.contains("at least one thread"), "{err}");
    assert_eq!(infer_core::cpu_info().unwrap().threads, n);
}
