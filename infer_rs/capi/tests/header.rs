//! `include/infer_rs.h` is cbindgen's output for `src/lib.rs` under `cbindgen.toml`, with
//! the version macros of this crate's version. With `INFER_RS_WRITE_HEADER=1` the test
//! writes the header instead of comparing.

use std::path::Path;

/// The header as cbindgen writes it now.
fn generated(dir: &Path) -> String {
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let version = format!(
        "\n// The version of this header; infer_version() gives the library's.\n\
         #define INFER_RS_VERSION_MAJOR {}\n\
         #define INFER_RS_VERSION_MINOR {}\n\
         #define INFER_RS_VERSION_PATCH {}",
        env!("CARGO_PKG_VERSION_MAJOR"),
        env!("CARGO_PKG_VERSION_MINOR"),
        env!("CARGO_PKG_VERSION_PATCH"),
    );
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_after_include(version)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen reads src/lib.rs")
        .write(&mut out);
    String::from_utf8(out).expect("cbindgen writes UTF-8")
}

#[test]
fn the_header_is_cbindgen_output() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = dir.join("include/infer_rs.h");
    let want = generated(dir);
    if std::env::var_os("INFER_RS_WRITE_HEADER").is_some_and(|v| v == "1") {
        std::fs::write(&path, &want).expect("write include/infer_rs.h");
        return;
    }
    let have = std::fs::read_to_string(&path).expect("read include/infer_rs.h");
    if have != want {
        let (have_lines, want_lines): (Vec<_>, Vec<_>) =
            (have.lines().collect(), want.lines().collect());
        let line = (0..have_lines.len().max(want_lines.len()))
            .find(|&i| have_lines.get(i) != want_lines.get(i))
            .unwrap_or(have_lines.len());
        let end = "(the end of the file)";
        panic!(
            "include/infer_rs.h is not cbindgen's output for src/lib.rs: line {} is\n  {}\n\
             and should be\n  {}\n\
             Write it again with `INFER_RS_WRITE_HEADER=1 cargo test -p infer_rs_c` (in infer_rs/).",
            line + 1,
            have_lines.get(line).unwrap_or(&end),
            want_lines.get(line).unwrap_or(&end),
        );
    }
}
