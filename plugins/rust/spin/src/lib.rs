//! Burns CPU for `{"iterations": N}` rounds of a hash: a slow handler for
//! backpressure tests (it needs no clock, which plugins do not get).
use runnel_guest::{export_plugin, Event, Outcome, Plugin};

#[derive(serde::Deserialize)]
struct Spec {
    iterations: u64,
}

struct Spin;

impl Plugin for Spin {
    fn handle(event: Event) -> Outcome {
        let spec: Spec = event.json()?;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..spec.iterations {
            x = std::hint::black_box(x.rotate_left(5) ^ i).wrapping_mul(0x100_0000_01b3);
        }
        std::hint::black_box(x);
        Ok(())
    }
}

export_plugin!(Spin);
