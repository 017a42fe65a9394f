//! End-to-end comparison of tm2-p2p with rust-libp2p (TCP + noise + yamux), side by side on
//! one machine, over 127.0.0.1:
//!
//! - `throughput`: one connection, one direction, 1 MiB messages: MB/s at the receiver;
//! - `msgs`: 256-byte messages per second on one connection (`msgs-buffered`: libp2p's sender
//!   behind a 64 KiB `BufWriter`, against the same tm2-p2p figure);
//! - `conns1`, `conns16`: connections established per second with 1 and 16 in flight (TCP,
//!   handshake, ready to send, then closed);
//! - `memory`: RSS growth per idle connection end with 500 connections open.
//!
//! Each measurement of each stack runs in its own child process (this binary, re-executed
//! with the hidden `child` subcommand) with both ends of its connections inside it, so the
//! stacks never share a heap, a runtime or a socket table; the parent alternates the stacks'
//! order from one run to the next and prints medians and ratios.
//!
//! Run: `cargo run --release --manifest-path perf/Cargo.toml` (`-- --help` for options).

// A measurement program: it reads the clock directly.
#![allow(clippy::disallowed_methods)]

mod common;
mod lp2p;
mod tm2;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};

use common::{IO_WORKERS, Window, raise_fd_limit};

#[cfg(feature = "heap")]
#[global_allocator]
static ALLOC: common::heap::Counting = common::heap::Counting;

/// The libp2p release compared against (perf/Cargo.lock pins the exact one).
const LIBP2P_VERSION: &str = "0.57";

/// Compare tm2-p2p with rust-libp2p (TCP + noise + yamux) on loopback.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Run only these measurements (repeat the option; default: all).
    #[arg(long, value_enum)]
    only: Vec<Measure>,
    /// Runs of every measurement; the table shows medians.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds each streaming or connecting measurement runs before counting.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds each streaming or connecting measurement counts.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Idle connections opened by the memory measurement.
    #[arg(long, default_value_t = 500)]
    idle_conns: usize,
    /// Where tm2-p2p's streaming sender runs.
    #[arg(long, value_enum, default_value_t = tm2::SenderOn::Io)]
    tm2_sender: tm2::SenderOn,
    #[command(subcommand)]
    child: Option<Child>,
}

/// Internal: one measurement of one stack, in a process of its own.
#[derive(Debug, Subcommand)]
enum Child {
    /// Runs one measurement and prints `RESULT <value>` (used by the parent).
    #[command(hide = true)]
    Child {
        #[arg(long, value_enum)]
        stack: Stack,
        #[arg(long, value_enum)]
        measure: Measure,
    },
}

/// The two stacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Stack {
    Tm2,
    Libp2p,
}

impl Stack {
    fn name(self) -> &'static str {
        match self {
            Self::Tm2 => "tm2",
            Self::Libp2p => "libp2p",
        }
    }
}

/// The measurements, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Measure {
    Throughput,
    Msgs,
    MsgsBuffered,
    Conns1,
    Conns16,
    Memory,
}

impl Measure {
    const ALL: [Self; 6] = [
        Self::Throughput,
        Self::Msgs,
        Self::MsgsBuffered,
        Self::Conns1,
        Self::Conns16,
        Self::Memory,
    ];

