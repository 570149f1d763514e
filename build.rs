//! Links slotline with packed relative relocations (DT_RELR: binutils 2.38, glibc 2.36): the
//! dynamic loader reads 5 KB of them at start instead of 400 KB, which is RSS slotline keeps.
fn main() {
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
}
