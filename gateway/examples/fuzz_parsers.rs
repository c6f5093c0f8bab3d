//! An open-ended fuzz loop over every decoder that client bytes reach (the same entry
//! points as tests/parsers.rs): random inputs and random edits of valid ones, for as long
//! as asked, reporting how many ran. A panic stops it with the input that caused it.
//!   cargo run --release -p bsn-gateway --example fuzz_parsers -- [SECONDS]

#[path = "../tests/common/parsers.rs"]
mod parsers;

use std::time::{Duration, Instant};

fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let seeds = parsers::seeds();
    let mut state = u64::from_le_bytes(*b"bsn-fuzz") ^ std::process::id() as u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut runs = 0u64;
    while Instant::now() < deadline {
        let input: Vec<u8> = if next() % 2 == 0 {
            (0..next() % 2048).map(|_| next() as u8).collect()
        } else {
            let seed = &seeds[(next() % seeds.len() as u64) as usize];
            let edits: Vec<(usize, u8)> = (0..1 + next() % 8)
                .map(|_| (next() as usize, next() as u8))
                .collect();
            parsers::mutate(seed, &edits)
        };
        let caught = std::panic::catch_unwind(|| parsers::exercise(&input));
        if caught.is_err() {
            eprintln!("panic on input 0x{}", hex::encode(&input));
            std::process::exit(1);
        }
        runs += 1;
    }
    println!("fuzz_parsers: {runs} inputs in {seconds} s, no panic");
}