    /// The table's row label.
    fn label(self) -> &'static str {
        match self {
            Self::Throughput => "throughput, 1 MiB messages (MB/s)",
            Self::Msgs => "256 B messages/s",
            Self::MsgsBuffered => "256 B messages/s, libp2p BufWriter",
            Self::Conns1 => "connections/s, 1 in flight",
            Self::Conns16 => "connections/s, 16 in flight",
            Self::Memory => "RSS per idle connection end (KiB)",
        }
    }

    /// The value printed: raw results are bytes/s and bytes.
    fn scale(self, value: f64) -> f64 {
        match self {
            Self::Throughput => value / 1e6,
            Self::Memory => value / 1024.0,
            _ => value,
        }
    }

    /// Whether less is better (the ratio's goal is an upper bound).
    fn lower_is_better(self) -> bool {
        self == Self::Memory
    }

    /// The goal on tm2-p2p / libp2p, from issue 9, if any.
    fn goal(self) -> Option<f64> {
        match self {
            Self::Throughput => Some(2.0),
            Self::Conns1 | Self::Conns16 => Some(3.0),
            Self::Memory => Some(0.5),
            Self::Msgs | Self::MsgsBuffered => None,
        }
    }

    /// The stacks that run for this row (`msgs-buffered` reuses tm2-p2p's `msgs` figure).
    fn stacks(self) -> &'static [Stack] {
        match self {
            Self::MsgsBuffered => &[Stack::Libp2p],
            _ => &[Stack::Tm2, Stack::Libp2p],
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let window = Window {
        warmup: Duration::from_secs_f64(cli.warmup),
        duration: Duration::from_secs_f64(cli.duration),
    };
    match cli.child {
        Some(Child::Child { stack, measure }) => {
            raise_fd_limit();
            let value = run_one(stack, measure, window, cli.idle_conns, cli.tm2_sender)?;
            println!("RESULT {value}");
            // Connections and tasks are still up; the process ends them all.
            std::process::exit(0);
        }
        None => compare(&cli, window),
    }
}

/// One measurement of one stack, in this process.
fn run_one(
    stack: Stack,
    measure: Measure,
    window: Window,
    idle_conns: usize,
    tm2_sender: tm2::SenderOn,
) -> anyhow::Result<f64> {
    match (stack, measure) {
        (Stack::Tm2, Measure::Throughput) => tm2::throughput(window, tm2_sender),
        (Stack::Tm2, Measure::Msgs | Measure::MsgsBuffered) => tm2::messages(window, tm2_sender),
        (Stack::Tm2, Measure::Conns1) => tm2::connections(window, 1),
        (Stack::Tm2, Measure::Conns16) => tm2::connections(window, 16),
        (Stack::Tm2, Measure::Memory) => tm2::memory(idle_conns),
        (Stack::Libp2p, Measure::Throughput) => lp2p::throughput(window),
        (Stack::Libp2p, Measure::Msgs) => lp2p::messages(window, lp2p::Writes::PerMessage),
        (Stack::Libp2p, Measure::MsgsBuffered) => lp2p::messages(window, lp2p::Writes::Buffered),
        (Stack::Libp2p, Measure::Conns1) => lp2p::connections(window, 1),
        (Stack::Libp2p, Measure::Conns16) => lp2p::connections(window, 16),
        (Stack::Libp2p, Measure::Memory) => lp2p::memory(idle_conns),
    }
}

/// Runs every selected measurement `runs` times for both stacks, each in a child process, and
/// prints the table.
fn compare(cli: &Cli, window: Window) -> anyhow::Result<()> {
    let measures: Vec<Measure> = if cli.only.is_empty() {
        Measure::ALL.to_vec()
    } else {
        Measure::ALL
            .into_iter()
            .filter(|m| cli.only.contains(m))
            .collect()
    };
    anyhow::ensure!(cli.runs > 0, "--runs must be at least 1");
    let exe = std::env::current_exe()?;
    // results[measure][stack] = one value per run
    let mut results = vec![[Vec::new(), Vec::new()]; measures.len()];
    let started = Instant::now();
    for run in 0..cli.runs {
        for (i, &measure) in measures.iter().enumerate() {
            let mut stacks = measure.stacks().to_vec();
            // Alternate which stack goes first, so a drift in the machine's load hits both.
            if run % 2 == 1 {
                stacks.reverse();
            }
            for stack in stacks {
                let value = run_child(&exe, cli, stack, measure, window)?;
                eprintln!(
                    "run {}/{} {:<14} {:<7} {:>12.1}",
                    run + 1,
                    cli.runs,
                    format!("{measure:?}").to_lowercase(),
                    stack.name(),
                    measure.scale(value)
                );
                results[i][stack as usize].push(value);
            }
        }
    }
    print_table(cli, &measures, &results, started.elapsed());
    Ok(())
}

