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
//! The rows with a goal on a rate also run two floors of TM2's wire (`floor`): its cipher
//! alone in memory and its secret layer (or upgrade) alone over TCP. A floor's rate per
//! CPU-second times the machine's cores is a ceiling no TM2-compatible implementation passes
//! here; the second table sets it against what each goal needs. The throughput row adds a
//! third: plain loopback TCP's CPU per byte (best case: 1 MiB writes, a thread per end) added
//! to the cipher's, the least any implementation spends to move a byte of TM2's wire.
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
mod floor;
mod lp2p;
mod tm2;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};

use common::{Figure, IO_WORKERS, Window, raise_fd_limit};

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
    /// Where tm2-p2p's streaming sender runs. `io` (the default since issue 17) is where
    /// libp2p's sender runs: a task on the same 2-worker runtime. `arbiter` is where a
    /// reactor sends from, but here both nodes share one process and so one actix thread: the
    /// sending loop then competes with the receiving reactor, which a real deployment (sender
    /// and receiver in different processes) never does; batched delivery made that the
    /// bottleneck (docs/PERFORMANCE.md).
    #[arg(long, value_enum, default_value_t = tm2::SenderOn::Io)]
    tm2_sender: tm2::SenderOn,
    /// Skip the floors: TM2's wire alone (crypto in memory; the secret layer over TCP), which
    /// turn the goals into ceilings this machine allows.
    #[arg(long)]
    no_floors: bool,
    #[command(subcommand)]
    child: Option<Child>,
}

/// Internal: one measurement of one stack, in a process of its own.
#[derive(Debug, Subcommand)]
enum Child {
    /// Runs one measurement and prints `RESULT <value> [<value per CPU-second>]` (used by the
    /// parent).
    #[command(hide = true)]
    Child {
        #[arg(long, value_enum)]
        stack: Stack,
        #[arg(long, value_enum)]
        measure: Measure,
    },
}

/// The two stacks, and the two floors of TM2's wire (see `floor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Stack {
    Tm2,
    Libp2p,
    /// TM2's cryptography alone, in memory, one thread.
    FloorCpu,
    /// TM2's secret layer (and upgrade) alone over loopback TCP.
    FloorTcp,
    /// Loopback TCP alone, no cryptography (throughput only).
    FloorPlain,
    /// One thread sealing in order and writing (throughput only).
    FloorWriter,
}

impl Stack {
    fn name(self) -> &'static str {
        match self {
            Self::Tm2 => "tm2",
            Self::Libp2p => "libp2p",
            Self::FloorCpu => "floor-cpu",
            Self::FloorTcp => "floor-tcp",
            Self::FloorPlain => "floor-plain",
            Self::FloorWriter => "floor-writer",
        }
    }

    fn is_floor(self) -> bool {
        matches!(
            self,
            Self::FloorCpu | Self::FloorTcp | Self::FloorPlain | Self::FloorWriter
        )
    }
}

/// The measurements, in table order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Measure {
    Throughput,
    Msgs,
    MsgsBuffered,
    MsgsBatch,
    Conns1,
    Conns16,
    Memory,
}

impl Measure {
    const ALL: [Self; 7] = [
        Self::Throughput,
        Self::Msgs,
        Self::MsgsBuffered,
        Self::MsgsBatch,
        Self::Conns1,
        Self::Conns16,
        Self::Memory,
    ];

