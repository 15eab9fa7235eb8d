fn main() {
    let board = memory_layouts::build::firmware(memory_layouts::Role::App);
    // defmt's linker script (log strings, the default defmt panic) for the board that logs with it.
    if board == memory_layouts::Board::Nrf52840Dk && std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        println!("cargo:rustc-link-arg=-Tdefmt.x");
    }
}
