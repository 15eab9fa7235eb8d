//! The whole `shared::ota::OtaMachine`, driven by arbitrary event scripts: the model and the
//! contract its actions must keep are `shared::ota::script` (its docs list them), which the
//! property test shared/tests/ota_script.rs runs over random scripts too. The encoding of an
//! input is `shared::ota::script::op`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    shared::ota::script::run(data);
});