    /// The name on the command line.
    fn name(self) -> &'static str {
        match self {
            Self::Throughput => "throughput",
            Self::Msgs => "msgs",
            Self::MsgsBuffered => "msgs-buffered",
            Self::MsgsBatch => "msgs-batch",
            Self::Conns1 => "conns1",
            Self::Conns16 => "conns16",
            Self::Memory => "memory",
        }
    }

    /// The table's row label.
    fn label(self) -> &'static str {
        match self {
            Self::Throughput => "throughput, 1 MiB messages (MB/s)",
            Self::Msgs => "256 B messages/s",
            Self::MsgsBuffered => "256 B messages/s, libp2p BufWriter",
            Self::MsgsBatch => "256 B messages/s, tm2 ReceiveBatch, libp2p BufWriter",
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

    /// The goal on tm2-p2p / libp2p, if any: throughput and small messages from issue 17,
    /// connections and memory from issue 9.
    fn goal(self) -> Option<f64> {
        match self {
            Self::Throughput => Some(1.4),
            Self::MsgsBuffered | Self::MsgsBatch => Some(1.0),
            Self::Conns1 | Self::Conns16 => Some(3.0),
            Self::Memory => Some(0.5),
            Self::Msgs => None,
        }
    }

    /// The stacks that run for this row (`msgs-buffered` reuses tm2-p2p's `msgs` figure); the
    /// rows with a goal on a rate also run the floors.
    fn stacks(self) -> &'static [Stack] {
        match self {
            Self::MsgsBuffered => &[Stack::Libp2p],
            Self::Throughput => &[
                Stack::Tm2,
                Stack::Libp2p,
                Stack::FloorCpu,
                Stack::FloorTcp,
                Stack::FloorPlain,
                Stack::FloorWriter,
            ],
            Self::Conns1 | Self::Conns16 => {
                &[Stack::Tm2, Stack::Libp2p, Stack::FloorCpu, Stack::FloorTcp]
            }
            Self::MsgsBatch => &[Stack::Tm2, Stack::Libp2p, Stack::FloorCpu, Stack::FloorTcp],
            Self::Msgs | Self::Memory => &[Stack::Tm2, Stack::Libp2p],
        }
    }

    /// What each floor of this row measures.
    fn floor_label(self, stack: Stack) -> &'static str {
        match (self, stack) {
            (Self::Throughput, Stack::FloorCpu) => {
                "seal + open of every 1024 B and its copy into the message, in memory"
            }
            (Self::Throughput, Stack::FloorPlain) => {
                "seal + open + copy in memory, plus plain TCP (1 MiB writes, two threads) per byte"
            }
            (Self::Throughput, Stack::FloorWriter) => {
                "one thread seals frames in order and writes them (its rate, not x cores)"
            }
            (Self::Throughput, _) => "SecretStream alone over TCP, 1 MiB writes",
            (Self::MsgsBatch, Stack::FloorCpu) => {
                "seal + open of every 1024 B, in memory, per 256 B message's packet"
            }
            (Self::MsgsBatch, _) => "SecretStream alone over TCP, per 256 B message's packet",
            (_, Stack::FloorCpu) => "both sides' handshake, in memory",
            (Self::Conns1, _) => "TCP + upgrade alone, 1 in flight",
            (_, _) => "TCP + upgrade alone, 16 in flight",
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
            let figure = run_one(stack, measure, window, cli.idle_conns, cli.tm2_sender)?;
            match figure.per_cpu_second {
                Some(per_cpu) => println!("RESULT {} {per_cpu}", figure.value),
                None => println!("RESULT {}", figure.value),
            }
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
) -> anyhow::Result<Figure> {
    match (stack, measure) {
        (Stack::Tm2, Measure::Throughput) => tm2::throughput(window, tm2_sender),
        (Stack::Tm2, Measure::Msgs | Measure::MsgsBuffered) => {
            tm2::messages(window, tm2_sender, tm2::Delivery::Each)
        }
        (Stack::Tm2, Measure::MsgsBatch) => tm2::messages(window, tm2_sender, tm2::Delivery::Batch),
        (Stack::Tm2, Measure::Conns1) => tm2::connections(window, 1),
        (Stack::Tm2, Measure::Conns16) => tm2::connections(window, 16),
        (Stack::Tm2, Measure::Memory) => tm2::memory(idle_conns),
        (Stack::Libp2p, Measure::Throughput) => lp2p::throughput(window),
        (Stack::Libp2p, Measure::Msgs) => lp2p::messages(window, lp2p::Writes::PerMessage),
        (Stack::Libp2p, Measure::MsgsBuffered | Measure::MsgsBatch) => {
            lp2p::messages(window, lp2p::Writes::Buffered)
        }
        (Stack::Libp2p, Measure::Conns1) => lp2p::connections(window, 1),
        (Stack::Libp2p, Measure::Conns16) => lp2p::connections(window, 16),
        (Stack::Libp2p, Measure::Memory) => lp2p::memory(idle_conns),
        (Stack::FloorCpu, Measure::Throughput) => {
            floor::seal_open(window, floor::Opened::CopiedOut)
        }
        (Stack::FloorCpu, Measure::MsgsBatch) => {
            floor::seal_open(window, floor::Opened::InPlace).map(floor::per_packet)
        }
        (Stack::FloorTcp, Measure::MsgsBatch) => {
            floor::secret_stream(window).map(floor::per_packet)
        }
        (Stack::FloorCpu, Measure::Conns1 | Measure::Conns16) => floor::handshakes(window),
        (Stack::FloorTcp, Measure::Throughput) => floor::secret_stream(window),
        (Stack::FloorTcp, Measure::Conns1) => floor::upgrades(window, 1),
        (Stack::FloorTcp, Measure::Conns16) => floor::upgrades(window, 16),
        (Stack::FloorPlain, Measure::Throughput) => floor::plain_tcp(window),
        (Stack::FloorWriter, Measure::Throughput) => floor::seal_and_send(window),
        (Stack::FloorCpu | Stack::FloorTcp | Stack::FloorPlain | Stack::FloorWriter, _) => {
            anyhow::bail!("{} has no floor", measure.name())
        }
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
    let load_before = load_average();
    let mut results = vec![Results::default(); measures.len()];
    let started = Instant::now();
    for run in 0..cli.runs {
        for (i, &measure) in measures.iter().enumerate() {
            let mut stacks: Vec<Stack> = measure
                .stacks()
                .iter()
                .copied()
                .filter(|s| !(cli.no_floors && s.is_floor()))
                .collect();
            // Alternate which stack goes first, so a drift in the machine's load hits both.
            if run % 2 == 1 {
                stacks.reverse();
            }
            for stack in stacks {
                let figure = run_child(&exe, cli, stack, measure, window)?;
                eprintln!(
                    "run {}/{} {:<14} {:<9} {:>12.1}{}",
                    run + 1,
                    cli.runs,
                    measure.name(),
                    stack.name(),
                    measure.scale(figure.value),
                    figure
                        .per_cpu_second
                        .map(|c| format!("  ({:.1} per CPU-second)", measure.scale(c)))
                        .unwrap_or_default()
                );
                results[i].of(stack).push(figure);
            }
        }
    }
    let header = format!(
        "tm2-p2p vs rust-libp2p {LIBP2P_VERSION} (TCP + noise + yamux), 127.0.0.1, both ends in one \
         process per measurement, {IO_WORKERS} runtime workers, tm2-p2p's sender on {}; median \
         of {} runs ({} s warm-up + {} s window; {} idle connections); took {:.0} s; load \
         average before {load_before}, after {}",
        match cli.tm2_sender {
            tm2::SenderOn::Io => "the runtime",
            tm2::SenderOn::Arbiter => "the actix arbiter",
        },
        cli.runs,
        cli.warmup,
        cli.duration,
        cli.idle_conns,
        started.elapsed().as_secs_f64(),
        load_average(),
    );
    print_table(&header, &measures, &results);
    print_floors(&measures, &results);
    Ok(())
}

/// The figures of one measurement, per stack, one per run.
#[derive(Debug, Clone, Default)]
struct Results {
    tm2: Vec<Figure>,
    libp2p: Vec<Figure>,
    floor_cpu: Vec<Figure>,
    floor_tcp: Vec<Figure>,
    floor_plain: Vec<Figure>,
    floor_writer: Vec<Figure>,
}

impl Results {
    fn of(&mut self, stack: Stack) -> &mut Vec<Figure> {
        match stack {
            Stack::Tm2 => &mut self.tm2,
            Stack::Libp2p => &mut self.libp2p,
            Stack::FloorCpu => &mut self.floor_cpu,
            Stack::FloorTcp => &mut self.floor_tcp,
            Stack::FloorPlain => &mut self.floor_plain,
            Stack::FloorWriter => &mut self.floor_writer,
        }
    }
}

/// The 1-minute load average of the machine (/proc/loadavg), or "?".
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

/// Runs one child process and parses its `RESULT` line; kills it if it overruns.
fn run_child(
    exe: &std::path::Path,
    cli: &Cli,
    stack: Stack,
    measure: Measure,
    window: Window,
) -> anyhow::Result<Figure> {
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
            measure.name(),
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
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .ok_or_else(|| anyhow::anyhow!("{stack:?} {measure:?} printed no result"))?;
    let mut fields = line.split_whitespace().map(str::parse::<f64>);
    let value = fields
        .next()
        .ok_or_else(|| anyhow::anyhow!("{stack:?} {measure:?}: empty result"))??;
    let per_cpu_second = fields.next().transpose()?;
    Ok(Figure {
        value,
        per_cpu_second,
    })
}

/// The median of `values` (the mean of the two middle ones for an even count), or NaN.
fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Prints the Markdown table of medians and ratios, then every run's figures.
fn print_table(header: &str, measures: &[Measure], results: &[Results]) {
    // `msgs-buffered` has no tm2-p2p run of its own: it is compared with `msgs`.
    let msgs_tm2 = measures
        .iter()
        .position(|&m| m == Measure::Msgs)
        .map(|i| results[i].tm2.clone())
        .unwrap_or_default();
    println!("\n{header}\n");
    println!(
        "| measurement | tm2-p2p | rust-libp2p | tm2 / libp2p | goal | met | \
         tm2 / libp2p per CPU-second |"
    );
    println!("| --- | ---: | ---: | ---: | --- | --- | ---: |");
    for (r, &m) in results.iter().zip(measures) {
        let ours = if m == Measure::MsgsBuffered {
            &msgs_tm2
        } else {
            &r.tm2
        };
        let value = |f: &[Figure]| m.scale(median(f.iter().map(|f| f.value)));
        let per_cpu = |f: &[Figure]| median(f.iter().filter_map(|f| f.per_cpu_second));
        let (a, b) = (value(ours), value(&r.libp2p));
        let ratio = a / b;
        let (goal, met) = match m.goal() {
            Some(g) if m.lower_is_better() => (format!("<= {g}"), ratio <= g),
            Some(g) => (format!(">= {g}"), ratio >= g),
            None => (String::new(), true),
        };
        let met = match (m.goal(), ours.is_empty()) {
            (None, _) | (_, true) => "",
            (Some(_), false) if met => "yes",
            (Some(_), false) => "no",
        };
        let cpu_ratio = per_cpu(ours) / per_cpu(&r.libp2p);
        let cpu_ratio = if cpu_ratio.is_nan() {
            String::new()
        } else {
            format!("{cpu_ratio:.2}")
        };
        let prec = if m == Measure::Memory { 1 } else { 0 };
        println!(
            "| {} | {a:.prec$} | {b:.prec$} | {ratio:.2} | {goal} | {met} | {cpu_ratio} |",
            m.label()
        );
    }
    println!("\nper run (tm2-p2p ; rust-libp2p):");
    for (r, &m) in results.iter().zip(measures) {
        let fmt = |v: &[Figure]| {
            v.iter()
                .map(|f| format!("{:.1}", m.scale(f.value)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!("  {:<36} {} ; {}", m.label(), fmt(&r.tm2), fmt(&r.libp2p));
    }
}

/// Prints what TM2's wire alone allows on this machine next to what each goal needs: a floor's
/// rate per CPU-second times the machine's cores is the most any implementation doing at least
/// that work reaches here, whatever it does above it.
fn print_floors(measures: &[Measure], results: &[Results]) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rows: Vec<(Measure, &Results)> = measures
        .iter()
        .copied()
        .zip(results)
        .filter(|(m, r)| m.goal().is_some() && !(r.floor_cpu.is_empty() && r.floor_tcp.is_empty()))
        .collect();
    if rows.is_empty() {
        return;
    }
    println!(
        "\nTM2's wire alone, same run: each floor's rate per CPU-second x {cores} cores is a \
         ceiling for any implementation that does at least that work on this machine\n"
    );
    println!(
        "| measurement | floor | floor per CPU-second | ceiling on {cores} cores | goal x libp2p | \
         goal reachable here |"
    );
    println!("| --- | --- | ---: | ---: | ---: | --- |");
    for (m, r) in rows {
        let goal = m.goal().unwrap_or(f64::NAN);
        let needed = goal * m.scale(median(r.libp2p.iter().map(|f| f.value)));
        let per_cpu_of =
            |figures: &[Figure]| median(figures.iter().filter_map(|f| f.per_cpu_second));
        // Plain TCP alone is no floor of TM2's wire; its CPU per byte added to the cipher's is:
        // no implementation seals, opens and moves a byte through the kernel for less.
        let plain = (!r.floor_cpu.is_empty() && !r.floor_plain.is_empty()).then(|| {
            let per_cpu = 1.0 / (1.0 / per_cpu_of(&r.floor_cpu) + 1.0 / per_cpu_of(&r.floor_plain));
            vec![Figure {
                value: f64::NAN,
                per_cpu_second: Some(per_cpu),
            }]
        });
        for (stack, figures) in [
            (Stack::FloorCpu, &r.floor_cpu),
            (Stack::FloorTcp, &r.floor_tcp),
            (Stack::FloorPlain, plain.as_ref().unwrap_or(&Vec::new())),
        ] {
            if figures.is_empty() {
                continue;
            }
            let per_cpu = m.scale(per_cpu_of(figures));
            let ceiling = per_cpu * cores as f64;
            let reachable = if ceiling >= needed { "yes" } else { "no" };
            println!(
                "| {} | {} | {per_cpu:.0} | {ceiling:.0} | {needed:.0} | {reachable} |",
                m.label(),
                m.floor_label(stack),
            );
        }
        // A stage, not a floor of all the work: its wall-clock rate on one core bounds every
        // design that gives one core a connection's sealing and writing.
        if !r.floor_writer.is_empty() {
            let rate = m.scale(median(r.floor_writer.iter().map(|f| f.value)));
            let reachable = if rate >= needed {
                "yes"
            } else {
                "not with one sealing core per connection"
            };
            println!(
                "| {} | {} | | {rate:.0} | {needed:.0} | {reachable} |",
                m.label(),
                m.floor_label(Stack::FloorWriter),
            );
        }
    }
}
