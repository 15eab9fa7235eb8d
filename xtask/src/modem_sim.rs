//! `cargo xtask modem-sim`: the Quectel-style AT modem simulator (`testbed::modem_sim`) on a TCP
//! port or (`--tty`) a pseudo-terminal with a line rate, printing the commands and URCs it sees. `--realistic` turns on every behaviour of a real
//! module (`SimOptions::realistic`); the flags for each turn it on alone or override its number.

use anyhow::Result;
use std::time::Duration;
use testbed::modem_sim::{ModemSim, SimOptions};

#[derive(clap::Args)]
pub struct Args {
    /// TCP port on 127.0.0.1 for the device's UART (0: pick one and print it).
    #[arg(long, default_value_t = 0, conflicts_with = "tty")]
    port: u16,
    /// A pseudo-terminal instead (its path printed): the device opens it as a serial port, the
    /// line runs at the module's rate (AT+IPR; 115,200 at power-on) and a device at another
    /// rate reads garbage.
    #[arg(long)]
    tty: bool,
    /// AT+IPR is stored at once (without AT&W), so the module powers on at the last rate set.
    #[arg(long)]
    ipr_saved: bool,
    /// The module restarts right after it acknowledged the first AT+IPR (a reset in the middle
    /// of the rate switch).
    #[arg(long)]
    restart_after_ipr: bool,
    /// Answer AT+CPIN? with "SIM not inserted".
    #[arg(long)]
    no_sim: bool,
    /// Registration polls answered "searching" before "registered".
    #[arg(long, default_value_t = 0)]
    register_after_polls: u32,
    /// The first transparent link drops after this many bytes toward the device.
    #[arg(long)]
    drop_first_link_after: Option<u64>,
    /// ID:BYTES: the first buffer-mode socket with that id is cut after BYTES from the far end.
    #[arg(long, value_parser = parse_drop)]
    drop_socket_after: Option<(u8, u64)>,
    /// Delay every response by this many ms (a slow module).
    #[arg(long, default_value_t = 0)]
    slow_ms: u64,
    /// Answer AT+QFOTADL with ERROR.
    #[arg(long)]
    fota_refuse: bool,
    /// The initial module firmware version (AT+QGMR).
    #[arg(long, default_value = "EC200UCNAAR03A01M08")]
    qgmr: String,
    /// Turn on every real-module behaviour below (SimOptions::realistic); a flag below given as
    /// well overrides its number.
    #[arg(long)]
    realistic: bool,
    /// The network deactivates the PDP context (+QIURC: "pdpdeact",1; AT+QIACT=1 refused until
    /// AT+QIDEACT=1) once the device has read this many bytes in total (once).
    #[arg(long, value_name = "BYTES")]
    pdp_deact_after: Option<u64>,
    /// AT+QIRD / AT+QSSLRECV hand out at most 512 bytes per read.
    #[arg(long)]
    partial_reads: bool,
    /// Every Nth AT+QISEND / AT+QSSLSEND is answered SEND FAIL (the data dropped).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    send_fail_every: Option<u32>,
    /// Start-up URCs (RDY, +CPIN: READY, +QIND: SMS DONE, +QIND: PB DONE) after power-on, and a
    /// URC between the echo and the answer of AT+QGMR, ATI, AT+CPIN?, AT+CEREG?, AT+CREG?,
    /// AT+QIACT?.
    #[arg(long)]
    urc_noise: bool,
    /// The module restarts unprompted (RDY) once the device has read this many bytes in total
    /// (once).
    #[arg(long, value_name = "BYTES")]
    restart_after: Option<u64>,
}

fn parse_drop(s: &str) -> Result<(u8, u64), String> {
    let (id, n) = s.split_once(':').ok_or("ID:BYTES")?;
    Ok((id.parse().map_err(|_| "bad socket id")?, n.parse().map_err(|_| "bad byte count")?))
}

pub fn run(a: Args) -> Result<()> {
    let base = if a.realistic { SimOptions::realistic() } else { SimOptions::default() };
    let o = SimOptions {
        no_sim: a.no_sim,
        register_after_polls: a.register_after_polls,
        drop_first_link_after: a.drop_first_link_after,
        drop_socket_after: a.drop_socket_after,
        slow_ms: a.slow_ms,
        fota_refuse: a.fota_refuse,
        qgmr: a.qgmr,
        pdp_deact_after: a.pdp_deact_after.or(base.pdp_deact_after),
        partial_reads: a.partial_reads || base.partial_reads,
        send_fail_every: a.send_fail_every.or(base.send_fail_every),
        urc_noise: a.urc_noise || base.urc_noise,
        restart_after: a.restart_after.or(base.restart_after),
        ipr_saved: a.ipr_saved,
        restart_after_ipr: a.restart_after_ipr,
    };
    let sim = if a.tty { ModemSim::start_tty(o)? } else { ModemSim::start_on(a.port, o)? };
    println!("modem simulator: UART on {} (device.toml: modem = \"{}\")", sim.uart(), sim.uart());
    let (mut seen, mut seen_urcs) = (0, 0);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let log = sim.log();
        for c in &log.commands[seen..] {
            println!("> {c}");
        }
        for u in &log.urcs[seen_urcs..] {
            println!("< {u}");
        }
        seen = log.commands.len();
        seen_urcs = log.urcs.len();
    }
}
