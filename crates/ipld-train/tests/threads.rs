//! `pin_thread_count` stores candle's own default and respects a user's setting, and
//! `quiet_candle_pool` turns candle's elementwise pool off for sharded runs only, unless the
//! user chose. One test in its own binary, so no other test thread reads the environment while
//! it is written.

#[test]
fn pinning_stores_candles_default_and_keeps_a_users_choice() {
    // SAFETY (all set/remove calls): this binary runs one test, so no thread reads concurrently.
    unsafe { std::env::remove_var("RAYON_NUM_THREADS") };
    let default = candle_core::utils::get_num_threads();
    assert!(default >= 1);
    ipld_train::pin_thread_count();
    assert_eq!(
        std::env::var("RAYON_NUM_THREADS").as_deref(),
        Ok(default.to_string().as_str())
    );
    assert_eq!(candle_core::utils::get_num_threads(), default);

    let mine = (default + 2).to_string();
    unsafe { std::env::set_var("RAYON_NUM_THREADS", &mine) };
    ipld_train::pin_thread_count();
    assert_eq!(
        std::env::var("RAYON_NUM_THREADS").as_deref(),
        Ok(mine.as_str())
    );
    assert_eq!(candle_core::utils::get_num_threads(), default + 2);

    // quiet_candle_pool: nothing for an unsharded run, 1 for a sharded one, a user's value kept.
    unsafe { std::env::remove_var("CANDLE_NUM_THREADS") };
    ipld_train::quiet_candle_pool(1);
    assert_eq!(std::env::var_os("CANDLE_NUM_THREADS"), None);
    ipld_train::quiet_candle_pool(2);
    assert_eq!(std::env::var("CANDLE_NUM_THREADS").as_deref(), Ok("1"));
    unsafe { std::env::set_var("CANDLE_NUM_THREADS", "3") };
    ipld_train::quiet_candle_pool(2);
    assert_eq!(std::env::var("CANDLE_NUM_THREADS").as_deref(), Ok("3"));
}
