//! `chaos SECONDS [SEED]`: the seeded fault campaign (see
//! `runnel_tests::chaos`), printing its table. Exits 1 if anything was
//! lost or left pending. Run it with `scripts/chaos.sh`.

use std::time::Duration;

use runnel_tests::chaos::{run, Campaign};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(seconds), seed) = (
        args.first().and_then(|s| s.parse::<u64>().ok()),
        args.get(1).and_then(|s| s.parse::<u64>().ok()).unwrap_or(1),
    ) else {
        eprintln!("usage: chaos SECONDS [SEED]");
        return std::process::ExitCode::from(2);
    };
    let bin = std::env::current_exe()
        .expect("this program's path")
        .with_file_name("runnel-under-test");
    let dir = runnel_tests::scratch("chaos");
    let campaign = Campaign {
        duration: Duration::from_secs(seconds),
        seed,
        hosts: 3,
        rate: 200,
        bin,
        plugin: runnel_tests::plugin(runnel_tests::guests::CHAOS),
        dir: dir.clone(),
    };
    eprintln!("chaos: {seconds}s, seed {seed}, files in {}", dir.display());
    match run(campaign).await {
        Ok(outcome) => {
            print!("{}", outcome.table(seed, Duration::from_secs(seconds)));
            if outcome.lost == 0
                && outcome.pending == 0
                && outcome.poison_short == 0
                && outcome.dead_not_poison == 0
            {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("chaos: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