/// Runs one child process and parses its `RESULT` line; kills it if it overruns.
fn run_child(
    exe: &std::path::Path,
    cli: &Cli,
    stack: Stack,
    measure: Measure,
    window: Window,
) -> anyhow::Result<f64> {
    let mut child = Command::new(exe)
        .args([
            "--warmup",
            &cli.warmup.to_string(),
            "--duration",
            &cli.duration.to_string(),
            "--idle-conns",
            &cli.idle_conns.to_string(),
            "--tm2-sender",
            cli.tm2_sender
                .to_possible_value()
                .expect("no skipped variants")
                .get_name(),
            "child",
            "--stack",
            stack.name(),
            "--measure",
            measure
                .to_possible_value()
                .expect("no skipped variants")
                .get_name(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let limit = window.warmup + window.duration + Duration::from_secs(180);
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            anyhow::bail!("{stack:?} {measure:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout.read_to_string(&mut out)?;
    }
    anyhow::ensure!(status.success(), "{stack:?} {measure:?} failed: {status}");
    out.lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .ok_or_else(|| anyhow::anyhow!("{stack:?} {measure:?} printed no result"))?
        .trim()
        .parse()
        .map_err(Into::into)
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn print_table(cli: &Cli, measures: &[Measure], results: &[[Vec<f64>; 2]], took: Duration) {
    let msgs_tm2 = measures
        .iter()
        .position(|&m| m == Measure::Msgs)
        .map(|i| results[i][Stack::Tm2 as usize].clone());
    println!(
        "\ntm2-p2p vs rust-libp2p {} (TCP + noise + yamux), 127.0.0.1, {} worker threads; \
         median of {} runs ({:.0} s warm-up + {:.0} s window; {} idle connections); took {:.0} s\n",
        LIBP2P_VERSION,
        IO_WORKERS,
        cli.runs,
        cli.warmup,
        cli.duration,
        cli.idle_conns,
        took.as_secs_f64()
    );
    println!("| measurement | tm2-p2p | rust-libp2p | tm2 / libp2p | goal | met |");
    println!("| --- | ---: | ---: | ---: | --- | --- |");
    for (i, &m) in measures.iter().enumerate() {
        let ours = if m == Measure::MsgsBuffered {
            msgs_tm2.clone().unwrap_or_default()
        } else {
            results[i][Stack::Tm2 as usize].clone()
        };
        let theirs = &results[i][Stack::Libp2p as usize];
        if ours.is_empty() || theirs.is_empty() {
            println!(
                "| {} | (run with msgs) | {:.0} | | | |",
                m.label(),
                m.scale(median(theirs))
            );
            continue;
        }
        let (a, b) = (m.scale(median(&ours)), m.scale(median(theirs)));
        let ratio = a / b;
        let (goal, met) = match m.goal() {
            Some(g) if m.lower_is_better() => (format!("<= {g}"), ratio <= g),
            Some(g) => (format!(">= {g}"), ratio >= g),
            None => (String::new(), true),
        };
        let met = match m.goal() {
            None => "",
            Some(_) if met => "yes",
            Some(_) => "no",
        };
        let prec = if m == Measure::Memory { 1 } else { 0 };
        println!(
            "| {} | {a:.prec$} | {b:.prec$} | {ratio:.2} | {goal} | {met} |",
            m.label()
        );
    }
    println!("\nper run (tm2 ; libp2p):");
    for (i, &m) in measures.iter().enumerate() {
        let fmt = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{:.1}", m.scale(*x)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "  {:<36} {} ; {}",
            m.label(),
            fmt(&results[i][Stack::Tm2 as usize]),
            fmt(&results[i][Stack::Libp2p as usize])
        );
    }
}
