//! The operator's commands on a Redis backend: `runnel emit` and `runnel dlq`.

use std::io::Read as _;
use std::process::ExitCode;

use anyhow::Context as _;

use super::{DlqCommand, EmitArgs, Output};
use crate::commands::input::InputEvent;
use crate::event::Event;

/// `runnel emit`: one event from flags, or NDJSON from stdin, to Redis.
pub(super) async fn cmd_emit(args: EmitArgs) -> anyhow::Result<ExitCode> {
    let events = match args.name {
        Some(name) => {
            let bytes = match (args.payload, args.payload_file) {
                (Some(json), _) => {
                    serde_json::from_str::<serde_json::Value>(&json)
                        .context("--payload is not JSON")?;
                    json.into_bytes()
                }
                (None, Some(file)) => std::fs::read(&file)
                    .with_context(|| format!("{}: cannot read", file.display()))?,
                (None, None) => Vec::new(),
            };
            let mut event = Event::new(name, bytes);
            event.meta.correlation_id = args.correlation_id;
            event.meta.is_dry_run = args.dry_run;
            vec![InputEvent {
                stream: None,
                event,
                is_envelope: false,
            }]
        }
        None => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading NDJSON events from stdin")?;
            crate::commands::input::parse(&text).context("stdin")?
        }
    };
    let broker = args.redis.connect().await?;
    let bar = progress_bar(events.len() as u64, "emitting");
    let n = crate::commands::tools::emit(&*broker, args.stream.as_deref(), events, &|done| {
        if let Some(bar) = &bar {
            bar.inc(done as u64);
        }
    })
    .await?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    println!("emitted {n} event{}", if n == 1 { "" } else { "s" });
    Ok(ExitCode::SUCCESS)
}

/// A progress bar on stderr for a long command, only when stderr is a
/// terminal (logs, pipes and CI get the plain summary line alone); hidden
/// for work too small to need one.
fn progress_bar(len: u64, what: &str) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal as _;
    if !std::io::stderr().is_terminal() || (len > 0 && len < 1000) {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len);
    let style = indicatif::ProgressStyle::with_template("{msg} {wide_bar} {pos}/{len} {per_sec}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(what.to_string());
    Some(bar)
}

/// `runnel dlq ...`: list or replay dead letters.
pub(super) async fn cmd_dlq(command: DlqCommand) -> anyhow::Result<ExitCode> {
    match command {
        DlqCommand::List {
            redis,
            stream,
            count,
            output,
        } => {
            let broker = redis.connect().await?;
            match output {
                Output::Table => print!(
                    "{}",
                    crate::commands::tools::dlq_list(&*broker, &stream, count).await?
                ),
                Output::Json => {
                    use crate::broker::Broker as _;
                    let letters: Vec<serde_json::Value> = broker
                        .range(&stream, None, None, count)
                        .await?
                        .iter()
                        .map(crate::dead_letter::describe)
                        .collect();
                    println!("{}", serde_json::Value::Array(letters));
                }
            }
        }
        DlqCommand::Replay {
            redis,
            stream,
            ids,
            group,
        } => {
            let broker = redis.connect().await?;
            let bar = progress_bar(0, "replaying");
            let n = crate::commands::tools::dlq_replay(
                &*broker,
                &stream,
                &ids,
                group.as_deref(),
                &|done, of| {
                    if let Some(bar) = &bar {
                        bar.set_length(of as u64);
                        bar.set_position(done as u64);
                    }
                },
            )
            .await?;
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            println!("replayed {n} dead letters from {stream}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
