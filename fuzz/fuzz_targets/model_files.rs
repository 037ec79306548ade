//! The model file readers (safetensors and GGUF headers) on arbitrary bytes: every input is
//! either tensors that lie inside the input and do not overlap, or an error; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Half the inputs as GGUF (the magic in front), half as they come (safetensors).
    let gguf;
    let bytes = if data.first().is_some_and(|b| b & 1 == 1) {
        gguf = [b"GGUF".as_slice(), &data[1..]].concat();
        &gguf[..]
    } else {
        data
    };
    if let Ok(mut tensors) = engine::model::Model::parse(bytes) {
        tensors.sort_by_key(|t| t.offset);
        let mut end = 0;
        for t in &tensors {
            assert!(t.offset >= end, "tensors overlap");
            end = t.offset + t.bytes;
            assert!(end <= bytes.len() as u64, "a tensor runs past the input");
        }
    }
});
