#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| walrelay_fuzz::targets::http_request(data));
