fn main() {
    let board = memory_layouts::build::firmware(memory_layouts::Role::App);
    // A CA (PEM) the download hosts are verified with besides the bundled roots: the local
    // console's in tests (`cargo xtask` sets it for the builds that talk to it).
    println!("cargo:rerun-if-env-changed=APP_DOWNLOAD_CA");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("download-ca.pem");
    let extra = match std::env::var("APP_DOWNLOAD_CA") {
        Ok(p) if !p.is_empty() => {
            println!("cargo:rerun-if-changed={p}");
            std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("APP_DOWNLOAD_CA {p}: {e}"))
        }
        _ => String::new(),
    };
    std::fs::write(out, extra).unwrap();
    // defmt's linker script (log strings, the default defmt panic) for the boards that log with it.
    let defmt = matches!(board, memory_layouts::Board::Nrf52840Dk | memory_layouts::Board::BL475eIot01a);
    if defmt && std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("none") {
        println!("cargo:rustc-link-arg=-Tdefmt.x");
    }
}
