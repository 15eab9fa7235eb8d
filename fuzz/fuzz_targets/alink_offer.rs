//! The push and `firmware/get` reply JSON (`shared::alink::parse_offer`), what the machine reads
//! from an offer next (`Task::from_offer`, its URL unescaping), and parse(emit(x)) == x.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shared::alink::{emit_get_reply, emit_push, json::top_level, parse_offer};
use shared::ota::{module_of, Task};

fuzz_target!(|data: &[u8]| {
    let _ = top_level(data, "id").map(|s| s.text());
    let Ok(Some(offer)) = parse_offer(data) else { return };
    let _ = module_of(&offer);
    if let Ok(task) = Task::from_offer(&offer) {
        let _ = task.key();
        for piece in task.url_fragments() {
            if piece.is_err() {
                break;
            }
        }
    }
    // What the console emits, the device parses back the same.
    let mut out = vec![0u8; 2 * data.len() + 256];
    if let Ok(n) = emit_push(&mut out, 1695281536874, &offer) {
        let back = parse_offer(&out[..n]).expect("an emitted push parses");
        assert_eq!(
            back.as_ref(),
            Some(&offer),
            "push: parse(emit(x)) != x for {:?}",
            String::from_utf8_lossy(&out[..n])
        );
    }
    if let Ok(n) = emit_get_reply(&mut out, "12", &offer) {
        let back = parse_offer(&out[..n]).expect("an emitted get_reply parses");
        assert_eq!(back.as_ref(), Some(&offer), "get_reply: parse(emit(x)) != x");
    }
});
