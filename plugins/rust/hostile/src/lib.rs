//! Misbehaves as its payload says, to prove the host contains it:
//!
//! | payload        | what it does                                        |
//! |----------------|-----------------------------------------------------|
//! | `loop`         | loops forever                                       |
//! | `alloc`        | allocates 1 MiB blocks until allocation fails       |
//! | `alloc-abort`  | allocates 1 MiB blocks, aborting when it fails      |
//! | `panic`        | panics (its message goes to stderr, then it traps)  |
//! | `recurse`      | recurses until the stack overflows                  |
//! | `emit-flood`   | emits a million events in one call                  |
//! | `log-flood`    | logs one 100 MB line                                |
//! | `open-file`    | reads /etc/hostname                                 |
//! | `read-env`     | reads the environment variable HOME                 |
//! | `connect`      | opens a TCP connection to 127.0.0.1:6379            |
//! | `sleep`        | sleeps an hour: waits in the host, not in wasm      |
//! | anything else  | succeeds                                            |
//!
//! The sandbox probes report what they got as the retry reason, so tests
//! can see whether the host denied them.
use runnel_guest::{emit_all, export_plugin, log, Event, NewEvent, Outcome, Plugin, Refusal};

struct Hostile;

#[inline(never)]
#[allow(unconditional_recursion)] // overflowing the stack is the point
fn recurse(depth: u64, sink: &mut [u64; 64]) -> u64 {
    let mut frame = [depth; 64];
    frame[(depth % 64) as usize] ^= sink[0];
    let below = recurse(depth + 1, &mut frame);
    std::hint::black_box(&frame);
    below + frame[3]
}

impl Plugin for Hostile {
    fn handle(event: Event) -> Outcome {
        match event.text().unwrap_or("") {
            "loop" => {
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    let mut block = Vec::new();
                    if block.try_reserve_exact(1 << 20).is_err() {
                        return Err(Refusal::retry(format!(
                            "allocation failed after {} MiB",
                            hoard.len()
                        )));
                    }
                    block.resize(1 << 20, 1);
                    hoard.push(block);
                }
            }
            "alloc-abort" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "panic" => panic!("the plugin panicked on purpose handling {}", event.id),
            "recurse" => {
                let mut sink = [0u64; 64];
                Err(Refusal::retry(format!("returned {}", recurse(0, &mut sink))))
            }
            "emit-huge" => emit_all(vec![NewEvent {
                name: "flood".into(),
                payload: vec![b'x'; 17 << 20],
            }]),
            "emit-flood" => {
                let events = (0..1_000_000)
                    .map(|i| NewEvent {
                        name: "flood".into(),
                        payload: format!("{i}").into_bytes(),
                    })
                    .collect();
                emit_all(events)
            }
            "log-flood" => {
                log::info(&"x".repeat(100 << 20));
                Ok(())
            }
            "open-file" => match std::fs::read_to_string("/etc/hostname") {
                Ok(text) => Err(Refusal::retry(format!("read the file: {}", text.trim()))),
                Err(e) => Err(Refusal::retry(format!("denied: {e}"))),
            },
            "write-file" => match std::fs::write("/etc/written-by-plugin", event.id.as_bytes()) {
                Ok(()) => Err(Refusal::retry("wrote the file")),
                Err(e) => Err(Refusal::retry(format!("denied: {e}"))),
            },
            "read-env" => match std::env::var("HOME") {
                Ok(v) => Err(Refusal::retry(format!("read HOME={v}"))),
                Err(e) => Err(Refusal::retry(format!("denied: {e}"))),
            },
            "connect" => match std::net::TcpStream::connect("127.0.0.1:6379") {
                Ok(_) => Err(Refusal::retry("connected")),
                Err(e) => Err(Refusal::retry(format!("denied: {e}"))),
            },
            "sleep" => {
                // A wait on a `wasi:io` pollable, where the epoch cannot
                // interrupt it: only the host's backstop ends the call.
                std::thread::sleep(std::time::Duration::from_secs(3600));
                Err(Refusal::retry("slept an hour"))
            }
            "print" => {
                println!("printed by {}", event.id);
                eprintln!("complained by {}", event.id);
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

export_plugin!(Hostile);
