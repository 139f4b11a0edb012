#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tower_parapet_fuzz::client_ip(data));
