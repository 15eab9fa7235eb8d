fn main() {
    memory_layouts::build::firmware(memory_layouts::Role::Bootloader);
}
